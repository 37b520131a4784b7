"""The buttons under a toon and under /forget's question, and the callback data they carry.

Telegram hands a press back as its button's callback data (64 bytes at most). Each kind of
press has one pattern here, which both routes it (`CallbackQueryHandler(pattern=...)` in
bots/telegram/handlers.py) and parses it: the handler reads the groups of the match. The
formats are those of buttons already sent, so presses on old messages keep working.
"""

from __future__ import annotations

import logging
import re

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import InlineKeyboardButtonLimit

from bots import texts
from bots.service import Toon

log = logging.getLogger(__name__)

# A change to a toon: "less", "more", "faces", "photo" or "style:<name>" (the service's words).
RERENDER = re.compile(r"r\|(?P<result>[^|]+)\|(?P<change>.+)$")
FORGET_YES = re.compile(r"f\|yes\|(?P<owner>\d+)$")
FORGET_NO = re.compile(r"f\|no\|(?P<owner>\d+)$")


def rerender_data(result_id: str, change: str) -> str:
    return f"r|{result_id}|{change}"


def forget_data(answer: str, user_id: int) -> str:
    return f"f|{answer}|{user_id}"


def toon_keyboard(toon: Toon) -> InlineKeyboardMarkup | None:
    """Less/More toon, one button per other style, Faces only (or back to the whole photo)."""
    strength = []
    if toon.can_less:
        strength.append((texts.LESS_TOON, "less"))
    if toon.can_more:
        strength.append((texts.MORE_TOON, "more"))
    styles = [(label, f"style:{name}") for name, label in toon.styles if name != toon.style]
    view = [(texts.WHOLE_PHOTO, "photo") if toon.faces_only else (texts.FACES_ONLY, "faces")]
    rows = []
    for row in (strength, styles, view):
        buttons = [
            InlineKeyboardButton(label, callback_data=rerender_data(toon.result_id, change))
            for label, change in row
            if _fits(rerender_data(toon.result_id, change))
        ]
        if buttons:
            rows.append(buttons)
    return InlineKeyboardMarkup(rows) if rows else None


def forget_keyboard(user_id: int) -> InlineKeyboardMarkup:
    """Yes or no, answerable by the one who asked only (their id is in the data)."""
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(texts.FORGET_YES, callback_data=forget_data("yes", user_id)),
                InlineKeyboardButton(texts.FORGET_NO, callback_data=forget_data("no", user_id)),
            ]
        ]
    )


def _fits(data: str) -> bool:
    if len(data.encode()) <= InlineKeyboardButtonLimit.MAX_CALLBACK_DATA:
        return True
    log.warning("callback data over Telegram's 64 bytes, button left out: %s", data)
    return False
