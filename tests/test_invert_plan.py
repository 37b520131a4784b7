"""invert.method = "auto" and the per-face estimate `toonify run` logs at start-up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from bots.config import Settings
from inference.encoder_checkpoints import save_encoder
from inference.invert import w_stats
from inference.invert_plan import log_expected_speed, resolve_method
from inference.pipeline import Toonifier
from inference.settings import InvertSettings
from tests.support.tiny_encoders import tiny_encoder
from tests.support.tiny_toonify import tiny_face_generator, write_tiny_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("device", "has_encoder", "method"),
    [
        (CPU, False, "optimize"),
        (CPU, True, "encoder"),
        (CUDA, False, "optimize"),
        (CUDA, True, "encoder+optimize"),
        (torch.device("mps"), True, "encoder+optimize"),
    ],
)
def test_auto_picks_by_device_and_encoder_presence(
    device: torch.device, has_encoder: bool, method: str
) -> None:
    assert resolve_method(InvertSettings(), device, has_encoder) == method


@pytest.mark.parametrize("method", ["optimize", "encoder", "encoder+optimize"])
def test_a_configured_method_is_kept_on_any_device(method: str) -> None:
    settings = InvertSettings(method=method)
    for device in (CPU, CUDA):
        for has_encoder in (False, True):
            assert resolve_method(settings, device, has_encoder) == method


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return write_tiny_models(tmp_path / "models", steps=3)


def add_encoder(config: dict[str, Any]) -> None:
    face = tiny_face_generator()
    encoder = tiny_encoder(
        "e4e", n_styles=face.num_ws, w_dim=face.w_dim, input_size=32, latent_avg=w_stats(face).mean
    )
    save_encoder(encoder, Path(config["models"]["dir"]) / "e4e.safetensors", source="test")


def test_auto_on_the_cpu_uses_the_encoder_file_when_it_is_there(config: dict[str, Any]) -> None:
    without = Toonifier.from_config(Settings(**config))
    assert without.encoder is None and without.steps == 3
    add_encoder(config)
    with_encoder = Toonifier.from_config(Settings(**config))
    assert with_encoder.encoder is not None and with_encoder.steps == 0


def test_start_up_logs_the_seconds_per_face_and_warns_when_a_cpu_optimises(
    config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(**config)
    caplog.set_level(logging.INFO, logger="inference.invert_plan")
    estimate = log_expected_speed(Toonifier.from_config(settings), settings.invert)
    assert estimate.method == "optimize" and estimate.steps == 3
    assert estimate.step_seconds > 0 and estimate.render_seconds > 0
    assert estimate.seconds == pytest.approx(3 * estimate.step_seconds + estimate.render_seconds)
    info, warning = [r for r in caplog.records if r.name == "inference.invert_plan"]
    assert "invert.method optimize on cpu" in info.message and "per face" in info.message
    assert warning.levelno == logging.WARNING
    assert "3 optimisation steps per face on the CPU" in warning.message
    assert "toonify models import e4e_ffhq_encode.pt --name e4e" in warning.message


def test_the_encoder_path_is_timed_without_a_warning(
    config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    add_encoder(config)
    settings = Settings(**config)
    caplog.set_level(logging.INFO, logger="inference.invert_plan")
    estimate = log_expected_speed(Toonifier.from_config(settings), settings.invert)
    assert estimate.method == "encoder" and estimate.steps == 0
    assert estimate.encode_seconds > 0 and estimate.step_seconds == 0
    [info] = [r for r in caplog.records if r.name == "inference.invert_plan"]
    assert info.levelno == logging.INFO
    assert "invert.method encoder on cpu" in info.message
