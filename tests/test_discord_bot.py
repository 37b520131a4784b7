"""The Discord adapter end to end: the real discord.py client against the fake Discord, on
the whole application with tiny models (tests/support/service_fixtures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bots import texts
from bots.app import App
from bots.discord.adapter import DiscordAdapter
from bots.service import RefusalKind, Refused, Requester, Toon, ToonService
from inference.pipeline import Toonifier
from tests.fakes.discord import (
    CALLBACK_DEFER,
    CALLBACK_UPDATE,
    EPHEMERAL,
    MANAGE_GUILD,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
    FakeUser,
)
from tests.support.service_fixtures import cat_jpeg, face_jpeg, settings, tiny_app
from tests.support.tiny_toonify import PSP_STYLE, write_psp_style

WAIT = 60.0


@pytest.fixture(scope="module")
def styles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny styles plus "arcane", the same model without the weakest strength, and
    "psp", one rendering although its config keeps the default strengths."""
    base = settings(tmp_path_factory.mktemp("base"))
    toon = base.styles[base.style]
    strengths = toon.strengths[1:]
    arcane = {"label": "Arcane", "model": toon.model, "strengths": strengths}
    return {"arcane": arcane | {"default_strength": strengths[-1]}, "psp": PSP_STYLE}


@pytest.fixture(scope="module")
def toonifier(tmp_path_factory: pytest.TempPathFactory, styles: dict[str, Any]) -> Toonifier:
    config = settings(tmp_path_factory.mktemp("models"), styles=styles)
    write_psp_style(Path(config.models.dir))
    return Toonifier.from_config(config)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord.serve() as server:
        yield server


@pytest.fixture
def admin(fake: FakeDiscord) -> FakeUser:
    return fake.add_user("root", manage_guild=True)


def _discord(fake: FakeDiscord, admin: FakeUser, **more: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "token": fake.token,
        "admins": [admin.id],
        "api_base_url": fake.api_url,
        "gateway_url": fake.gateway_url,
        **more,
    }


@pytest.fixture
async def app(
    fake: FakeDiscord,
    admin: FakeUser,
    toonifier: Toonifier,
    styles: dict[str, Any],
    tmp_path: Path,
) -> AsyncIterator[App]:
    async with tiny_app(
        tmp_path,
        adapters=lambda config, service: [DiscordAdapter(config, service)],
        toonifier=toonifier,
        styles=styles,
        quota={"daily": 3},
        discord=_discord(fake, admin),
    ) as running:
        yield running


@pytest.fixture
def service(app: App) -> ToonService:
    return app.service


@pytest.fixture
def bot(app: App) -> DiscordAdapter:
    [adapter] = app._adapters
    assert isinstance(adapter, DiscordAdapter)
    return adapter


@pytest.fixture
def strengths(app: App) -> list[int]:
    """Those of the default style, as the service renders them."""
    return app.service.styles[app.service.default_style].strengths


def _public_toon(message: FakeMessage) -> bool:
    return bool(message.attachments) and not message.ephemeral


async def _toon_for(fake: FakeDiscord, interaction: FakeInteraction) -> FakeMessage:
    """The public toon, once the private status message has been removed."""
    toon = await fake.wait_for_response(interaction, _public_toon, within=WAIT)
    status = fake.messages[interaction.original_id or 0]
    await fake.wait_until(lambda: status.deleted or None, what="the status to go")
    return toon


async def _refusal(fake: FakeDiscord, interaction: FakeInteraction) -> FakeMessage:
    """The private answer to a refused request; nothing public may have been posted."""
    message = await fake.wait_for_response(
        interaction, lambda m: not m.loading and m.content, within=WAIT
    )
    assert message.ephemeral
    assert all(m.ephemeral for m in fake.responses(interaction))
    return message


async def _toonify(fake: FakeDiscord, user: FakeUser, **options: Any) -> FakeInteraction:
    image = options.pop("image", None) or fake.attachment(face_jpeg(), "selfie.jpg")
    return await fake.slash_command("toonify", {"image": image, **options}, user=user)


def _quota_left(service: ToonService, user: FakeUser) -> Any:
    return service.quota_text(Requester("discord", str(user.id), user.name))


def _caption(service: ToonService, strength: int, style: str = "toon") -> str:
    """The caption of a one-face toon of `style` at `strength`, as the service words it."""
    info = service.styles[style]
    return texts.caption(info.label, info.strengths.index(strength) + 1, len(info.strengths), 1, [])


async def test_slash_command_defers_privately_reports_progress_and_posts_the_toon(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService, strengths: list[int]
) -> None:
    alice = fake.add_user("alice")
    interaction = await _toonify(fake, alice, style="toon", level=1)

    toon = await _toon_for(fake, interaction)
    [callback] = [c for c in fake.calls_of("callback") if c.params["token"] == interaction.token]
    assert callback.payload["type"] == CALLBACK_DEFER
    assert callback.payload["data"]["flags"] & EPHEMERAL
    edits = [c.payload["content"] for c in fake.calls_of("edit_response")]
    assert edits[0].startswith("Found 1 face")
    assert any("%" in text for text in edits)
    assert toon.content == f"<@{alice.id}> {_caption(service, strengths[0])}"
    [image] = fake.files_of(toon)
    assert Image.open(BytesIO(image)).size == Image.open(BytesIO(face_jpeg())).size
    assert [(b["label"], bool(b.get("disabled"))) for b in toon.buttons()] == [
        (texts.LESS_TOON, True),
        (texts.MORE_TOON, False),
        (texts.FACES_ONLY, False),
        (texts.DISCORD_DELETE, False),
    ]
    assert {o["value"] for o in toon.selects()[0]["options"]} == {"toon", "arcane", "psp"}


async def test_message_menu_toonifies_the_photo_of_a_message(
    fake: FakeDiscord, bot: DiscordAdapter
) -> None:
    poster, fan = fake.add_user("poster"), fake.add_user("fan")
    post = await fake.post_in_server(poster, attachments=[fake.attachment(face_jpeg())])
    interaction = await fake.message_command("Toonify", post, user=fan)

    toon = await _toon_for(fake, interaction)
    assert toon.content.startswith(f"<@{fan.id}> ")
    assert all(b["custom_id"].endswith(f":{fan.id}") for b in toon.buttons())


async def test_dm_photo_gets_a_toon_in_reply(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    dana = fake.add_user("dana")
    photo = await fake.send_dm(dana, attachments=[fake.attachment(face_jpeg())])

    def toon() -> FakeMessage | None:
        mine = [m for m in fake.channel_messages(photo.channel_id) if m.author == fake.bot]
        return next((m for m in mine if m.attachments), None)

    reply = await fake.wait_until(toon, within=WAIT, what="a toon in the DM")
    assert fake.calls_of("typing")
    assert reply.message_reference and reply.message_reference["message_id"] == str(photo.id)
    assert [b["label"] for b in reply.buttons()] == [
        texts.LESS_TOON,
        texts.MORE_TOON,
        texts.FACES_ONLY,
        texts.DISCORD_DELETE,
    ]
    await fake.wait_until(
        lambda: fake.channel_messages(photo.channel_id) == [photo, reply] or None,
        what="the status message to go",
    )


async def test_dm_without_a_photo_gets_help(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    sent = await fake.send_dm(fake.add_user("erin"), "hello?")
    call = await fake.wait_for("create_message")
    assert call.params["channel"] == str(sent.channel_id)
    assert call.payload["content"] == texts.DISCORD_HELP


async def test_no_face_is_refused_privately_and_costs_nothing(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService
) -> None:
    frank = fake.add_user("frank")
    before = await _quota_left(service, frank)
    interaction = await _toonify(fake, frank, image=fake.attachment(cat_jpeg(), "cat.jpg"))

    refusal = await _refusal(fake, interaction)
    assert refusal.content.startswith(texts.NO_FACE)
    assert await _quota_left(service, frank) == before


@pytest.mark.parametrize(
    ("content_type", "size", "expected"),
    [
        ("text/plain", None, texts.NOT_IMAGE),
        ("image/jpeg", 10**9, texts.too_large(20_000_000)),
    ],
)
async def test_uploads_refused_before_downloading(
    fake: FakeDiscord,
    bot: DiscordAdapter,
    content_type: str,
    size: int | None,
    expected: str,
) -> None:
    upload = fake.attachment(face_jpeg(), "x.jpg", content_type=content_type, size=size)
    interaction = await _toonify(fake, fake.add_user("gil"), image=upload)

    assert (await _refusal(fake, interaction)).content == expected
    assert fake.calls_of("download") == []


async def test_attachments_only_come_from_allowed_hosts(
    fake: FakeDiscord, bot: DiscordAdapter
) -> None:
    upload = fake.attachment(face_jpeg())
    upload["url"] = "http://127.0.0.2:9/attachments/1/2/x.jpg"
    interaction = await _toonify(fake, fake.add_user("hal"), image=upload)

    assert (await _refusal(fake, interaction)).content == texts.DISCORD_DOWNLOAD_FAILED


async def test_a_level_the_style_lacks_is_refused(
    fake: FakeDiscord, bot: DiscordAdapter, strengths: list[int]
) -> None:
    """Arcane has one level less than the default style, whose levels /toonify offers."""
    interaction = await _toonify(fake, fake.add_user("ivy"), style="arcane", level=len(strengths))

    refusal = await _refusal(fake, interaction)
    assert refusal.content == texts.bad_level(len(strengths), "Arcane", len(strengths) - 1)


async def test_a_level_a_one_rendering_style_lacks_is_refused_clearly(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService
) -> None:
    """A psp style renders one level only, whatever strengths its config section keeps."""
    ivy = fake.add_user("ivy")
    before = await _quota_left(service, ivy)
    interaction = await _toonify(fake, ivy, style="psp", level=2)

    refusal = await _refusal(fake, interaction)
    assert refusal.content == texts.bad_level(2, "pSp", 1)
    assert await _quota_left(service, ivy) == before


async def test_toons_over_the_upload_limit_are_scaled_down(
    fake: FakeDiscord, bot: DiscordAdapter
) -> None:
    fake.upload_limit = 8_000
    interaction = await _toonify(fake, fake.add_user("kim"))

    [image] = fake.files_of(await _toon_for(fake, interaction))
    assert len(image) <= 8_000
    assert Image.open(BytesIO(image)).width < Image.open(BytesIO(face_jpeg())).width


async def test_buttons_re_render_in_place_for_the_requester_only(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService, strengths: list[int]
) -> None:
    owner, other = fake.add_user("owner"), fake.add_user("other")
    toon = await _toon_for(fake, await _toonify(fake, owner, level=1))
    before = fake.files_of(toon)

    press = await fake.press_button(toon, "More toon", user=owner)
    more = _caption(service, strengths[1])
    await fake.wait_until(lambda: toon.content.endswith(more) or None, within=WAIT)
    [callback] = [c for c in fake.calls_of("callback") if c.params["token"] == press.token]
    assert callback.payload["type"] == CALLBACK_UPDATE
    assert all(b.get("disabled") for b in callback.payload["data"]["components"][0]["components"])
    await fake.wait_until(lambda: fake.files_of(toon) != before or None)
    assert not any(b.get("disabled") for b in toon.buttons())

    steal = await fake.choose(toon, ["arcane"], user=other)
    refusal = await fake.wait_for_response(steal, lambda m: m.content, within=WAIT)
    assert refusal.ephemeral and refusal.content == texts.NOT_YOURS

    await fake.choose(toon, ["arcane"], user=owner)
    await fake.wait_until(lambda: "Arcane" in toon.content or None, within=WAIT)


async def test_only_the_requester_may_delete(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    owner, other = fake.add_user("owner"), fake.add_user("other")
    toon = await _toon_for(fake, await _toonify(fake, owner))

    attempt = await fake.press_button(toon, "Delete", user=other)
    refusal = await fake.wait_for_response(attempt, lambda m: m.content)
    assert refusal.ephemeral and refusal.content == texts.DISCORD_DELETE_NOT_YOURS
    assert not toon.deleted

    await fake.press_button(toon, "Delete", user=owner)
    await fake.wait_until(lambda: toon.deleted or None)


async def test_admin_commands_obey_bot_admins_only(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService, admin: FakeUser
) -> None:
    manager, target = fake.add_user("manager", manage_guild=True), fake.add_user("target")
    await _toon_for(fake, await _toonify(fake, target))

    attempt = await fake.slash_command("toonify-admin ban", {"user": target}, user=manager)
    assert (await _refusal(fake, attempt)).content == texts.NOT_ADMIN
    assert await _quota_left(service, target) != texts.BANNED

    done = await fake.slash_command("toonify-admin ban", {"user": target}, user=admin)
    answer = await fake.wait_for_response(done, lambda m: not m.loading)
    assert answer.ephemeral and "banned" in answer.content
    assert (await _refusal(fake, await _toonify(fake, target))).content == texts.BANNED

    member = fake.add_user("member")
    with pytest.raises(PermissionError):
        await fake.slash_command("toonify-admin stats", user=member)
    opened = await fake.slash_command("toonify-admin stats", user=member, bypass_permissions=True)
    assert (await _refusal(fake, opened)).content == texts.NOT_ADMIN


async def test_server_managers_set_their_servers_default_quota(
    fake: FakeDiscord, bot: DiscordAdapter
) -> None:
    manager, member = fake.add_user("manager", manage_guild=True), fake.add_user("member")
    opened = {"user": member, "bypass_permissions": True}
    attempt = await fake.slash_command("toonify-admin server-quota", {"daily": "1"}, **opened)
    assert (await _refusal(fake, attempt)).content == texts.DISCORD_NOT_MANAGER

    done = await fake.slash_command("toonify-admin server-quota", {"daily": "1"}, user=manager)
    answer = await fake.wait_for_response(done, lambda m: not m.loading)
    assert answer.content == texts.group_quota_set(1)

    await _toon_for(fake, await _toonify(fake, member))
    refusal = await _refusal(fake, await _toonify(fake, member))
    assert refusal.content.startswith("You've used all your toons")


async def test_commands_sync_to_configured_servers_only(
    fake: FakeDiscord,
    admin: FakeUser,
    toonifier: Toonifier,
    styles: dict[str, Any],
    tmp_path: Path,
) -> None:
    async with tiny_app(
        tmp_path,
        adapters=lambda config, service: [DiscordAdapter(config, service)],
        toonifier=toonifier,
        styles=styles,
        discord=_discord(fake, admin, servers=[fake.guild_id]),
    ) as app:
        assert fake.commands[None] == []
        synced = {c["name"]: c for c in fake.commands[fake.guild_id]}
        assert set(synced) == {"toonify", "Toonify", "quota", "forget", "toonify-admin"}
        assert synced["toonify-admin"]["default_member_permissions"] == str(MANAGE_GUILD)
        choices = {o["name"]: o.get("choices") for o in synced["toonify"]["options"]}
        assert [c["value"] for c in choices["style"]] == list(app.service.styles)
        # As many levels as the style with most renders (the psp style's configured
        # strengths are not what it renders), named as people understand them.
        offered = [(c["name"], c["value"]) for c in choices["level"]]
        assert offered == [(texts.level_choice(n, 3), n) for n in (1, 2, 3)]


async def test_survives_a_gateway_loss(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    await fake.drop_connection()
    await fake.wait_until_ready()
    await _toon_for(fake, await _toonify(fake, fake.add_user("jo")))
    assert fake.resumes == 1


async def test_jobs_resumed_after_a_restart_answer_through_the_channel(
    fake: FakeDiscord, app: App, bot: DiscordAdapter
) -> None:
    lee = fake.add_user("lee")
    toon_message = await _toon_for(fake, await _toonify(fake, lee))
    result_id = toon_message.buttons()[0]["custom_id"].split(":")[2]
    job = await app.store.jobs.get(result_id)
    assert job is not None
    ref = job.chat
    assert "token" not in str(ref)

    assert await bot.fetch(ref) == face_jpeg()
    toon = Toon(
        result_id="r1",
        image=fake.files_of(toon_message)[0],
        filename="toon.jpg",
        caption=texts.caption("Toon", 3, 3, 1, []),
        style="toon",
        strength=32,
        styles=[("toon", "Toon")],
        can_less=True,
        can_more=False,
        faces_only=False,
    )
    await bot.reply_for(ref).deliver(toon)
    posted = await fake.wait_for("create_message")
    assert posted.params["channel"] == str(fake.channel_id)
    assert posted.payload["content"] == f"<@{lee.id}> {texts.caption('Toon', 3, 3, 1, [])}"

    await bot.reply_for(ref).fail(Refused(RefusalKind.RESEND, texts.RESTARTED))
    told = await fake.wait_for("create_message", lambda c: c.payload["content"] == texts.RESTARTED)
    assert told.params["channel"] == str(fake.dm_channel(lee))


async def test_quota_is_told_privately_with_the_reset_time(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService
) -> None:
    mia = fake.add_user("mia")
    fresh = await fake.slash_command("quota", user=mia)
    answer = await fake.wait_for_response(fresh, lambda m: not m.loading)
    assert answer.ephemeral
    assert answer.content == await _quota_left(service, mia)
    assert answer.content.startswith("3 toons left today, resets in ")

    await _toon_for(fake, await _toonify(fake, mia))
    after = await fake.slash_command("quota", user=mia, in_dm=True)
    answer = await fake.wait_for_response(after, lambda m: not m.loading)
    assert answer.ephemeral and answer.content.startswith("2 toons left today")


async def test_forget_asks_privately_and_deletes_only_on_yes(
    fake: FakeDiscord, app: App, bot: DiscordAdapter, service: ToonService
) -> None:
    ned = fake.add_user("ned")
    fresh = await _quota_left(service, ned)
    toon = await _toon_for(fake, await _toonify(fake, ned))
    result_id = toon.buttons()[0]["custom_id"].split(":")[2]
    assert await _quota_left(service, ned) != fresh

    asked = await fake.slash_command("forget", user=ned)
    question = await fake.wait_for_response(asked, lambda m: m.content)
    assert question.ephemeral and question.content == texts.FORGET_CONFIRM
    assert [b["label"] for b in question.buttons()] == [texts.FORGET_YES, texts.FORGET_NO]

    await fake.press_button(question, texts.FORGET_NO, user=ned)
    await fake.wait_until(lambda: question.content == texts.FORGET_KEPT or None)
    assert question.buttons() == []
    assert await app.store.jobs.get(result_id) is not None

    again = await fake.wait_for_response(await fake.slash_command("forget", user=ned))
    await fake.press_button(again, texts.FORGET_YES, user=ned)
    await fake.wait_until(lambda: again.content == texts.FORGOTTEN or None)
    assert again.buttons() == []
    assert await app.store.jobs.get(result_id) is None
    assert await _quota_left(service, ned) == fresh
    # The same service call as Telegram's: the toon's faces are gone from memory too.
    await fake.press_button(toon, texts.MORE_TOON, user=ned)
    said = await fake.wait_until(
        lambda: next((m for m in fake.messages.values() if m.content == texts.EXPIRED), None),
        within=WAIT,
    )
    assert said.ephemeral


async def test_faces_only_toggles_and_back_for_the_requester_only(
    fake: FakeDiscord, bot: DiscordAdapter
) -> None:
    owner, other = fake.add_user("owner"), fake.add_user("other")
    toon = await _toon_for(fake, await _toonify(fake, owner))
    [photo] = fake.files_of(toon)

    steal = await fake.press_button(toon, texts.FACES_ONLY, user=other)
    refusal = await fake.wait_for_response(steal, lambda m: m.content)
    assert refusal.ephemeral and refusal.content == texts.NOT_YOURS
    assert fake.files_of(toon) == [photo]

    await fake.press_button(toon, texts.FACES_ONLY, user=owner)
    await fake.wait_until(
        lambda: texts.WHOLE_PHOTO in [b["label"] for b in toon.buttons()] or None, within=WAIT
    )
    [faces] = fake.files_of(toon)
    with Image.open(BytesIO(faces)) as shown, Image.open(BytesIO(photo)) as whole:
        assert shown.size != whole.size  # the toon face alone, not the pasted-back photo
    assert texts.FACES_ONLY not in [b["label"] for b in toon.buttons()]

    await fake.press_button(toon, texts.WHOLE_PHOTO, user=owner)
    await fake.wait_until(
        lambda: texts.FACES_ONLY in [b["label"] for b in toon.buttons()] or None, within=WAIT
    )
    [back] = fake.files_of(toon)
    with Image.open(BytesIO(back)) as shown, Image.open(BytesIO(photo)) as whole:
        assert shown.size == whole.size


async def test_admins_set_quotas_and_bans_for_users_never_seen_named_as_discord_shows_them(
    fake: FakeDiscord, bot: DiscordAdapter, service: ToonService, admin: FakeUser
) -> None:
    newcomer = fake.add_user("newcomer")
    done = await fake.slash_command(
        "toonify-admin quota", {"user": newcomer, "daily": "1"}, user=admin
    )
    answer = await fake.wait_for_response(done, lambda m: not m.loading)
    assert answer.ephemeral
    assert answer.content.startswith(f"discord:{newcomer.id} (Newcomer): active, daily quota 1")
    assert (await _quota_left(service, newcomer)).startswith("1 toon left today")

    banned = await fake.slash_command("toonify-admin ban", {"user": newcomer}, user=admin)
    answer = await fake.wait_for_response(banned, lambda m: not m.loading)
    assert answer.content.startswith(f"discord:{newcomer.id} (Newcomer): banned")
    assert (await _refusal(fake, await _toonify(fake, newcomer))).content == texts.BANNED
