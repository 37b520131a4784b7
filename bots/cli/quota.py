"""`toonify quota`: show and change per-user quotas on the configured database."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bots import texts
from bots.cli.common import console, fail, settings
from bots.targets import group_ref, user_ref
from storage import (
    AdminInputError,
    AuditEntry,
    GroupRef,
    PeriodStats,
    QuotaStatus,
    Store,
    UserRef,
    parse_quota,
)

app = typer.Typer(help="Show and change per-user quotas.", no_args_is_help=True)

T = TypeVar("T")
UserChange = Callable[[Store, UserRef], Awaitable[object]]
GroupChange = Callable[[Store, GroupRef], Awaitable[object]]

UserArg = Annotated[str, typer.Argument(help="A user as platform:id, e.g. telegram:12345.")]
TargetArg = Annotated[
    str, typer.Argument(help="A user as platform:id (telegram:12345), or a group with --group.")
]
GroupOpt = Annotated[
    bool, typer.Option("--group", "-g", help="TARGET is a Discord server or Telegram group.")
]


def _actor() -> str:
    """Who the audit log names for a command-line change."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _with_storage(ctx: typer.Context, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `action` on the configured database; bad input and database trouble end in one line."""
    config = settings(ctx)

    async def run() -> T:
        async with await Store.open(config.storage.url, config.quota) as storage:
            return await action(storage)

    try:
        return asyncio.run(run())
    except AdminInputError as exc:
        fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        where = make_url(config.storage.url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"cannot use the database {where}: {reason}")


def _parsed(parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except AdminInputError as exc:
        fail(str(exc))


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    return "never" if moment is None else moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _print_log(entries: list[AuditEntry], zone: ZoneInfo, title: str) -> None:
    table = Table(title=title, caption=f"times in {zone.key}")
    for column in ("when", "who", "action", "target", "detail"):
        table.add_column(column)
    for entry in entries:
        table.add_row(_when(entry.at, zone), entry.actor, entry.action, entry.target, entry.detail)
    console.print(table)


def _print_status(status: QuotaStatus, zone: ZoneInfo) -> None:
    quota = status.allowance
    limit = "unlimited" if quota.limit is None else str(quota.limit)
    banned = "no"
    if status.banned:
        banned = f"[red]yes[/red]: {status.ban_reason}" if status.ban_reason else "[red]yes[/red]"
    title = f"{status.user} {status.display_name}".strip()
    table = Table(title=title, caption=f"times in {zone.key}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("daily quota", f"{limit} ({status.source})")
    table.add_row(
        "used today", f"{quota.used}: {texts.quota_left(quota.remaining, quota.resets_in)}"
    )
    table.add_row("resets at", _when(quota.resets_at, zone))
    table.add_row("banned", banned)
    table.add_row("jobs in flight", str(status.in_flight))
    table.add_row("last request", _when(status.last_request_at, zone))
    table.add_row("first seen", _when(status.first_seen, zone))
    console.print(table)


def _user_command(ctx: typer.Context, text: str, change: UserChange | None = None) -> None:
    """Apply `change` to a user, then print their quota and the admin actions on them."""
    user = _parsed(user_ref, text)

    async def act(storage: Store) -> tuple[QuotaStatus, list[AuditEntry]]:
        if change is not None:
            await change(storage, user)
        return await storage.admin.show(user), await storage.admin.audit_log(target=user, limit=5)

    status, history = _with_storage(ctx, act)
    zone = ZoneInfo(settings(ctx).quota.timezone)
    _print_status(status, zone)
    if history:
        _print_log(history, zone, title="Recent admin actions")


def _group_command(ctx: typer.Context, text: str, change: GroupChange | None = None) -> None:
    """Apply `change` to a group, then print its default quota."""
    group = _parsed(group_ref, text)

    async def act(storage: Store) -> int | None:
        if change is not None:
            await change(storage, group)
        return await storage.admin.group_quota(group)

    daily = _with_storage(ctx, act)
    shown = (
        str(daily) if daily is not None else f"the configured default ({settings(ctx).quota.daily})"
    )
    console.print(f"group {group}: daily quota {shown}", highlight=False)


@app.command("show")
def show(ctx: typer.Context, target: TargetArg, group: GroupOpt = False) -> None:
    """Show a user's quota, usage today, ban and recent admin actions (or a group's default)."""
    if group:
        _group_command(ctx, target)
    else:
        _user_command(ctx, target)


@app.command("set", context_settings={"ignore_unknown_options": True})
def set_quota(
    ctx: typer.Context,
    target: TargetArg,
    value: Annotated[str, typer.Argument(help="Toons per day, 'unlimited' or 'default'.")],
    group: GroupOpt = False,
) -> None:
    """Set the daily quota of a user, or the default of a server or group."""
    daily = _parsed(parse_quota, value)
    if group:
        _group_command(
            ctx, target, lambda s, ref: s.admin.set_group_quota(ref, daily, actor=_actor())
        )
    else:
        _user_command(ctx, target, lambda s, ref: s.admin.set_quota(ref, daily, actor=_actor()))


@app.command("reset")
def reset(ctx: typer.Context, user: UserArg) -> None:
    """Give a user today's toons back and clear their cooldown."""
    _user_command(ctx, user, lambda s, ref: s.admin.reset(ref, actor=_actor()))


@app.command("ban")
def ban(
    ctx: typer.Context,
    user: UserArg,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Kept with the ban.")] = "",
) -> None:
    """Refuse every request of a user until unbanned."""
    _user_command(ctx, user, lambda s, ref: s.admin.ban(ref, actor=_actor(), reason=reason))


@app.command("unban")
def unban(ctx: typer.Context, user: UserArg) -> None:
    """Lift a ban."""
    _user_command(ctx, user, lambda s, ref: s.admin.unban(ref, actor=_actor()))


@app.command("stats")
def stats(
    ctx: typer.Context,
    top: Annotated[int, typer.Option(min=1, help="How many top users to list.")] = 10,
) -> None:
    """Usage today and over the last 7 days, and the most active users."""
    usage = _with_storage(ctx, lambda s: s.admin.stats(top=top))
    columns = ("toons", "done", "failed", "cancelled", "refunded", "users")
    table = Table(title=f"Usage up to {usage.day}")
    table.add_column("period")
    for column in columns:
        table.add_column(column, justify="right")
    periods: list[tuple[str, PeriodStats]] = [
        ("today", usage.today),
        ("last 7 days", usage.last_7_days),
    ]
    for name, period in periods:
        table.add_row(name, *(str(getattr(period, column)) for column in columns))
    console.print(table)
    leaders = Table(title="Top users, last 7 days")
    leaders.add_column("user")
    leaders.add_column("name")
    leaders.add_column("toons", justify="right")
    for leader in usage.top_users:
        leaders.add_row(str(leader.user), leader.display_name, str(leader.toons))
    console.print(leaders)


@app.command("log")
def log(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="Only actions on this user.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many entries, newest first.")] = 50,
) -> None:
    """The audit log of admin actions: who changed what for whom, and when."""
    target = None if user is None else _parsed(user_ref, user)
    entries = _with_storage(ctx, lambda s: s.admin.audit_log(target=target, limit=limit))
    _print_log(entries, ZoneInfo(settings(ctx).quota.timezone), title="Admin actions")
