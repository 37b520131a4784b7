"""A finished job as the user gets it: the JPEG, its caption and what its buttons may do."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from PIL import Image

from bots import texts
from bots.styles import Styles
from inference.pipeline import Finished

JPEG_QUALITY = 92


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


async def make_toon(result_id: str, finished: Finished, faces_only: bool, styles: Styles) -> Toon:
    """The message for `finished`, encoded off the event loop."""
    info = styles.view[finished.style]
    image = await asyncio.to_thread(encode, finished, faces_only)
    can_less, can_more = styles.can_change(finished.style, finished.strength)
    return Toon(
        result_id=result_id,
        image=image,
        filename=f"toon-{result_id}.jpg",
        caption=texts.caption(info.label, finished.strength, len(finished.faces), finished.skipped),
        style=finished.style,
        strength=finished.strength,
        styles=[(name, style.label) for name, style in styles.view.items()],
        can_less=can_less,
        can_more=can_more,
        faces_only=faces_only,
    )


def encode(finished: Finished, faces_only: bool) -> bytes:
    """JPEG of the pasted-back photo, or of the toon faces side by side."""
    image = _grid(finished.faces) if faces_only else finished.photo
    buffer = io.BytesIO()
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
