"""Finding and creating user rows, shared by the repositories."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import UnknownUserError
from storage.models import User
from storage.records import UserRef

NAME_LENGTH = 128


def _by_ref(user: UserRef) -> ColumnElement[bool]:
    return (User.platform == user.platform) & (User.platform_user_id == user.id)


async def find_user_id(session: AsyncSession, user: UserRef) -> int | None:
    return await session.scalar(select(User.id).where(_by_ref(user)))


async def known_user_id(session: AsyncSession, user: UserRef) -> int:
    """The row id of a user an admin names; UnknownUserError when they never used the bot."""
    found = await find_user_id(session, user)
    if found is None:
        raise UnknownUserError(user)
    return found


async def ensure_user(
    session: AsyncSession, user: UserRef, display_name: str, now: datetime
) -> int:
    """The row id of `user`, created on first sight; keeps the display name current."""
    display_name = display_name[:NAME_LENGTH]
    query = select(User.id, User.display_name).where(_by_ref(user))
    found = (await session.execute(query)).one_or_none()
    if found is None:
        try:
            async with session.begin_nested():
                values = {
                    "platform": user.platform,
                    "platform_user_id": user.id,
                    "display_name": display_name,
                    "created_at": now,
                }
                return await session.scalar(insert(User).values(values).returning(User.id))
        except IntegrityError:
            # Another connection created the row first (possible outside SQLite).
            found = (await session.execute(query)).one()
    if display_name and display_name != found.display_name:
        await session.execute(
            update(User)
            .where(User.id == found.id)
            .values(display_name=display_name)
            .execution_options(synchronize_session=False)
        )
    return found.id
