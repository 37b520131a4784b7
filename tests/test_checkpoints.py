from __future__ import annotations

import argparse
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from inference.checkpoints import (
    CheckpointError,
    estimate_w_avg,
    generator_from_state_dict,
    load_checkpoint,
    load_generator,
    read_model_info,
    save_generator,
)
from inference.safe_pickle import ARGPARSE_NAMESPACE, UnsafePickleError, restricted_load
from inference.stylegan2 import Generator
from tests.support.tiny_models import (
    marker_src,
    nvlabs_generator,
    persistent_module,
    random_ws,
    render,
    tf_gs,
    tiny_generator,
    write_canonical,
    write_nvlabs,
    write_pickle,
    write_rosinality,
    write_tensorflow,
)

Writer = Callable[[Generator, Path], Path]
FORMATS: list[tuple[str, str, Writer]] = [
    ("rosinality", "g.pt", write_rosinality),
    ("nvlabs", "network-snapshot.pkl", write_nvlabs),
    ("tensorflow", "stylegan2-config-f.pkl", write_tensorflow),
    ("canonical", "g.safetensors", write_canonical),
]


@pytest.mark.parametrize(("fmt", "filename", "write"), FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize(("resolution", "multiplier"), [(32, 1), (64, 2)])
def test_every_format_renders_the_same_image(
    tmp_path: Path, fmt: str, filename: str, write: Writer, resolution: int, multiplier: int
) -> None:
    source = tiny_generator(resolution, multiplier, seed=resolution)
    ws = random_ws(source, batch=2)
    expected = render(source, ws)
    loaded = load_checkpoint(write(source, tmp_path / filename))
    generator = loaded.generator
    assert loaded.format == fmt
    assert not generator.training
    assert not any(p.requires_grad for p in generator.parameters())
    assert generator.arch.channels(resolution) == source.arch.channels(resolution)
    assert (generator.resolution, generator.num_ws) == (source.resolution, source.num_ws)
    assert torch.allclose(generator.w_avg, source.w_avg, atol=1e-6)
    z = torch.randn(3, source.z_dim)
    assert torch.allclose(generator.mapping(z), source.mapping(z), atol=1e-5)
    assert torch.allclose(render(generator, ws), expected, atol=1e-5)


def test_rosinality_training_checkpoint_without_latent_avg(tmp_path: Path) -> None:
    source = tiny_generator(32)
    path = write_rosinality(source, tmp_path / "100000.pt", latent_avg=False, training=True)
    generator = load_generator(path)
    # g_ema, not the training copy `g`; w_avg estimated from the mapping network.
    ws = random_ws(source)
    assert torch.allclose(render(generator, ws), render(source, ws), atol=1e-5)
    assert torch.allclose(generator.w_avg, estimate_w_avg(source), atol=1e-6)
    assert not torch.allclose(generator.w_avg, source.w_avg, atol=1e-3)


def test_a_pickled_gs_on_its_own_loads(tmp_path: Path) -> None:
    source = tiny_generator(32)
    generator = load_generator(write_pickle(tf_gs(source), tmp_path / "Gs.pkl", protocol=3))
    ws = random_ws(source)
    assert torch.allclose(render(generator, ws), render(source, ws), atol=1e-5)


def test_canonical_file_carries_architecture_and_provenance(tmp_path: Path) -> None:
    source = tiny_generator(64, 2)
    path = tmp_path / "toon.safetensors"
    save_generator(source, path, source="https://example.org/toon.pkl (tensorflow)")
    info = read_model_info(path)
    assert info.architecture == source.arch
    assert info.source == "https://example.org/toon.pkl (tensorflow)"
    assert info.size_bytes == path.stat().st_size
    assert info.created
    assert load_generator(path).arch == source.arch


# ---------------------------------------------------------------- nothing in a pickle runs


class Boom:
    """Unpickling this calls os.system, the classic malicious model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _malicious_files(tmp_path: Path, marker: Path) -> list[Path]:
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"G_ema": Boom(marker)}))
    zipped = tmp_path / "evil.pt"
    torch.save({"g_ema": {"x": torch.zeros(1)}, "latent_avg": Boom(marker)}, zipped)
    legacy = tmp_path / "evil-legacy.pt"
    torch.save({"g_ema": Boom(marker)}, legacy, _use_new_zipfile_serialization=False)
    return [raw, zipped, legacy]


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for path in _malicious_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match=r"refused.*posix\.system") as info:
            load_generator(path)
        assert str(path) in str(info.value)
        assert not marker.exists()
    # The same bytes really do run code through an unrestricted unpickler.
    pickle.loads((tmp_path / "evil.pkl").read_bytes())
    assert marker.exists()


def test_source_code_carried_by_pickles_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    source = tiny_generator(32)
    for path in (
        write_nvlabs(source, tmp_path / "ada.pkl", src=marker_src(marker)),
        write_tensorflow(source, tmp_path / "tf.pkl", src=marker_src(marker)),
    ):
        generator = load_generator(path)
        ws = random_ws(source)
        assert torch.allclose(render(generator, ws), render(source, ws), atol=1e-5)
    assert not marker.exists()
    exec(marker_src(marker))  # the carried source is live code
    assert marker.exists()


def test_restricted_load_is_reusable_with_extra_classes(tmp_path: Path) -> None:
    # A pSp/e4e checkpoint: state_dict with encoder.* and decoder.* keys, opts a Namespace.
    source = tiny_generator(32)
    ckpt = {
        "state_dict": {
            **{f"decoder.{k}": v for k, v in source.state_dict().items()},
            "encoder.body.0.weight": torch.randn(2, 2),
        },
        "opts": argparse.Namespace(output_size=32, encoder_type="GradualStyleEncoder"),
        "latent_avg": source.w_avg.repeat(source.num_ws, 1),
    }
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    with pytest.raises(UnsafePickleError, match=r"argparse\.Namespace"):
        restricted_load(buffer.getvalue())
    loaded = restricted_load(buffer.getvalue(), ARGPARSE_NAMESPACE)
    assert loaded["opts"].output_size == 32
    decoder = {
        k.removeprefix("decoder."): v
        for k, v in loaded["state_dict"].items()
        if k.startswith("decoder.")
    }
    generator = generator_from_state_dict(decoder, w_avg=loaded["latent_avg"][0])
    ws = random_ws(source)
    assert torch.allclose(render(generator, ws), render(source, ws), atol=1e-5)
    # Tensors are assigned, not copied.
    assert generator.input.input.data_ptr() == decoder["input.input"].data_ptr()


# ---------------------------------------------------------------- clear errors


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    cases = {
        "notes.txt": b"hello, not a model\n",
        "empty.pt": b"",
        "image.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match="not a checkpoint"):
            load_generator(tmp_path / name)
    (tmp_path / "d.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match=r"no generator in this checkpoint.*weights"):
        load_generator(tmp_path / "d.pt")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a toonify generator"):
        load_generator(other)
    with pytest.raises(CheckpointError, match="no such file"):
        load_generator(tmp_path / "missing.pt")


@pytest.mark.parametrize(("fmt", "filename", "write"), FORMATS, ids=[f[0] for f in FORMATS])
def test_truncated_files(tmp_path: Path, fmt: str, filename: str, write: Writer) -> None:
    path = write(tiny_generator(32), tmp_path / filename)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_generator(path)


def test_alias_free_stylegan3_is_refused(tmp_path: Path) -> None:
    src = "# stylegan3 networks_stylegan3.py\n"
    layer = persistent_module("SynthesisLayer", src, {"weight": torch.randn(4, 4, 3, 3)})
    synthesis = persistent_module(
        "SynthesisNetwork",
        src,
        modules={
            "input": persistent_module("SynthesisInput", src, {"weight": torch.randn(4, 2)}),
            "L0_36_512": layer,
        },
    )
    g_ema = persistent_module("Generator", src, modules={"synthesis": synthesis})
    path = write_pickle({"G_ema": g_ema, "G": g_ema, "D": None}, tmp_path / "sg3.pkl", 4)
    with pytest.raises(CheckpointError, match="alias-free StyleGAN3"):
        load_generator(path)


def test_missing_tensors_are_named(tmp_path: Path) -> None:
    source = tiny_generator(32)
    state = source.state_dict()
    del state["convs.1.conv.weight"]
    torch.save({"g_ema": state}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"missing tensors convs\.1\.conv\.weight"):
        load_generator(tmp_path / "g.pt")

    gs = tf_gs(source)
    synthesis = gs.__getstate__()["components"]["synthesis"].__getstate__()
    synthesis["variables"] = [v for v in synthesis["variables"] if v[0] != "16x16/Conv1/mod_bias"]
    with pytest.raises(CheckpointError, match="missing variable synthesis/16x16/Conv1/mod_bias"):
        load_generator(write_tensorflow(source, tmp_path / "tf.pkl", gs=gs))

    g_ema = nvlabs_generator(source)
    b8 = g_ema.state["_modules"]["synthesis"].state["_modules"]["b8"]
    del b8.state["_modules"]["conv0"].state["_buffers"]["noise_const"]
    with pytest.raises(CheckpointError, match=r"missing tensor synthesis\.b8\.conv0\.noise_const"):
        load_generator(write_nvlabs(source, tmp_path / "ada.pkl", g_ema=g_ema))


def test_unsupported_variants_are_refused(tmp_path: Path) -> None:
    source = tiny_generator(32)
    resnet = write_tensorflow(source, tmp_path / "tf.pkl", gs=tf_gs(source, architecture="resnet"))
    with pytest.raises(CheckpointError, match="architecture 'resnet'"):
        load_generator(resnet)
    g_ema = nvlabs_generator(source)
    mapping = g_ema.state["_modules"]["mapping"]
    mapping.state["_modules"]["embed"] = persistent_module(
        "FullyConnectedLayer", "", {"weight": torch.ones(1)}
    )
    with pytest.raises(CheckpointError, match="class-conditional"):
        load_generator(write_nvlabs(source, tmp_path / "cond.pkl", g_ema=g_ema))
