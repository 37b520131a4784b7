"""Configuration sections owned by storage (database, quotas)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = "sqlite+aiosqlite:///data/toonify.db"
    retention_days: PositiveInt = 30


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
