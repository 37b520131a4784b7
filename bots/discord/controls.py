"""The controls under a posted toon (Less toon, More toon, Faces only or Whole photo, Delete
and a style menu) and under /forget's question (Yes, delete / No, keep).

Each is a persistent `discord.ui.DynamicItem`: its custom id carries what it acts on and the
requester, and its template is the one parser of that id, so a press works after a restart
too. Each item lets only the requester press it (`interaction_check`) and acts itself:
Delete takes the toon down; the toon's others re-render it in place from the faces the service
keeps in memory (for `worker.cache_ttl` seconds; later the press is answered that the toon is
old); the forget buttons delete everything stored about the requester, or nothing.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bots import texts
from bots.adapter import internal_error, refusing
from bots.discord.client import client_of
from bots.discord.posts import caption, clip, toon_file
from bots.service import Refused, Toon

Button = discord.ui.Button[discord.ui.View]
Select = discord.ui.Select[discord.ui.View]

# A change to a toon, in the service's words: a step less or more toon, its faces only or the
# whole photo again.
_CHANGE_ID = r"toon:(?P<change>less|more|faces|photo):(?P<result>[^:]+):(?P<owner>\d+)"
_DELETE_ID = r"toon:delete:(?P<result>[^:]+):(?P<owner>\d+)"
_STYLE_ID = r"toon:style:(?P<result>[^:]+):(?P<owner>\d+)"
_FORGET_ID = r"forget:(?P<answer>yes|no):(?P<owner>\d+)"
_CHANGES = {
    "less": (texts.LESS_TOON, discord.ButtonStyle.secondary),
    "more": (texts.MORE_TOON, discord.ButtonStyle.primary),
    "faces": (texts.FACES_ONLY, discord.ButtonStyle.secondary),
    "photo": (texts.WHOLE_PHOTO, discord.ButtonStyle.secondary),
}
_FORGET = {
    "yes": (texts.FORGET_YES, discord.ButtonStyle.danger),
    "no": (texts.FORGET_NO, discord.ButtonStyle.secondary),
}


def toon_view(toon: Toon, owner_id: int) -> discord.ui.View:
    """The controls of a freshly delivered toon (a style menu only with two styles or more)."""
    view = discord.ui.View(timeout=None)
    view.add_item(ChangeButton("less", toon.result_id, owner_id, disabled=not toon.can_less))
    view.add_item(ChangeButton("more", toon.result_id, owner_id, disabled=not toon.can_more))
    shown = "photo" if toon.faces_only else "faces"
    view.add_item(ChangeButton(shown, toon.result_id, owner_id, disabled=False))
    view.add_item(DeleteButton(toon.result_id, owner_id))
    if len(toon.styles) > 1:
        view.add_item(StyleSelect(toon.result_id, owner_id, toon.styles, toon.style))
    return view


async def _pressed_by(interaction: discord.Interaction, owner_id: int, refusal: str) -> bool:
    """Only the requester may use a toon's controls; anyone else is told privately."""
    if interaction.user.id == owner_id:
        return True
    await interaction.response.send_message(refusal, ephemeral=True)
    return False


def forget_view(owner_id: int) -> discord.ui.View:
    """Yes or no to /forget's question."""
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton("yes", owner_id))
    view.add_item(ForgetButton("no", owner_id))
    return view


class ChangeButton(discord.ui.DynamicItem[Button], template=_CHANGE_ID):
    """The same faces a step less or more toon, or the toon faces alone, or the whole photo
    again (as Telegram's buttons do)."""

    def __init__(self, change: str, result_id: str, owner_id: int, *, disabled: bool) -> None:
        label, style = _CHANGES[change]
        custom_id = f"toon:{change}:{result_id}:{owner_id}"
        super().__init__(
            Button(label=label, style=style, custom_id=custom_id, disabled=disabled, row=0)
        )
        self.change, self.result_id, self.owner_id = change, result_id, owner_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ChangeButton:
        return cls(match["change"], match["result"], int(match["owner"]), disabled=False)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await _pressed_by(interaction, self.owner_id, texts.NOT_YOURS)

    async def callback(self, interaction: discord.Interaction) -> None:
        await _rerender(interaction, self.result_id, self.change)


class DeleteButton(discord.ui.DynamicItem[Button], template=_DELETE_ID):
    """The requester takes their toon down (this needs nothing kept in memory)."""

    def __init__(self, result_id: str, owner_id: int) -> None:
        custom_id = f"toon:delete:{result_id}:{owner_id}"
        label, style = texts.DISCORD_DELETE, discord.ButtonStyle.danger
        super().__init__(Button(label=label, style=style, custom_id=custom_id, row=0))
        self.owner_id = owner_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DeleteButton:
        return cls(match["result"], int(match["owner"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await _pressed_by(interaction, self.owner_id, texts.DISCORD_DELETE_NOT_YOURS)

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.delete_original_response()


class StyleSelect(discord.ui.DynamicItem[Select], template=_STYLE_ID):
    """The same faces in another style."""

    def __init__(
        self, result_id: str, owner_id: int, styles: list[tuple[str, str]], current: str
    ) -> None:
        options = [
            discord.SelectOption(label=label or name, value=name, default=name == current)
            for name, label in styles[:25]
        ]
        select = Select(
            custom_id=f"toon:style:{result_id}:{owner_id}",
            placeholder=texts.DISCORD_STYLE_PLACEHOLDER,
            options=options,
            row=1,
        )
        super().__init__(select)
        self.result_id, self.owner_id = result_id, owner_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> StyleSelect:
        """The options come back with the press: the menu is rebuilt as it was shown."""
        assert isinstance(item, discord.ui.Select)
        styles = [(option.value, option.label) for option in item.options]
        current = next((option.value for option in item.options if option.default), "")
        return cls(match["result"], int(match["owner"]), styles, current)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await _pressed_by(interaction, self.owner_id, texts.NOT_YOURS)

    async def callback(self, interaction: discord.Interaction) -> None:
        [style] = self.item.values
        await _rerender(interaction, self.result_id, f"style:{style}")


class ForgetButton(discord.ui.DynamicItem[Button], template=_FORGET_ID):
    """/forget's answer: everything the bot stores about the requester deleted, or nothing."""

    def __init__(self, answer: str, owner_id: int) -> None:
        label, style = _FORGET[answer]
        custom_id = f"forget:{answer}:{owner_id}"
        super().__init__(Button(label=label, style=style, custom_id=custom_id))
        self.answer, self.owner_id = answer, owner_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ForgetButton:
        return cls(match["answer"], int(match["owner"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await _pressed_by(interaction, self.owner_id, texts.NOT_YOUR_BUTTON)

    async def callback(self, interaction: discord.Interaction) -> None:
        """The question becomes the answer, without buttons to press again."""
        if self.answer == "no":
            await interaction.response.edit_message(content=texts.FORGET_KEPT, view=None)
            return
        await interaction.response.defer()
        client = client_of(interaction)
        try:
            with refusing("a Discord /forget"):
                await client.service.forget(client.requester(interaction.user, None))
            said = texts.FORGOTTEN
        except Refused as refused:
            said = refused.text
        await interaction.edit_original_response(content=clip(said), view=None)


CONTROLS = (ChangeButton, DeleteButton, StyleSelect, ForgetButton)


async def _rerender(interaction: discord.Interaction, result_id: str, change: str) -> None:
    """The controls are disabled while the service re-renders, then replaced with the new
    toon's; a refusal puts them back as they were."""
    client = client_of(interaction)
    assert interaction.message is not None  # discord.py drops presses without their message
    shown = _as_shown(interaction.message)
    await interaction.response.edit_message(view=_as_shown(interaction.message, disabled=True))
    reply = RerenderReply(interaction, shown)
    try:
        with refusing("a Discord re-render"):
            who = client.requester(interaction.user, interaction.guild_id)
            await client.service.rerender(who, result_id, reply, change=change)
    except Refused as refused:
        await reply.fail(refused)


def _as_shown(message: discord.Message, *, disabled: bool = False) -> discord.ui.View:
    """The controls of `message` as a picture, all disabled or as they were: a stopped view,
    which discord.py does not listen to, so that presses keep reaching the items above."""
    view = discord.ui.View.from_message(message, timeout=None)
    for item in view.children:
        if disabled and isinstance(item, discord.ui.Button | discord.ui.Select):
            item.disabled = True
    view.stop()
    return view


class RerenderReply:
    """Answers a press by editing the toon's message in place."""

    def __init__(self, interaction: discord.Interaction, shown: discord.ui.View) -> None:
        self._interaction = interaction
        self._shown = shown

    async def progress(self, text: str) -> None:
        """Re-renders are short; the disabled controls already say one is running."""

    async def deliver(self, toon: Toon) -> None:
        interaction = self._interaction
        owner_id = interaction.user.id
        try:
            await interaction.edit_original_response(
                content=caption(toon, owner_id, in_server=interaction.guild_id is not None),
                attachments=[await toon_file(toon, interaction.filesize_limit)],
                view=toon_view(toon, owner_id),
            )
        except discord.HTTPException as exc:
            await self.fail(internal_error("a Discord re-render delivery", exc))

    async def fail(self, error: Refused) -> None:
        """The controls usable again, and a note only the requester sees."""
        await self._interaction.edit_original_response(view=self._shown)
        await self._interaction.followup.send(clip(error.text), ephemeral=True)
