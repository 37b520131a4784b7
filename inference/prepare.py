"""Photo bytes -> aligned faces: the CPU half of the pipeline, before any generator runs.

It lives apart from pipeline.py so that the prepare processes (inference/prepare_pool.py)
load neither the generators nor the inversion: decoding, detection and alignment (one torch
resampling on the CPU) are all they do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image

from inference.align import AlignedFace, align_face
from inference.errors import InferenceError
from inference.faces import FaceDetector, SkippedFace
from inference.images import decode_image
from inference.settings import LimitsSettings


class NoFace(InferenceError):
    """No face in the photo that can be used; `skipped` are the faces found but left out."""

    def __init__(self, skipped: Sequence[SkippedFace]) -> None:
        self.skipped = list(skipped)
        super().__init__(f"no usable face ({len(self.skipped)} left out)")

    def __reduce__(self) -> tuple[type[NoFace], tuple[list[SkippedFace]]]:
        """Crosses the pipe from a prepare process intact."""
        return (type(self), (self.skipped,))


@dataclass
class Prepared:
    """Decode + detect + align done; nothing on the accelerator yet."""

    photo: Image.Image
    faces: list[AlignedFace]
    skipped: list[SkippedFace]
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the seconds the block takes to `timings[stage]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def prepare_photo(
    image: bytes, detector: FaceDetector, limits: LimitsSettings, resolution: int
) -> Prepared:
    """Decode, detect and align; raises ImageError (images.py) or NoFace."""
    timings: dict[str, float] = {}
    with timed(timings, "decode"):
        photo = decode_image(image, limits)
    with timed(timings, "detect"):
        detection = detector.detect(photo)
    if not detection.faces:
        raise NoFace(detection.skipped)
    with timed(timings, "align"):
        faces = [align_face(photo, f.landmarks, resolution) for f in detection.faces]
    return Prepared(photo, faces, detection.skipped, timings)
