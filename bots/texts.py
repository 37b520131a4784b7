"""Every user-facing message in one place, so tone and wording stay consistent across platforms.

inference/ and storage/ report typed problems (an ImageProblem, a SkippedFace, a Stage); the
words for them are here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from inference.faces import SkippedFace, SkipProblem
from inference.images import ImageError, ImageProblem
from inference.stages import Stage
from storage import QuotaStatus, UsageStats

PRIVACY = (
    "Privacy: your photo is processed in memory, never stored, and forgotten after "
    "the re-render window; /forget deletes everything the bot knows about you."
)

HELP = (
    "Send me a selfie and I'll send back your cartoon twin. Every face in the photo gets "
    "toonified; use the buttons under the result for more or less toon, or another style.\n"
    "/quota shows how many toons you have left today.\n" + PRIVACY
)

NOT_IMAGE = (
    "That doesn't look like an image I can read. Please send a JPEG, PNG, WebP or HEIC photo."
)
NO_FACE = (
    "I couldn't find a face in that photo. Try a well-lit photo where the face is "
    "clearly visible and looks at the camera."
)
QUEUE_FULL = "I'm very busy right now. Please try again in a few minutes; nothing was charged."
BANNED = "You can't use this bot. If you think that's a mistake, contact the bot's admin."
EXPIRED = "That toon is too old to change. Send the photo again to get a new one."
RATE_LIMITED = "Easy there! Too many re-renders in a minute; try again shortly."
NOT_ADMIN = "Only the bot's admins can do that."
UNKNOWN_CHANGE = "That button doesn't do anything I know. Send the photo again for a new toon."
NOT_YOURS = "Only the person who asked for this toon can change it."
CANCELLED = "Cancelled. Nothing was charged."
TIMEOUT = "That took too long and was stopped. Nothing was charged; please try again."
OUT_OF_MEMORY = (
    "Your photo needed more memory than I have free right now. Nothing was charged; "
    "please try again in a few minutes, or with fewer faces in the photo."
)
NON_FINITE = (
    "Something went wrong drawing your toon, sorry! Nothing was charged; "
    "please try again, or with another photo."
)
RESTARTED = (
    "The bot restarted while your photo was waiting and can't fetch it again. Please resend it."
)
TOO_COMPLEX = (
    "That image is too complex to read in time. Please send an ordinary photo (a JPEG from "
    "your camera works best); nothing was charged."
)
UNREADABLE = "I couldn't read that image. Please send it as an ordinary photo; nothing was charged."
DOWNLOAD_FAILED = "I couldn't download your photo. Please send it again; nothing was charged."
UNDELIVERED = (
    "Your toon was drawn, but I couldn't send it to you. Nothing was charged; please send the "
    "photo again."
)
FORGOTTEN = "Done: everything the bot knew about you has been deleted."
FORGET_CONFIRM = "This deletes your usage history and quota settings. Are you sure?"


def plural(count: int, noun: str) -> str:
    """'1 toon', '2 toons', '0 toons'."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def in_flight(max_in_flight: int) -> str:
    """The refusal while a user's toons in progress are as many as may run at once."""
    if max_in_flight == 1:
        return "You already have a toon in progress. Please wait until it's done."
    return (
        f"You already have {plural(max_in_flight, 'toon')} in progress, as many as can run "
        "at once. Please wait until one is done."
    )


def unknown_platform(platform: str, platforms: Sequence[str]) -> str:
    forms = " or ".join(f"{name}:<id>" for name in platforms)
    return f"The bot knows no platform {platform!r}: write a user or group as {forms}."


def too_large(limit_bytes: int) -> str:
    return f"That file is too big. Please send a photo under {limit_bytes // 1_000_000} MB."


def unknown_style(style: str, styles: list[str]) -> str:
    return f"There is no style called {style!r}. Try one of: {', '.join(styles)}."


def bad_strength(strength: int, style: str, strengths: list[int]) -> str:
    """`style` is the style's label."""
    offered = ", ".join(str(s) for s in strengths)
    return f"{style} has no strength {strength}. Pick one of {offered}."


def bad_level(level: int, style: str, levels: int) -> str:
    """`style` is the style's label."""
    if levels == 1:
        return f"{style} has one toon level only: leave the level out."
    return f"{style} has toon levels 1 to {levels}, not {level}."


def level_choice(level: int, levels: int) -> str:
    """A toon level as /toonify offers it; `levels` is the most any style has."""
    if level == 1:
        return "1 · closest to your photo"
    return f"{level} · most toon" if level == levels else str(level)


def cooldown(seconds: float) -> str:
    return f"One at a time! You can send another photo in {math.ceil(seconds)} s."


def internal_error(error_id: str) -> str:
    return (
        "Something went wrong on my side, sorry! Your quota was refunded. "
        f"If it keeps happening, tell the admin this code: {error_id}"
    )


def no_face(skipped: Sequence[SkippedFace]) -> str:
    """Name why the faces that were found did not count, when some were found."""
    if not skipped:
        return NO_FACE
    return f"{NO_FACE} ({'; '.join(skipped_face(s) for s in skipped)})"


def skipped_face(skipped: SkippedFace) -> str:
    if skipped.problem == SkipProblem.TOO_SMALL:
        return (
            f"A face {skipped.face.width:.0f} px wide is too small "
            f"(at least {skipped.limit} px are needed)."
        )
    return f"Only the {skipped.limit} largest faces of a photo are used."


_ACCEPTED = "JPEG, PNG, WebP, HEIC/HEIF, AVIF or GIF"


def image_problem(error: ImageError) -> str:
    """Why a file could not be used as a photo."""
    facts = error.facts
    match error.problem:
        case ImageProblem.EMPTY:
            return "The file is empty."
        case ImageProblem.NO_PIXELS:
            return "The image has no pixels."
        case ImageProblem.TOO_MANY_BYTES:
            return f"The file is too large ({_mb(facts.found)}); the limit is {_mb(facts.limit)}."
        case ImageProblem.TOO_MANY_PIXELS if facts.size and facts.found and facts.limit:
            width, height = facts.size
            return (
                f"The image is too large ({width}x{height} = {facts.found / 1e6:.0f} MP); "
                f"the limit is {facts.limit / 1e6:.0f} MP."
            )
        case ImageProblem.TOO_MANY_PIXELS:
            return "The image has far too many pixels to be processed."
        case ImageProblem.TOO_COMPLEX:
            return f"The image is stored in more than {facts.limit} passes, too many to decode."
        case ImageProblem.NOT_AN_IMAGE:
            return f"This file is not an image I can read; send a {_ACCEPTED} picture."
        case ImageProblem.UNSUPPORTED_FORMAT:
            return f"{facts.format} images are not supported; send a {_ACCEPTED} picture."
        case ImageProblem.DAMAGED:
            return "The image is damaged or incomplete and cannot be read."


def _mb(size: int | None) -> str:
    return f"{(size or 0) / 1e6:.1f} MB"


def duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 3600:
        return f"{round(seconds / 3600)} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds} s"


def quota_left(left: int | None, resets_in: timedelta) -> str:
    if left is None:
        return "You have unlimited toons."
    return f"{plural(left, 'toon')} left today, resets in {duration(resets_in)}."


def quota_used_up(resets_in: timedelta) -> str:
    return f"You've used all your toons for today. They reset in {duration(resets_in)}."


def queued(faces: int, position: int, eta_seconds: float) -> str:
    found = "Found 1 face" if faces == 1 else f"Found {faces} faces"
    if position <= 1:
        return f"{found}, toonifying now…"
    wait = duration(timedelta(seconds=eta_seconds))
    return f"{found}, you're #{position} in line (about {wait})."


def progress(stage: Stage, step: int, total: int) -> str:
    if stage == Stage.INVERT and total:
        return f"Studying your face… {round(100 * step / total)}%"
    return "Drawing your toon…"


def caption(label: str, level: int, levels: int, faces: int, skipped: Sequence[SkippedFace]) -> str:
    """The style and how much toon, as level `level` of the style's `levels` (from most
    like the photo to most cartoon); a style with one level shows none."""
    text = label if levels <= 1 else f"{label} · toon level {level} of {levels}"
    if faces > 1:
        text += f" · {faces} faces"
    if skipped:
        text += f" · skipped: {'; '.join(skipped_face(s) for s in skipped)}"
    return text


ADMIN_USAGE = (
    "Usage: quota <user> <n|unlimited|default>, ban <user>, unban <user>, stats. "
    "A user is their id on this platform, or platform:id."
)


def admin_status(status: QuotaStatus, shown_as: str | None = None) -> str:
    """One user's state after an admin change, named as their platform shows them when the
    admin's platform said (`shown_as`), else by the name of their last request."""
    allowance = status.allowance
    daily = "unlimited" if allowance.limit is None else str(allowance.limit)
    state = "banned" if status.banned else "active"
    known = shown_as or status.display_name
    name = f" ({known})" if known else ""
    return (
        f"{status.user}{name}: {state}, daily quota {daily} ({status.source}), "
        f"used {allowance.used} today."
    )


def group_quota_set(daily: int | str) -> str:
    if daily == "default":
        return "This server's members now get the bot's default daily quota."
    return f"This server's members now get {plural(int(daily), 'toon')} a day."


def stats(usage: UsageStats) -> str:
    today, week = usage.today, usage.last_7_days
    lines = [
        f"Today: {plural(today.toons, 'toon')} by {plural(today.users, 'user')}, "
        f"{today.failed} failed.",
        f"7 days: {plural(week.toons, 'toon')} by {plural(week.users, 'user')}.",
    ]
    if usage.top_users:
        top = ", ".join(f"{u.display_name or u.user} ({u.toons})" for u in usage.top_users[:5])
        lines.append(f"Top users: {top}.")
    return "\n".join(lines)


# ---- chat adapters: buttons, commands and prompts -----------------------------------------

LESS_TOON = "Less toon"
MORE_TOON = "More toon"
FACES_ONLY = "Faces only"
WHOLE_PHOTO = "Whole photo"
FORGET_YES = "Yes, delete"
FORGET_NO = "No, keep"
FORGET_KEPT = "OK, nothing was deleted."
NOT_YOUR_BUTTON = "Only the person who asked can answer this."
SEND_A_PHOTO = "Send me a photo with a face in it (as a photo or as an image file)."
HOW_IN_GROUPS = (
    "Reply to a photo with /toonify, or send a photo with /toonify (or a mention of me) "
    "in its caption."
)


def group_help(bot_username: str) -> str:
    """/start and /help in a group: the bot answers there only when asked."""
    return (
        "In a group I toonify a photo only when you ask:\n"
        "• send the photo with /toonify in its caption,\n"
        "• reply /toonify to a photo already in the chat, or\n"
        f"• mention @{bot_username} in the photo's caption.\n"
        "Only the one who asked can use the buttons under the toon.\n"
        "/quota shows how many toons you have left today.\n" + PRIVACY
    )


# Command menu: (command, description), in the order the menu shows them.
COMMANDS = (
    ("toonify", "Toonify a photo (reply to it, or put this in its caption)"),
    ("quota", "How many toons you have left today"),
    ("forget", "Delete everything the bot knows about you"),
    ("help", "What this bot does, and its privacy promise"),
)


# ---- Discord (bots/discord/): commands, buttons and prompts -------------------------

DISCORD_DELETE = "Delete"
DISCORD_STYLE_PLACEHOLDER = "Try another style"
DISCORD_HELP = (
    "Send me a selfie right here and I'll send back your cartoon twin. In a server, use "
    "/toonify with a photo, or Apps > Toonify on any message with one. Every face in the "
    "photo gets toonified; the buttons under the result change it.\n"
    "/quota shows how many toons you have left today.\n" + PRIVACY
)
DISCORD_NO_IMAGE = "That message has no image. Use Toonify on a message with a photo attached."
DISCORD_DOWNLOAD_FAILED = "I couldn't download that image from Discord. Please try again."
DISCORD_DELETE_NOT_YOURS = "Only the person who asked for this toon can delete it."
# Command and option descriptions (Discord allows 100 characters).
DISCORD_MENU = "Toonify"
DISCORD_TOONIFY = "Turn every face in a photo into a cartoon"
DISCORD_IMAGE = "A photo with at least one face"
DISCORD_STYLE = "The cartoon style"
DISCORD_LEVEL = "How much toon: 1 stays closest to your photo, higher draws more cartoon"
DISCORD_QUOTA = "How many toons you have left today, and when they reset"
DISCORD_FORGET = "Delete everything the bot knows about you"
DISCORD_ADMIN = "Toonify quotas and bans"
DISCORD_ADMIN_QUOTA = "Set a user's daily toons (bot admins)"
DISCORD_ADMIN_SERVER_QUOTA = "Set the daily toons of this server's members (server managers)"
DISCORD_ADMIN_BAN = "Stop a user from using the bot (bot admins)"
DISCORD_ADMIN_UNBAN = "Let a banned user use the bot again (bot admins)"
DISCORD_ADMIN_STATS = "Usage today and this week (bot admins)"
DISCORD_ADMIN_USER = "The user"
DISCORD_ADMIN_DAILY = "Toons per day: a number, unlimited, or default"
DISCORD_ADMIN_SERVER_DAILY = "Toons per day: a number, or default"
DISCORD_NOT_MANAGER = "Only this server's managers and the bot's admins can do that."
