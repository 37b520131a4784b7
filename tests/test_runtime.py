"""The runtimes behind models.runtime: OpenVINO gives PyTorch's pixels and codes, and says in
one line what is missing when it cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bots.config import Settings
from inference.pipeline import Toonifier
from inference.runtime import Networks, RuntimeUnavailable, load_networks, tune_backends
from tests.support.service_fixtures import face_jpeg
from tests.support.tiny_encoders import tiny_encoder
from tests.support.tiny_toonify import tiny_face_generator, write_tiny_models

CPU = torch.device("cpu")
TOLERANCE = 1e-3  # in the [-1, 1] pixel range, and in W+ units


def test_openvino_renders_and_encodes_what_pytorch_does() -> None:
    generator = tiny_face_generator(resolution=32)
    encoder = tiny_encoder("e4e", n_styles=generator.num_ws, w_dim=generator.w_dim)
    converted = load_networks("openvino", CPU, torch.float32, [generator], [encoder])
    eager = Networks()
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(3))
    ws = generator.mapping(z, truncation_psi=0.7)  # a batch of two: one face per call
    expected = eager.synthesis(generator, ws, torch.float32)
    rendered = converted.synthesis(generator, ws, torch.float32)
    assert rendered.shape == expected.shape
    assert (rendered - expected).abs().max() < TOLERANCE
    assert expected.abs().mean() > 0.05  # a real picture, not a blank both would agree on
    faces = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1
    codes = converted.encode(encoder, faces)  # resized to the encoder's 64 px on the way
    assert (codes - eager.encode(encoder, faces)).abs().max() < TOLERANCE


def test_pytorch_renders_and_encodes_without_autograd() -> None:
    """Inference tensors: no autograd records or version counters were kept for them."""
    generator = tiny_face_generator(resolution=16)
    encoder = tiny_encoder("e4e", n_styles=generator.num_ws, w_dim=generator.w_dim)
    ws = generator.w_avg.expand(1, generator.num_ws, -1)
    assert Networks().synthesis(generator, ws, torch.float32).is_inference()
    assert Networks().encode(encoder, torch.zeros(1, 3, 64, 64)).is_inference()


def test_a_toonifier_on_openvino_draws_the_toon_that_pytorch_draws(tmp_path: Path) -> None:
    config = write_tiny_models(tmp_path / "models")
    eager = Toonifier.from_config(Settings(**config))
    config["models"]["runtime"] = "openvino"
    converted = Toonifier.from_config(Settings(**config))
    prepared = eager.prepare(face_jpeg())
    (latents,) = eager.invert([prepared])
    expected = np.asarray(eager.finish(prepared, latents, "toon", 8).faces[0], dtype=int)
    toon = np.asarray(converted.finish(prepared, latents, "toon", 8).faces[0], dtype=int)
    assert np.abs(toon - expected).max() <= 1  # rounding of values within 1e-3


def test_openvino_without_its_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(RuntimeUnavailable) as missing:
        load_networks("openvino", CPU, torch.float32, [], [])
    assert "pip install" in str(missing.value)
    assert "\n" not in str(missing.value)


@pytest.mark.parametrize(
    ("device", "dtype", "fix"),
    [
        (torch.device("cuda"), torch.float32, 'models.runtime = "torch"'),
        (CPU, torch.bfloat16, 'models.dtype = "float32"'),
    ],
)
def test_openvino_refuses_what_it_cannot_run(
    device: torch.device, dtype: torch.dtype, fix: str
) -> None:
    with pytest.raises(RuntimeUnavailable, match=fix):
        load_networks("openvino", device, dtype, [], [])


def test_only_a_cuda_inference_process_autotunes_cudnn() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        tune_backends(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
        tune_backends(CPU)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before
