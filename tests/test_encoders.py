from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from bots.cli import app
from inference.architecture import Architecture
from inference.checkpoints import load_generator
from inference.encoder_checkpoints import (
    decoder_generator,
    detect_kind,
    load_encoder,
    read_encoder_checkpoint,
    save_encoder,
)
from inference.encoders import (
    EncoderArch,
    EncoderFormatError,
    EncoderKind,
    FaceEncoder,
    build_encoder,
    infer_arch,
)
from inference.settings import StyleSettings
from inference.stylegan2 import Generator
from tests.support.tiny_encoders import tiny_encoder, write_public_checkpoint
from tests.support.tiny_models import tiny_generator


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Narrow models are fastest on one thread; two spin against each other on a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit_params(i: int, d: int) -> int:
    """One IR-SE unit: BN(i), 3x3 i->d, PReLU(d), 3x3 d->d, BN(d), SE(d/16), conv shortcut."""
    shortcut = i * d + 2 * d if i != d else 0
    return 2 * i + 9 * i * d + d + 9 * d * d + 2 * d + 2 * d * (d // 16) + shortcut


def _expected_full_params() -> int:
    stem = 3 * 64 * 9 + 2 * 64 + 64
    units, i = 0, 64
    for d, n in ((64, 3), (128, 4), (256, 14), (512, 3)):
        units += _unit_params(i, d) + (n - 1) * _unit_params(d, d)
        i = d
    conv, linear = 512 * 512 * 9 + 512, 512 * 512 + 512
    # 3 coarse blocks read 16x16 (4 convs), 4 medium 32x32 (5), 11 fine 64x64 (6).
    styles = 3 * (4 * conv + linear) + 4 * (5 * conv + linear) + 11 * (6 * conv + linear)
    laterals = (256 * 512 + 512) + (128 * 512 + 512)
    return stem + units + styles + laterals


def test_full_size_architecture_matches_the_public_checkpoints() -> None:
    with torch.device("meta"):
        model = FaceEncoder(EncoderArch())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == _expected_full_params() == 267_136_704
    expected = {
        "encoder.input_layer.0.weight": (64, 3, 3, 3),
        "encoder.input_layer.1.running_var": (64,),
        "encoder.input_layer.2.weight": (64,),
        "encoder.body.0.res_layer.1.weight": (64, 64, 3, 3),
        "encoder.body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
        "encoder.body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
        "encoder.body.3.shortcut_layer.1.running_mean": (128,),
        "encoder.body.7.shortcut_layer.0.weight": (256, 128, 1, 1),
        "encoder.body.21.shortcut_layer.0.weight": (512, 256, 1, 1),
        "encoder.body.23.res_layer.4.num_batches_tracked": (),
        "encoder.body.23.res_layer.5.fc2.weight": (512, 32, 1, 1),
        "encoder.styles.0.convs.6.weight": (512, 512, 3, 3),
        "encoder.styles.6.convs.8.bias": (512,),
        "encoder.styles.17.convs.10.weight": (512, 512, 3, 3),
        "encoder.styles.17.linear.weight": (512, 512),
        "encoder.latlayer1.weight": (512, 256, 1, 1),
        "encoder.latlayer2.bias": (512,),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    # Identity shortcuts carry no tensors; the stages start at units 3, 7 and 21.
    shortcuts = sorted(int(k.split(".")[2]) for k in shapes if "shortcut_layer.0.weight" in k)
    assert shortcuts == [3, 7, 21]
    assert "encoder.body.24.res_layer.0.weight" not in shapes
    assert "encoder.styles.0.convs.8.weight" not in shapes
    assert "encoder.styles.7.convs.10.weight" in shapes
    assert "encoder.styles.18.linear.weight" not in shapes
    assert len([k for k in shapes if k.endswith("num_batches_tracked")]) == 1 + 24 * 2 + 3
    # The pyramid lines up (taps after units 6, 20, 23) and gives 18 codes on meta tensors.
    with torch.device("meta"):
        ws = model(torch.empty(2, 3, 256, 256))
    assert ws.shape == (2, 18, 512)
    state = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()}
    assert infer_arch(state, "e4e") == EncoderArch(kind="e4e")


def test_full_size_matches_the_published_file_size() -> None:
    """psp_ffhq_encode.pt is listed at 1.2 GB: encoder + 1024 px rosinality decoder, float32."""
    with torch.device("meta"):
        encoder = FaceEncoder(EncoderArch()).state_dict()
        decoder = Generator(Architecture(1024)).state_dict()
    size = 4 * sum(t.numel() for t in [*encoder.values(), *decoder.values()])
    assert 1.15e9 <= size < 1.25e9, size


def _narrow(kind: EncoderKind = "psp", latent_avg: torch.Tensor | None = None) -> FaceEncoder:
    return tiny_encoder(kind, latent_avg=latent_avg)


def test_arch_and_weights_are_read_back_from_tensors() -> None:
    model = _narrow("e4e")
    state = model.encoder.state_dict()
    rebuilt = build_encoder(state, "e4e")
    assert rebuilt.arch == model.arch
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(EncoderFormatError, match="missing"):
        build_encoder({k: v for k, v in state.items() if not k.startswith("styles.")}, "psp")


def test_e4e_adds_each_delta_to_the_first_code() -> None:
    psp, e4e = _narrow("psp"), _narrow("e4e")
    e4e.load_state_dict(psp.state_dict())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes, ws = psp(x), e4e(x)
    assert torch.allclose(ws[:, 0], codes[:, 0])
    assert torch.allclose(ws[:, 1:], codes[:, 1:] + codes[:, :1], atol=1e-6)


def test_latent_avg_is_added_in_any_stored_shape() -> None:
    avg = torch.randn(512)
    plain, shifted, rows = _narrow(), _narrow(latent_avg=avg), _narrow(latent_avg=avg.repeat(18, 1))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(shifted(x) - plain(x), avg.expand(1, 18, 512), atol=1e-5)
        assert torch.equal(rows(x), shifted(x))
    with pytest.raises(EncoderFormatError, match="latent_avg"):
        _narrow(latent_avg=torch.randn(14, 512))


def _smooth_face(size: int) -> torch.Tensor:
    """The same smooth picture sampled at pixel centres of a size x size grid."""
    t = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([torch.sin(3 * x), torch.cos(2 * y), x * y - 0.5])[None]


def test_input_is_resized_to_the_encoder_size() -> None:
    model = _narrow()
    with torch.no_grad():
        at_size, big = model(_smooth_face(64)), model(_smooth_face(256))
        shifted = model(_smooth_face(256).roll(8, dims=-1))
    assert torch.allclose(big, at_size, atol=3e-4)
    assert not torch.allclose(shifted, at_size, atol=3e-4)


@pytest.mark.parametrize(
    ("opts", "kind"),
    [
        ({"encoder_type": "GradualStyleEncoder", "start_from_latent_avg": True}, "psp"),
        ({"encoder_type": "Encoder4Editing"}, "e4e"),
        ({"progressive_steps": [0, 20000], "delta_norm_lambda": 2e-4}, "e4e"),
    ],
)
def test_kind_comes_from_the_training_options(opts: dict[str, object], kind: str) -> None:
    assert detect_kind(opts) == kind


def test_unsupported_or_unknown_encoders_are_named() -> None:
    with pytest.raises(EncoderFormatError, match="BackboneEncoderUsingLastLayerIntoW"):
        detect_kind({"encoder_type": "BackboneEncoderUsingLastLayerIntoW"})
    with pytest.raises(EncoderFormatError, match="which encoder"):
        detect_kind({"dataset_type": "ffhq_encode"})


@pytest.mark.parametrize(("kind", "namespace"), [("psp", True), ("e4e", False)])
def test_public_checkpoint_loads_with_the_same_answers(
    tmp_path: Path, kind: str, namespace: bool
) -> None:
    model = _narrow(kind, latent_avg=torch.randn(18, 512))
    generator = tiny_generator()
    path = write_public_checkpoint(
        tmp_path / "enc.pt", model, namespace=namespace, decoder=generator.state_dict()
    )
    ckpt = read_encoder_checkpoint(path)
    assert ckpt.encoder.arch == model.arch
    assert ckpt.opts["encoder_type"] in ("GradualStyleEncoder", "Encoder4Editing")
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ws = load_encoder(path)(x)
        assert ws.shape == (4, 18, 512)
        assert torch.equal(ws, model(x))
        # The embedded decoder is the generator it was trained with, tensor for tensor.
        decoder = decoder_generator(ckpt, "enc.pt")
        probe = generator.mapping(torch.randn(2, generator.w_dim))
        expected = generator.synthesis(probe, noise_mode="const")
        assert torch.equal(decoder.synthesis(probe, noise_mode="const"), expected)


def test_checkpoint_without_latent_avg_predicts_ws_directly(tmp_path: Path) -> None:
    model = _narrow("psp")
    loaded = load_encoder(write_public_checkpoint(tmp_path / "enc.pt", model))
    assert loaded.latent_avg is None
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_canonical_file_round_trips(tmp_path: Path) -> None:
    model = _narrow("e4e", latent_avg=torch.randn(512))
    save_encoder(model, tmp_path / "e4e.safetensors", source="e4e_ffhq_encode.pt")
    loaded = load_encoder(tmp_path / "e4e.safetensors")
    assert loaded.arch == model.arch
    assert loaded.latent_avg is not None and model.latent_avg is not None
    assert torch.equal(loaded.latent_avg, model.latent_avg)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


def test_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    model = _narrow("psp")
    path = write_public_checkpoint(tmp_path / "enc.pt", model)
    ckpt = torch.load(path, weights_only=False)
    marker = tmp_path / "pwned"
    ckpt["opts"] = _Payload(marker)
    torch.save(ckpt, path)
    with pytest.raises(EncoderFormatError):
        load_encoder(path)
    assert not marker.exists()
    # The file is a real threat: an unrestricted load runs the command.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_psp_style_refuses_blend_options() -> None:
    assert StyleSettings(kind="psp", model="psp_toonify").kind == "psp"
    with pytest.raises(ValidationError, match="strengths: not for a psp style"):
        StyleSettings(kind="psp", model="psp_toonify", strengths=[8, 16], default_strength=8)


def _cli(config: Path, *args: str, lines: bool = False) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output if lines else " ".join(result.output.split())


def test_models_import_recognises_encoder_checkpoints(tmp_path: Path) -> None:
    models = tmp_path / "models"
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{models}"\ndevice = "cpu"\n')
    generator = tiny_generator()
    model = _narrow("e4e", latent_avg=torch.randn(512))
    source = write_public_checkpoint(
        tmp_path / "e4e_ffhq_encode.pt", model, decoder=generator.state_dict()
    )
    code, out = _cli(config, "models", "import", str(source), "--name", "e4e")
    assert code == 0, out
    assert "e4e: e4e encoder (18 codes)" in out and "e4e-decoder: 32 px" in out
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_encoder(models / "e4e.safetensors")(x), model(x))
    decoder = load_generator(models / "e4e-decoder.safetensors")
    ws = generator.mapping(torch.randn(1, generator.w_dim))
    torch.testing.assert_close(
        decoder.synthesis(ws, noise_mode="const"), generator.synthesis(ws, noise_mode="const")
    )
    code, listing = _cli(config, "models", "list", lines=True)
    rows = {row.split("│")[1].strip(): row for row in listing.split("\n") if "│" in row}
    assert code == 0 and set(rows) >= {"e4e", "e4e-decoder"}, listing
    assert "e4e encoder" in rows["e4e"] and "32 px" in rows["e4e-decoder"]
    # The name of the decoder is taken too: a second import under the same name is refused.
    code, out = _cli(config, "models", "import", str(source), "--name", "e4e")
    assert code == 1 and "exists" in out


def test_models_import_names_what_is_wrong_with_an_encoder(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\ndevice = "cpu"\n')
    path = write_public_checkpoint(tmp_path / "w.pt", _narrow("psp"))
    ckpt = torch.load(path, weights_only=False)
    ckpt["opts"].encoder_type = "BackboneEncoderUsingLastLayerIntoW"
    torch.save(ckpt, path)
    code, out = _cli(config, "models", "import", str(path), "--name", "w")
    assert code == 1 and "BackboneEncoderUsingLastLayerIntoW is not supported" in out.replace(
        "'", ""
    )
    # A checkpoint of neither kind keeps the generator reader's explanation.
    torch.save({"state_dict": {"something.weight": torch.zeros(1)}}, path)
    code, out = _cli(config, "models", "import", str(path), "--name", "w")
    assert code == 1 and "no generator in this checkpoint" in out
    assert not (tmp_path / "models" / "w.safetensors").exists()
