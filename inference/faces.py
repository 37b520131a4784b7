"""Faces in a photo: a box, a score and the 68 iBUG landmarks each, from one of two backends.

Backends: `face-alignment` (S3FD detector + FAN landmarks, torch, GPU when there is one; its
weights download to the torch hub cache on first use) and `dlib` (HOG detector + the 68-point
shape predictor shipped in the face_recognition_models package, offline). `auto` takes
face-alignment when it loads, else dlib.

Detection runs on a copy of the photo at most 800 px on its long side (the detector's time
grows with its pixels), enlarged only where the smallest face worth finding (`faces.min_size`)
would otherwise be too small for the detector; landmarks are then placed on the full-resolution
photo, each from a crop around its face. A detector is used from one thread at a time.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from inference.errors import ModelLoadError
from inference.settings import FacesSettings

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

# Detection copies are at most this long (dlib's HOG: ~40 ms at 800x600 on one core, ~0.2 s at
# 2 MP); with dlib, faces narrower than a tenth of such a photo's long side are then not found.
DETECTION_SIDE = 800
# dlib's HOG scores real faces around 1 and its false positives (badges, patterns) near 0.
_HOG_THRESHOLD = 0.3
# Seconds a stalled weight download may hang before face-alignment is declared unavailable.
DOWNLOAD_TIMEOUT = 30.0


class FaceBackendError(ModelLoadError):
    """A landmark backend that cannot run here; str() says why and what to do."""


@dataclass(frozen=True)
class Face:
    """One face in photo pixel coordinates (pixel centres at integers)."""

    box: Box
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def width(self) -> float:
        """Ear to ear (jaw landmarks 0 and 16), whatever the head's roll."""
        return float(np.hypot(*(self.landmarks[16] - self.landmarks[0])))


class SkipProblem(StrEnum):
    TOO_SMALL = "too_small"
    TOO_MANY = "too_many"


@dataclass(frozen=True)
class SkippedFace:
    """A face left out; bots/texts.py says why in words."""

    face: Face
    problem: SkipProblem
    limit: int
    """faces.min_size in pixels (TOO_SMALL) or faces.max_faces (TOO_MANY)."""


@dataclass(frozen=True)
class Detection:
    """The faces to use, largest first, and the ones left out with the reason why."""

    faces: list[Face]
    skipped: list[SkippedFace]


class LandmarkBackend(Protocol):
    name: str
    # Faces narrower than this (pixels in the image it is given) are missed by the detector.
    smallest_face: int
    # How far around a box the landmark step reads, in box sides: it gets a crop that wide.
    reach: float

    def boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        """Face boxes (x0, y0, x1, y1) and scores in an RGB uint8 image."""
        ...

    def landmarks(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        """68 landmarks [68, 2] (x, y) for each box, in the same order."""
        ...


class FaceDetector:
    """A backend plus the policy: detection scale, largest first, size and count limits."""

    def __init__(self, backend: LandmarkBackend, max_faces: int, min_size: int) -> None:
        self.backend = backend
        self.max_faces = max_faces
        self.min_size = min_size

    def detect(self, photo: Image.Image) -> Detection:
        """Every face in an RGB photo, sorted and split into used and skipped."""
        photo = photo if photo.mode == "RGB" else photo.convert("RGB")
        size = self._copy_size(photo.width, photo.height)
        found = self.backend.boxes(np.asarray(_detection_copy(photo, size)))
        sx, sy = photo.width / size[0], photo.height / size[1]
        faces = []
        for (x0, y0, x1, y1), score in found:
            box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            faces.append(Face(box, float(score), self._landmarks(photo, box)))
        faces.sort(key=lambda face: face.width, reverse=True)
        return self._select(faces)

    def _copy_size(self, width: int, height: int) -> tuple[int, int]:
        """Enlarge so a min_size face reaches the detector's minimum; shrink to DETECTION_SIDE."""
        wanted = max(1.0, self.backend.smallest_face / self.min_size)
        scale = min(wanted, DETECTION_SIDE / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _landmarks(self, photo: Image.Image, box: Box) -> np.ndarray:
        """68 landmarks from full-resolution pixels around the box (a crop: no copy of the rest)."""
        x0, y0, x1, y1 = box
        margin = self.backend.reach * max(x1 - x0, y1 - y0)
        left, top = max(math.floor(x0 - margin), 0), max(math.floor(y0 - margin), 0)
        right = min(math.ceil(x1 + margin), photo.width)
        bottom = min(math.ceil(y1 + margin), photo.height)
        pixels = np.asarray(photo.crop((left, top, right, bottom)))
        inside = (x0 - left, y0 - top, x1 - left, y1 - top)
        (marks,) = self.backend.landmarks(pixels, [inside])
        return np.asarray(marks, np.float64)[:, :2] + (left, top)

    def _select(self, faces: list[Face]) -> Detection:
        used: list[Face] = []
        skipped: list[SkippedFace] = []
        for face in faces:
            if face.width < self.min_size:
                skipped.append(SkippedFace(face, SkipProblem.TOO_SMALL, self.min_size))
            elif len(used) >= self.max_faces:
                skipped.append(SkippedFace(face, SkipProblem.TOO_MANY, self.max_faces))
            else:
                used.append(face)
        return Detection(used, skipped)


def _detection_copy(photo: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The photo at `size`: box-reduced by an integer factor first (cheap), then bilinear."""
    factor = min(photo.width // size[0], photo.height // size[1])
    if factor >= 2:
        photo = photo.reduce(factor)
    return photo if photo.size == size else photo.resize(size, Image.Resampling.BILINEAR)


def make_detector(settings: FacesSettings, device: str = "auto") -> FaceDetector:
    """The configured backend wrapped in the configured policy; `device` is for face-alignment."""
    backend = make_backend(settings.backend, device)
    log.info("face backend: %s", backend)
    return FaceDetector(backend, settings.max_faces, settings.min_size)


def make_backend(name: str, device: str = "auto") -> LandmarkBackend:
    """Load one backend by its config name; `auto` falls back to dlib, saying why."""
    if name == "dlib":
        return DlibBackend()
    if name == "face-alignment":
        return FanBackend(device)
    if name != "auto":
        raise FaceBackendError(f"unknown face backend {name!r}: dlib, face-alignment or auto")
    try:
        return FanBackend(device)
    except FaceBackendError as exc:
        log.warning("face-alignment is unavailable, using dlib: %s", exc)
        return DlibBackend()


class DlibBackend:
    """HOG detector and the 68-point shape predictor, entirely on the CPU."""

    name = "dlib"
    smallest_face = 80
    # The shape predictor reads pixels near the current shape, which stays about the box.
    reach = 0.5

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise FaceBackendError("dlib is not installed (pip install dlib-bin)") from exc
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path()))

    def boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        rects, scores, _ = self._detector.run(image, 0, _HOG_THRESHOLD)
        return [
            ((r.left(), r.top(), r.right() + 1, r.bottom() + 1), float(s))
            for r, s in zip(rects, scores, strict=True)
        ]

    def landmarks(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        marks = []
        for x0, y0, x1, y1 in boxes:
            rect = self._dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
            shape = self._predictor(image, rect)
            marks.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64))
        return marks

    def __str__(self) -> str:
        return "dlib (HOG + 68-point shape predictor, CPU)"


def dlib_model_path() -> Path:
    """The 68-point model inside face_recognition_models, found without importing it.

    Importing that package fails on current setuptools (it imports pkg_resources).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceBackendError(
            "dlib's 68-point model is missing: pip install face_recognition_models"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.is_file():
            return path
    raise FaceBackendError("face_recognition_models has no shape_predictor_68_face_landmarks.dat")


class FanBackend:
    """face-alignment's S3FD detector and 2D FAN, on `device` (auto: CUDA when present)."""

    name = "face-alignment"
    smallest_face = 20
    # FAN reads a square of 1.03 * (width + height) around the box's centre, moved up 0.12 height.
    reach = 0.75

    def __init__(self, device: str = "auto") -> None:
        try:
            import face_alignment  # imports torch: only when this backend is chosen
            import torch
        except ImportError as exc:
            raise FaceBackendError(f"face-alignment cannot be imported: {exc}") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        fetch_fan_weights()
        try:
            with _cudnn_benchmark_kept():
                self._model = face_alignment.FaceAlignment(
                    face_alignment.LandmarksType.TWO_D,
                    device=device,
                    face_detector="sfd",
                    compile=False,
                )
        except Exception as exc:  # Broken cache files or an unusable device.
            raise FaceBackendError(f"face-alignment failed to load on {device}: {exc}") from exc

    def boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        with _cudnn_benchmark_kept():
            found = self._model.face_detector.detect_from_image(image)
        return [((b[0], b[1], b[2], b[3]), float(b[4])) for b in found]

    def landmarks(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        detected = [np.array(box, dtype=np.float64) for box in boxes]
        marks: Any = self._model.get_landmarks_from_image(image, detected_faces=detected)
        return list(marks or [])

    def __str__(self) -> str:
        return f"face-alignment (S3FD + FAN, {self.device})"


@contextmanager
def _cudnn_benchmark_kept() -> Iterator[None]:
    """Undo face-alignment's `torch.backends.cudnn.benchmark = True` when its call returns.

    It sets that process-wide flag on CUDA in its constructor and again before every S3FD
    detection; left on, every new photo size would start a cuDNN autotune on the shared GPU and
    the inference thread would tune too (see Toonifier). The flag is still on while the S3FD
    call itself runs: only running S3FD outside face-alignment's `detect` would avoid that.
    """
    import torch

    before = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def fan_weight_urls() -> list[str]:
    """face-alignment's own download addresses for the 2D FAN and the S3FD detector."""
    from face_alignment.api import models_urls as fan
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd

    return [fan["2DFAN-4"], sfd["s3fd"]]


def fetch_fan_weights() -> None:
    """Make sure the weights are in the torch hub cache, where face-alignment looks for them.

    Downloading here, with a timeout, means an offline host fails at once with a clear reason
    instead of hanging inside face-alignment.
    """
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for url in fan_weight_urls():
        target = folder / Path(urlparse(url).path).name
        if target.is_file():
            continue
        log.info("downloading face-alignment weights to %s", target)
        partial = target.with_name(target.name + ".partial")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
                partial.open("wb") as out,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            partial.replace(target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise FaceBackendError(
                f"face-alignment weights are not in {folder} and could not be downloaded "
                f'({exc}); run once on a connected machine or set faces.backend = "dlib"'
            ) from exc
