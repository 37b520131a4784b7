"""The platform-neutral request flow that both chat adapters share.

admit (type, size, style and strength, ban, cooldown, in flight, quota) and write the job row;
the job then runs in the background (bots/job_runner.py) on an inference backend
(inference/backend.py: the in-process worker, or any other implementation). Re-renders check
ownership on the job row and are drawn by the backend from the codes it keeps. Adapters turn
updates into `Requester`/`Upload`, implement `JobReply` and `JobSource` (bots/chat.py) and
build their style choices from `styles`; everything they show comes from `Refused.text` and
the replies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cachetools import TTLCache

from bots import texts
from bots.chat import JobReply, JobSource, Reply, Requester, Upload
from bots.config import Settings
from bots.job_runner import Job, JobRunner
from bots.metrics import Metrics
from bots.refusals import RefusalKind, Refused, denied, internal_error
from bots.styles import Styles
from bots.targets import user_ref
from bots.toons import ImageFormat, Toon, View, make_toon
from inference.backend import InferenceBackend
from inference.errors import Expired
from inference.pipeline import StyleInfo
from storage import (
    AdminInputError,
    DenialReason,
    Denied,
    GroupRef,
    NewJob,
    Store,
    UserRef,
    parse_quota,
)

__all__ = [
    "JobReply",
    "JobSource",
    "RefusalKind",
    "Refused",
    "Reply",
    "Requester",
    "Toon",
    "ToonService",
    "Upload",
    "internal_error",
]

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/",)


class ToonService:
    """Admission, re-renders and the users' and admins' commands, on top of storage and an
    inference backend."""

    def __init__(
        self,
        config: Settings,
        store: Store,
        backend: InferenceBackend,
        styles: Mapping[str, StyleInfo],
        default_style: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._backend = backend
        self._styles = Styles(styles, default_style)
        self._metrics = metrics or Metrics()
        self._views: TTLCache[str, View] = TTLCache(
            config.worker.cache_size, config.worker.cache_ttl
        )
        self._runner = JobRunner(config, store, backend, self._styles, self._views, self._metrics)

    @property
    def styles(self) -> Mapping[str, StyleInfo]:
        """The styles this bot renders (names, labels, strengths, defaults), read-only:
        adapters build their choices from this, never from the configuration."""
        return self._styles.view

    @property
    def default_style(self) -> str:
        return self._styles.default

    def choose(self, style: str | None, strength: int | None) -> tuple[str, int]:
        """The style and strength a request would get; Refused (BAD_INPUT, with words that
        name the choices) for a style this bot lacks or a strength that style does not have.
        `admit` checks the same; adapters may call it first to refuse before any download."""
        return self._styles.choose(style, strength)

    def choose_level(self, style: str | None, level: int | None) -> tuple[str, int]:
        """`choose` for users, who pick a toon level (1: closest to the photo) rather than a
        model's strength; Refused (BAD_INPUT) for a level the style lacks."""
        return self._styles.at_level(style, level)

    # -- admission ---------------------------------------------------------------------------

    async def admit(
        self,
        who: Requester,
        upload: Upload,
        reply: JobReply,
        *,
        ref: dict[str, Any],
        key: str | None = None,
        style: str | None = None,
        strength: int | None = None,
        faces_only: bool = False,
        image_format: ImageFormat = ImageFormat.JPEG,
    ) -> str | None:
        """Judge a request from what the platform says about it, charge it and write its job
        row with `ref` (what `JobSource.fetch` needs); download, preparation and the rest run
        in the background. The job id, or None when `key` was admitted before (the platform
        delivered the same request twice). Raises Refused; nothing is charged then.

        Every check here needs only what the platform said (type, size, who, how busy), so a
        refused request costs no download and shows no sign of work.
        """
        if upload.content_type and not upload.content_type.startswith(IMAGE_TYPES):
            raise self._refused(RefusalKind.NOT_IMAGE, texts.NOT_IMAGE)
        if upload.size is not None and upload.size > self._config.limits.max_bytes:
            raise self._refused(
                RefusalKind.TOO_LARGE, texts.too_large(self._config.limits.max_bytes)
            )
        style, _ = self._styles.choose(style, strength)
        if await self._busy():
            raise self._refused(RefusalKind.QUEUE_FULL, texts.QUEUE_FULL)
        decision = await self._store.quotas.consume(
            NewJob(
                _user(who),
                style,
                strength,
                chat=ref,
                options={"faces_only": faces_only, "image_format": image_format.value},
                display_name=who.name,
                group=who.group_id,
                key=key,
            )
        )
        if isinstance(decision, Denied):
            if decision.reason == DenialReason.DUPLICATE:
                return None
            raise self._denied(decision)
        job = Job(
            decision.job_id,
            who,
            ref,
            reply,
            style,
            strength,
            faces_only,
            resumed=False,
            image_format=image_format,
        )
        self._runner.start(job)
        return job.id

    async def _busy(self) -> bool:
        """The queue counts the photos still being fetched and prepared too."""
        waiting = await self._backend.waiting() + self._runner.preparing
        return waiting >= self._config.worker.queue_size

    def _refused(self, kind: RefusalKind, text: str) -> Refused:
        self._metrics.refused(kind.value)
        return Refused(kind, text)

    def _denied(self, denial: Denied) -> Refused:
        self._metrics.refused(denial.reason.value)
        return denied(denial, self._config.quota.max_in_flight)

    # -- re-renders ----------------------------------------------------------------------------

    async def check_owner(self, who: Requester, result_id: str) -> None:
        """Refused (NOT_YOURS) when someone else asked for the toon `result_id`: adapters
        answer a press with this before anything shows in the chat."""
        job = await self._store.jobs.get(result_id)
        if job is not None and job.user != _user(who):
            raise Refused(RefusalKind.NOT_YOURS, texts.NOT_YOURS)

    async def rerender(self, who: Requester, result_id: str, reply: Reply, *, change: str) -> None:
        """Draw a delivered toon again with another strength or style, or show its faces only
        or the whole photo; free but rate-limited. Only its requester may."""
        view = self._views.get(result_id)
        job = await self._store.jobs.get(result_id)
        if view is None or job is None:
            raise Refused(RefusalKind.EXPIRED, texts.EXPIRED)
        if job.user != _user(who):
            raise Refused(RefusalKind.NOT_YOURS, texts.NOT_YOURS)
        changed = self._apply(view, change)
        denial = await self._store.quotas.rerender(_user(who))
        if denial is not None:
            raise self._denied(denial)
        try:
            finished = await self._backend.rerender(result_id, changed.style, changed.strength)
        except Expired:
            self._views.pop(result_id, None)
            raise Refused(RefusalKind.EXPIRED, texts.EXPIRED) from None
        if (changed.style, changed.strength) != (view.style, view.strength):
            self._metrics.rerendered()
        self._views[result_id] = changed
        await reply.deliver(await make_toon(result_id, finished, changed, self._styles))

    def _apply(self, view: View, change: str) -> View:
        """less, more, style:<name>, faces or photo."""
        style, strength, faces_only = view.style, view.strength, view.faces_only
        if change in ("less", "more"):
            strength = self._styles.step(style, strength, 1 if change == "more" else -1)
        elif change.startswith("style:"):
            style, strength = self._styles.switch(change.removeprefix("style:"), strength)
        elif change in ("faces", "photo"):
            faces_only = change == "faces"
        else:
            raise Refused(RefusalKind.BAD_INPUT, texts.UNKNOWN_CHANGE)
        return View(style, strength, faces_only, view.image_format)

    # -- the rest of the commands ------------------------------------------------------------

    async def cancel(self, who: Requester, job_id: str) -> bool:
        job = await self._store.jobs.get(job_id)
        if job is None or job.user != _user(who):
            return False
        return await self._backend.cancel(job_id)

    async def forget(self, who: Requester) -> None:
        """Everything about the user: their rows, and their toons' codes and photos in memory."""
        for job_id in await self._store.jobs.ids_of(_user(who)):
            self._views.pop(job_id, None)
            await self._backend.discard(job_id)
        await self._store.forget(_user(who))

    async def quota_text(self, who: Requester) -> str:
        if await self._store.quotas.is_banned(_user(who)):
            return texts.BANNED
        allowance = await self._store.quotas.allowance(_user(who), who.group_id)
        return texts.quota_left(allowance.remaining, allowance.resets_in)

    async def admin(
        self,
        who: Requester,
        action: str,
        target: str | None = None,
        value: str | None = None,
        *,
        name: str | None = None,
    ) -> str:
        """quota <user> <n|unlimited|default>, ban <user>, unban <user>, stats.

        `target` is `platform:id` on a platform the bot speaks, or a bare id on the admin's
        own platform; a user the bot never saw gets a row. `name` is the target as the
        platform shows them now, when the adapter knows it; the answer names them so.
        """
        if not who.is_admin:
            raise Refused(RefusalKind.NOT_ADMIN, texts.NOT_ADMIN)
        actor = f"{who.platform}:{who.user_id}"
        try:
            if action == "stats":
                return texts.stats(await self._store.admin.stats())
            if target is None:
                raise Refused(RefusalKind.BAD_INPUT, texts.ADMIN_USAGE)
            user = user_ref(target, who.platform)
            if action == "quota" and value is not None:
                status = await self._store.admin.set_quota(user, parse_quota(value), actor=actor)
            elif action == "ban":
                status = await self._store.admin.ban(user, actor=actor)
            elif action == "unban":
                status = await self._store.admin.unban(user, actor=actor)
            else:
                raise Refused(RefusalKind.BAD_INPUT, texts.ADMIN_USAGE)
        except AdminInputError as exc:
            raise Refused(RefusalKind.BAD_INPUT, str(exc)) from None
        return texts.admin_status(status, name)

    async def set_group_quota(self, who: Requester, group_id: str, value: str) -> str:
        """A server's managers set their server's default daily quota (Discord)."""
        try:
            daily = parse_quota(value)
            if daily == "unlimited":
                raise Refused(RefusalKind.BAD_INPUT, texts.ADMIN_USAGE)
            group = GroupRef(who.platform, group_id)
            await self._store.admin.set_group_quota(
                group, daily, actor=f"{who.platform}:{who.user_id}"
            )
        except AdminInputError as exc:
            raise Refused(RefusalKind.BAD_INPUT, str(exc)) from None
        return texts.group_quota_set(daily)

    # -- restarts ----------------------------------------------------------------------------

    def register(self, platform: str, source: JobSource) -> None:
        self._runner.register(platform, source)

    async def resume(self) -> int:
        """Start again every job accepted before a restart (see JobRunner.resume)."""
        return await self._runner.resume()

    async def stop(self) -> None:
        """Stop the jobs still being fetched or prepared (their rows stay queued), let the
        backend finish its running jobs, then wait for the deliveries in progress."""
        await self._runner.stop()


def _user(who: Requester) -> UserRef:
    return UserRef(who.platform, who.user_id)
