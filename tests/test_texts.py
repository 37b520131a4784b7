"""The words users read: counts agree with their nouns, levels instead of swap resolutions,
no jargon in progress, the in-progress refusal names how many toons may run at once."""

from __future__ import annotations

import re
from datetime import date

from bots import texts
from bots.discord.commands import application_commands
from inference.stages import Stage
from storage import PeriodStats, UsageStats


def _period(toons: int, users: int) -> PeriodStats:
    return PeriodStats(toons=toons, done=toons, failed=0, cancelled=0, refunded=0, users=users)


def test_stats_agree_in_number() -> None:
    usage = UsageStats(date(2026, 12, 3), _period(1, 1), _period(2, 1), [])
    assert texts.stats(usage) == "Today: 1 toon by 1 user, 0 failed.\n7 days: 2 toons by 1 user."


def test_server_quota_agrees_in_number() -> None:
    assert texts.group_quota_set(1) == "This server's members now get 1 toon a day."
    assert texts.group_quota_set(0) == "This server's members now get 0 toons a day."


def test_in_flight_refusal_says_how_many_may_run_at_once() -> None:
    assert "a toon in progress" in texts.in_flight(1)
    assert "3 toons in progress" in texts.in_flight(3)


def test_captions_show_a_level_not_a_resolution() -> None:
    assert texts.caption("Toon", 2, 4, 1, []) == "Toon · toon level 2 of 4"
    assert texts.caption("pSp", 1, 1, 2, []) == "pSp · 2 faces"


def test_progress_speaks_plainly() -> None:
    assert texts.progress(Stage.INVERT, 2, 5) == "Studying your face… 40%"
    assert texts.progress(Stage.RENDER, 0, 0) == "Drawing your toon…"
    assert "latent" not in texts.progress(Stage.INVERT, 1, 2)


def _commands_named(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w@])/([a-z][\w-]*)", text))


def test_each_platforms_help_names_only_commands_it_has() -> None:
    discord = {command.name for command in application_commands({})}
    assert _commands_named(texts.DISCORD_HELP) <= discord
    assert {"quota", "forget"} <= _commands_named(texts.DISCORD_HELP)
    telegram = {command for command, _ in texts.COMMANDS} | {"start", "admin"}
    for help_text in (texts.HELP, texts.group_help("toonify_bot")):
        assert _commands_named(help_text) <= telegram
        assert {"quota", "forget"} <= _commands_named(help_text)
