from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from typer.testing import CliRunner

import inference.pipeline as pipeline
from bots.cli import app
from bots.config import Settings
from inference.align import AlignedFace
from inference.errors import Cancelled
from inference.images import decode_image, encode_jpeg
from inference.invert import PerceptualModelMissingError
from inference.pipeline import BadChoice, Latents, NonFinite, Toonifier
from inference.prepare import NoFace
from inference.settings import LimitsSettings
from inference.stages import Stage
from tests.support.tiny_toonify import write_tiny_models
from tests.test_invert import FakeVgg16

STEPS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models = tmp_path_factory.mktemp("models")
    return write_tiny_models(models, steps=STEPS, styles=("toon", "anime"))


@pytest.fixture(scope="module")
def toonifier(config: dict[str, Any]) -> Toonifier:
    return Toonifier.from_config(Settings(**config))


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return jpeg(data.astronaut())


def face_masks(face: AlignedFace, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(centre of the face crop, everything two JPEG blocks clear of the crop) in the photo."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    local = face.to_crop(points).reshape(height, width, 2) / face.image.width
    inside = ((local > 0.3) & (local < 0.7)).all(axis=-1)
    x0, y0 = face.quad.min(axis=0) - 32
    x1, y1 = face.quad.max(axis=0) + 32
    outside = (xs < x0) | (xs > x1) | (ys < y0) | (ys > y1)
    return inside, outside


def test_photo_to_jpeg_changes_the_face_and_nothing_else(
    toonifier: Toonifier, astronaut: bytes
) -> None:
    events: list[tuple[Stage, int, int]] = []
    result = toonifier.toonify(astronaut, progress=lambda *e: events.append(e))
    original = decode_image(astronaut, LimitsSettings())
    output = decode_image(encode_jpeg(result.photo), LimitsSettings())
    # The same encoder on the untouched photo: identical wherever whole JPEG blocks are equal.
    reference = decode_image(encode_jpeg(original), LimitsSettings())
    assert output.size == original.size == (512, 512)
    assert len(result.faces) == 1
    assert result.faces[0].size == (32, 32)
    assert (result.style, result.strength, result.skipped) == ("toon", 16, [])
    assert result.latents.ws.shape == (1, 8, 32)
    assert set(result.timings) == {"decode", "detect", "align", "invert", "render", "paste"}
    assert [e for e in events if e[0] == Stage.INVERT][-1] == (Stage.INVERT, STEPS, STEPS)
    assert events[0][0] == Stage.DETECT
    assert events[-1] == (Stage.RENDER, 1, 1)

    face = toonifier.prepare(astronaut).faces[0]
    inside, outside = face_masks(face, original.size)
    diff = np.abs(np.asarray(output, np.float32) - np.asarray(reference, np.float32)).max(-1)
    assert inside.sum() > 1000 and outside.sum() > 100_000
    assert diff[inside].mean() > 20, "the face was not replaced"
    assert diff[outside].max() == 0, "pixels away from the face changed"


def test_rerender_changes_strength_and_style_without_inverting(
    toonifier: Toonifier, astronaut: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    inversions: list[int] = []
    real_invert: Callable[..., Any] = pipeline.invert

    def counting_invert(*args: Any, **kwargs: Any) -> Any:
        inversions.append(kwargs["steps"])
        return real_invert(*args, **kwargs)

    monkeypatch.setattr(pipeline, "invert", counting_invert)
    prepared = toonifier.prepare(astronaut)
    (latents,) = toonifier.invert([prepared])
    first = toonifier.finish(prepared, latents)
    assert inversions == [STEPS]

    stronger = toonifier.rerender(first, "toon", 32)
    weaker = toonifier.rerender(stronger, "toon", 8)
    anime = toonifier.rerender(weaker, "anime", 16)
    again = toonifier.rerender(anime, "toon", 16)
    assert inversions == [STEPS], "re-rendering must not invert again"
    assert np.array_equal(np.asarray(again.photo), np.asarray(first.photo))
    for other in (stronger, weaker, anime):
        assert not np.array_equal(np.asarray(other.faces[0]), np.asarray(first.faces[0]))
        assert other.source is prepared and other.latents is latents
    assert (stronger.strength, weaker.strength, anime.style) == (32, 8, "anime")
    assert set(stronger.timings) == set(first.timings)


def test_jobs_batched_together_get_their_own_latents(
    toonifier: Toonifier, astronaut: bytes
) -> None:
    mirrored = jpeg(np.ascontiguousarray(data.astronaut()[:, ::-1]))
    jobs = [toonifier.prepare(astronaut), toonifier.prepare(mirrored)]
    together = toonifier.invert(jobs)
    assert [latents.ws.shape[0] for latents in together] == [1, 1]
    for job, batched in zip(jobs, together, strict=True):
        (alone,) = toonifier.invert([job])
        torch.testing.assert_close(alone.ws, batched.ws, atol=1e-4, rtol=0)
        assert job.timings["invert"] > 0
    assert (together[0].ws - together[1].ws).abs().max() > 0.01


def tensor_bytes(toonifier: Toonifier) -> int:
    """Bytes of all distinct tensors the FFHQ model and every blend hold."""
    models = [toonifier.face, *(m for blends in toonifier.blends.values() for m in blends.values())]
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for model in models
        for t in [*model.parameters(), *model.buffers()]
    }
    return sum(storages.values())


@pytest.fixture(scope="module")
def half_toonifier(config: dict[str, Any]) -> Toonifier:
    half = {**config, "models": {**config["models"], "dtype": "float16"}}
    return Toonifier.from_config(Settings(**half))


def test_float16_blends_share_the_float32_tensors_and_render_close(
    toonifier: Toonifier, half_toonifier: Toonifier, astronaut: bytes
) -> None:
    assert half_toonifier.dtype == torch.float16
    assert tensor_bytes(half_toonifier) == tensor_bytes(toonifier)
    prepared = toonifier.prepare(astronaut)
    (latents,) = toonifier.invert([prepared])
    full = toonifier.finish(prepared, latents)
    half = half_toonifier.finish(prepared, latents)
    difference = np.abs(np.asarray(full.faces[0], float) - np.asarray(half.faces[0], float))
    assert difference.max() <= 2


def overflowing(config: dict[str, Any], dtype: str) -> Toonifier:
    """A Toonifier whose last ToRGB styles are ~1e6: finite in float32, past float16's range."""
    settings = {**config, "models": {**config["models"], "dtype": dtype}}
    toonifier = Toonifier.from_config(Settings(**settings))
    with torch.no_grad():
        toonifier.face.to_rgbs[-1].conv.modulation.bias.mul_(1e6)  # shared by every blend
    return toonifier


def test_a_render_that_overflows_float16_is_done_again_in_float32(
    config: dict[str, Any], astronaut: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    full, half = overflowing(config, "float32"), overflowing(config, "float16")
    prepared = full.prepare(astronaut)
    (latents,) = full.invert([prepared])
    expected = full.finish(prepared, latents)
    with caplog.at_level(logging.WARNING, logger="inference.pipeline"):
        got = half.finish(prepared, latents)
    assert "rendering in float32" in caplog.text
    assert np.array_equal(np.asarray(got.faces[0]), np.asarray(expected.faces[0]))


def test_non_finite_codes_or_images_fail_instead_of_becoming_pixels(
    config: dict[str, Any], toonifier: Toonifier, astronaut: bytes
) -> None:
    prepared = toonifier.prepare(astronaut)
    (latents,) = toonifier.invert([prepared])
    broken = Latents(ws=latents.ws.clone())
    broken.ws[0, 3, 5] = float("nan")
    with pytest.raises(NonFinite, match="latent codes"):
        toonifier.finish(prepared, broken)
    infinite = Toonifier.from_config(Settings(**config))
    with torch.no_grad():
        infinite.face.to_rgbs[-1].bias.fill_(float("inf"))
    with pytest.raises(NonFinite, match="rendered face"):
        infinite.finish(prepared, latents)


def test_start_up_turns_cudnn_autotuning_off(config: dict[str, Any]) -> None:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as face-alignment leaves it on CUDA
    try:
        Toonifier.from_config(Settings(**config))
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_a_photo_without_a_face_says_so(toonifier: Toonifier) -> None:
    with pytest.raises(NoFace) as info:
        toonifier.prepare(jpeg(data.chelsea()))
    assert info.value.skipped == []


def test_cancel_and_unknown_choices(toonifier: Toonifier, astronaut: bytes) -> None:
    with pytest.raises(Cancelled):
        toonifier.toonify(astronaut, should_stop=lambda: True)
    with pytest.raises(BadChoice) as unknown:
        toonifier.toonify(astronaut, style="cubist")
    assert (unknown.value.style, unknown.value.strength) == ("cubist", None)
    with pytest.raises(BadChoice) as strength:
        toonifier.pick("toon", 64)
    assert (strength.value.style, strength.value.strength) == ("toon", 64)
    assert toonifier.pick(None, None) == ("toon", 16)
    assert toonifier.styles["anime"].label == "Anime"


def write_toml(config: dict[str, Any], path: Path) -> Path:
    """The tiny config as a TOML file (strings, ints and lists of ints only)."""

    def value(v: Any) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v)

    lines = [f"style = {value(config['style'])}"]
    for section in ("models", "faces", "invert"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in config[section].items()]
    for name, style in config["styles"].items():
        lines.append(f"[styles.{name}]")
        lines += [f"{k} = {value(v)}" for k, v in style.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("options", "size"),
    [([], (512, 512)), (["--side-by-side"], (1024, 512)), (["--faces-only"], (32, 32))],
)
def test_photo_command(
    tmp_path: Path,
    config: dict[str, Any],
    astronaut: bytes,
    options: list[str],
    size: tuple[int, int],
) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(astronaut)
    target = tmp_path / "out.jpg"
    toml = write_toml(config, tmp_path / "config.toml")
    command = ["--config", str(toml), "photo", str(source), "-o", str(target), "--steps", "2"]
    result = CliRunner().invoke(app, [*command, "--strength", "8", *options])
    assert result.exit_code == 0, result.output
    assert Image.open(target).size == size
    assert "toon strength 8" in result.output
    assert "invert" in result.output and "(2 steps" in result.output
    assert "encode" in result.output


def test_photo_command_explains_a_missing_face(tmp_path: Path, config: dict[str, Any]) -> None:
    source = tmp_path / "cat.jpg"
    source.write_bytes(jpeg(data.chelsea()))
    toml = write_toml(config, tmp_path / "config.toml")
    command = ["--config", str(toml), "photo", str(source), "-o", str(tmp_path / "out.jpg")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    assert "couldn't find a face" in result.output


def test_photo_command_names_the_strengths_a_style_has(
    tmp_path: Path, config: dict[str, Any], astronaut: bytes
) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(astronaut)
    toml = write_toml(config, tmp_path / "config.toml")
    command = ["--config", str(toml), "photo", str(source), "-o", str(tmp_path / "out.jpg")]
    result = CliRunner().invoke(app, [*command, "--strength", "64"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "Toon has no strength 64. Pick one of 8, 16, 32." in result.output


def test_bench_pipeline_times_every_stage_for_one_and_four_faces(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    toml = write_toml(config, tmp_path / "config.toml")
    command = ["--config", str(toml), "bench", "pipeline", "--resolution", "32", "--steps", "2"]
    result = CliRunner().invoke(app, [*command, "--runs", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "astronaut" in line]
    assert len(rows) == 2
    assert [row.split("│")[2].strip() for row in rows] == ["1", "4"]
    assert all(row.count(" ms") == 7 for row in rows), rows


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_perceptual_loss_needs_vgg16_in_the_models_dir(
    tmp_path: Path, config: dict[str, Any], astronaut: bytes
) -> None:
    perceptual = {**config, "invert": {"loss": "perceptual", "steps": 2}}
    perceptual["models"] = {**config["models"], "perceptual": str(tmp_path / "vgg16.pt")}
    with pytest.raises(PerceptualModelMissingError, match="fetch-vgg16"):
        Toonifier.from_config(Settings(**perceptual))
    torch.jit.save(torch.jit.script(FakeVgg16()), str(tmp_path / "vgg16.pt"))
    result = Toonifier.from_config(Settings(**perceptual)).toonify(astronaut)
    assert result.photo.size == (512, 512)
