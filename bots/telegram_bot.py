"""The Telegram adapter: python-telegram-bot in front of the platform-neutral ToonService.

It decides which messages are requests (any photo or image file in a private chat; in groups
only `/toonify` on or under a photo, or a mention in a photo's caption), has the service admit
them from what Telegram says about the file (the job row is written before the update is
confirmed to Telegram: bots/telegram_updates.py), fetches photos for the service by their
file id, and turns buttons and commands into service calls. Handlers return as soon as a
request is admitted; longer work (re-renders) runs in the background. Texts come from
bots/texts.py; what happens to a photo is the service's business.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    Update,
    User,
)
from telegram.constants import ChatType
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bots import texts
from bots.config import TelegramSettings
from bots.service import RefusalKind, Refused, Requester, ToonService, Upload
from bots.startup import StartupFault, until_reachable
from bots.telegram_net import RetryingRateLimiter, retrying
from bots.telegram_replies import (
    FORGET,
    RERENDER,
    SEP,
    ChatActions,
    RerenderReply,
    StatusReply,
    forget_data,
)
from bots.telegram_updates import Poller, WebhookServer

log = logging.getLogger(__name__)

T = TypeVar("T")

PLATFORM = "telegram"
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
START_HINT = "check the network, or telegram.api_base_url"
TOKEN_FIX = "copy the token @BotFather gave you into TOONIFY_TELEGRAM_TOKEN"
ADMIN_ARITY = {"quota": 2, "ban": 1, "unban": 1, "stats": 0}
MEDIA = filters.PHOTO | filters.Document.ALL
NOT_IMAGES = (
    filters.VIDEO | filters.VIDEO_NOTE | filters.Sticker.ALL | filters.AUDIO | filters.VOICE
)

Context = ContextTypes.DEFAULT_TYPE


def new_error_id() -> str:
    """Short enough to read out to an admin, unique enough to find in the log."""
    return secrets.token_hex(4)


def internal(error: BaseException) -> Refused:
    error_id = new_error_id()
    log.error("internal error %s", error_id, exc_info=error)
    return Refused(RefusalKind.INTERNAL, texts.internal_error(error_id), error_id)


def media_of(message: Message | None) -> tuple[str, Upload] | None:
    """The image a message carries and what Telegram says about it before any download.

    A photo comes in several sizes, smallest first: the last is the original.
    """
    if message is None:
        return None
    if message.photo:
        largest = message.photo[-1]
        return largest.file_id, Upload(largest.file_size, "image/jpeg", None)
    if message.document:
        document = message.document
        return document.file_id, Upload(document.file_size, document.mime_type, document.file_name)
    return None


def caption_asks_bot(message: Message, username: str) -> bool:
    """A caption that starts with /toonify (bare or addressed to this bot) or mentions it."""
    me = username.lower()
    kinds = [MessageEntity.BOT_COMMAND, MessageEntity.MENTION]
    for entity, text in message.parse_caption_entities(kinds).items():
        if entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0:
            command, _, target = text[1:].lower().partition("@")
            if command == "toonify" and target in ("", me):
                return True
        if entity.type == MessageEntity.MENTION and text[1:].lower() == me:
            return True
    return False


async def answer(query: CallbackQuery, alert: str | None = None) -> None:
    """Stop the button's spinner (with an alert to read, if any).

    Telegram refuses answers to presses older than a few seconds (say, queued while the bot
    was down); the press itself is still worth acting on.
    """
    try:
        await query.answer(alert, show_alert=alert is not None)
    except BadRequest as exc:
        log.info("button press not answered: %s", exc)


class TelegramBot:
    """The Telegram side of the bot: build with the config and the service, then start/stop."""

    def __init__(self, config: TelegramSettings, service: ToonService) -> None:
        if config.token is None or not config.token.get_secret_value().strip():
            raise StartupFault(f"the Telegram token is empty: {TOKEN_FIX}")
        self._config = config
        self._service = service
        self._admins = frozenset(config.admins)
        self._actions: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._poller: Poller | None = None
        self._webhook: WebhookServer | None = None
        self.app: Application = (
            Application.builder()
            .token(config.token.get_secret_value().strip())
            .base_url(config.api_base_url)
            .base_file_url(config.file_base_url)
            .rate_limiter(RetryingRateLimiter())
            .concurrent_updates(True)
            .updater(None)
            .build()
        )
        self._add_handlers()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, publish the command menu, then receive updates (long polling or webhook)."""
        await self._reach(self.app.initialize)
        commands = [BotCommand(name, description) for name, description in texts.COMMANDS]
        await self._reach(lambda: self.app.bot.set_my_commands(commands))
        self._service.register(PLATFORM, self)
        await self.app.start()
        if self._config.mode == "webhook":
            await self._start_webhook()
        else:
            await self._reach(lambda: self.app.bot.delete_webhook())
            self._poller = Poller(self.app, ALLOWED_UPDATES)
            self._poller.start()

    async def _start_webhook(self) -> None:
        secret = self._config.webhook_secret
        token = secret.get_secret_value() if secret else secrets.token_urlsafe(32)
        self._webhook = WebhookServer(self.app, token, urlsplit(self._config.webhook_url).path)
        await self._webhook.start(self._config.webhook_listen, self._config.webhook_port)
        await self._reach(
            lambda: self.app.bot.set_webhook(
                self._config.webhook_url, secret_token=token, allowed_updates=ALLOWED_UPDATES
            ),
            refused="telegram.webhook_url",
        )

    async def _reach(self, call: Callable[[], Awaitable[T]], refused: str = "the request") -> T:
        """A start-up call to Telegram: network failures retried, a refusal ends the start."""

        async def attempt() -> T:
            try:
                return await call()
            except InvalidToken as exc:
                raise StartupFault(f"Telegram rejected the bot token ({exc}): {TOKEN_FIX}") from exc
            except BadRequest as exc:
                raise StartupFault(f"Telegram refused {refused}: {exc.message}") from exc

        return await until_reachable(
            attempt, what="Telegram", transient=(NetworkError, RetryAfter), hint=START_HINT
        )

    async def stop(self) -> None:
        """Stop receiving (confirming what was admitted), drop background work, disconnect.

        Also after a start that failed or was cut short."""
        if self._poller is not None:
            await self._poller.stop()
        if self._webhook is not None:
            await self._webhook.stop()
        for task in [*self._actions, *self._background]:
            task.cancel()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()

    # ---- JobSource: the service works from the stored reference ----------------------------

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        return await self._download(str(ref["file_id"]))

    def reply_for(self, ref: dict[str, Any]) -> StatusReply:
        chat_id = int(ref["chat_id"])
        actions = self._chat_actions(chat_id)
        return StatusReply(self.app.bot, chat_id, int(ref["message_id"]), actions)

    # ---- handlers -------------------------------------------------------------------------

    def _add_handlers(self) -> None:
        app = self.app
        app.add_handler(CommandHandler(["start", "help"], self._on_help))
        app.add_handler(CommandHandler("quota", self._on_quota))
        app.add_handler(CommandHandler("forget", self._on_forget))
        app.add_handler(CommandHandler("admin", self._on_admin))
        app.add_handler(CommandHandler("toonify", self._on_toonify_command))
        app.add_handler(MessageHandler(filters.ChatType.PRIVATE & MEDIA, self._on_private_media))
        app.add_handler(
            MessageHandler(filters.ChatType.GROUPS & MEDIA & filters.CAPTION, self._on_group_media)
        )
        app.add_handler(MessageHandler(filters.ChatType.PRIVATE & NOT_IMAGES, self._on_not_image))
        chatter = filters.ChatType.PRIVATE & filters.TEXT & ~filters.COMMAND
        app.add_handler(MessageHandler(chatter, self._on_help))
        app.add_handler(CallbackQueryHandler(self._on_button))
        app.add_error_handler(self._on_error)

    async def _on_help(self, update: Update, context: Context) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(texts.HELP)

    async def _on_not_image(self, update: Update, context: Context) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(texts.NOT_IMAGE, do_quote=True)

    async def _on_quota(self, update: Update, context: Context) -> None:
        message, who = self._asked(update)
        await message.reply_text(await self._service.quota_text(who))

    async def _on_forget(self, update: Update, context: Context) -> None:
        message, _ = self._asked(update)
        assert message.from_user is not None
        user_id = message.from_user.id
        buttons = [
            InlineKeyboardButton(texts.FORGET_YES, callback_data=forget_data("yes", user_id)),
            InlineKeyboardButton(texts.FORGET_NO, callback_data=forget_data("no", user_id)),
        ]
        await message.reply_text(texts.FORGET_CONFIRM, reply_markup=InlineKeyboardMarkup([buttons]))

    async def _on_admin(self, update: Update, context: Context) -> None:
        """`/admin quota <user> <n|unlimited|default>`, `/admin ban|unban <user>`, `/admin stats`.

        <user> is a Telegram user id, "discord:<id>" for the other platform, or left out when
        the command replies to that user's message. The service judges the values.
        """
        message, who = self._asked(update)
        if not who.is_admin:
            await message.reply_text(texts.NOT_ADMIN)
            return
        args = list(context.args or [])
        action = args.pop(0).lower() if args else ""
        replied = message.reply_to_message
        target_missing = action in ADMIN_ARITY and len(args) < ADMIN_ARITY[action]
        if target_missing and replied is not None and replied.from_user is not None:
            args.insert(0, str(replied.from_user.id))
        if action not in ADMIN_ARITY or len(args) != ADMIN_ARITY[action]:
            await message.reply_text(texts.ADMIN_USAGE)
            return
        target = args[0] if args else None
        value = args[1] if len(args) > 1 else None
        try:
            answer = await self._service.admin(who, action, target, value)
        except Refused as refused:
            answer = refused.text
        await message.reply_text(answer)

    async def _on_toonify_command(self, update: Update, context: Context) -> None:
        """`/toonify` as a reply to a photo toonifies that photo."""
        message, _ = self._asked(update)
        photo = message.reply_to_message
        if photo is None or media_of(photo) is None:
            private = message.chat.type == ChatType.PRIVATE
            await message.reply_text(texts.SEND_A_PHOTO if private else texts.HOW_IN_GROUPS)
            return
        await self._toonify(photo, message)

    async def _on_private_media(self, update: Update, context: Context) -> None:
        message, _ = self._asked(update)
        await self._toonify(message, message)

    async def _on_group_media(self, update: Update, context: Context) -> None:
        message, _ = self._asked(update)
        if caption_asks_bot(message, self.app.bot.username):
            await self._toonify(message, message)

    async def _on_button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        assert query is not None
        kind, _, rest = (query.data or "").partition(SEP)
        if kind == FORGET:
            await self._on_forget_button(query, rest)
        elif kind == RERENDER:
            await self._on_rerender_button(query, rest)
        else:
            await answer(query)

    async def _on_forget_button(self, query: CallbackQuery, rest: str) -> None:
        choice, _, owner = rest.partition(SEP)
        if str(query.from_user.id) != owner:
            await answer(query, texts.NOT_YOUR_BUTTON)
            return
        await answer(query)
        if choice == "yes":
            chat = query.message.chat if query.message else None
            await self._service.forget(self._requester(query.from_user, chat))
        await query.edit_message_text(texts.FORGOTTEN if choice == "yes" else texts.FORGET_KEPT)

    async def _on_rerender_button(self, query: CallbackQuery, rest: str) -> None:
        """Answer the press at once; the new toon replaces the old one when it is drawn."""
        message = query.message
        if not isinstance(message, Message):
            await answer(query, texts.EXPIRED)
            return
        await answer(query)
        result_id, _, change = rest.partition(SEP)
        who = self._requester(query.from_user, message.chat)
        actions = self._chat_actions(message.chat_id)
        reply = RerenderReply(self.app.bot, message.chat_id, message.message_id, actions)
        task = asyncio.create_task(self._rerender(who, result_id, reply, change))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rerender(
        self, who: Requester, result_id: str, reply: RerenderReply, change: str
    ) -> None:
        """In the background: the press is confirmed to Telegram without waiting for it."""
        try:
            await self._service.rerender(who, result_id, reply, change=change)
        except Refused as refused:
            await self._tell(reply.fail(refused))
        except Exception as exc:
            await self._tell(reply.fail(internal(exc)))

    @staticmethod
    async def _tell(notice: Awaitable[None]) -> None:
        try:
            await notice
        except TelegramError as exc:
            log.warning("could not answer a button press: %s", exc)

    async def _on_error(self, update: object, context: Context) -> None:
        """Whatever a handler did not expect: logged under an id the user can quote."""
        if context.error is None:
            return
        refused = internal(context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            try:
                await context.bot.send_message(update.effective_chat.id, refused.text)
            except TelegramError as exc:
                log.warning("could not report error %s: %s", refused.error_id, exc)

    # ---- the request ----------------------------------------------------------------------

    async def _toonify(self, photo: Message, asked: Message) -> None:
        """Have the service admit the photo from what Telegram says about it; the job row is
        written before this returns, and with it before the update is confirmed."""
        found = media_of(photo)
        assert found is not None and asked.from_user is not None
        file_id, upload = found
        who = self._requester(asked.from_user, asked.chat)
        chat_id = photo.chat_id
        reply = StatusReply(self.app.bot, chat_id, photo.message_id, self._chat_actions(chat_id))
        ref = {"chat_id": chat_id, "message_id": photo.message_id, "file_id": file_id}
        key = f"{PLATFORM}:{asked.chat_id}:{asked.message_id}"
        try:
            admitted = await self._service.admit(who, upload, reply, ref=ref, key=key)
        except Refused as refused:
            await reply.fail(refused)
            return
        except Exception as exc:
            await reply.fail(internal(exc))
            return
        if admitted is not None:
            reply.working()

    async def _download(self, file_id: str) -> bytes:
        async def fetch() -> bytes:
            file = await self.app.bot.get_file(file_id)
            return bytes(await file.download_as_bytearray())

        return await retrying(fetch)

    # ---- helpers --------------------------------------------------------------------------

    def _chat_actions(self, chat_id: int) -> ChatActions:
        return ChatActions(self.app.bot, chat_id, self._actions)

    def _asked(self, update: Update) -> tuple[Message, Requester]:
        message = update.effective_message
        assert message is not None and message.from_user is not None
        return message, self._requester(message.from_user, message.chat)

    def _requester(self, user: User, chat: Chat | None) -> Requester:
        """Who asks; in a group, the group too (it may have its own quota)."""
        in_group = chat is not None and chat.type != ChatType.PRIVATE
        return Requester(
            platform=PLATFORM,
            user_id=str(user.id),
            name=user.full_name,
            group_id=str(chat.id) if in_group and chat is not None else None,
            is_admin=user.id in self._admins,
        )
