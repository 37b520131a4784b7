"""The fake Bot API server speaks the protocol the real python-telegram-bot expects."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from PIL import Image
from skimage import data as samples
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram import FakeTelegram, buttons


def _jpeg(array: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG")  # type: ignore[arg-type]
    return out.getvalue()


def _application(fake: FakeTelegram, rate_limiter: bool = True) -> Application:
    builder = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
    )
    if rate_limiter:
        builder = builder.rate_limiter(AIORateLimiter(max_retries=2))
    return builder.build()


@asynccontextmanager
async def _polling(app: Application) -> AsyncIterator[Application]:
    """Run the application with long polling (the default 10 s poll) for the block."""
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


async def _echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(update.effective_message.text or "", do_quote=True)


async def test_echo_through_long_polling(fake_telegram: FakeTelegram) -> None:
    app = _application(fake_telegram)
    app.add_handler(MessageHandler(filters.TEXT, _echo))
    ada = fake_telegram.user(7, "Ada")
    chat = fake_telegram.private_chat(ada)
    async with _polling(app):
        sent = fake_telegram.push_message(chat, ada, text="hello there")
        reply = await fake_telegram.wait_for("sendMessage")
    assert reply.params["text"] == "hello there"
    assert reply.params["chat_id"] == ada["id"]
    assert reply.params["reply_parameters"]["message_id"] == sent["message_id"]
    assert reply.result["reply_to_message"]["message_id"] == sent["message_id"]
    assert fake_telegram.calls_of("getMe")
    # The update was confirmed with the next offset, so a restart would not see it again.
    last_poll = fake_telegram.calls_of("getUpdates")[-1]
    assert last_poll.params["offset"] > sent["message_id"]


async def test_flood_control_is_waited_out(fake_telegram: FakeTelegram) -> None:
    app = _application(fake_telegram)
    app.add_handler(MessageHandler(filters.TEXT, _echo))
    ada = fake_telegram.user(7)
    chat = fake_telegram.private_chat(ada)
    fake_telegram.fail_next("sendMessage", retry_after=1)
    async with _polling(app):
        fake_telegram.push_message(chat, ada, text="again")
        reply = await fake_telegram.wait_for("sendMessage")
    refused, delivered = fake_telegram.calls_of("sendMessage")
    assert refused.status == 429
    assert delivered is reply
    assert delivered.at - refused.at >= 1.0


async def test_429_reaches_a_bot_without_rate_limiter(fake_telegram: FakeTelegram) -> None:
    app = _application(fake_telegram, rate_limiter=False)
    chat = fake_telegram.private_chat(fake_telegram.user(7))
    fake_telegram.fail_next("sendMessage", retry_after=3)
    async with app:
        with pytest.raises(RetryAfter) as caught:
            await app.bot.send_message(chat["id"], "hi")
    assert "Retry in 3 seconds" in str(caught.value)


async def test_photo_download_and_uploads(fake_telegram: FakeTelegram) -> None:
    downloaded: list[bytes] = []

    async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        assert message is not None and message.photo
        largest = message.photo[-1]
        assert largest.file_size == 123_456
        photo = await largest.get_file()
        downloaded.append(bytes(await photo.download_as_bytearray()))
        await message.reply_photo(io.BytesIO(b"toon-bytes"), filename="toon.jpg")
        await message.reply_document(io.BytesIO(b"png-bytes"), filename="toon.png")

    app = _application(fake_telegram)
    app.add_handler(MessageHandler(filters.PHOTO, on_photo))
    ada = fake_telegram.user(7)
    chat = fake_telegram.private_chat(ada)
    selfie = _jpeg(samples.astronaut())
    async with _polling(app):
        fake_telegram.push_message(
            chat, ada, photo=fake_telegram.add_file(selfie, file_size=123_456)
        )
        photo = await fake_telegram.wait_for("sendPhoto")
        document = await fake_telegram.wait_for("sendDocument")
    assert downloaded == [selfie]
    assert photo.files["photo"].data == b"toon-bytes"
    assert photo.files["photo"].filename == "toon.jpg"
    assert document.files["document"].data == b"png-bytes"
    assert document.files["document"].content_type == "image/png"
    assert [c.name for c in fake_telegram.calls_of("getFile", "download")] == [
        "getFile",
        "download",
    ]


async def test_image_document_carries_its_mime_type(fake_telegram: FakeTelegram) -> None:
    seen: list[tuple[str | None, int | None]] = []

    async def on_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        document = update.effective_message.document  # type: ignore[union-attr]
        assert document is not None
        seen.append((document.mime_type, document.file_size))
        await update.effective_message.reply_text("got it")  # type: ignore[union-attr]

    app = _application(fake_telegram)
    app.add_handler(MessageHandler(filters.Document.IMAGE, on_document))
    ada = fake_telegram.user(7)
    chat = fake_telegram.private_chat(ada)
    image = fake_telegram.add_file(b"\x89PNG...", mime_type="image/png", file_name="me.png")
    async with _polling(app):
        fake_telegram.push_message(chat, ada, document=image)
        await fake_telegram.wait_for("sendMessage")
    assert seen == [("image/png", len(b"\x89PNG..."))]


async def test_group_caption_command_and_mention_entities(fake_telegram: FakeTelegram) -> None:
    seen: list[list[str]] = []

    async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        assert message is not None
        seen.append(list(message.parse_caption_entities().values()))
        await message.reply_text("ok")

    app = _application(fake_telegram)
    app.add_handler(MessageHandler(filters.PHOTO, on_photo))
    ada = fake_telegram.user(7)
    group = fake_telegram.group_chat()
    photo = fake_telegram.add_file(_jpeg(samples.astronaut()))
    async with _polling(app):
        fake_telegram.push_message(group, ada, photo=photo, caption="/toonify@toonify_test_bot")
        last = fake_telegram.push_message(
            group, ada, photo=photo, caption="hé @toonify_test_bot please"
        )
        await fake_telegram.wait_for(
            "sendMessage",
            lambda c: c.params["reply_parameters"]["message_id"] == last["message_id"],
        )
    assert seen == [["/toonify@toonify_test_bot"], ["@toonify_test_bot"]]


async def test_button_press_is_answered_and_edits(fake_telegram: FakeTelegram) -> None:
    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer()
        await query.edit_message_text(f"pressed {query.data}")

    app = _application(fake_telegram)
    app.add_handler(CallbackQueryHandler(on_button))
    ada = fake_telegram.user(7)
    chat = fake_telegram.private_chat(ada)
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("More toon", callback_data="more")]])
    async with _polling(app):
        await app.bot.send_message(chat["id"], "pick", reply_markup=markup)
        sent = await fake_telegram.wait_for("sendMessage")
        assert [b["text"] for b in buttons(sent)] == ["More toon"]
        query_id = fake_telegram.push_callback(ada, sent.result, buttons(sent)[0]["callback_data"])
        answer = await fake_telegram.wait_for("answerCallbackQuery")
        edit = await fake_telegram.wait_for("editMessageText")
    assert answer.params["callback_query_id"] == query_id
    assert edit.params["text"] == "pressed more"
    assert fake_telegram.messages[(chat["id"], sent.result["message_id"])]["text"] == "pressed more"


async def test_bot_api_refusals_match_telegram(fake_telegram: FakeTelegram) -> None:
    app = _application(fake_telegram, rate_limiter=False)
    chat = fake_telegram.private_chat(fake_telegram.user(7))
    async with app:
        sent = await app.bot.send_message(chat["id"], "status")
        with pytest.raises(BadRequest, match="not modified"):
            await sent.edit_text("status")
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await app.bot.send_message(999, "nobody")
        fake_telegram.drop_next("sendChatAction")
        with pytest.raises(NetworkError):
            await app.bot.send_chat_action(chat["id"], "upload_photo")
        assert await app.bot.send_chat_action(chat["id"], "upload_photo")
        assert await app.bot.set_my_commands([("start", "Start"), ("help", "Help")])
        assert await sent.delete()
        with pytest.raises(BadRequest, match="not found"):
            await sent.delete()
    assert [c["command"] for c in fake_telegram.commands] == ["start", "help"]
    assert fake_telegram.calls_of("sendChatAction")[0].status == 0


async def test_wait_for_names_what_it_saw(fake_telegram: FakeTelegram) -> None:
    with pytest.raises(AssertionError, match="waiting for a successful sendPhoto"):
        await fake_telegram.wait_for("sendPhoto", within=0.05)
