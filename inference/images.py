"""Turn the bytes people send into an upright RGB picture, refusing what we cannot safely decode.

Limits are checked on what the header declares, before any pixel is decoded, so a small file
that claims billions of pixels (a decompression bomb) costs nothing but a typed refusal.
"""

from __future__ import annotations

import io
import re
import warnings
from enum import StrEnum

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.settings import LimitsSettings

pillow_heif.register_heif_opener()

# Pillow's names for the formats we accept (MPO: JPEGs from cameras that carry several pictures).
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "HEIF", "AVIF", "GIF"})
_ACCEPTED_NAMES = "JPEG, PNG, WebP, HEIC/HEIF, AVIF or GIF"
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
    TOO_MANY_BYTES = "too_many_bytes"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_COMPLEX = "too_complex"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DAMAGED = "damaged"


class ImageError(Exception):
    """An image we refuse; `problem` is for code, str() is a reason a person can read."""

    def __init__(self, problem: ImageProblem, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageError], tuple[ImageProblem, str]]:
        """Crosses the pipe from a prepare process intact."""
        return (type(self), (self.problem, self.reason))


def decode_image(data: bytes, limits: LimitsSettings) -> Image.Image:
    """Decode the first frame of an accepted image into upright RGB (alpha flattened on white)."""
    if not data:
        raise ImageError(ImageProblem.EMPTY, "The file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(
            ImageProblem.TOO_MANY_BYTES,
            f"The file is too large ({_mb(len(data))}); the limit is {_mb(limits.max_bytes)}.",
        )
    image = _open(data)
    _check_header(image, limits)
    if image.format in ("JPEG", "MPO") and jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise ImageError(
            ImageProblem.TOO_COMPLEX,
            f"The image is stored in more than {MAX_JPEG_SCANS} passes, too many to decode.",
        )
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # Pillow's decoders raise many types for damaged data.
        raise ImageError(
            ImageProblem.DAMAGED, "The image is damaged or incomplete and cannot be read."
        ) from exc
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
        raise ImageError(
            ImageProblem.TOO_MANY_PIXELS, "The image has far too many pixels to be processed."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            ImageProblem.NOT_AN_IMAGE,
            f"This file is not an image I can read; send a {_ACCEPTED_NAMES} picture.",
        ) from exc
    except Exception as exc:  # A recognised header that is broken.
        raise ImageError(
            ImageProblem.DAMAGED, "The image is damaged or incomplete and cannot be read."
        ) from exc


def _check_header(image: Image.Image, limits: LimitsSettings) -> None:
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError(
            ImageProblem.UNSUPPORTED_FORMAT,
            f"{image.format} images are not supported; send a {_ACCEPTED_NAMES} picture.",
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(ImageProblem.DAMAGED, "The image has no pixels.")
    if width * height > limits.max_pixels:
        raise ImageError(
            ImageProblem.TOO_MANY_PIXELS,
            f"The image is too large ({width}x{height} = {width * height / 1e6:.0f} MP); "
            f"the limit is {limits.max_pixels / 1e6:.0f} MP.",
        )


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


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
