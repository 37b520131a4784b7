"""Finding and creating user rows, shared by the repositories."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import UnknownUserError
from storage.models import User
from storage.records import UserRef

NAME_LENGTH = 128


def by_ref(user: UserRef) -> ColumnElement[bool]:
    """The user's row, by its unique (platform, platform user id)."""
    return (User.platform == user.platform) & (User.platform_user_id == user.id)


async def find_user_id(session: AsyncSession, user: UserRef) -> int | None:
    return await session.scalar(select(User.id).where(by_ref(user)))


async def known_user_id(session: AsyncSession, user: UserRef) -> int:
    """The row id of a user an admin names; UnknownUserError when they never used the bot."""
    found = await find_user_id(session, user)
    if found is None:
        raise UnknownUserError(user)
    return found


async def create_user(
    session: AsyncSession, user: UserRef, display_name: str, now: datetime
) -> bool:
    """Insert the user's row unless it exists; True if it was missing (and now exists)."""
    if await find_user_id(session, user) is not None:
        return False
    values = {
        "platform": user.platform,
        "platform_user_id": user.id,
        "display_name": display_name[:NAME_LENGTH],
        "created_at": now,
    }
    try:
        async with session.begin_nested():
            await session.execute(insert(User).values(values))
    except IntegrityError:
        pass  # another connection created it meanwhile (possible outside SQLite)
    return True
