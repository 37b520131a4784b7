from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from bots.config import ConfigError, load_config
from storage import create_engine, upgrade
from storage.migrate import alembic_config
from storage.models import Base

TABLES = {"users", "group_quotas", "jobs", "audit_log"}


def _diff(connection: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(connection), Base.metadata)


async def test_migrations_build_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'deeper' / 'toonify.db'}"
    await upgrade(url)
    assert (tmp_path / "nested" / "deeper" / "toonify.db").is_file()
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables == TABLES | {"alembic_version"}
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert await conn.scalar(text("SELECT version_num FROM alembic_version")) == head
            assert await conn.run_sync(_diff) == []
        await upgrade(engine)  # a second start-up changes nothing
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables == {"alembic_version"}
    finally:
        await engine.dispose()


async def test_postgresql_gets_the_models_schema(postgres_url: str) -> None:
    assert await upgrade(postgres_url)
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables == TABLES | {"alembic_version"}
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()
    assert not await upgrade(postgres_url)


def _start_up(url: str, start: Any, results: Any) -> None:
    start.wait()
    results.put(asyncio.run(upgrade(url)))


async def test_processes_starting_at_once_migrate_once(database_url: str) -> None:
    # Without the lock, PostgreSQL lets all three create the tables: two then fail.
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(3), ctx.Queue()
    starts = [ctx.Process(target=_start_up, args=(database_url, start, results)) for _ in range(3)]
    for process in starts:
        process.start()
    migrated = [await asyncio.to_thread(results.get, timeout=120) for _ in starts]
    for process in starts:
        await asyncio.to_thread(process.join, 30)
        assert process.exitcode == 0
    assert sorted(migrated) == [False, False, True]


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(text("PRAGMA busy_timeout")) >= 1000
            assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite:///data/x.db", "'sqlite' is not an asyncio driver"),
        ("postgresql://bot:hunter2@db/toonify", "'postgresql' is not an asyncio driver"),
        ("nonsense", "not a database URL"),
        ("nosuch+driver://bot:hunter2@db/x", "unknown database driver 'nosuch+driver'"),
    ],
)
def test_storage_url_must_name_an_async_driver(tmp_path: Path, url: str, reason: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: storage.url: ")
    assert reason in str(info.value)
    assert "hunter2" not in str(info.value)
