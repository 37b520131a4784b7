"""Bring a database's schema up to date with Alembic, at start-up, without an alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import create_engine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
MIGRATION_LOCK = 0x70_6F_6F_6E_69_66_79  # "toonify": PostgreSQL advisory lock key


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the migrations shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _current(connection: Connection) -> set[str]:
    if not inspect(connection).has_table(VERSION_TABLE):
        return set()
    return set(connection.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}")))


def _upgrade(connection: Connection) -> bool:
    """Processes starting at once queue here: SQLite's write lock (BEGIN IMMEDIATE) or, on
    PostgreSQL, an advisory lock held until the transaction ends; the later ones then find
    the schema current and do nothing."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    config = alembic_config(connection)
    # Up to date is the usual case: say nothing then, Alembic logs only real migrations.
    if _current(connection) == set(ScriptDirectory.from_config(config).get_heads()):
        return False
    command.upgrade(config, "head")
    return True


async def upgrade(target: AsyncEngine | str) -> bool:
    """Migrate to the newest revision in one transaction; True if anything was migrated."""
    engine = create_engine(target) if isinstance(target, str) else target
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(_upgrade)
    finally:
        if engine is not target:
            await engine.dispose()
