"""What the bot does with each kind of Telegram update; `Handlers.routes` lists them all.

Requests are any photo or image file in a private chat; in groups only `/toonify` on or under
a photo, or a mention in a photo's caption (bots/telegram/requests.py takes them to the
service). Button presses are routed by their callback data (bots/telegram/controls.py).
Texts come from bots/texts.py; what happens to a photo is the service's business.
"""

from __future__ import annotations

import logging
import re

from telegram import CallbackQuery, Message, Update, User
from telegram.constants import ChatType
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    BaseHandler,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from bots import texts
from bots.adapter import internal_error, refusing
from bots.service import Refused, ToonService
from bots.telegram.controls import FORGET_NO, FORGET_YES, RERENDER, forget_keyboard
from bots.telegram.requests import Requests, caption_asks_bot, media_of
from bots.telegram.updates import Context

log = logging.getLogger(__name__)

ADMIN_ARITY = {"quota": 2, "ban": 1, "unban": 1, "stats": 0}
MEDIA = filters.PHOTO | filters.Document.ALL
NOT_IMAGES = (
    filters.VIDEO | filters.VIDEO_NOTE | filters.Sticker.ALL | filters.AUDIO | filters.VOICE
)


async def answer(query: CallbackQuery, alert: str | None = None) -> None:
    """Stop the button's spinner (with an alert to read, if any).

    Telegram refuses answers to presses older than a few seconds (say, queued while the bot
    was down); the press itself is still worth acting on.
    """
    try:
        await query.answer(alert, show_alert=alert is not None)
    except BadRequest as exc:
        log.info("button press not answered: %s", exc)


def _message(update: Update) -> Message:
    assert update.effective_message is not None
    return update.effective_message


def _asked(update: Update) -> tuple[Message, User]:
    message = _message(update)
    assert message.from_user is not None
    return message, message.from_user


def _pressed(update: Update, context: Context) -> tuple[CallbackQuery, re.Match[str]]:
    """The press and its callback data as the route's pattern matched it."""
    assert update.callback_query is not None and context.match is not None
    return update.callback_query, context.match


class Handlers:
    """One small handler per kind of update, on top of the service."""

    def __init__(self, service: ToonService, requests: Requests) -> None:
        self._service = service
        self._requests = requests

    def routes(self) -> list[BaseHandler[Update, Context, None]]:
        """The routing table: the first handler whose filter or pattern matches wins."""
        private, groups = filters.ChatType.PRIVATE, filters.ChatType.GROUPS
        return [
            CommandHandler(["start", "help"], self.help),
            CommandHandler("quota", self.quota),
            CommandHandler("forget", self.forget),
            CommandHandler("admin", self.admin),
            CommandHandler("toonify", self.toonify_command),
            MessageHandler(private & MEDIA, self.private_media),
            MessageHandler(groups & MEDIA & filters.CAPTION, self.group_media),
            MessageHandler(private & NOT_IMAGES, self.not_image),
            MessageHandler(private & filters.TEXT & ~filters.COMMAND, self.help),
            CallbackQueryHandler(self.rerender, pattern=RERENDER),
            CallbackQueryHandler(self.forget_confirmed, pattern=FORGET_YES),
            CallbackQueryHandler(self.forget_declined, pattern=FORGET_NO),
            CallbackQueryHandler(self.unknown_press),
        ]

    # ---- commands and messages -------------------------------------------------------------

    async def help(self, update: Update, context: Context) -> None:
        """What the bot does, and its privacy promise; in a group, how to ask it there."""
        message = _message(update)
        if message.chat.type == ChatType.PRIVATE:
            await message.reply_text(texts.HELP)
        else:
            await message.reply_text(texts.group_help(context.bot.username))

    async def not_image(self, update: Update, context: Context) -> None:
        """Videos, stickers and voice notes are not photos; say so."""
        await _message(update).reply_text(texts.NOT_IMAGE, do_quote=True)

    async def quota(self, update: Update, context: Context) -> None:
        """Toons left today and when they reset."""
        message, user = _asked(update)
        who = self._requests.requester(user, message.chat)
        await message.reply_text(await self._service.quota_text(who))

    async def forget(self, update: Update, context: Context) -> None:
        """Ask before deleting everything stored about the user."""
        message, user = _asked(update)
        await message.reply_text(texts.FORGET_CONFIRM, reply_markup=forget_keyboard(user.id))

    async def admin(self, update: Update, context: Context) -> None:
        """`/admin quota <user> <n|unlimited|default>`, `/admin ban|unban <user>`, `/admin stats`.

        <user> is a Telegram user id, "discord:<id>" for the other platform, or left out when
        the command replies to that user's message. The service judges the values.
        """
        message, user = _asked(update)
        who = self._requests.requester(user, message.chat)
        if not who.is_admin:
            await message.reply_text(texts.NOT_ADMIN)
            return
        args = list(context.args or [])
        action = args.pop(0).lower() if args else ""
        replied = message.reply_to_message
        replied_to = replied.from_user if replied is not None else None
        target_missing = action in ADMIN_ARITY and len(args) < ADMIN_ARITY[action]
        if target_missing and replied_to is not None:
            args.insert(0, str(replied_to.id))
        if action not in ADMIN_ARITY or len(args) != ADMIN_ARITY[action]:
            await message.reply_text(texts.ADMIN_USAGE)
            return
        target = args[0] if args else None
        value = args[1] if len(args) > 1 else None
        named = replied_to is not None and target == str(replied_to.id)
        name = replied_to.full_name if replied_to is not None and named else None
        try:
            said = await self._service.admin(who, action, target, value, name=name)
        except Refused as refused:
            said = refused.text
        await message.reply_text(said)

    async def toonify_command(self, update: Update, context: Context) -> None:
        """`/toonify` as a reply to a photo toonifies that photo."""
        message, _ = _asked(update)
        photo = message.reply_to_message
        if photo is None or media_of(photo) is None:
            private = message.chat.type == ChatType.PRIVATE
            await message.reply_text(texts.SEND_A_PHOTO if private else texts.HOW_IN_GROUPS)
            return
        await self._requests.toonify(photo, message)

    async def private_media(self, update: Update, context: Context) -> None:
        """In a private chat every photo or file is a request."""
        message, _ = _asked(update)
        await self._requests.toonify(message, message)

    async def group_media(self, update: Update, context: Context) -> None:
        """In a group only a photo whose caption asks this bot is."""
        message, _ = _asked(update)
        if caption_asks_bot(message, context.bot.username):
            await self._requests.toonify(message, message)

    # ---- button presses --------------------------------------------------------------------

    async def rerender(self, update: Update, context: Context) -> None:
        """Answer the press at once; the new toon replaces the old one when it is drawn.
        Anyone but the requester gets an alert only they see, and the chat stays as it was."""
        query, match = _pressed(update, context)
        message = query.message
        if not isinstance(message, Message):
            await answer(query, texts.EXPIRED)
            return
        who = self._requests.requester(query.from_user, message.chat)
        try:
            with refusing("a Telegram button press"):
                await self._service.check_owner(who, match["result"])
        except Refused as refused:
            await answer(query, refused.text)
            return
        await answer(query)
        self._requests.rerender(who, message, match["result"], match["change"])

    async def forget_confirmed(self, update: Update, context: Context) -> None:
        """Delete everything stored about the one who asked, if they pressed."""
        query, match = _pressed(update, context)
        if await self._by_owner(query, match):
            chat = query.message.chat if query.message else None
            await self._service.forget(self._requests.requester(query.from_user, chat))
            await query.edit_message_text(texts.FORGOTTEN)

    async def forget_declined(self, update: Update, context: Context) -> None:
        """Keep everything, and say so."""
        query, match = _pressed(update, context)
        if await self._by_owner(query, match):
            await query.edit_message_text(texts.FORGET_KEPT)

    async def unknown_press(self, update: Update, context: Context) -> None:
        """A button this bot no longer makes: stop its spinner."""
        assert update.callback_query is not None
        await answer(update.callback_query)

    async def on_error(self, update: object, context: Context) -> None:
        """Whatever a handler did not expect: logged under an id the user can quote."""
        if context.error is None:
            return
        refused = internal_error("a Telegram update", context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            try:
                await context.bot.send_message(update.effective_chat.id, refused.text)
            except TelegramError as exc:
                log.warning("could not report error %s: %s", refused.error_id, exc)

    async def _by_owner(self, query: CallbackQuery, match: re.Match[str]) -> bool:
        """Only the one who asked may answer; anyone else gets an alert."""
        if str(query.from_user.id) != match["owner"]:
            await answer(query, texts.NOT_YOUR_BUTTON)
            return False
        await answer(query)
        return True
