"""How one request answers on Telegram: status message, chat actions, the toon and its buttons.

The service drives these through its `Reply` protocol; everything here is about which Telegram
message to send or edit, so the service never learns a message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections import Counter

from PIL import Image
from telegram import Bot, InputMediaDocument, InputMediaPhoto, ReplyParameters
from telegram.constants import ChatAction, FileSizeLimit
from telegram.error import BadRequest, TelegramError

from bots.adapter import Background
from bots.service import RefusalKind, Refused, Toon
from bots.telegram.controls import toon_keyboard

log = logging.getLogger(__name__)

# Telegram shows a chat action for 5 s or until the next message; renew it a little sooner.
CHAT_ACTION_EVERY = 4.0
# sendPhoto refuses photos over 10 MB or whose width + height exceed 10000 px, and Telegram
# shows none larger than 2560 px anyway.
MAX_PHOTO_SIDES = 10_000
SHOWN_SIDE = 2560
JPEG_QUALITY = 90


def fit_photo(image: bytes) -> bytes:
    """The toon as Telegram accepts a photo: scaled to the size it shows when it is too big."""
    if len(image) <= FileSizeLimit.PHOTOSIZE_UPLOAD:
        with Image.open(io.BytesIO(image)) as probe:
            if sum(probe.size) <= MAX_PHOTO_SIDES:
                return image
    with Image.open(io.BytesIO(image)) as photo:
        smaller = photo.convert("RGB")
    smaller.thumbnail((SHOWN_SIDE, SHOWN_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    smaller.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


async def _photo(toon: Toon) -> io.BytesIO:
    return io.BytesIO(await asyncio.to_thread(fit_photo, toon.image))


def _not_modified(error: BadRequest) -> bool:
    return "not modified" in error.message.lower()


class ChatActions:
    """Keeps "sending a photo…" showing in each chat while any of its jobs is running: one loop
    per chat however many run there at once, stopped when the last one is done. Failures only
    cost the hint."""

    def __init__(self, bot: Bot, background: Background) -> None:
        self._bot = bot
        self._background = background
        self._running: Counter[int] = Counter()
        self._loops: dict[int, asyncio.Task[None]] = {}

    def hold(self, chat_id: int) -> None:
        """One more job of the chat is running."""
        self._running[chat_id] += 1
        if chat_id not in self._loops:
            work = self._run(chat_id)
            self._loops[chat_id] = self._background.run(work, name=f"chat-action-{chat_id}")

    def release(self, chat_id: int) -> None:
        """One job of the chat is done."""
        self._running[chat_id] -= 1
        if self._running[chat_id] <= 0:
            del self._running[chat_id]
            loop = self._loops.pop(chat_id, None)
            if loop is not None:
                loop.cancel()

    async def _run(self, chat_id: int) -> None:
        while True:
            try:
                await self._bot.send_chat_action(chat_id, ChatAction.UPLOAD_PHOTO)
            except TelegramError as exc:
                log.debug("chat action failed: %s", exc)
            await asyncio.sleep(CHAT_ACTION_EVERY)


class Running:
    """One job's share of its chat's actions: held while it runs, released once."""

    def __init__(self, actions: ChatActions, chat_id: int) -> None:
        self._actions = actions
        self._chat_id = chat_id
        self._held = False

    def start(self) -> None:
        if not self._held:
            self._held = True
            self._actions.hold(self._chat_id)

    def stop(self) -> None:
        if self._held:
            self._held = False
            self._actions.release(self._chat_id)


class StatusReply:
    """A new request: a status message (sent on first news, then edited), then the toon.

    The toon and any refusal reply to the photo; the status message is deleted once the job is
    done, so the chat keeps only the photo and its toon. Progress waits for the ticket ("Found
    2 faces, you're #2 in line") so that it is always the first status shown. A photo sent as
    a file gets its toon as a file (full size, no recompression by Telegram).
    """

    def __init__(
        self, bot: Bot, chat_id: int, photo_id: int, running: Running, *, as_document: bool
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._photo_id = photo_id
        self._running = running
        self._as_document = as_document
        self._ticketed = False
        self._status_id: int | None = None
        self._finished = False
        self._lock = asyncio.Lock()

    async def started(self) -> None:
        """The job left the line: show the chat action until the toon or a refusal is sent."""
        if not self._finished:
            self._running.start()

    async def progress(self, text: str) -> None:
        async with self._lock:
            if self._finished or not self._ticketed:
                return
            try:
                await self._show(text)
            except TelegramError as exc:
                log.warning("status update failed: %s", exc)

    async def queued(self, text: str) -> None:
        """The ticket's text, the first status; progress edits it from then on."""
        async with self._lock:
            self._ticketed = True
            if not self._finished:
                await self._show(text)

    async def deliver(self, toon: Toon) -> None:
        """Returns once Telegram has the toon; raises when it refused it for good."""
        async with self._lock:
            self._finish()
            if self._as_document:
                await self._bot.send_document(
                    self._chat_id,
                    io.BytesIO(toon.image),
                    filename=toon.filename,
                    caption=toon.caption,
                    reply_markup=toon_keyboard(toon),
                    reply_parameters=self._to_photo(),
                )
                return
            await self._bot.send_photo(
                self._chat_id,
                await _photo(toon),
                filename=toon.filename,
                caption=toon.caption,
                reply_markup=toon_keyboard(toon),
                reply_parameters=self._to_photo(),
            )

    async def delivered(self) -> None:
        """The status message makes way for the toon."""
        async with self._lock:
            if self._status_id is not None:
                with contextlib.suppress(BadRequest):
                    await self._bot.delete_message(self._chat_id, self._status_id)

    async def fail(self, error: Refused) -> None:
        async with self._lock:
            self._finish()
            await self._show(error.text)

    def _finish(self) -> None:
        self._finished = True
        self._running.stop()

    def _to_photo(self) -> ReplyParameters:
        return ReplyParameters(self._photo_id, allow_sending_without_reply=True)

    async def _show(self, text: str) -> None:
        """Edit the status message; send one when there is none yet or it was deleted."""
        if self._status_id is not None:
            try:
                await self._bot.edit_message_text(
                    text, chat_id=self._chat_id, message_id=self._status_id
                )
                return
            except BadRequest as exc:
                if _not_modified(exc):
                    return
                log.info("status message gone, sending a new one: %s", exc)
        sent = await self._bot.send_message(self._chat_id, text, reply_parameters=self._to_photo())
        self._status_id = sent.message_id


class RerenderReply:
    """A button press: the toon message's image, caption and buttons are replaced in place,
    as a photo or as a file, whichever the toon was sent as."""

    def __init__(self, bot: Bot, chat_id: int, toon_id: int, *, as_document: bool) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._toon_id = toon_id
        self._as_document = as_document

    async def progress(self, text: str) -> None:
        """Re-renders are short and the press was answered: no status to show."""

    async def deliver(self, toon: Toon) -> None:
        media: InputMediaDocument | InputMediaPhoto
        if self._as_document:
            image = io.BytesIO(toon.image)
            media = InputMediaDocument(image, caption=toon.caption, filename=toon.filename)
        else:
            media = InputMediaPhoto(
                await _photo(toon), caption=toon.caption, filename=toon.filename
            )
        await self._bot.edit_message_media(
            media,
            chat_id=self._chat_id,
            message_id=self._toon_id,
            reply_markup=toon_keyboard(toon),
        )

    async def fail(self, error: Refused) -> None:
        """Say why under the toon; buttons whose latents are gone are taken away."""
        if error.kind == RefusalKind.EXPIRED:
            with contextlib.suppress(BadRequest):
                await self._bot.edit_message_reply_markup(self._chat_id, self._toon_id)
        await self._bot.send_message(
            self._chat_id,
            error.text,
            reply_parameters=ReplyParameters(self._toon_id, allow_sending_without_reply=True),
        )


class Replies:
    """The replies of one bot, whose chat actions run in the adapter's background."""

    def __init__(self, bot: Bot, background: Background) -> None:
        self._bot = bot
        self._actions = ChatActions(bot, background)

    def status(self, chat_id: int, photo_id: int, *, as_document: bool) -> StatusReply:
        """For a request made with the photo `photo_id`, new or resumed after a restart."""
        running = Running(self._actions, chat_id)
        return StatusReply(self._bot, chat_id, photo_id, running, as_document=as_document)

    def rerender(self, chat_id: int, toon_id: int, *, as_document: bool) -> RerenderReply:
        return RerenderReply(self._bot, chat_id, toon_id, as_document=as_document)
