from __future__ import annotations

import io
import logging
import math
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from bench.faces import sample_photos
from bots import texts
from bots.cli import app
from inference.align import align_face, ffhq_quad
from inference.faces import (
    Box,
    DlibBackend,
    FaceBackendError,
    FaceDetector,
    FanBackend,
    SkipProblem,
    fan_weight_urls,
    make_backend,
    make_detector,
)
from inference.images import decode_image
from inference.settings import FacesSettings, LimitsSettings


@pytest.fixture(scope="module")
def dlib_backend() -> DlibBackend:
    return DlibBackend()


@pytest.fixture
def detector(dlib_backend: DlibBackend) -> FaceDetector:
    return FaceDetector(dlib_backend, max_faces=4, min_size=64)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def key_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres and mouth corners: what FFHQ alignment is built from."""
    eyes = [landmarks[36:42].mean(0), landmarks[42:48].mean(0)]
    return np.stack([*eyes, landmarks[48], landmarks[54]])


def two_faces(astronaut: Image.Image) -> Image.Image:
    """The astronaut, and a smaller mirrored copy of her beside her."""
    canvas = Image.new("RGB", (800, 512), (128, 128, 128))
    canvas.paste(astronaut, (0, 0))
    small = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((420, 420))
    canvas.paste(small, (380, 92))
    return canvas


def test_astronaut_has_one_face(detector: FaceDetector, astronaut: Image.Image) -> None:
    found = detector.detect(astronaut)
    assert len(found.faces) == 1
    assert found.skipped == []
    face = found.faces[0]
    assert face.landmarks.shape == (68, 2)
    x0, y0, x1, y1 = face.box
    left_eye, right_eye, mouth_left, mouth_right = key_points(face.landmarks)
    for x, y in (left_eye, right_eye, mouth_left, mouth_right):
        assert x0 <= x <= x1 and y0 <= y <= y1
    # Her face is around (225, 125) in the photo, eyes above the mouth, left eye on the left.
    assert abs((x0 + x1) / 2 - 225) < 30 and abs((y0 + y1) / 2 - 125) < 30
    assert left_eye[0] < right_eye[0] and left_eye[1] < mouth_left[1]
    assert 70 < face.width < 140


@pytest.mark.parametrize("size", [256, 512])
def test_aligned_crop_puts_eyes_and_mouth_where_ffhq_does(
    detector: FaceDetector, astronaut: Image.Image, size: int
) -> None:
    face = detector.detect(astronaut).faces[0]
    aligned = align_face(astronaut, face.landmarks, size)
    again = detector.detect(aligned.image).faces
    assert len(again) == 1
    tolerance = 3.0 * size / 256
    # Where the alignment transform sends the photo's eye centres and mouth corners...
    expected = aligned.to_crop(key_points(face.landmarks))
    assert np.abs(key_points(again[0].landmarks) - expected).max() < tolerance
    # ...and FFHQ's fixed point: aligning the aligned crop again frames the crop itself.
    corners = np.array([[0, 0], [0, size], [size, size], [size, 0]]) - 0.5
    assert np.abs(ffhq_quad(again[0].landmarks) - corners).max() < tolerance


def test_two_faces_largest_first(detector: FaceDetector, astronaut: Image.Image) -> None:
    found = detector.detect(two_faces(astronaut))
    assert len(found.faces) == 2
    big, small = found.faces
    assert big.width > small.width
    assert big.box[0] < 400 < small.box[0]


def test_limits_skip_faces_with_reasons(dlib_backend: DlibBackend, astronaut: Image.Image) -> None:
    photo = two_faces(astronaut)
    one = FaceDetector(dlib_backend, max_faces=1, min_size=64).detect(photo)
    assert [f.box[0] < 400 for f in one.faces] == [True]
    assert [(s.problem, s.limit) for s in one.skipped] == [(SkipProblem.TOO_MANY, 1)]
    assert "Only the 1 largest faces" in texts.skipped_face(one.skipped[0])

    picky = FaceDetector(dlib_backend, max_faces=4, min_size=85).detect(photo)
    assert len(picky.faces) == 1
    assert [(s.problem, s.limit) for s in picky.skipped] == [(SkipProblem.TOO_SMALL, 85)]
    assert picky.skipped[0].face.width < 85
    words = texts.skipped_face(picky.skipped[0])
    assert f"A face {picky.skipped[0].face.width:.0f} px wide is too small" in words
    assert "at least 85 px" in words


def test_cat_has_no_face(detector: FaceDetector) -> None:
    found = detector.detect(Image.fromarray(data.chelsea()))
    assert found.faces == [] and found.skipped == []


def test_large_photo_is_detected_on_a_smaller_copy(
    detector: FaceDetector, astronaut: Image.Image
) -> None:
    small = detector.detect(astronaut).faces[0]
    big = detector.detect(astronaut.resize((3000, 3000), Image.Resampling.LANCZOS)).faces
    assert len(big) == 1
    factor = 3000 / 512
    assert np.abs(np.array(big[0].box) / factor - np.array(small.box)).max() < 12
    assert np.abs(key_points(big[0].landmarks) / factor - key_points(small.landmarks)).max() < 3


class Recording:
    """A backend that notes the size of every image it is given, and passes it on."""

    def __init__(self, backend: DlibBackend) -> None:
        self.backend = backend
        self.name, self.smallest_face, self.reach = "recording", 80, backend.reach
        self.seen: list[tuple[str, tuple[int, int]]] = []

    def boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        self.seen.append(("boxes", image.shape[:2]))
        return self.backend.boxes(image)

    def landmarks(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        self.seen.append(("landmarks", image.shape[:2]))
        return self.backend.landmarks(image, boxes)


@pytest.mark.parametrize(
    ("size", "copy"),
    [
        ((4032, 3024), (600, 800)),  # a phone photo: at most 800 px long
        ((512, 512), (640, 640)),  # small: enlarged so a 64 px face reaches dlib's 80 px
        ((1000, 750), (600, 800)),
    ],
)
def test_detection_runs_on_a_small_copy_and_landmarks_on_crops(
    dlib_backend: DlibBackend,
    astronaut: Image.Image,
    size: tuple[int, int],
    copy: tuple[int, int],
) -> None:
    photo = Image.new("RGB", size, (90, 90, 100))
    photo.paste(astronaut.resize((size[1] * 9 // 10,) * 2), (size[0] // 10, size[1] // 20))
    recording = Recording(dlib_backend)
    found = FaceDetector(recording, max_faces=4, min_size=64).detect(photo).faces
    assert len(found) == 1
    assert recording.seen[0] == ("boxes", copy)
    (kind, (height, width)), *_ = recording.seen[1:]
    x0, y0, x1, y1 = found[0].box
    side = max(x1 - x0, y1 - y0)
    assert kind == "landmarks" and max(width, height) <= 2 * side + 2
    # Landmarks from the crop are those from the whole photo, in the photo's pixels.
    (whole,) = dlib_backend.landmarks(np.asarray(photo), [found[0].box])
    assert np.array_equal(found[0].landmarks, whole)


def full_size_detection(backend: DlibBackend, photo: Image.Image) -> list[np.ndarray]:
    """Detection as it was before it ran on small copies, as the reference: boxes on a copy of
    up to 2 MP (enlarged so a 64 px face reaches dlib's 80 px), landmarks on the whole photo."""
    scale = min(80 / 64, math.sqrt(2_000_000 / (photo.width * photo.height)))
    size = (round(photo.width * scale), round(photo.height * scale))
    small = np.asarray(photo.resize(size, Image.Resampling.BILINEAR))
    boxes = [(x0 / scale, y0 / scale, x1 / scale, y1 / scale) for (x0, y0, x1, y1), _ in
             backend.boxes(small)]  # fmt: skip
    return backend.landmarks(np.asarray(photo), boxes)


@pytest.fixture(scope="module")
def bench_photos() -> dict[str, Image.Image]:
    return {name: decode_image(data, LimitsSettings()) for name, data in sample_photos().items()}


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("astronaut.jpg", 1.0),
        ("two-faces.jpg", 1.0),
        ("phone.jpg", 2400 / 512),
        ("selfie.jpg", 3024 / 210),
    ],
)
def test_landmarks_match_those_of_the_full_size_detection(
    dlib_backend: DlibBackend, bench_photos: dict[str, Image.Image], name: str, detail: float
) -> None:
    """Eye centres and mouth corners (what alignment uses) within one pixel of the picture's
    own detail of where the full-size detection put them.

    The phone photo and the selfie are the astronaut enlarged 4.7 and 14.4 times. Their boxes
    from the small copy differ by a few per cent, and dlib's landmarks follow its box: moving
    the box by 1 % or resizing it by 2 % moves these points by up to 3 and 4 photo pixels.
    """
    photo = bench_photos[name]
    found = FaceDetector(dlib_backend, max_faces=4, min_size=64).detect(photo).faces
    reference = full_size_detection(dlib_backend, photo)
    assert len(found) == len(reference) >= 1
    for face in found:
        points = key_points(face.landmarks)
        nearest = min(np.abs(key_points(marks) - points).max() for marks in reference)
        assert nearest <= detail


def test_face_turned_by_exif_is_found_after_decoding(
    detector: FaceDetector, astronaut: Image.Image
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned clockwise: "rotate 90 degrees anticlockwise to display"
    out = io.BytesIO()
    astronaut.transpose(Image.Transpose.ROTATE_270).save(out, "JPEG", quality=92, exif=exif)
    stored = Image.open(io.BytesIO(out.getvalue())).convert("RGB")
    assert detector.detect(stored).faces == []  # as the file stores it, the HOG sees no face
    photo = decode_image(out.getvalue(), LimitsSettings())
    assert len(detector.detect(photo).faces) == 1


def test_dlib_is_chosen_by_name() -> None:
    detector = make_detector(FacesSettings(backend="dlib", max_faces=2, min_size=80))
    assert isinstance(detector.backend, DlibBackend)
    assert (detector.max_faces, detector.min_size) == (2, 80)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub, and every proxy pointed at a closed port on 127.0.0.1.

    Downloads then fail at once, and nothing leaves the machine.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        monkeypatch.setenv(name.upper(), f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_auto_falls_back_to_dlib_without_weights(
    offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="inference.faces"):
        detector = make_detector(FacesSettings(backend="auto"))
    assert isinstance(detector.backend, DlibBackend)
    assert "face-alignment is unavailable" in caplog.text
    assert "face backend: dlib" in caplog.text
    assert not offline.exists() or list(offline.iterdir()) == []  # no partial file left


def test_face_alignment_without_weights_says_why(offline: Path) -> None:
    with pytest.raises(FaceBackendError) as info:
        make_backend("face-alignment", "cpu")
    message = str(info.value)
    assert str(offline) in message
    assert "could not be downloaded" in message
    assert 'faces.backend = "dlib"' in message


def test_face_alignment_loads_from_the_hub_cache(offline: Path) -> None:
    """Untrained weights in the cache stand in for the real ones (no download here).

    Only detection runs: FAN's landmark pass takes over ten seconds on a CI CPU.
    """
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    offline.mkdir(parents=True)
    fan_url, sfd_url = fan_weight_urls()
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), offline / Path(urlparse(fan_url).path).name)
    torch.save(s3fd().state_dict(), offline / Path(urlparse(sfd_url).path).name)

    backend = make_backend("auto", "cpu")
    assert isinstance(backend, FanBackend)
    assert backend.device == "cpu"
    image = np.asarray(Image.fromarray(data.astronaut()).resize((96, 96)))
    found = backend.boxes(image)
    assert found
    for (x0, y0, x1, y1), score in found:
        assert -96 < x0 < x1 < 192 and -96 < y0 < y1 < 192
        assert 0.0 <= score <= 1.0


def test_face_alignment_leaves_cudnn_autotuning_as_it_found_it(offline: Path) -> None:
    """face-alignment turns cuDNN autotuning on for the whole process when its device is CUDA
    (here it then fails: this torch has no CUDA); the inference thread's choice stays."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    offline.mkdir(parents=True)
    fan_url, sfd_url = fan_weight_urls()
    torch.save(FAN(4).state_dict(), offline / Path(urlparse(fan_url).path).name)
    torch.save(s3fd().state_dict(), offline / Path(urlparse(sfd_url).path).name)
    before = torch.backends.cudnn.benchmark
    try:
        for chosen in (False, True):
            torch.backends.cudnn.benchmark = chosen
            with pytest.raises(FaceBackendError, match="cuda"):
                make_backend("face-alignment", "cuda")
            assert torch.backends.cudnn.benchmark is chosen
    finally:
        torch.backends.cudnn.benchmark = before


def test_faces_command_draws_and_writes_crops(tmp_path: Path, astronaut: Image.Image) -> None:
    photo = tmp_path / "astronaut.jpg"
    astronaut.save(photo, quality=95)
    out = tmp_path / "out" / "seen.jpg"
    args = ["faces", str(photo), "-o", str(out), "--backend", "dlib", "--size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "seen-face1.png").size == (64, 64)
    assert not (tmp_path / "out" / "seen-face2.png").exists()
    drawn = np.asarray(Image.open(out).convert("RGB"), float)
    assert drawn.shape == (512, 512, 3)
    # The face's box and landmarks are drawn over it; the far corner is the photo.
    assert (
        np.abs(drawn[70:180, 170:280] - np.asarray(astronaut, float)[70:180, 170:280]).max() > 100
    )
    assert np.abs(drawn[480:, :30] - np.asarray(astronaut, float)[480:, :30]).mean() < 5
    assert "backend: dlib" in result.output


def test_faces_command_refuses_what_is_not_a_photo(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a selfie\n")
    result = CliRunner().invoke(app, ["faces", str(text), "-o", str(tmp_path / "x.jpg")])
    assert result.exit_code == 1
    assert "not an image" in result.output
    assert not (tmp_path / "x.jpg").exists()


def test_bench_faces_measures_the_backends_that_load(
    offline: Path, tmp_path: Path, astronaut: Image.Image
) -> None:
    photo = tmp_path / "astronaut.png"
    astronaut.save(photo)
    args = ["bench", "faces", str(photo), "--runs", "1", "--size", "64"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "astronaut.png" in line)
    assert "dlib (cpu)" in row and " ms " in row
    assert "face-alignment is unavailable" in result.output
