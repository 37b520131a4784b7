"""How admins name a user or a group: `platform:id` on a platform this bot speaks.

The chat commands and the command line read targets here, so both refuse a platform the bot
has no adapter for (`whatsapp:1`) with the same words, before anything is written.
"""

from __future__ import annotations

from typing import TypeVar

from bots import texts
from storage import AdminInputError, GroupRef, UserRef

Ref = TypeVar("Ref", UserRef, GroupRef)

PLATFORMS = ("telegram", "discord")


class UnknownPlatformError(AdminInputError):
    """A user or group on a platform the bot does not speak."""

    def __init__(self, platform: str) -> None:
        super().__init__(texts.unknown_platform(platform, PLATFORMS))


def user_ref(text: str, platform: str | None = None) -> UserRef:
    """`platform:id`, or a bare id on `platform` (the admin's own, in chat)."""
    text = text.strip()
    if platform is not None and ":" not in text:
        return UserRef(platform, text)
    return _known(UserRef.parse(text))


def group_ref(text: str) -> GroupRef:
    """A Discord server or Telegram group as `platform:id`."""
    return _known(GroupRef.parse(text))


def _known(ref: Ref) -> Ref:
    if ref.platform not in PLATFORMS:
        raise UnknownPlatformError(ref.platform)
    return ref
