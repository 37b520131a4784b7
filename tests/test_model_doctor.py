"""`toonify models doctor` and scripts/run: what a configuration needs, what is fetched, and
the fix printed for everything else. No network: only files that are there, or missing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bots.cli import app
from inference.encoder_checkpoints import save_encoder
from inference.invert import VGG16_URL
from inference.model_needs import E4E_FILE, FFHQ_URL, PSP_FILE, PSP_PAGE, TOON_FILE, TOON_PAGE
from tests.support.tiny_encoders import tiny_encoder
from tests.support.tiny_models import tiny_generator, write_tensorflow
from tests.support.tiny_toonify import write_tiny_models
from tests.test_invert import FakeVgg16

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, invert: str = "", faces: str = 'backend = "dlib"') -> Path:
    """A config on the CPU with models in tmp_path/models; `invert` adds [invert] lines.

    Each call writes a new file: the CLI caches a configuration by its path."""
    path = tmp_path / f"config{len(list(tmp_path.glob('config*.toml')))}.toml"
    path.write_text(
        f'[models]\ndir = "{tmp_path / "models"}"\ndevice = "cpu"\n'
        f"[faces]\n{faces}\n[invert]\n{invert}\n"
    )
    return path


def doctor(config: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), "models", "doctor", *options])
    return result.exit_code, result.output


def block(output: str, file: str) -> str:
    """The doctor's lines about one file: its status line and the indented lines below it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if f"/{file}" in line and line[0] != " ")
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines)
    )
    return "\n".join(lines[start:end])


def status(output: str, file: str) -> str:
    return block(output, file).split()[0]


def fetched(output: str) -> list[str]:
    """What `--fetch` (and so scripts/run) would download, from the doctor's summary."""
    match = re.search(r"\(and scripts/run\) download: (.+)$", output, re.MULTILINE)
    return match[1].split(", ") if match else []


def add_encoder(tmp_path: Path) -> None:
    save_encoder(tiny_encoder("e4e"), tmp_path / "models" / "e4e.safetensors", source="test")


def test_pixel_loss_needs_no_perceptual_network(tmp_path: Path) -> None:
    code, out = doctor(write_config(tmp_path, 'loss = "pixel"'))
    assert code == 1
    assert "vgg16" not in out
    assert status(out, "ffhq.safetensors") == "MISSING"
    face = block(out, "ffhq.safetensors")
    assert f"toonify models import {FFHQ_URL} --name ffhq" in face
    assert "offline: download that URL elsewhere" in face
    assert fetched(out) == ["ffhq.safetensors"]


def test_the_perceptual_loss_needs_vgg16_which_has_a_direct_link(tmp_path: Path) -> None:
    code, out = doctor(write_config(tmp_path))
    assert code == 1
    assert status(out, "vgg16.pt") == "MISSING"
    assert "toonify models fetch-vgg16" in block(out, "vgg16.pt")
    assert VGG16_URL in block(out, "vgg16.pt")
    assert fetched(out) == ["ffhq.safetensors", "vgg16.pt"]


def test_a_missing_toon_model_names_the_page_the_import_and_toon(tmp_path: Path) -> None:
    code, out = doctor(write_config(tmp_path, 'loss = "pixel"'))
    assert code == 1
    toon = block(out, "toon.safetensors")
    assert toon.startswith("MISSING")
    assert f"open {TOON_PAGE}" in toon and TOON_FILE in toon
    assert f"toonify models import ~/Downloads/{TOON_FILE} --name toon" in toon
    assert f"TOON=~/Downloads/{TOON_FILE} scripts/run" in toon
    assert "toon.safetensors" not in fetched(out)


def test_the_encoder_method_needs_the_encoder_and_no_perceptual_network(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    code, out = doctor(write_config(tmp_path, 'method = "encoder"'))
    assert code == 1
    encoder = block(out, "e4e.safetensors")
    assert encoder.startswith("MISSING")
    assert f"toonify models import ~/Downloads/{E4E_FILE} --name e4e" in encoder
    assert "vgg16" not in out
    assert fetched(out) == []
    add_encoder(tmp_path)
    code, out = doctor(write_config(tmp_path, 'method = "encoder"'))
    assert code == 0, out
    assert "everything needed is there" in out


def test_encoder_and_optimize_needs_both(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    code, out = doctor(write_config(tmp_path, 'method = "encoder+optimize"'))
    assert code == 1
    assert status(out, "e4e.safetensors") == "MISSING"
    assert status(out, "vgg16.pt") == "MISSING"


def test_auto_on_a_cpu_takes_the_encoder_when_it_is_there(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    code, out = doctor(write_config(tmp_path))
    assert code == 1
    assert "resolves to optimize" in out
    assert status(out, "e4e.safetensors") == "optional"
    assert status(out, "vgg16.pt") == "MISSING"
    add_encoder(tmp_path)
    code, out = doctor(write_config(tmp_path))
    assert code == 0, out
    assert "resolves to encoder" in out
    assert "vgg16" not in out


def test_an_unreadable_model_file_is_a_problem_with_a_fix(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    (tmp_path / "models" / "toon.safetensors").write_bytes(b"not safetensors")
    code, out = doctor(write_config(tmp_path, 'loss = "pixel"'))
    assert code == 1
    toon = block(out, "toon.safetensors")
    assert "unreadable" in toon and "delete it" in toon
    assert "toonify models import" in toon


def test_a_psp_style_names_pixel2style2pixel(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    config = write_config(tmp_path, 'loss = "pixel"')
    config.write_text(
        config.read_text()
        + '[styles.toon]\nmodel = "toon"\n[styles.psp]\nkind = "psp"\nmodel = "psp_toonify"\n'
    )
    code, out = doctor(config)
    assert code == 1
    psp = block(out, "psp_toonify.safetensors")
    assert psp.startswith("MISSING") and "style 'psp'" in psp
    assert f"open {PSP_PAGE}" in psp
    assert f"toonify models import ~/Downloads/{PSP_FILE} --name psp_toonify" in psp
    assert "TOON=" not in psp  # not the default style: scripts/run imports TOON elsewhere


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_everything_present_passes(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    torch.jit.save(torch.jit.script(FakeVgg16()), str(tmp_path / "models" / "vgg16.pt"))
    code, out = doctor(write_config(tmp_path, 'method = "optimize"'))
    assert code == 0, out
    assert [line.split()[0] for line in out.splitlines()[1:] if line[0] != " "][:3] == [
        "ok",
        "ok",
        "ok",
    ]


def test_face_alignment_weights_are_needed_only_by_that_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    write_tiny_models(tmp_path / "models")
    pixel = 'loss = "pixel"'
    code, out = doctor(write_config(tmp_path, pixel, faces='backend = "face-alignment"'))
    assert code == 1
    weights = block(out, "s3fd-619a316812.pth")
    assert weights.startswith("MISSING")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in weights
    code, out = doctor(write_config(tmp_path, pixel, faces='backend = "auto"'))
    assert code == 0, out
    assert status(out, "s3fd-619a316812.pth") == "optional"


def test_fetch_imports_the_toon_file_it_is_given(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    (tmp_path / "models" / "toon.safetensors").unlink()
    toon = write_tensorflow(tiny_generator(32, seed=3), tmp_path / TOON_FILE)
    config = write_config(tmp_path, 'loss = "pixel"')
    code, out = doctor(config, "--fetch", "--toon", str(toon))
    assert code == 0, out
    assert f"importing {toon} as toon" in out
    assert status(out, "toon.safetensors") == "ok"


def run_script(tmp_path: Path, config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """scripts/run as an operator starts it, on this checkout's .venv."""
    if not (ROOT / ".venv" / "bin" / "toonify").exists():
        pytest.fail("scripts/run needs .venv: run scripts/setup first")
    return subprocess.run(
        [str(ROOT / "scripts" / "run"), "--config", str(config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_scripts_run_fetches_nothing_it_cannot_and_stops_with_the_list(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    (tmp_path / "models" / "toon.safetensors").unlink()
    result = run_script(tmp_path, write_config(tmp_path, 'loss = "pixel"'))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "fetching" not in out and "vgg16" not in out
    assert status(result.stdout, "toon.safetensors") == "MISSING"
    assert "TOON=" in block(result.stdout, "toon.safetensors")
    assert "1 needed file missing" in out


def test_scripts_run_imports_toon_then_starts_the_bot(tmp_path: Path) -> None:
    write_tiny_models(tmp_path / "models")
    (tmp_path / "models" / "toon.safetensors").unlink()
    toon = write_tensorflow(tiny_generator(32, seed=3), tmp_path / TOON_FILE)
    result = run_script(tmp_path, write_config(tmp_path, 'loss = "pixel"'), TOON=str(toon))
    out = result.stdout + result.stderr
    assert "everything needed is there" in out
    assert (tmp_path / "models" / "toon.safetensors").is_file()
    # Then `toonify run` starts, and stops at once: this config enables no chat platform.
    assert result.returncode == 1
    assert "adapter" in out.rsplit("everything needed is there", 1)[1]
