"""`toonify models` and `toonify bench generator` end to end, downloads from 127.0.0.1."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bots.cli import app
from inference.checkpoints import load_generator, read_model_info
from inference.model_store import ModelStore, ModelStoreError, download
from tests.support.tiny_models import random_ws, render, tiny_generator, write_tensorflow


class FileServer:
    """Serves one payload with Range support; can cut the first response half-way."""

    def __init__(self, payload: bytes, *, cut_first: bool = False) -> None:
        self.payload = payload
        self.cut_first = cut_first
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/stylegan2-toon.pkl":
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1]) if requested else 0
                body = server.payload[start:]
                self.send_response(206 if requested else 200)
                if requested:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first and len(server.ranges) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/stylegan2-toon.pkl"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[models]\ndir = "{tmp_path / "models"}"\ndevice = "cpu"\n')
    return path


@pytest.fixture
def tf_file(tmp_path: Path) -> Iterator[Path]:
    yield write_tensorflow(tiny_generator(32, seed=5), tmp_path / "toon.pkl")


def cli(config: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def cli_error(config: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    assert result.exit_code == 1, result.output
    return " ".join(result.output.split())


def test_import_list_blend_sample(config: Path, tmp_path: Path, tf_file: Path) -> None:
    digest = hashlib.sha256(tf_file.read_bytes()).hexdigest()
    out = cli(config, "models", "import", str(tf_file), "--name", "toon", "--sha256", digest)
    assert "imported toon: 32 px tensorflow checkpoint" in out
    ffhq = write_tensorflow(tiny_generator(32, seed=6), tmp_path / "ffhq.pkl")
    cli(config, "models", "import", str(ffhq), "--name", "ffhq")
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["ffhq.safetensors", "toon.safetensors"]
    assert digest in read_model_info(models / "toon.safetensors").source

    out = cli(config, "models", "blend", "--structure", "toon", "--texture", "ffhq",
              "--resolution", "16", "--name", "toon16")  # fmt: skip
    assert "blended toon16" in out
    listing = cli(config, "models", "list")
    for name in ("ffhq", "toon", "toon16"):
        assert name in listing
    assert "32 px" in listing
    assert "blend of" in listing
    blended = read_model_info(models / "toon16.safetensors").source
    assert blended == "blend of toon (structure) and ffhq (texture) at 16 px, hard switch"

    grid = tmp_path / "grid.jpg"
    cli(config, "models", "sample", "toon16", "--seeds", "1-3,7", "--psi", "0.5", "-o", str(grid))
    with Image.open(grid) as image:
        assert image.size == (64, 64)  # 4 faces of 32 px, 2 x 2


def test_import_refusals(config: Path, tmp_path: Path, tf_file: Path) -> None:
    wrong = "0" * 64
    assert "sha256 is" in cli_error(
        config, "models", "import", str(tf_file), "--name", "t", "--sha256", wrong
    )
    assert not (tmp_path / "models" / "t.safetensors").exists()
    assert "not 64 hexadecimal digits" in cli_error(
        config, "models", "import", str(tf_file), "--name", "t", "--sha256", "abc"
    )
    assert "no such file" in cli_error(
        config, "models", "import", str(tmp_path / "nope.pkl"), "--name", "t"
    )
    assert "model name" in cli_error(config, "models", "import", str(tf_file), "--name", "../evil")
    cli(config, "models", "import", str(tf_file), "--name", "t")
    assert "exists" in cli_error(config, "models", "import", str(tf_file), "--name", "t")
    assert "no model 'missing'" in cli_error(config, "models", "sample", "missing")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert "not a checkpoint" in cli_error(config, "models", "import", str(notes), "--name", "n")


def test_url_import_resumes_with_a_range_request(config: Path, tmp_path: Path) -> None:
    source = tiny_generator(32, seed=7)
    payload = write_tensorflow(source, tmp_path / "src.pkl").read_bytes()
    store = ModelStore(tmp_path / "models")
    with FileServer(payload, cut_first=True) as server:
        with pytest.raises(ModelStoreError, match="run the same command again to resume"):
            store.import_checkpoint(server.url, "toon")
        part = tmp_path / "models" / ".downloads" / "toon.download.part"
        kept = part.stat().st_size
        assert 0 < kept < len(payload)
        digest = hashlib.sha256(payload).hexdigest()
        cli(config, "models", "import", server.url, "--name", "toon", "--sha256", digest)
    assert server.ranges == [None, f"bytes={kept}-"]
    assert not list((tmp_path / "models" / ".downloads").iterdir())
    generator = load_generator(tmp_path / "models" / "toon.safetensors")
    ws = random_ws(source)
    assert torch.allclose(render(generator, ws), render(source, ws), atol=1e-5)
    assert server.url in read_model_info(tmp_path / "models" / "toon.safetensors").source


def test_download_reports_progress_and_http_errors(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    seen: list[tuple[int, int | None]] = []
    with FileServer(payload) as server:
        path = download(server.url, tmp_path / "f.bin", progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload))
    with FileServer(b"") as server, pytest.raises(ModelStoreError, match="HTTP 404"):
        download(server.url + ".missing", tmp_path / "g")


def test_bench_generator_prints_a_table(config: Path) -> None:
    out = cli(config, "bench", "generator", "--resolutions", "8", "--batches", "1,2", "--runs", "1")
    assert "Images/s" in out
    assert re.search(r"8\s+│\s+2\s+│\s+float32", out)
