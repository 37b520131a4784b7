"""Turn the bytes people send into an upright RGB picture, refusing what we cannot safely decode.

Limits are checked on what the header declares, before any pixel is decoded, so a small file
that claims billions of pixels (a decompression bomb) costs nothing but a typed refusal; the
words for each refusal are in bots/texts.py.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import InferenceError
from inference.settings import LimitsSettings

pillow_heif.register_heif_opener()

# Pillow's names for the formats we accept (MPO: JPEGs from cameras that carry several pictures).
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "HEIF", "AVIF", "GIF"})
# Progressive JPEGs from cameras and browsers have about a dozen scans; every scan makes the
# decoder pass over the whole picture again, so thousands of them take minutes to decode.
MAX_JPEG_SCANS = 100
# After a scan's entropy-coded data, the next marker: 0xFF not followed by a stuffed zero, a
# restart marker (part of the scan) or another 0xFF (fill).
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_WHITE = (255, 255, 255)


class ImageProblem(StrEnum):
    EMPTY = "empty"
    NO_PIXELS = "no_pixels"
    TOO_MANY_BYTES = "too_many_bytes"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_COMPLEX = "too_complex"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DAMAGED = "damaged"


@dataclass(frozen=True)
class ImageFacts:
    """What a refusal can name: each problem fills the fields it is about."""

    found: int | None = None
    """TOO_MANY_BYTES: the file's bytes; TOO_MANY_PIXELS: its pixels (None for a bomb)."""
    limit: int | None = None
    """The limit in the same unit (TOO_COMPLEX: scans)."""
    size: tuple[int, int] | None = None
    """TOO_MANY_PIXELS: width and height, when the header could be read."""
    format: str | None = None
    """UNSUPPORTED_FORMAT: Pillow's name of the format."""


class ImageError(InferenceError):
    """An image we refuse: `problem` and `facts` say why, bots/texts.py says it in words."""

    def __init__(self, problem: ImageProblem, facts: ImageFacts | None = None) -> None:
        self.problem = problem
        self.facts = facts or ImageFacts()
        super().__init__(f"{problem.value} ({self.facts})")

    def __reduce__(self) -> tuple[type[ImageError], tuple[ImageProblem, ImageFacts]]:
        """Crosses the pipe from a prepare process intact."""
        return (type(self), (self.problem, self.facts))


def decode_image(data: bytes, limits: LimitsSettings) -> Image.Image:
    """Decode the first frame of an accepted image into upright RGB (alpha flattened on white)."""
    if not data:
        raise ImageError(ImageProblem.EMPTY)
    if len(data) > limits.max_bytes:
        raise ImageError(ImageProblem.TOO_MANY_BYTES, ImageFacts(len(data), limits.max_bytes))
    image = _open(data)
    _check_header(image, limits)
    if image.format in ("JPEG", "MPO") and jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise ImageError(ImageProblem.TOO_COMPLEX, ImageFacts(limit=MAX_JPEG_SCANS))
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # Pillow's decoders raise many types for damaged data.
        raise ImageError(ImageProblem.DAMAGED) from exc
    return to_rgb(upright)


def _open(data: bytes) -> Image.Image:
    """Read the header only; Pillow's own bomb guard becomes our typed refusal.

    Its warning (above 89 MP) is silenced: our pixel limit, checked next, decides.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(ImageProblem.TOO_MANY_PIXELS) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(ImageProblem.NOT_AN_IMAGE) from exc
    except Exception as exc:  # A recognised header that is broken.
        raise ImageError(ImageProblem.DAMAGED) from exc


def _check_header(image: Image.Image, limits: LimitsSettings) -> None:
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError(ImageProblem.UNSUPPORTED_FORMAT, ImageFacts(format=image.format))
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(ImageProblem.NO_PIXELS)
    if width * height > limits.max_pixels:
        facts = ImageFacts(width * height, limits.max_pixels, size=(width, height))
        raise ImageError(ImageProblem.TOO_MANY_PIXELS, facts)


def jpeg_scans(data: bytes, limit: int) -> int:
    """The scans (SOS segments) of a JPEG's first picture, counted up to `limit + 1`.

    Walks the marker segments without decoding anything; the EXIF thumbnail lies inside a
    segment and the further pictures of an MPO come after the first end marker, so neither
    counts. A damaged structure stops the count: the decoder then says what is wrong.
    """
    scans, position = 0, 2
    while scans <= limit and position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
        elif marker == _EOI:
            break
        elif marker in _STANDALONE:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
            if marker == _SOS:
                scans += 1
                found = _MARKER_AFTER_SCAN.search(data, position)
                if found is None:
                    break
                position = found.start()
    return scans


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency becomes white, 16-bit grey keeps its range."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        grey = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def encode_jpeg(image: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes for a reply (RGB, no metadata: nothing of the original file travels back)."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    out = io.BytesIO()
    to_rgb(picture).save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()
