"""The Telegram adapter: the real python-telegram-bot against the fake Bot API server, on a
whole running application with tiny models (tests/support/service_fixtures.py)."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from telegram.error import BadRequest

from bots import texts
from bots.config import Settings
from bots.refusals import RefusalKind, Refused
from bots.service import Toon, ToonService
from bots.targets import PLATFORMS
from bots.telegram import replies as telegram_replies
from bots.telegram.adapter import TelegramAdapter
from inference.pipeline import Toonifier
from storage import Admitted, JobStatus, NewJob, Store, UserRef
from tests.fakes.server import Call
from tests.fakes.telegram import BOT_USERNAME, FakeTelegram, buttons, replies_to
from tests.support.service_fixtures import cat_jpeg, face_jpeg, settings, tiny_app
from tests.support.tiny_toonify import PSP_STYLE, write_psp_style

ADMIN = 1
ADA = 7
BOB = 8

SELFIE = face_jpeg()
CAT = cat_jpeg()


@pytest.fixture(scope="module")
def toonifier(tmp_path_factory: pytest.TempPathFactory) -> Toonifier:
    """Tiny models loaded once for the module (every test still gets its own app): "toon",
    and "psp", one rendering although its config keeps the default strengths."""
    config = settings(tmp_path_factory.mktemp("models"), styles={"psp": PSP_STYLE})
    write_psp_style(Path(config.models.dir))
    return Toonifier.from_config(config)


@asynccontextmanager
async def running(
    fake: FakeTelegram,
    tmp_path: Path,
    toonifier: Toonifier,
    telegram: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[TelegramAdapter]:
    """The whole app with the Telegram adapter talking to `fake`."""
    adapters: list[TelegramAdapter] = []

    def telegram_only(config: Settings, service: ToonService) -> list[Any]:
        adapters.append(TelegramAdapter(config, service))
        return list(adapters)

    config = {
        "enabled": True,
        "token": fake.token,
        "admins": [ADMIN],
        "api_base_url": fake.base_url,
        "file_base_url": fake.base_file_url,
        **(telegram or {}),
    }
    styles = {"psp": PSP_STYLE}
    async with tiny_app(
        tmp_path,
        adapters=telegram_only,
        toonifier=toonifier,
        telegram=config,
        styles=styles,
        **sections,
    ):
        yield adapters[0]


async def ask(fake: FakeTelegram, chat: dict[str, Any], user: dict[str, Any], text: str) -> Call:
    """Send a text message; the bot's next message in that chat."""
    mark = fake.mark()
    fake.push_message(chat, user, text=text)
    return await fake.wait_for(
        "sendMessage", lambda c: c.params["chat_id"] == chat["id"], after=mark
    )


def labels(call: Call) -> list[str]:
    return [button["text"] for button in buttons(call)]


async def test_private_photo_gets_a_toon_with_buttons(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        toon = await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
    status = await fake_telegram.wait_for("sendMessage", replies_to(photo))
    assert status.params["text"].startswith("Found 1 face")
    assert toon.files["photo"].data[:2] == b"\xff\xd8"
    assert toon.files["photo"].filename.endswith(".jpg")
    assert texts.LESS_TOON in labels(toon) and texts.MORE_TOON in labels(toon)
    assert texts.FACES_ONLY in labels(toon)
    # The largest size was downloaded, not the thumbnail Telegram lists first.
    download = fake_telegram.calls_of("download")[0]
    assert (
        download.params["file_path"] == fake_telegram.files[photo["photo"][-1]["file_id"]].file_path
    )
    assert fake_telegram.calls_of("sendChatAction")
    # The status message made way for the toon.
    deleted = fake_telegram.calls_of("deleteMessage")
    assert [c.params["message_id"] for c in deleted] == [status.result["message_id"]]


async def test_command_menu_is_registered(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    async with running(fake_telegram, tmp_path, toonifier):
        pass
    assert [c["command"] for c in fake_telegram.commands] == [c for c, _ in texts.COMMANDS]


async def test_not_an_image_is_refused_before_download(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    pdf = fake_telegram.add_file(b"%PDF-1.7", mime_type="application/pdf", file_name="cv.pdf")
    async with running(fake_telegram, tmp_path, toonifier):
        sent = fake_telegram.push_message(chat, ada, document=pdf)
        answer = await fake_telegram.wait_for("sendMessage", replies_to(sent))
    assert answer.params["text"] == texts.NOT_IMAGE
    assert not fake_telegram.calls_of("getFile", "download")


async def test_video_is_not_an_image(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    video = {"file_id": "v1", "file_unique_id": "v1", "width": 8, "height": 8, "duration": 1}
    async with running(fake_telegram, tmp_path, toonifier):
        sent = fake_telegram.push_message(chat, ada, video=video)
        answer = await fake_telegram.wait_for("sendMessage", replies_to(sent))
    assert answer.params["text"] == texts.NOT_IMAGE


async def test_file_over_the_limit_is_refused_before_download(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    huge = fake_telegram.add_file(SELFIE, file_size=30_000_000)
    async with running(fake_telegram, tmp_path, toonifier):
        sent = fake_telegram.push_message(chat, ada, photo=huge)
        answer = await fake_telegram.wait_for("sendMessage", replies_to(sent))
    assert answer.params["text"] == texts.too_large(20_000_000)
    assert not fake_telegram.calls_of("getFile", "download")


async def test_cat_has_no_face_and_costs_nothing(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        quota_before = await ask(fake_telegram, chat, ada, "/quota")
        cat = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(CAT))
        answer = await fake_telegram.wait_for("sendMessage", replies_to(cat), within=30)
        quota_after = await ask(fake_telegram, chat, ada, "/quota")
    assert answer.params["text"].startswith(texts.NO_FACE)
    assert not fake_telegram.calls_of("sendPhoto")
    assert quota_after.params["text"] == quota_before.params["text"]


async def test_quota_used_up_is_said(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    selfie = fake_telegram.add_file(SELFIE)
    async with running(fake_telegram, tmp_path, toonifier, quota={"daily": 1}):
        first = fake_telegram.push_message(chat, ada, photo=selfie)
        await fake_telegram.wait_for("sendPhoto", replies_to(first), within=30)
        second = fake_telegram.push_message(chat, ada, photo=selfie)
        answer = await fake_telegram.wait_for("sendMessage", replies_to(second))
    assert "used all your toons" in answer.params["text"]
    assert len(fake_telegram.calls_of("sendPhoto")) == 1


async def test_button_press_rerenders_in_place(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        toon = await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
        more = next(b for b in buttons(toon) if b["text"] == texts.MORE_TOON)
        query = fake_telegram.push_callback(ada, toon.result, more["callback_data"])
        answer = await fake_telegram.wait_for("answerCallbackQuery")
        edit = await fake_telegram.wait_for("editMessageMedia", within=30)
    assert answer.params["callback_query_id"] == query
    assert answer.at <= edit.at
    assert edit.params["message_id"] == toon.result["message_id"]
    assert edit.params["media"]["type"] == "photo"
    assert next(iter(edit.files.values())).data[:2] == b"\xff\xd8"
    assert edit.params["media"]["caption"] != toon.params["caption"]
    assert texts.MORE_TOON in labels(edit) or texts.LESS_TOON in labels(edit)


async def test_a_one_rendering_style_offers_no_strengths_and_never_fails_on_one(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    """The psp style renders at 32 only: its toon has no Less or More toon, and a press
    asking for another strength (an old or forged button) gets the same toon again."""
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        toon = await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
        psp = next(b for b in buttons(toon) if b["text"] == "pSp")
        fake_telegram.push_callback(ada, toon.result, psp["callback_data"])
        edit = await fake_telegram.wait_for("editMessageMedia", within=30)
        mark = fake_telegram.mark()
        less = psp["callback_data"].replace("style:psp", "less")
        fake_telegram.push_callback(ada, toon.result, less)
        again = await fake_telegram.wait_for("editMessageMedia", after=mark, within=30)
    assert edit.params["media"]["caption"] == texts.caption("pSp", 1, 1, 1, [])
    assert texts.LESS_TOON not in labels(edit) and texts.MORE_TOON not in labels(edit)
    assert again.params["media"]["caption"] == edit.params["media"]["caption"]
    internal = texts.internal_error("ID").removesuffix("ID")
    said = [c.params["text"] for c in fake_telegram.calls_of("sendMessage")]
    assert not [text for text in said if text.startswith(internal)]


async def test_expired_buttons_say_so(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    old_toon = fake_telegram.push_message(chat, fake_telegram.bot_user, caption="Toon")
    async with running(fake_telegram, tmp_path, toonifier):
        fake_telegram.push_callback(ada, old_toon, "r|0123456789|more")
        await fake_telegram.wait_for("answerCallbackQuery")
        said = await fake_telegram.wait_for("sendMessage", replies_to(old_toon))
        stripped = await fake_telegram.wait_for("editMessageReplyMarkup")
    assert said.params["text"] == texts.EXPIRED
    assert "reply_markup" not in stripped.params


async def test_group_photos_need_an_explicit_request(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada, bob, cid = fake_telegram.user(ADA), fake_telegram.user(BOB), fake_telegram.user(9)
    group = fake_telegram.group_chat()
    selfie = fake_telegram.add_file(SELFIE)
    async with running(fake_telegram, tmp_path, toonifier):
        plain = fake_telegram.push_message(group, ada, photo=selfie, caption="look at us")
        other_bot = fake_telegram.push_message(group, ada, photo=selfie, caption="/toonify@other")
        command = fake_telegram.push_message(group, ada, photo=selfie, caption="/toonify")
        await fake_telegram.wait_for("sendPhoto", replies_to(command), within=30)
        mention = fake_telegram.push_message(
            group, bob, photo=selfie, caption="@toonify_test_bot do me"
        )
        await fake_telegram.wait_for("sendPhoto", replies_to(mention), within=30)
        bare = fake_telegram.push_message(group, cid, text="/toonify")
        how = await fake_telegram.wait_for("sendMessage", replies_to(bare))
        asked_under = time.monotonic()
        fake_telegram.push_message(group, cid, text="/toonify", reply_to=plain)
        await fake_telegram.wait_for("sendPhoto", replies_to(plain), within=30)
    assert how.params["text"] == texts.HOW_IN_GROUPS
    # The plain photo was answered only once /toonify replied to it; the other bot's never.
    assert all(c.at >= asked_under for c in fake_telegram.calls if replies_to(plain)(c))
    assert not [c for c in fake_telegram.calls if replies_to(other_bot)(c)]


async def test_admin_commands_are_refused_to_others(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada, admin = fake_telegram.user(ADA), fake_telegram.user(ADMIN, "Root")
    ada_chat, admin_chat = fake_telegram.private_chat(ada), fake_telegram.private_chat(admin)
    async with running(fake_telegram, tmp_path, toonifier):
        for text in ("/admin ban 8", "/admin quota 7 100", "/admin stats", "/admin"):
            answer = await ask(fake_telegram, ada_chat, ada, text)
            assert answer.params["text"] == texts.NOT_ADMIN
        first = fake_telegram.push_message(ada_chat, ada, photo=fake_telegram.add_file(SELFIE))
        await fake_telegram.wait_for("sendPhoto", replies_to(first), within=30)

        usage = await ask(fake_telegram, admin_chat, admin, "/admin frobnicate")
        assert usage.params["text"] == texts.ADMIN_USAGE
        bad = await ask(fake_telegram, admin_chat, admin, "/admin quota 7 lots")
        assert "lots" in bad.params["text"]
        banned = await ask(fake_telegram, admin_chat, admin, "/admin ban 7")
        assert "banned" in banned.params["text"]
        again = fake_telegram.push_message(ada_chat, ada, photo=fake_telegram.add_file(SELFIE))
        refused = await fake_telegram.wait_for("sendMessage", replies_to(again))
        assert refused.params["text"] == texts.BANNED
        unbanned = await ask(fake_telegram, admin_chat, admin, "/admin unban 7")
        assert "active" in unbanned.params["text"]
        stats = await ask(fake_telegram, admin_chat, admin, "/admin stats")
        assert stats.params["text"].startswith("Today: 1 toon by 1 user, 0 failed.")


async def test_forget_asks_first(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada, bob = fake_telegram.user(ADA), fake_telegram.user(BOB)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        fresh = await ask(fake_telegram, chat, ada, "/quota")
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
        assert (await ask(fake_telegram, chat, ada, "/quota")).params["text"] != fresh.params[
            "text"
        ]
        question = await ask(fake_telegram, chat, ada, "/forget")
        assert question.params["text"] == texts.FORGET_CONFIRM
        yes, _no = buttons(question)
        fake_telegram.push_callback(bob, question.result, yes["callback_data"])
        refused = await fake_telegram.wait_for("answerCallbackQuery")
        fake_telegram.push_callback(ada, question.result, yes["callback_data"])
        asked = question.result["message_id"]
        done = await fake_telegram.wait_for(
            "editMessageText", lambda c: c.params["message_id"] == asked
        )
        after = await ask(fake_telegram, chat, ada, "/quota")
    assert done.params["text"] == texts.FORGOTTEN
    assert after.params["text"] == fresh.params["text"]
    assert refused.params["show_alert"] is True
    assert refused.params["text"] == texts.NOT_YOUR_BUTTON
    # Bob's press changed nothing: the only edit of the question is Ada's.
    edits = [
        c for c in fake_telegram.calls_of("editMessageText") if c.params["message_id"] == asked
    ]
    assert edits == [done]


async def test_flood_control_is_waited_out(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    fake_telegram.fail_next("sendPhoto", retry_after=1)
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        toon = await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
    refused = fake_telegram.calls_of("sendPhoto")[0]
    assert refused.status == 429
    assert toon.at - refused.at >= 1.0


async def test_dropped_connections_are_retried(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    fake_telegram.drop_next("getFile")
    fake_telegram.drop_next("sendMessage")
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
    assert [c.status for c in fake_telegram.calls_of("getFile")][:2] == [0, 200]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_webhook_mode(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    webhook = {
        "mode": "webhook",
        "webhook_url": url,
        "webhook_listen": "127.0.0.1",
        "webhook_port": port,
    }
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier, telegram=webhook):
        hook = await fake_telegram.wait_for("setWebhook")
        assert hook.params["url"] == url
        helped = await ask(fake_telegram, chat, ada, "/help")
        assert helped.params["text"] == texts.HELP
        async with aiohttp.ClientSession() as session:
            forged = await session.post(url, json={"update_id": 1}, headers={})
            assert forged.status == 403
    assert not fake_telegram.calls_of("getUpdates")


async def test_resumed_jobs_refetch_the_photo(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.group_chat()
    selfie = fake_telegram.add_file(SELFIE)
    photo = fake_telegram.push_message(chat, ada, photo=selfie)  # the bot ignores it
    ref = {"chat_id": chat["id"], "message_id": photo["message_id"], "file_id": selfie.file_id}
    async with running(fake_telegram, tmp_path, toonifier) as bot:
        assert await bot.fetch(ref) == SELFIE
        with pytest.raises(BadRequest):
            await bot.fetch({**ref, "file_id": "gone"})
        await bot.reply_for(ref).queued("Drawing your toon…")
    status = await fake_telegram.wait_for("sendMessage", replies_to(photo))
    assert status.params["text"] == "Drawing your toon…"


async def test_huge_toon_is_scaled_to_what_telegram_accepts(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.group_chat()
    photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
    big = io.BytesIO()
    Image.new("RGB", (6000, 4500), "orange").save(big, "JPEG")
    toon = Toon("abc", big.getvalue(), "toon.jpg", "Toon", "toon", 32, [], True, True, False)
    async with running(fake_telegram, tmp_path, toonifier) as bot:
        ref = {"chat_id": chat["id"], "message_id": photo["message_id"], "file_id": "-"}
        await bot.reply_for(ref).deliver(toon)
    sent = await fake_telegram.wait_for("sendPhoto", replies_to(photo))
    with Image.open(io.BytesIO(sent.files["photo"].data)) as delivered:
        assert max(delivered.size) == 2560


async def test_a_press_too_old_to_answer_still_rerenders(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        toon = await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
        fake_telegram.fail_next("answerCallbackQuery", code=400)
        less = next(b for b in buttons(toon) if b["text"] == texts.LESS_TOON)
        fake_telegram.push_callback(ada, toon.result, less["callback_data"])
        edit = await fake_telegram.wait_for("editMessageMedia", within=30)
    assert edit.params["message_id"] == toon.result["message_id"]
    assert fake_telegram.calls_of("answerCallbackQuery")[0].status == 400


async def used(tmp_path: Path, user_id: int) -> int:
    """Today's toons of a user, read from the bot's database."""
    config = settings(tmp_path)
    async with await Store.open(config.storage.url, config.quota) as store:
        return (await store.quotas.allowance(UserRef("telegram", str(user_id)))).used


async def test_a_toon_telegram_keeps_refusing_is_refunded_and_said(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    fake_telegram.fail_all("sendPhoto", 502)
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(chat, ada, photo=fake_telegram.add_file(SELFIE))
        said = await fake_telegram.wait_for(
            "editMessageText", lambda c: c.params["text"] == texts.UNDELIVERED, within=60
        )
    attempts = fake_telegram.calls_of("sendPhoto")
    assert len(attempts) == 4 and {c.status for c in attempts} == {502}  # retried, then given up
    assert said.at > attempts[-1].at
    status = await fake_telegram.wait_for("sendMessage", replies_to(photo))
    assert said.params["message_id"] == status.result["message_id"]
    assert await used(tmp_path, ADA) == 0  # refunded


async def test_resume_settles_every_job_when_telegram_refuses_the_notices(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    """getFile 400 (the file is gone) and sendMessage 403 (the user blocked the bot): the
    start goes on, and every job is settled."""
    chats = {n: fake_telegram.private_chat(fake_telegram.user(n)) for n in (ADA, BOB)}
    kept = fake_telegram.add_file(SELFIE)
    photos = {
        n: fake_telegram.push_message(chat, fake_telegram.user(n), photo=kept)
        for n, chat in chats.items()
    }
    config = settings(tmp_path)
    jobs = {}
    async with await Store.open(config.storage.url, config.quota) as store:
        for n, file_id in ((ADA, "gone"), (BOB, kept.file_id)):
            ref = {"chat_id": n, "message_id": photos[n]["message_id"], "file_id": file_id}
            new = NewJob(UserRef("telegram", str(n)), "toon", chat=ref)
            admitted = await store.quotas.consume(new)
            assert isinstance(admitted, Admitted)
            jobs[n] = admitted.job_id
        await store.jobs.mark_running(jobs[BOB])
        await store.jobs.mark_delivering(jobs[BOB], timings={})  # killed while sending its toon
    fake_telegram.fail_all("sendMessage", 403)
    async with (
        running(fake_telegram, tmp_path, toonifier),
        await Store.open(config.storage.url, config.quota) as store,
    ):
        await fake_telegram.wait_for("sendPhoto", replies_to(photos[BOB]), within=60)
        async with asyncio.timeout(60):
            while await store.jobs.unfinished_jobs():
                await asyncio.sleep(0.05)
        done, gone = [await store.jobs.get(jobs[n]) for n in (BOB, ADA)]
    assert next(c.status for c in fake_telegram.calls_of("getFile")) == 400
    assert {c.status for c in fake_telegram.calls_of("sendMessage")} == {403}
    assert done is not None and done.status is JobStatus.DONE
    assert gone is not None and (gone.status, gone.refunded) == (JobStatus.FAILED, True)
    assert (await used(tmp_path, BOB), await used(tmp_path, ADA)) == (1, 0)


async def test_a_press_by_someone_else_in_a_group_is_an_alert_and_nothing_in_the_chat(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada, bob = fake_telegram.user(ADA), fake_telegram.user(BOB)
    group = fake_telegram.group_chat()
    async with running(fake_telegram, tmp_path, toonifier):
        photo = fake_telegram.push_message(
            group, ada, photo=fake_telegram.add_file(SELFIE), caption="/toonify"
        )
        toon = await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=30)
        await fake_telegram.wait_for("deleteMessage")  # the status made way for the toon
        mark = fake_telegram.mark()
        more = next(b for b in buttons(toon) if b["text"] == texts.MORE_TOON)
        query = fake_telegram.push_callback(bob, toon.result, more["callback_data"])
        alert = await fake_telegram.wait_for("answerCallbackQuery", after=mark)
        # Ada's own press afterwards still works: Bob's changed nothing.
        fake_telegram.push_callback(ada, toon.result, more["callback_data"])
        edit = await fake_telegram.wait_for("editMessageMedia", after=mark, within=30)
    assert alert.params["callback_query_id"] == query
    assert alert.params["show_alert"] is True
    assert alert.params["text"] == texts.NOT_YOURS
    in_chat = ("sendMessage", "sendPhoto", "sendDocument", "editMessageText")
    assert not [c for c in fake_telegram.calls[mark:] if c.name in in_chat]
    assert [c.params["message_id"] for c in fake_telegram.calls_of("editMessageMedia")] == [
        edit.params["message_id"]
    ]


async def test_help_in_a_group_explains_the_group_triggers(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    group, private = fake_telegram.group_chat(), fake_telegram.private_chat(ada)
    async with running(fake_telegram, tmp_path, toonifier):
        helped = await ask(fake_telegram, group, ada, "/help")
        started = await ask(fake_telegram, group, ada, "/start")
        alone = await ask(fake_telegram, private, ada, "/help")
    assert helped.params["text"] == started.params["text"] == texts.group_help(BOT_USERNAME)
    for trigger in ("/toonify in its caption", "reply /toonify", f"@{BOT_USERNAME}"):
        assert trigger in helped.params["text"]
    assert alone.params["text"] == texts.HELP


async def test_refusals_that_need_no_bytes_download_nothing_and_show_no_chat_action(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    """Over quota and banned: set by an admin for users the bot has never seen."""
    admin, bob, cid = (
        fake_telegram.user(ADMIN, "Root"),
        fake_telegram.user(BOB),
        fake_telegram.user(9),
    )
    admin_chat = fake_telegram.private_chat(admin)
    chats = {BOB: fake_telegram.private_chat(bob), 9: fake_telegram.private_chat(cid)}
    async with running(fake_telegram, tmp_path, toonifier):
        set_quota = await ask(fake_telegram, admin_chat, admin, f"/admin quota {BOB} 0")
        banned = await ask(fake_telegram, admin_chat, admin, "/admin ban 9")
        refusals = {}
        for user_id, user in ((BOB, bob), (9, cid)):
            photo = fake_telegram.push_message(
                chats[user_id], user, photo=fake_telegram.add_file(SELFIE)
            )
            refusals[user_id] = await fake_telegram.wait_for("sendMessage", replies_to(photo))
    assert set_quota.params["text"].startswith(f"telegram:{BOB}: active, daily quota 0 (user)")
    assert banned.params["text"].startswith("telegram:9: banned")
    assert refusals[BOB].params["text"].startswith("You've used all your toons")
    assert refusals[9].params["text"] == texts.BANNED
    assert not fake_telegram.calls_of("getFile", "download", "sendChatAction")


async def test_admin_answers_name_the_user_and_refuse_unknown_platforms(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    admin, bob = fake_telegram.user(ADMIN, "Root"), fake_telegram.user(BOB, "Bobby")
    group = fake_telegram.group_chat()
    async with running(fake_telegram, tmp_path, toonifier):
        said = fake_telegram.push_message(group, bob, text="spam spam")
        mark = fake_telegram.mark()
        fake_telegram.push_message(group, admin, text="/admin ban", reply_to=said)
        named = await fake_telegram.wait_for("sendMessage", after=mark)
        elsewhere = await ask(fake_telegram, group, admin, "/admin ban whatsapp:1")
    assert named.params["text"].startswith(f"telegram:{BOB} (Bobby): banned")
    assert elsewhere.params["text"] == texts.unknown_platform("whatsapp", PLATFORMS)


async def test_jobs_running_in_one_chat_share_one_chat_action_loop(
    fake_telegram: FakeTelegram,
    tmp_path: Path,
    toonifier: Toonifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Renewed once an hour here, one loop sends one chat action, however many jobs run; a job
    waiting in line adds none, and the loop starts again for a job after the last one ended."""
    monkeypatch.setattr(telegram_replies, "CHAT_ACTION_EVERY", 3600.0)
    ada = fake_telegram.user(ADA)
    group = fake_telegram.group_chat()
    photos = [fake_telegram.push_message(group, ada, photo=fake_telegram.add_file(SELFIE))]
    photos += [fake_telegram.push_message(group, ada, text=str(n)) for n in range(3)]
    refs = [{"chat_id": group["id"], "message_id": p["message_id"], "file_id": "-"} for p in photos]
    async with running(fake_telegram, tmp_path, toonifier) as bot:
        first, second, waiting, later = (bot.reply_for(ref) for ref in refs)
        await waiting.queued("Found 1 face, you're #3 in line (about 1 min).")
        await first.started()
        await second.started()
        await fake_telegram.wait_for("sendChatAction")
        await first.fail(Refused(RefusalKind.NO_FACE, texts.NO_FACE))
        await second.fail(Refused(RefusalKind.NO_FACE, texts.NO_FACE))
        mark = fake_telegram.mark()
        await later.started()
        await fake_telegram.wait_for("sendChatAction", after=mark)
        await later.fail(Refused(RefusalKind.NO_FACE, texts.NO_FACE))
    actions = fake_telegram.calls_of("sendChatAction")
    assert len(actions) == 2
    assert {c.params["chat_id"] for c in actions} == {group["id"]}
    assert actions[1].at > fake_telegram.calls[mark - 1].at


async def test_an_image_sent_as_a_file_gets_its_toon_as_a_file_of_the_same_family(
    fake_telegram: FakeTelegram, tmp_path: Path, toonifier: Toonifier
) -> None:
    ada = fake_telegram.user(ADA)
    chat = fake_telegram.private_chat(ada)
    png = io.BytesIO()
    Image.open(io.BytesIO(SELFIE)).save(png, "PNG")
    as_png = fake_telegram.add_file(png.getvalue(), mime_type="image/png", file_name="me.png")
    as_jpeg = fake_telegram.add_file(SELFIE, mime_type="image/jpeg", file_name="me.jpg")
    async with running(fake_telegram, tmp_path, toonifier, quota={"daily": 5}):
        sent_png = fake_telegram.push_message(chat, ada, document=as_png)
        toon_png = await fake_telegram.wait_for("sendDocument", replies_to(sent_png), within=30)
        sent_jpeg = fake_telegram.push_message(chat, ada, document=as_jpeg)
        toon_jpeg = await fake_telegram.wait_for("sendDocument", replies_to(sent_jpeg), within=30)
        faces = next(b for b in buttons(toon_png) if b["text"] == texts.FACES_ONLY)
        fake_telegram.push_callback(ada, toon_png.result, faces["callback_data"])
        edit = await fake_telegram.wait_for("editMessageMedia", within=30)
    assert not fake_telegram.calls_of("sendPhoto")
    upload = toon_png.files["document"]
    assert upload.filename.endswith(".png")
    with Image.open(io.BytesIO(upload.data)) as image, Image.open(png) as original:
        assert (image.format, image.size) == ("PNG", original.size)  # full size, lossless
    upload = toon_jpeg.files["document"]
    assert upload.filename.endswith(".jpg")
    with Image.open(io.BytesIO(upload.data)) as image:
        assert (image.format, image.size) == ("JPEG", Image.open(io.BytesIO(SELFIE)).size)
    assert edit.params["media"]["type"] == "document"
    with Image.open(io.BytesIO(next(iter(edit.files.values())).data)) as faces_only:
        assert faces_only.format == "PNG"
