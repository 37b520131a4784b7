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
from inference.faces import FaceDetector
from inference.images import decode_image
from inference.settings import LimitsSettings


class NoFace(Exception):
    """No face in the photo that can be used; `reason` is for the person who sent it."""

    def __init__(self, skipped: Sequence[str]) -> None:
        self.skipped = list(skipped)
        self.reason = " ".join(["I could not find a face I can use in this photo.", *skipped])
        super().__init__(self.reason)

    def __reduce__(self) -> tuple[type[NoFace], tuple[list[str]]]:
        """Crosses the pipe from a prepare process intact."""
        return (type(self), (self.skipped,))


@dataclass
class Prepared:
    """Decode + detect + align done; nothing on the accelerator yet."""

    photo: Image.Image
    faces: list[AlignedFace]
    skipped: list[str]
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
    skipped = [s.reason for s in detection.skipped]
    if not detection.faces:
        raise NoFace(skipped)
    with timed(timings, "align"):
        faces = [align_face(photo, f.landmarks, resolution) for f in detection.faces]
    return Prepared(photo, faces, skipped, timings)
