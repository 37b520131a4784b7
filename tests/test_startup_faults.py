"""Every fault that stops `toonify run` is one line naming the fix, a non-zero exit and no
traceback; network failures at start are retried, and Ctrl-C or SIGTERM end them at once.
The bot runs as a real process against the fake servers."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from tests.fakes.discord import FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.support.crash_support import BotProcess, write_config

# Ctrl-C and SIGTERM end the process within this many seconds, whatever it is doing.
PROMPT_EXIT = 2.0


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (a network that is not there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_line_fault(process: BotProcess) -> str:
    """The one error line of a failed start; nothing else is an error or a traceback."""
    output = process.output
    assert "Traceback" not in output, output
    assert "Unclosed" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


async def failed_start(config: Path, **env: str) -> str:
    process = BotProcess(config, env).start("run")
    assert await process.exited() != 0
    return one_line_fault(process)


async def test_an_empty_token_is_named(fake_telegram: FakeTelegram, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake_telegram)
    line = await failed_start(config, TOONIFY_TELEGRAM_TOKEN="")
    assert "TOONIFY_TELEGRAM_TOKEN" in line


async def test_a_rejected_token_is_named(fake_telegram: FakeTelegram, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake_telegram)
    line = await failed_start(config, TOONIFY_TELEGRAM_TOKEN="123456:not-the-token")
    assert "Telegram rejected the bot token" in line
    assert "TOONIFY_TELEGRAM_TOKEN" in line


async def test_a_device_this_machine_lacks_is_named_where_it_was_set(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    missing = "cuda" if torch.version.cuda is None else f"cuda:{torch.cuda.device_count()}"
    config = write_config(tmp_path, fake_telegram)
    line = await failed_start(
        config, TOONIFY_TELEGRAM_TOKEN=fake_telegram.token, TOONIFY_MODELS_DEVICE=missing
    )
    assert line.startswith("error: TOONIFY_MODELS_DEVICE (environment): models.device")
    assert 'set models.device = "cpu"' in line
    in_file = write_config(tmp_path, fake_telegram, models={"device": missing})
    line = await failed_start(in_file, TOONIFY_TELEGRAM_TOKEN=fake_telegram.token)
    assert line.startswith(f"error: {in_file}: models.device")


async def test_an_empty_vgg16_is_named_with_its_fix(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    config = write_config(tmp_path, fake_telegram, invert={"loss": "perceptual"})
    (tmp_path / "models" / "vgg16.pt").write_bytes(b"")
    line = await failed_start(config, TOONIFY_TELEGRAM_TOKEN=fake_telegram.token)
    assert "vgg16.pt is not NVIDIA's vgg16.pt" in line
    assert "toonify models fetch-vgg16" in line


async def test_a_cut_short_model_is_named(fake_telegram: FakeTelegram, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake_telegram)
    model = tmp_path / "models" / "ffhq.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    line = await failed_start(config, TOONIFY_TELEGRAM_TOKEN=fake_telegram.token)
    assert str(model) in line and "truncated" in line


async def test_openvino_with_half_precision_is_named_with_its_fix(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    config = write_config(tmp_path, fake_telegram)
    line = await failed_start(
        config,
        TOONIFY_TELEGRAM_TOKEN=fake_telegram.token,
        TOONIFY_MODELS_DEVICE="cpu",
        TOONIFY_MODELS_RUNTIME="openvino",
        TOONIFY_MODELS_DTYPE="bfloat16",
    )
    assert 'set models.dtype = "float32"' in line


async def test_an_unknown_key_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    line = await failed_start(config, TOONIFY_QUOTA_DAYLY="3")
    assert line == "error: TOONIFY_QUOTA_DAYLY (environment): quota.dayly: unknown key"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_telegram_unreachable_is_retried_until_ctrl_c(
    tmp_path: Path, sig: signal.Signals
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    config = write_config(tmp_path, None)
    telegram = {"enabled": True, "api_base_url": f"{nowhere}/bot", "file_base_url": nowhere}
    config = write_config(tmp_path, None, telegram=telegram)
    process = BotProcess(config, {"TOONIFY_TELEGRAM_TOKEN": "123456:AAAA"}).start("run")
    await process.wait_for("Telegram is unreachable (attempt 2")
    sent = process.signal(sig)
    assert await process.exited() == 130
    assert time.monotonic() - sent < PROMPT_EXIT
    assert one_line_fault(process) == "error: stopped before the bot had started"
    assert "check the network, or telegram.api_base_url" in process.output


async def test_discord_unreachable_is_retried_until_sigterm_and_closes_its_sessions(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    discord = {"enabled": True, "api_base_url": f"{nowhere}/api/v10", "gateway_url": nowhere}
    config = write_config(tmp_path, None, discord=discord)
    process = BotProcess(config, {"TOONIFY_DISCORD_TOKEN": "not-checked-yet"}).start("run")
    await process.wait_for("Discord is unreachable (attempt 2")
    sent = process.signal(signal.SIGTERM)
    assert await process.exited() == 130
    assert time.monotonic() - sent < PROMPT_EXIT
    assert one_line_fault(process) == "error: stopped before the bot had started"


async def test_a_rejected_discord_token_is_named(tmp_path: Path) -> None:
    async with FakeDiscord.serve() as fake:
        discord = {"enabled": True, "api_base_url": fake.api_url, "gateway_url": fake.gateway_url}
        config = write_config(tmp_path, None, discord=discord)
        line = await failed_start(config, TOONIFY_DISCORD_TOKEN="not-the-token")
    assert "Discord rejected the bot token" in line
    assert "TOONIFY_DISCORD_TOKEN" in line
