"""Running the bot as a real process against the fake Telegram, to kill and restart it.

Each test writes tiny models and a config.toml into its tmp_path; the bot keeps its SQLite
database there, so a restart finds what the killed process left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from storage import Store
from storage.settings import QuotaSettings
from tests.fakes.telegram import FakeTelegram
from tests.support.tiny_toonify import write_tiny_models

ROOT = Path(__file__).resolve().parents[2]
BOT_MODULE = "tests.support.bot_process"
RUNNING = "toonify-bot is running"


def write_config(folder: Path, fake: FakeTelegram | None, **sections: dict[str, Any]) -> Path:
    """Tiny models in folder/models, the database in folder, Telegram pointed at `fake`."""
    config = write_tiny_models(folder / "models", steps=2)
    config["storage"] = {"url": f"sqlite+aiosqlite:///{folder / 'toonify.db'}"}
    config["quota"] = {"cooldown": 0, "daily": 50}
    config["worker"] = {"prepare_processes": 1, "progress_interval": 0.2}
    if fake is not None:
        config["telegram"] = {
            "enabled": True,
            "api_base_url": fake.base_url,
            "file_base_url": fake.base_file_url,
        }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = folder / "config.toml"
    path.write_text(_toml(config))
    tomllib.loads(path.read_text())  # what we wrote must read back
    return path


def _toml(config: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for a config dict: scalars, lists and nested tables."""
    plain = {k: v for k, v in config.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and plain else []
    lines += [f"{key} = {_value(value)}" for key, value in plain.items()]
    for key, table in tables.items():
        lines.append(_toml(table, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


class BotProcess:
    """`python -m tests.support.bot_process --config CONFIG run`, its stderr kept in a file."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, log: str = "bot.log"
    ) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.log = config.parent / log
        self.process: subprocess.Popen[bytes] | None = None
        self._start_offset = 0

    def start(self, *args: str) -> BotProcess:
        self._start_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.bot_process",
                    "--config",
                    str(self.config),
                    *args,
                ],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return self

    @property
    def output(self) -> str:
        """What this run wrote (stdout and stderr)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self._start_offset)
            return log.read().decode(errors="replace")

    async def wait_for(self, text: str, within: float = 120.0) -> None:
        async with asyncio.timeout(within):
            while text not in self.output:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"the bot exited before {text!r}:\n{self.output}")
                await asyncio.sleep(0.1)

    async def running(self, banner: str = RUNNING) -> BotProcess:
        await self.wait_for(banner)
        return self

    def signal(self, sig: signal.Signals) -> float:
        """Send `sig`; returns when it was sent (time.monotonic)."""
        assert self.process is not None
        self.process.send_signal(sig)
        return time.monotonic()

    async def exited(self, within: float = 60.0) -> int:
        """The exit status, once the process is gone."""
        assert self.process is not None
        async with asyncio.timeout(within):
            while (code := self.process.poll()) is None:
                await asyncio.sleep(0.02)
        return code

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.exited()


async def open_store(folder: Path) -> Store:
    return await Store.open(f"sqlite+aiosqlite:///{folder / 'toonify.db'}", QuotaSettings())
