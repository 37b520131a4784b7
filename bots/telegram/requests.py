"""A Telegram request on its way to the service: which image a message carries, whether a
group's caption asks this bot, who asks, and the request's stored reference.

The service admits a request from what Telegram says about the file; its job row is written
before `toonify` returns, and with it before the update is confirmed to Telegram
(bots/telegram/updates.py). Re-renders run in the background, so that a press is confirmed
at once.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Chat, Message, MessageEntity, User
from telegram.constants import ChatType
from telegram.error import TelegramError

from bots.adapter import Background, refusing
from bots.service import Refused, Requester, ToonService, Upload
from bots.telegram.replies import Replies, RerenderReply, StatusReply
from bots.toons import ImageFormat, same_family

log = logging.getLogger(__name__)

PLATFORM = "telegram"


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
    kinds: list[str | None] = [MessageEntity.BOT_COMMAND, MessageEntity.MENTION]
    for entity, text in message.parse_caption_entities(kinds).items():
        if entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0:
            command, _, target = text[1:].lower().partition("@")
            if command == "toonify" and target in ("", me):
                return True
        if entity.type == MessageEntity.MENTION and text[1:].lower() == me:
            return True
    return False


class Requests:
    """Toonify requests and re-renders, from Telegram messages to service calls."""

    def __init__(
        self,
        service: ToonService,
        admins: frozenset[int],
        replies: Replies,
        background: Background,
    ) -> None:
        self._service = service
        self._admins = admins
        self._replies = replies
        self._background = background

    def requester(self, user: User, chat: Chat | None) -> Requester:
        """Who asks; in a group, the group too (it may have its own quota)."""
        in_group = chat is not None and chat.type != ChatType.PRIVATE
        return Requester(
            platform=PLATFORM,
            user_id=str(user.id),
            name=user.full_name,
            group_id=str(chat.id) if in_group and chat is not None else None,
            is_admin=user.id in self._admins,
        )

    async def toonify(self, photo: Message, asked: Message) -> None:
        """Have the service admit `photo`, which the message `asked` asked for."""
        found = media_of(photo)
        assert found is not None and asked.from_user is not None
        file_id, upload = found
        who = self.requester(asked.from_user, asked.chat)
        ref: dict[str, Any] = {
            "chat_id": photo.chat_id,
            "message_id": photo.message_id,
            "file_id": file_id,
        }
        image_format = ImageFormat.JPEG
        if photo.document is not None:
            ref["document"] = True
            image_format = same_family(upload.content_type)
        reply = self.reply_for(ref)
        key = f"{PLATFORM}:{asked.chat_id}:{asked.message_id}"
        try:
            with refusing("a Telegram request"):
                await self._service.admit(
                    who, upload, reply, ref=ref, key=key, image_format=image_format
                )
        except Refused as refused:
            await reply.fail(refused)

    def reply_for(self, ref: dict[str, Any]) -> StatusReply:
        """How a job answers: under its photo, as a photo, or as a file for a file."""
        as_document = bool(ref.get("document", False))
        chat_id, photo_id = int(ref["chat_id"]), int(ref["message_id"])
        return self._replies.status(chat_id, photo_id, as_document=as_document)

    def rerender(self, who: Requester, toon: Message, result_id: str, change: str) -> None:
        """Re-render the toon `toon` shows, in the background; it is replaced when drawn."""
        as_document = toon.document is not None
        reply = self._replies.rerender(toon.chat_id, toon.message_id, as_document=as_document)
        self._background.run(self._rerender(who, result_id, reply, change))

    async def _rerender(
        self, who: Requester, result_id: str, reply: RerenderReply, change: str
    ) -> None:
        try:
            with refusing("a Telegram re-render"):
                await self._service.rerender(who, result_id, reply, change=change)
        except Refused as refused:
            try:
                await reply.fail(refused)
            except TelegramError as exc:
                log.warning("could not answer a button press: %s", exc)
