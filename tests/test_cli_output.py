"""What the command line shows: help texts, early refusals of bad output paths, error wording."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bots.cli import app
from bots.cli.photo import _compose
from inference.align import AlignedFace
from inference.pipeline import Finished, Latents
from inference.prepare import Prepared
from tests.support.tiny_toonify import write_tiny_models


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})
    return result.exit_code, result.output


def test_photo_help_shows_brackets_and_flags_as_flags() -> None:
    code, out = invoke("photo", "--help")
    assert code == 0
    assert "A name under [styles] in the config" in out
    assert "<bool>" not in out
    flags = [line for line in out.splitlines() if line.startswith(("  --side", "  --faces"))]
    assert len(flags) == 2
    assert all("<" not in line for line in flags)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("a-file/toon.jpg", "cannot write"),
        ("toon.xyz", ".xyz is not an image format"),
        ("toon", "no extension is not an image format"),
        (".", "is a folder"),
    ],
)
def test_an_unusable_output_fails_before_any_model_loads(
    tmp_path: Path, output: str, reason: str
) -> None:
    # No models at all: reaching the models would fail with "no model 'ffhq'" instead.
    (tmp_path / "a-file").write_text("a file, not a folder")
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    source = tmp_path / "selfie.jpg"
    Image.new("RGB", (64, 64)).save(source)
    code, out = invoke("--config", str(config), "photo", str(source), "-o", str(tmp_path / output))
    assert code == 1
    assert reason in out
    assert "no model" not in out


def test_a_missing_output_folder_is_created_before_the_work(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    source = tmp_path / "selfie.jpg"
    Image.new("RGB", (64, 64)).save(source)
    target = tmp_path / "out" / "new" / "toon.png"
    code, out = invoke("--config", str(config), "photo", str(source), "-o", str(target))
    assert code == 1 and "missing" in out  # failed on the models, after the output check
    assert target.parent.is_dir()


def test_blend_says_which_swap_resolutions_fit(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    command = ["--config", str(config), "models", "blend", "--structure", "toon"]
    code, out = invoke(*command, "--texture", "ffhq", "--resolution", "128", "--name", "b")
    assert code == 1
    assert "swap resolution 128 does not fit these 32 px models" in out
    assert "use a power of two from 4 to 32" in out


def test_quota_commands_keep_alembic_quiet(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path / "toonify.db"}"\n')
    code, out = invoke("--config", str(config), "quota", "stats")
    assert code == 0, out
    assert (tmp_path / "toonify.db").is_file()
    assert "alembic" not in out


def test_faces_only_side_by_side_puts_the_toons_below_the_originals() -> None:
    original, toon = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    face = AlignedFace(original, np.zeros((4, 2)))
    prepared = Prepared(original, [face, face], [])
    latents = Latents(ws=np.zeros(0))  # type: ignore[arg-type]
    finished = Finished(prepared, latents, "toon", 32, toon, [toon, toon], {})
    sheet = np.asarray(_compose(finished, side_by_side=True, faces_only=True))
    assert sheet.shape == (16, 16, 3)
    assert (sheet[:8] == [255, 0, 0]).all()
    assert (sheet[8:] == [0, 0, 255]).all()


@pytest.fixture
def unreachable() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port just given back)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pkl"


def test_a_failed_download_says_how_to_get_the_file_another_way(
    tmp_path: Path, unreachable: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    code, out = invoke("--config", str(config), "models", "import", unreachable, "--name", "ffhq")
    assert code == 1
    assert f"download of {unreachable} failed after 0 bytes" in out
    assert "or download it elsewhere, then: toonify models import FILE --name ffhq" in out
    assert "resume" not in out  # nothing was received, so there is nothing to resume
    code, out = invoke("--config", str(config), "models", "fetch-vgg16", "--url", unreachable)
    assert code == 1
    assert f"copy it to {tmp_path / 'models' / 'vgg16.pt'}" in out
    assert "import" not in out
