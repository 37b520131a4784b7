"""The fake Discord speaks the protocol: a real discord.py client connects, syncs, answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from io import BytesIO

import discord
import pytest
from discord import app_commands
from PIL import Image

from tests.fakes.discord import CALLBACK_DEFER, FakeDiscord


def _png(colour: str) -> bytes:
    out = BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG")
    return out.getvalue()


class EchoClient(discord.Client):
    """Echoes images back: deferred slash command with a followup file, and DMs."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default())
        self.tree = app_commands.CommandTree(self)
        self.tree.command(name="echo", description="Send the image back")(self._echo)
        self.tree.command(name="secret", description="Try to whisper")(self._secret)
        self.tree.command(name="slow", description="Answer late")(self._slow)

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def _echo(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True)
        data = await image.read()
        await interaction.followup.send(file=discord.File(BytesIO(data), filename="echo.png"))

    async def _secret(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("psst", ephemeral=True)

    async def _slow(self, interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.2)
        await interaction.response.defer()

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not message.attachments:
            return
        data = await message.attachments[0].read()
        await message.reply(file=discord.File(BytesIO(data), filename="echo.png"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord.serve() as server:
        yield server


@pytest.fixture
async def client(fake: FakeDiscord) -> AsyncIterator[EchoClient]:
    bot = EchoClient()
    running = asyncio.create_task(bot.start(fake.token))
    await fake.wait_until_ready()
    yield bot
    await bot.close()
    await running


async def test_connects_and_syncs(fake: FakeDiscord, client: EchoClient) -> None:
    assert fake.heartbeats >= 1
    assert fake.identify is not None
    assert fake.identify["intents"] == discord.Intents.default().value
    assert "compress=zlib-stream" in fake.gateway_urls[0]
    assert {c["name"] for c in fake.commands[None]} == {"echo", "secret", "slow"}
    assert client.application_id == fake.app_id


async def test_slash_command_defers_then_sends_a_file(
    fake: FakeDiscord, client: EchoClient
) -> None:
    alice = fake.add_user("alice")
    image = _png("red")
    interaction = await fake.slash_command(
        "echo", {"image": fake.attachment(image, "in.png")}, user=alice
    )

    reply = await fake.wait_for_response(interaction, lambda m: m.attachments)
    callback = fake.calls_of("callback")[0]
    assert callback.payload["type"] == CALLBACK_DEFER
    assert fake.files_of(reply) == [image]
    assert not reply.ephemeral
    assert [c.files["files[0]"].data for c in fake.calls_of("followup")] == [image]
    assert len(fake.calls_of("download")) == 1


async def test_dm_image_gets_a_reply(fake: FakeDiscord, client: EchoClient) -> None:
    bob = fake.add_user("bob")
    image = _png("blue")
    sent = await fake.send_dm(bob, attachments=[fake.attachment(image, "in.png")])

    call = await fake.wait_for("create_message")
    assert call.files["files[0]"].data == image
    [reply] = fake.channel_messages(sent.channel_id)[1:]
    assert reply.message_reference is not None
    assert reply.message_reference["message_id"] == str(sent.id)


async def test_ephemeral_followup_after_public_defer_stays_public(
    fake: FakeDiscord, client: EchoClient
) -> None:
    interaction = await fake.slash_command("secret", user=fake.add_user("carol"))

    reply = await fake.wait_for_response(interaction, lambda m: m.content)
    assert reply.content == "psst"
    assert not reply.ephemeral


async def test_client_resumes_after_losing_the_gateway(
    fake: FakeDiscord, client: EchoClient
) -> None:
    await fake.drop_connection()
    await fake.wait_until_ready()
    assert fake.resumes == 1

    interaction = await fake.slash_command(
        "echo", {"image": fake.attachment(_png("green"), "in.png")}, user=fake.add_user("dan")
    )
    await fake.wait_for_response(interaction, lambda m: m.attachments)


async def test_commands_hidden_from_members_without_permission(
    fake: FakeDiscord, client: EchoClient
) -> None:
    fake.commands[None][0]["default_member_permissions"] = str(1 << 5)
    name = fake.commands[None][0]["name"]
    with pytest.raises(PermissionError):
        await fake.slash_command(name, user=fake.add_user("eve"))


async def test_acknowledging_too_late_fails_like_discord(
    fake: FakeDiscord, client: EchoClient
) -> None:
    fake.ack_deadline = 0.1
    await fake.slash_command("slow", user=fake.add_user("finn"))

    late = await fake.wait_until(lambda: next(iter(fake.calls_of("callback")), None))
    assert (late.status, late.result["code"]) == (404, 10062)


async def test_options_are_checked_like_discords_client(
    fake: FakeDiscord, client: EchoClient
) -> None:
    user = fake.add_user("gus")
    with pytest.raises(LookupError, match="required"):
        await fake.slash_command("echo", user=user)
    with pytest.raises(LookupError, match="no 'colour'"):
        await fake.slash_command("secret", {"colour": "red"}, user=user)
    with pytest.raises(LookupError, match="not synced"):
        await fake.slash_command("missing", user=user)
