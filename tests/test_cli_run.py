from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bots.cli import app


def test_run_without_models_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOONIFY_TELEGRAM_ENABLED", "true")
    monkeypatch.setenv("TOONIFY_TELEGRAM_TOKEN", "123456:not-a-real-token")
    monkeypatch.setenv("TOONIFY_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TOONIFY_INVERT_LOSS", "pixel")
    monkeypatch.setenv("TOONIFY_STORAGE_URL", f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    config = tmp_path / "config.toml"
    config.write_text("")
    result = CliRunner().invoke(app, ["--config", str(config), "run"])
    assert result.exit_code == 1
    assert "no model 'ffhq'" in result.output
    assert "toonify models list" in result.output
