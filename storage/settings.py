"""Configuration sections owned by storage (database, quotas)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = "sqlite+aiosqlite:///data/toonify.db"
    retention_days: PositiveInt = 30

    @field_validator("url")
    @classmethod
    def _async_url(cls, value: str) -> str:
        # Messages never repeat the URL: it may carry a password.
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL (e.g. sqlite+aiosqlite:///data/toonify.db)"
            ) from None
        try:
            dialect = url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"unknown database driver {url.drivername!r}") from None
        if not dialect.is_async:
            raise ValueError(
                f"{url.drivername!r} is not an asyncio driver: use sqlite+aiosqlite:// "
                "or postgresql+asyncpg://"
            )
        return value


class QuotaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daily: NonNegativeInt = 5
    cooldown: float = Field(20.0, ge=0)
    max_in_flight: PositiveInt = 1
    rerenders_per_minute: PositiveInt = 6
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError(f"unknown time zone {value!r}")
        ZoneInfo(value)
        return value
