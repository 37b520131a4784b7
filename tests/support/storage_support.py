"""Helpers shared by the storage tests: a settable clock and a database per test."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from storage import NewJob, Store, UserRef
from storage.settings import QuotaSettings

ALICE = UserRef("telegram", "1001")
BOB = UserRef("discord", "2002")


@dataclass
class FakeClock:
    now: datetime = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'toonify.db'}"


def policy(**overrides: object) -> QuotaSettings:
    values: dict[str, object] = {"daily": 3, "cooldown": 0, "max_in_flight": 100}
    return QuotaSettings.model_validate(values | overrides)


async def open_storage(tmp_path: Path, clock: FakeClock, **overrides: object) -> Store:
    return await Store.open(db_url(tmp_path), policy(**overrides), clock=clock)


def job(
    user: UserRef = ALICE,
    group: str | None = None,
    name: str = "",
    options: dict[str, object] | None = None,
) -> NewJob:
    return NewJob(
        user,
        style="toon",
        strength=32,
        chat={"chat_id": 555, "message_id": 7},
        options={"faces": "all"} if options is None else options,
        display_name=name,
        group=group,
    )
