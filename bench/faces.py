"""Per-stage times of preparing a photo (decode, detect, align) and of pasting a face back.

The sample photos are made from scikit-image's astronaut (dev extra), so the figures and the
tests that compare against the FFHQ script use the same pictures on every machine.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from inference.align import align_face, paste_back
from inference.faces import Face, FaceDetector
from inference.images import decode_image
from inference.settings import LimitsSettings

STAGES = ("decode", "detect", "align", "prepare", "paste")


@dataclass(frozen=True)
class PrepareTimes:
    """Median seconds per stage for one photo; `prepare` is decode + detect + align, timed whole."""

    photo: str
    size: tuple[int, int]
    faces: int
    seconds: dict[str, float]


def sample_photos() -> dict[str, bytes]:
    """The astronaut as sent, in a 12 MP phone photo, as a close selfie whose crop square leaves
    the frame (the padding path), and beside a smaller copy of herself; JPEG, quality 92.

    Raises ImportError without scikit-image.
    """
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    phone = Image.new("RGB", (4032, 3024), (90, 90, 100))
    phone.paste(astronaut.resize((2400, 2400), Image.Resampling.LANCZOS), (800, 300))
    pair = Image.new("RGB", (800, 512), (128, 128, 128))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((420, 420)), (380, 92))
    selfie = astronaut.crop((120, 20, 330, 300)).resize((3024, 4032), Image.Resampling.LANCZOS)
    return {
        "astronaut.jpg": _jpeg(astronaut),
        "phone.jpg": _jpeg(phone),
        "selfie.jpg": _jpeg(selfie),
        "two-faces.jpg": _jpeg(pair),
    }


def measure(
    detector: FaceDetector, photos: dict[str, bytes], limits: LimitsSettings, size: int, runs: int
) -> list[PrepareTimes]:
    """Medians of `runs` runs after a warm-up, photo by photo (ImageError for a bad file)."""
    rows = []
    for name, data in photos.items():
        photo = decode_image(data, limits)
        faces = detector.detect(photo).faces
        aligned = [align_face(photo, face.landmarks, size) for face in faces]
        pasted = [(face.image, face.quad) for face in aligned]
        seconds = {
            "decode": _median(runs, decode_image, data, limits),
            "detect": _median(runs, detector.detect, photo),
            "align": _median(runs, _align_all, photo, faces, size),
            "prepare": _median(runs, _prepare, detector, data, limits, size),
            "paste": _median(runs, paste_back, photo, pasted),
        }
        rows.append(PrepareTimes(name, photo.size, len(faces), seconds))
    return rows


def _prepare(detector: FaceDetector, data: bytes, limits: LimitsSettings, size: int) -> None:
    """What Toonifier.prepare does with the pixels."""
    photo = decode_image(data, limits)
    _align_all(photo, detector.detect(photo).faces, size)


def _align_all(photo: Image.Image, faces: list[Face], size: int) -> None:
    for face in faces:
        align_face(photo, face.landmarks, size)


def _median(runs: int, work: Callable[..., object], *args: Any) -> float:
    """Median seconds of `runs` calls of work(*args) after one warm-up call."""
    work(*args)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()
