from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bots.cli import app
from inference.invert import load_perceptual
from tests.test_invert import FakeVgg16


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n')
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_fetch_vgg16_downloads_and_checks_the_network(
    tmp_path: Path, mirror: tuple[str, Path]
) -> None:
    base, folder = mirror
    torch.jit.save(torch.jit.script(FakeVgg16()), str(folder / "vgg16.pt"))
    command = ["--config", str(config_file(tmp_path)), "models", "fetch-vgg16"]
    result = CliRunner().invoke(app, [*command, "--url", f"{base}/vgg16.pt"])
    assert result.exit_code == 0, result.output
    target = tmp_path / "models" / "vgg16.pt"
    features = load_perceptual(target)(
        torch.full((1, 3, 32, 32), 128.0), resize_images=False, return_lpips=True
    )
    assert features.ndim == 2
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0
    assert "already there" in again.output


def test_fetch_vgg16_refuses_what_is_not_torchscript(
    tmp_path: Path, mirror: tuple[str, Path]
) -> None:
    base, folder = mirror
    (folder / "vgg16.pt").write_bytes(b"<html>not found</html>")
    command = ["--config", str(config_file(tmp_path)), "models", "fetch-vgg16"]
    result = CliRunner().invoke(app, [*command, "--url", f"{base}/vgg16.pt"])
    assert result.exit_code == 1
    assert "not a TorchScript network" in result.output
    assert not (tmp_path / "models" / "vgg16.pt").exists()
