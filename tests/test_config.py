from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from bots.cli import app
from bots.config import ConfigError, load_config
from bots.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid_and_complete() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.quota.daily == 5
    assert config.styles["toon"].strengths == [8, 16, 32, 64]
    # Every option of the model appears in the example file (documented there).
    text = (ROOT / "config.example.toml").read_text()
    for section, model in config:
        if not isinstance(model, BaseModel):
            continue
        for key in type(model).model_fields:
            assert f"{key}" in text, f"{section}.{key} is not documented in config.example.toml"


def test_valid_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'style = "disney"\n[quota]\ndaily = 9\ntimezone = "Europe/Paris"\n'
        '[styles.disney]\nmodel = "d"\n'
        "strengths = [16, 32]\ndefault_strength = 16\n",
    )
    config = load_config(path)
    assert config.quota.daily == 9
    assert config.quota.timezone == "Europe/Paris"
    assert config.styles["disney"].default_strength == 16


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[quota]\ndayly = 3\n", "quota.dayly", "unknown key"),
        ("colour = 1\n", "colour", "unknown key"),
        ("[quota]\ndaily = -1\n", "quota.daily", "greater than or equal to 0"),
        ("[worker]\nqueue_size = 0\n", "worker.queue_size", "greater than 0"),
        ('[quota]\ntimezone = "Mars/Base"\n', "quota.timezone", "unknown time zone"),
        ('[faces]\nbackend = "opencv"\n', "faces.backend", "'auto'"),
        ('[models]\ndevice = "gpu"\n', "models.device", "pattern"),
        ('[styles.x]\nmodel = "x"\nstrengths = [12]\ndefault_strength = 12\n', "styles.x", "12"),
        ('style = "nope"\n', "(top level)", "nope"),
        ("[ops]\nport = 70000\n", "ops.port", "65535"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.count("\n") == 0, message
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[quota\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[quota]\ndaily = 3\n[telegram]\nenabled = true\n")
    monkeypatch.setenv("TOONIFY_QUOTA_DAILY", "11")
    monkeypatch.setenv("TOONIFY_TELEGRAM_TOKEN", TOKEN)
    monkeypatch.setenv("TOONIFY_WORKER_MAX_BATCH", "4")
    config = load_config(path)
    assert config.quota.daily == 11
    assert config.worker.max_batch == 4
    assert config.telegram.enabled
    assert config.telegram.token is not None
    assert config.telegram.token.get_secret_value() == TOKEN


def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOONIFY_QUOTA_DAILY", "-4")
    path = write(tmp_path, "[quota]\ndaily = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith("TOONIFY_QUOTA_DAILY (environment): quota.daily: ")
    assert str(path) not in str(info.value)


def test_unknown_key_from_the_environment_is_not_blamed_on_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.toml here
    monkeypatch.setenv("TOONIFY_QUOTA_DAYLY", "3")
    monkeypatch.setenv("TOONIFY_MODELS", '{"device": "gpu"}')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).splitlines() == [
        "TOONIFY_MODELS (environment): models.device: String should match pattern "
        "'^(auto|cpu|cuda(:\\d+)?|mps)$'",
        "TOONIFY_QUOTA_DAYLY (environment): quota.dayly: unknown key",
    ]
    assert "config.toml" not in str(info.value)


def test_config_check_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[discord]\nenabled = true\n")
    monkeypatch.setenv("TOONIFY_DISCORD_TOKEN", "discord-secret-value")
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "discord-secret-value" not in result.output
    assert "**********" in result.output


def test_cli_refuses_typo_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nqueue_sise = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "bots", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "worker.queue_sise: unknown key" in lines[0]


def test_run_names_the_missing_token_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[telegram]\nenabled = true\n")
    result = CliRunner().invoke(app, ["--config", str(path), "run"])
    assert result.exit_code != 0
    assert "TOONIFY_TELEGRAM_TOKEN" in result.output


def test_token_never_reaches_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", secrets=["discord-secret-value"])
    log = logging.getLogger("test")
    log.info("POST https://api.telegram.org/bot%s/getUpdates", TOKEN)
    log.debug("identify with discord-secret-value")
    try:
        raise RuntimeError(f"failed for {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert "discord-secret-value" not in err
    assert err.count("\n") == 3, err
    assert "getUpdates" in err


def test_tracebacks_are_logged_at_debug_only(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("test")
    for level in ("INFO", "DEBUG"):
        setup_logging(level)
        try:
            raise RuntimeError("disk on fire")
        except RuntimeError:
            log.exception("saving failed")
    info, debug = capsys.readouterr().err.splitlines()
    assert info.endswith("saving failed | RuntimeError: disk on fire")
    assert "Traceback (most recent call last)" in debug
    assert "test_tracebacks_are_logged_at_debug_only" in debug


@pytest.mark.parametrize("command", [[], ["config"], ["models"], ["quota"], ["bench"], ["run"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
