"""The database schema (SQLAlchemy 2 typed declarative). Alembic migrations must match it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, stored as naive UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("storage only takes timezone-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
    }


class User(Base):
    """A chat user, their quota overrides and the counters `consume` checks in one UPDATE."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(128), default="")
    daily_limit: Mapped[int | None] = mapped_column(default=None)
    """Per-user override of the daily quota; None: the config's or the group's default."""
    unlimited: Mapped[bool] = mapped_column(default=False)
    banned: Mapped[bool] = mapped_column(default=False)
    ban_reason: Mapped[str] = mapped_column(String(256), default="")
    window_day: Mapped[date | None] = mapped_column(default=None)
    """The local day `used` counts; a later day means nothing is used yet."""
    used: Mapped[int] = mapped_column(default=0)
    in_flight: Mapped[int] = mapped_column(default=0)
    last_request_at: Mapped[datetime | None] = mapped_column(default=None)
    rerender_tat: Mapped[float | None] = mapped_column(default=None)
    """Re-render rate limit (GCRA): theoretical arrival time, Unix seconds."""
    created_at: Mapped[datetime]


class GroupQuota(Base):
    """The default daily quota for requests made in one Discord server or Telegram group."""

    __tablename__ = "group_quotas"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    daily: Mapped[int]


class Job(Base):
    """One request from arrival to answer; holds references to the chat, never the photo."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "status", "created_at"),
        Index(None, "day"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    request_key: Mapped[str | None] = mapped_column(String(128), unique=True, default=None)
    """The platform's identity of the request (a message, an interaction): a request the
    platform delivers twice (after a crash, a retried webhook) gets one job."""
    status: Mapped[str] = mapped_column(String(16))
    style: Mapped[str] = mapped_column(String(64))
    strength: Mapped[int | None]
    chat: Mapped[dict[str, Any]]
    options: Mapped[dict[str, Any]]
    day: Mapped[date]
    """The local day the request was counted on; a refund gives back that day's toon."""
    refunded: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    """How often inference started on this job: a job that keeps killing the bot is given up."""
    failure: Mapped[str | None] = mapped_column(String(512), default=None)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Seconds per pipeline stage of a finished job."""
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditRow(Base):
    """Who changed what for whom, and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128), index=True)
    detail: Mapped[str] = mapped_column(String(512), default="")
