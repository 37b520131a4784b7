"""A finished job as the user gets it: the image file, its caption and what its buttons may do.

The file is a JPEG, or a PNG when the adapter asks for the lossless family (an original sent as
a PNG file): the toon keeps the format family of what was sent.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

from bots import texts
from bots.styles import Styles
from inference.pipeline import Finished

JPEG_QUALITY = 92
# Originals of these types are lossless: their toon is a PNG.
LOSSLESS_TYPES = frozenset({"image/png", "image/gif", "image/bmp", "image/x-ms-bmp", "image/tiff"})


class ImageFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"


def same_family(content_type: str | None) -> ImageFormat:
    """PNG for a lossless original, JPEG for anything else (JPEG, HEIC, WebP, unknown)."""
    lossless = (content_type or "").split(";")[0].strip().lower() in LOSSLESS_TYPES
    return ImageFormat.PNG if lossless else ImageFormat.JPEG


@dataclass
class Toon:
    result_id: str
    image: bytes
    filename: str
    caption: str
    style: str
    strength: int
    styles: list[tuple[str, str]]
    can_less: bool
    can_more: bool
    faces_only: bool


@dataclass(frozen=True)
class View:
    """How a delivered toon is shown now; its buttons change this, kept for `cache_ttl`."""

    style: str
    strength: int
    faces_only: bool
    image_format: ImageFormat = ImageFormat.JPEG


async def make_toon(result_id: str, finished: Finished, view: View, styles: Styles) -> Toon:
    """The message for `finished` shown as `view` asks, encoded off the event loop."""
    info = styles.view[finished.style]
    image = await asyncio.to_thread(encode, finished, view.faces_only, view.image_format)
    can_less, can_more = styles.can_change(finished.style, finished.strength)
    level, levels = info.strengths.index(finished.strength) + 1, len(info.strengths)
    faces, skipped = len(finished.faces), finished.skipped
    return Toon(
        result_id=result_id,
        image=image,
        filename=f"toon-{result_id}.{'png' if view.image_format == ImageFormat.PNG else 'jpg'}",
        caption=texts.caption(info.label, level, levels, faces, skipped),
        style=finished.style,
        strength=finished.strength,
        styles=[(name, style.label) for name, style in styles.view.items()],
        can_less=can_less,
        can_more=can_more,
        faces_only=view.faces_only,
    )


def encode(finished: Finished, faces_only: bool, image_format: ImageFormat) -> bytes:
    """The pasted-back photo, or the toon faces side by side, as a JPEG or a PNG."""
    image = _grid(finished.faces) if faces_only else finished.photo
    buffer = io.BytesIO()
    if image_format == ImageFormat.PNG:
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _grid(faces: list[Image.Image]) -> Image.Image:
    height = max(face.height for face in faces)
    grid = Image.new("RGB", (sum(face.width for face in faces), height), "white")
    x = 0
    for face in faces:
        grid.paste(face, (x, 0))
        x += face.width
    return grid
