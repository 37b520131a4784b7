"""Errors a person can cause through storage (mostly admins); str() is the reason to show."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error storage raises on purpose."""


class AdminInputError(StorageError):
    """An admin asked for something that cannot be done; the message says why."""


class InvalidRefError(AdminInputError):
    """A user or group written in a form other than platform:id."""

    def __init__(self, text: str) -> None:
        super().__init__(f"{text!r} is not platform:id (e.g. telegram:12345 or discord:6789)")


class UnknownUserError(AdminInputError):
    """The user never used the bot, so there is nothing to show or change."""

    def __init__(self, user: object) -> None:
        super().__init__(f"unknown user {user}: they have never used the bot")


class InvalidQuotaError(AdminInputError):
    """A daily quota that is negative, not a number, or a word that does not apply."""

    def __init__(self, value: object, words: tuple[str, ...]) -> None:
        options = ["a whole number >= 0", *(repr(word) for word in words)]
        choices = ", ".join(options[:-1]) + " or " + options[-1]
        super().__init__(f"invalid daily quota {value!r}: use {choices}")
