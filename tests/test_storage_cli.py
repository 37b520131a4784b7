from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bots import texts
from bots.cli import app
from bots.targets import PLATFORMS
from storage import NewJob, Store, UserRef
from storage.settings import QuotaSettings

ALICE = UserRef("telegram", "12345")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose database already knows Alice (one toon used)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'toonify.db'}"
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n[quota]\ndaily = 4\n')

    async def seed() -> None:
        async with await Store.open(url, QuotaSettings(daily=4)) as storage:
            await storage.quotas.consume(NewJob(ALICE, "toon", 32, display_name="Alice"))

    asyncio.run(seed())
    return path


def quota(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), "quota", *args])
    return result.exit_code, result.output


def test_show_set_ban_and_log(config: Path) -> None:
    code, out = quota(config, "show", "telegram:12345")
    assert code == 0, out
    assert "Alice" in out
    assert "3 toons left today" in out
    code, out = quota(config, "set", "telegram:12345", "10")
    assert code == 0, out
    assert "10 (user)" in out
    assert "9 toons left today" in out
    code, out = quota(config, "ban", "telegram:12345", "--reason", "spam")
    assert code == 0, out
    assert "yes: spam" in out
    code, out = quota(config, "unban", "telegram:12345")
    assert code == 0, out
    code, out = quota(config, "reset", "telegram:12345")
    assert "10 toons left today" in out
    code, out = quota(config, "log")
    assert code == 0, out
    for action in ("set_quota", "ban", "unban", "reset"):
        assert action in out


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["show", "telegram:999"], "unknown user telegram:999"),
        (["set", "telegram:12345", "-3"], "invalid daily quota -3"),
        (["set", "telegram:12345", "many"], "invalid daily quota 'many'"),
        (["ban", "12345"], "is not platform:id"),
        (["set", "--group", "discord:1", "unlimited"], ">= 0 or 'default'"),
    ],
)
def test_bad_input_fails_with_one_line(config: Path, args: list[str], reason: str) -> None:
    code, out = quota(config, *args)
    assert code == 1
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: ")
    assert reason in lines[0]


def test_group_defaults(config: Path) -> None:
    code, out = quota(config, "set", "--group", "discord:555", "2")
    assert code == 0, out
    assert "group discord:555: daily quota 2" in out
    code, out = quota(config, "show", "-g", "discord:555")
    assert "daily quota 2" in out
    code, out = quota(config, "set", "-g", "discord:555", "default")
    assert "the configured default (4)" in out


def test_stats_lists_top_users(config: Path) -> None:
    code, out = quota(config, "stats")
    assert code == 0, out
    assert "telegram:12345" in out
    assert "last 7 days" in out


def test_unusable_database_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{blocker}/sub/x.db"\n')
    code, out = quota(path, "stats")
    assert code == 1
    assert out.startswith("error: cannot use the database"), out
    assert out.count("\n") == 1, out


def test_bench_storage_prints_a_table() -> None:
    result = CliRunner().invoke(app, ["bench", "storage", "--ops", "5", "--runs", "1"])
    assert result.exit_code == 0, result.output
    for row in ("consume", "refund", "mark_failed(refund)", "16 users at once"):
        assert row in result.output


def test_ban_and_quota_for_someone_who_never_used_the_bot(config: Path) -> None:
    code, out = quota(config, "ban", "discord:424242", "--reason", "known spammer")
    assert code == 0, out
    assert "yes: known spammer" in out
    code, out = quota(config, "set", "telegram:777", "unlimited")
    assert code == 0, out
    assert "unlimited (unlimited)" in out
    code, out = quota(config, "log", "discord:424242")
    assert code == 0, out
    assert "discord:424242" in out and "ban" in out


def readme_quota_examples() -> list[list[str]]:
    """The `toonify quota ...` lines of the README's Quotas section, comments dropped."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("### Quotas", 1)[1].split("```", 2)[1]
    return [
        shlex.split(line, comments=True)[1:]
        for line in block.splitlines()
        if line.startswith("toonify quota ")
    ]


def test_the_readme_quota_examples_run_as_written_on_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path / "new.db"}"\n')
    examples = readme_quota_examples()
    assert len(examples) >= 8
    for args in examples:
        result = CliRunner().invoke(app, ["--config", str(path), *args])
        assert result.exit_code == 0, f"{shlex.join(args)}: {result.output}"


@pytest.mark.parametrize(
    "args",
    [
        ["ban", "whatsapp:1"],
        ["set", "WhatsApp:1", "3"],
        ["show", "irc:nick"],
        ["set", "--group", "matrix:1", "2"],
        ["log", "whatsapp:1"],
    ],
)
def test_unknown_platforms_are_refused_with_the_known_ones_named(
    config: Path, args: list[str]
) -> None:
    code, out = quota(config, *args)
    assert code == 1
    platform = next(a for a in args if ":" in a).split(":")[0].lower()
    assert out == f"error: {texts.unknown_platform(platform, PLATFORMS)}\n"
