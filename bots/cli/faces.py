"""`toonify faces`: show what the face finder sees in a photo (an aid for operators)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from PIL import ImageDraw
from rich.table import Table

from bots import texts
from bots.cli.common import console, fail, settings
from inference.align import align_face
from inference.faces import Face, FaceBackendError, make_detector
from inference.images import ImageError, decode_image, encode_jpeg
from inference.settings import FacesSettings

USED, SKIPPED, QUAD, MARKS = (60, 220, 60), (255, 140, 0), (255, 230, 0), (255, 40, 40)


class Backend(StrEnum):
    AUTO = "auto"
    FACE_ALIGNMENT = "face-alignment"
    DLIB = "dlib"


def faces(
    ctx: typer.Context,
    photo: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A photo file.")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Annotated JPEG; crops go beside it (OUT-face1.png)."),
    ],
    backend: Annotated[
        Backend | None, typer.Option(help="Landmark backend (default: faces.backend).")
    ] = None,
    size: Annotated[int, typer.Option(min=16, max=4096, help="Aligned crop size.")] = 1024,
) -> None:
    """Draw each face's box, landmarks and FFHQ crop square, and save the aligned crops."""
    config = settings(ctx)
    options = config.faces.model_dump()
    if backend is not None:
        options["backend"] = backend.value
    try:
        image = decode_image(photo.read_bytes(), config.limits)
        detector = make_detector(FacesSettings(**options), config.models.device)
    except (ImageError, FaceBackendError) as exc:
        fail(texts.image_problem(exc) if isinstance(exc, ImageError) else str(exc))
    found = detector.detect(image)

    annotated = image.copy()
    draw = ImageDraw.Draw(annotated)
    line = max(2, round(max(image.size) / 400))
    table = Table("face", "box (x0, y0, x1, y1)", "score", "width", "result")
    output.parent.mkdir(parents=True, exist_ok=True)
    for number, face in enumerate(found.faces, start=1):
        aligned = align_face(image, face.landmarks, size)
        crop = output.with_name(f"{output.stem}-face{number}.png")
        aligned.image.save(crop)
        draw.polygon([tuple(p) for p in aligned.quad], outline=QUAD, width=line)
        _mark(draw, face, USED, line, str(number))
        table.add_row(str(number), *_describe(face), str(crop))
    for skipped in found.skipped:
        _mark(draw, skipped.face, SKIPPED, line, "")
        table.add_row("-", *_describe(skipped.face), texts.skipped_face(skipped))
    output.write_bytes(encode_jpeg(annotated, quality=92))

    console.print(f"backend: {detector.backend}")
    if found.faces or found.skipped:
        console.print(table)
    else:
        console.print("no face found")
    console.print(f"wrote {output}")


def _mark(
    draw: ImageDraw.ImageDraw, face: Face, colour: tuple[int, ...], line: int, label: str
) -> None:
    draw.rectangle(face.box, outline=colour, width=line)
    for x, y in face.landmarks:
        draw.ellipse((x - line, y - line, x + line, y + line), fill=MARKS)
    if label:
        draw.text((face.box[0], face.box[1] - 6 * line), label, fill=colour, font_size=6 * line)


def _describe(face: Face) -> tuple[str, str, str]:
    box = ", ".join(f"{v:.0f}" for v in face.box)
    return f"({box})", f"{face.score:.2f}", f"{face.width:.0f} px"
