"""The encoder fast path in the pipeline: invert.method encoder / encoder+optimize, pSp styles."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from bots.cli import app
from bots.config import Settings
from inference.checkpoints import load_generator
from inference.encoder_checkpoints import (
    decoder_generator,
    import_encoder,
    read_encoder_checkpoint,
    save_encoder,
)
from inference.encoders import EncoderFormatError, FaceEncoder
from inference.invert import invert, pixel_distance, w_stats
from inference.pipeline import Toonifier, to_images, to_tensor
from inference.prepare import Prepared
from tests.support.tiny_encoders import tiny_encoder, write_public_checkpoint
from tests.support.tiny_toonify import tiny_face_generator, tiny_toon_generator, write_tiny_models

REFINE_STEPS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ffhq_encoder(seed: int = 3) -> FaceEncoder:
    """An 'FFHQ encoder' for the tiny face generator: its codes, around its w_avg."""
    face = tiny_face_generator()
    return tiny_encoder(
        "e4e",
        n_styles=face.num_ws,
        w_dim=face.w_dim,
        input_size=32,
        latent_avg=w_stats(face).mean,
        seed=seed,
    )


def _error(generator: Any, ws: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-face mean squared error of the rendering the pipeline would make (const noise)."""
    with torch.no_grad():
        images = generator.synthesis(ws.to(targets), noise_mode="const")
    return (images - targets).square().mean(dim=(1, 2, 3))


def test_refining_the_encoders_answer_beats_the_encoder_alone() -> None:
    face = tiny_face_generator()
    torch.manual_seed(5)
    true = face.mapping(torch.randn(3, face.w_dim))
    true = true + 0.3 * torch.randn_like(true)  # a little W+ freedom per layer
    with torch.no_grad():
        targets = face.synthesis(true, noise_mode="const")
        encoded = _ffhq_encoder()(targets)
    distance = pixel_distance(targets)
    refined = invert(face, distance, steps=REFINE_STEPS, seeds=[0, 1, 2], start=encoded).ws
    from_avg = invert(face, distance, steps=REFINE_STEPS, seeds=[0, 1, 2]).ws
    before, after = _error(face, encoded, targets), _error(face, refined, targets)
    assert (after < 0.5 * before).all(), (before, after)
    # The optimisation really started from the encoder's answer.
    assert (refined - from_avg).abs().amax(dim=(1, 2)).min() > 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Tiny FFHQ + toon models, an FFHQ encoder `e4e`, and pSp's toonify as the public `.pt`
    and imported from it (like `toonify models import` does) as `psp_toonify`."""
    directory = tmp_path_factory.mktemp("models")
    config = write_tiny_models(directory, steps=4)
    save_encoder(_ffhq_encoder(), directory / "e4e.safetensors", source="test")
    face = tiny_face_generator()
    psp = tiny_encoder(
        "psp", n_styles=face.num_ws, w_dim=face.w_dim, input_size=32, latent_avg=w_stats(face).mean
    )
    toon = tiny_toon_generator(face, seed=7)
    public = write_public_checkpoint(directory / "psp_toonify.pt", psp, decoder=toon.state_dict())
    import_encoder(
        read_encoder_checkpoint(public), directory / "psp_toonify.safetensors", source="test"
    )
    return directory, config


def _toonifier(config: dict[str, Any], **invert: Any) -> Toonifier:
    return Toonifier.from_config(Settings(**{**config, "invert": {**config["invert"], **invert}}))


@pytest.fixture(scope="module")
def prepared(models: tuple[Path, dict[str, Any]]) -> Prepared:
    image = io.BytesIO()
    Image.fromarray(data.astronaut()).save(image, "JPEG", quality=95)
    return _toonifier(models[1]).prepare(image.getvalue())


def test_encoder_method_is_one_forward_pass(
    models: tuple[Path, dict[str, Any]], prepared: Prepared
) -> None:
    _, config = models
    toonifier = _toonifier(config, method="encoder", encoder="e4e", loss="perceptual")
    events: list[tuple[str, int, int]] = []
    (latents,) = toonifier.invert([prepared], lambda *e: events.append(e))
    encoder = toonifier.encoder
    assert encoder is not None and toonifier.steps == 0
    with torch.no_grad():
        expected = encoder(to_tensor([f.image for f in prepared.faces], toonifier.device))
    assert torch.equal(latents.ws, expected)
    assert events == [("invert", 1, 1)]


def test_encoder_plus_optimize_refines_the_encoders_codes(
    models: tuple[Path, dict[str, Any]], prepared: Prepared
) -> None:
    _, config = models
    fast = _toonifier(config, method="encoder", encoder="e4e")
    hybrid = _toonifier(config, method="encoder+optimize", refine_steps=REFINE_STEPS)
    plain = _toonifier(config, method="optimize", steps=REFINE_STEPS)
    (encoded,) = fast.invert([prepared])
    (refined,) = hybrid.invert([prepared])
    (optimised,) = plain.invert([prepared])
    assert hybrid.steps == REFINE_STEPS
    targets = to_tensor([f.image for f in prepared.faces], hybrid.device)
    assert (_error(hybrid.face, refined.ws, targets) < _error(fast.face, encoded.ws, targets)).all()
    assert (refined.ws - optimised.ws).abs().max() > 0.05, "did not start from the encoder"


def test_encoder_that_does_not_fit_the_face_model_is_refused(
    models: tuple[Path, dict[str, Any]],
) -> None:
    directory, config = models
    save_encoder(tiny_encoder("e4e"), directory / "e4e18.safetensors", source="test")
    with pytest.raises(
        EncoderFormatError, match="18 codes of 512, but the generator takes 8 of 32"
    ):
        _toonifier(config, method="encoder", encoder="e4e18")


def test_psp_style_encodes_straight_into_its_toon_model(
    models: tuple[Path, dict[str, Any]], prepared: Prepared
) -> None:
    directory, config = models
    styles = {**config["styles"], "psp": {"kind": "psp", "model": "psp_toonify", "label": "pSp"}}
    toonifier = Toonifier.from_config(Settings(**{**config, "styles": styles}))
    assert toonifier.pick("psp", None) == ("psp", 32)
    assert toonifier.styles["psp"].strengths == [32]
    (latents,) = toonifier.invert([prepared])
    result = toonifier.finish(prepared, latents, style="psp")
    ckpt = read_encoder_checkpoint(directory / "psp_toonify.pt")
    encoder, decoder = ckpt.encoder, decoder_generator(ckpt, "psp_toonify.pt")
    with torch.no_grad():
        ws = encoder(to_tensor([f.image for f in prepared.faces], torch.device("cpu")))
        expected = to_images(decoder.synthesis(ws, noise_mode="const"))
    assert np.array_equal(np.asarray(result.faces[0]), np.asarray(expected[0]))
    assert result.latents is latents, "the FFHQ codes stay cached for the other styles"
    toon = toonifier.rerender(result, "toon", 16)
    assert not np.array_equal(np.asarray(toon.faces[0]), np.asarray(result.faces[0]))


def test_import_writes_the_psp_decoder_as_a_model(models: tuple[Path, dict[str, Any]]) -> None:
    directory, _ = models
    ckpt = read_encoder_checkpoint(directory / "psp_toonify.pt")
    imported = load_generator(directory / "psp_toonify-decoder.safetensors")
    assert ckpt.decoder is not None
    assert all(torch.equal(imported.state_dict()[k], v) for k, v in ckpt.decoder.items())


def test_photo_command_with_the_encoder(
    tmp_path: Path, models: tuple[Path, dict[str, Any]]
) -> None:
    _, config = models
    source, target = tmp_path / "in.jpg", tmp_path / "out.jpg"
    Image.fromarray(data.astronaut()).save(source, quality=95)
    toml = tmp_path / "config.toml"
    toml.write_text(
        f'style = "toon"\n[models]\ndir = "{config["models"]["dir"]}"\ndevice = "cpu"\n'
        '[faces]\nbackend = "dlib"\n[invert]\nmethod = "encoder"\nencoder = "e4e"\n'
        '[styles.toon]\nmodel = "toon"\nstrengths = [8, 16, 32]\ndefault_strength = 16\n'
    )
    result = CliRunner().invoke(
        app, ["--config", str(toml), "photo", str(source), "-o", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(target).size == (512, 512)
    assert "invert" in result.output and "steps" not in result.output
