"""The platform-neutral request flow that both chat adapters share.

admit (size, type, ban, cooldown, in flight, quota) -> persist the job -> queue it on the
worker -> relay throttled progress -> deliver the toon -> refund when the failure is ours.
Adapters turn updates into `Requester`/`Upload` and implement `Reply`; everything they show
comes from `Refused.text`, `Ticket.text` and `Toon.caption`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cachetools import TTLCache
from PIL import Image

from bots import texts
from bots.config import Settings
from bots.metrics import Metrics
from inference.images import ImageError
from inference.pipeline import NoFace, NonFinite, Result, StyleInfo
from inference.worker import (
    JobCancelled,
    JobTimeout,
    OutOfMemory,
    QueueFull,
    ShuttingDown,
    Worker,
)
from storage import (
    AdminInputError,
    GroupRef,
    NewJob,
    Refusal,
    Store,
    UserRef,
    parse_quota,
)
from storage import Refused as StoreRefused

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/",)
JPEG_QUALITY = 92


class RefusalKind(StrEnum):
    NOT_IMAGE = "not_image"
    TOO_LARGE = "too_large"
    NO_FACE = "no_face"
    QUOTA = "quota"
    COOLDOWN = "cooldown"
    BANNED = "banned"
    IN_FLIGHT = "in_flight"
    QUEUE_FULL = "queue_full"
    EXPIRED = "expired"
    RATE_LIMITED = "rate_limited"
    NOT_YOURS = "not_yours"
    NOT_ADMIN = "not_admin"
    BAD_INPUT = "bad_input"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    RESEND = "resend"
    OUT_OF_MEMORY = "out_of_memory"
    NON_FINITE = "non_finite"
    INTERNAL = "internal"


class Refused(Exception):
    """A request the bot will not (or could not) serve; `text` is ready to show the user."""

    def __init__(self, kind: RefusalKind, text: str, error_id: str | None = None) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.error_id = error_id


@dataclass(frozen=True)
class Requester:
    platform: str
    user_id: str
    name: str
    group_id: str | None = None
    is_admin: bool = False


@dataclass(frozen=True)
class Upload:
    size: int | None
    content_type: str | None
    filename: str | None = None


@dataclass(frozen=True)
class Ticket:
    job_id: str
    position: int
    eta_s: float
    text: str


@dataclass
class Toon:
    result_id: str
    image: bytes
    filename: str
    caption: str
    style: str
    strength: int
    styles: list[tuple[str, str]]
    can_less: bool
    can_more: bool
    faces_only: bool


class Reply(Protocol):
    async def progress(self, text: str) -> None: ...

    async def deliver(self, toon: Toon) -> None: ...

    async def fail(self, error: Refused) -> None: ...


class Resumer(Protocol):
    async def refetch(self, ref: dict[str, Any]) -> bytes | None: ...

    def reply_for(self, ref: dict[str, Any]) -> Reply: ...


@dataclass
class _Cached:
    """What a re-render needs: kept in memory only, for `worker.cache_ttl` seconds."""

    owner: tuple[str, str]
    prepared: Any
    result: Result
    faces_only: bool


@dataclass
class _Progress:
    """Throttles progress edits to one every `interval` seconds, never two at once."""

    reply: Reply
    interval: float
    last: float = 0.0
    sending: asyncio.Task[None] | None = field(default=None, repr=False)

    def update(self, text: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval or (self.sending and not self.sending.done()):
            return
        self.last = now
        self.sending = asyncio.create_task(self._send(text))

    async def _send(self, text: str) -> None:
        try:
            await self.reply.progress(text)
        except Exception:
            log.warning("progress update failed", exc_info=True)


class ToonService:
    """Admission, jobs, delivery and re-renders on top of storage and the single worker."""

    def __init__(
        self,
        config: Settings,
        store: Store,
        worker: Worker,
        styles: dict[str, StyleInfo],
        default_style: str,
        render: Callable[[Any, Any, str, int], Result],
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._worker = worker
        self._styles = styles
        self._default_style = default_style
        self._render = render
        self._metrics = metrics or Metrics()
        self._cache: TTLCache[str, _Cached] = TTLCache(
            config.worker.cache_size, config.worker.cache_ttl
        )
        self._resumers: dict[str, Resumer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seconds_per_job = 30.0
        self._progress_interval = config.worker.progress_interval

    # -- admission ---------------------------------------------------------------------------

    async def precheck(self, who: Requester, upload: Upload) -> None:
        """Refuse what can be judged before downloading: type, size, a ban."""
        if upload.content_type and not upload.content_type.startswith(IMAGE_TYPES):
            raise Refused(RefusalKind.NOT_IMAGE, texts.NOT_IMAGE)
        if upload.size is not None and upload.size > self._config.limits.max_bytes:
            raise Refused(RefusalKind.TOO_LARGE, texts.too_large(self._config.limits.max_bytes))
        if await self._store.quotas.is_banned(_user(who)):
            raise Refused(RefusalKind.BANNED, texts.BANNED)

    async def submit(
        self,
        who: Requester,
        image: bytes,
        reply: Reply,
        *,
        ref: dict[str, Any],
        style: str | None = None,
        strength: int | None = None,
        faces_only: bool = False,
    ) -> Ticket:
        await self.precheck(who, Upload(len(image), None))
        style = self._check_style(style)
        if self._worker.full:
            self._metrics.refused("queue_full")
            raise Refused(RefusalKind.QUEUE_FULL, texts.QUEUE_FULL)
        decision = await self._store.quotas.consume(
            NewJob(
                _user(who),
                style,
                strength,
                chat=ref,
                options={"faces_only": faces_only},
                display_name=who.name,
                group=who.group_id,
            )
        )
        if isinstance(decision, StoreRefused):
            raise self._refusal(decision)
        job_id = decision.job_id
        try:
            prepared = await self._worker.prepare(image)
            ticket = self._enqueue(job_id, who, prepared, reply, style, strength, faces_only)
        except Exception as exc:
            error = self._explain(exc, job_id)
            await self._store.jobs.mark_failed(job_id, error.kind.value, refund=True)
            self._metrics.refused(error.kind.value)
            raise error from None
        self._metrics.accepted()
        return ticket

    def _check_style(self, style: str | None) -> str:
        if style is None:
            return self._default_style
        if style not in self._styles:
            raise Refused(RefusalKind.BAD_INPUT, texts.unknown_style(style, list(self._styles)))
        return style

    def _refusal(self, decision: StoreRefused) -> Refused:
        reason = decision.reason
        self._metrics.refused(reason.value)
        wait = decision.retry_after.total_seconds() if decision.retry_after else 0.0
        if reason == Refusal.BANNED:
            return Refused(RefusalKind.BANNED, texts.BANNED)
        if reason == Refusal.COOLDOWN:
            return Refused(RefusalKind.COOLDOWN, texts.cooldown(wait))
        if reason == Refusal.IN_FLIGHT:
            return Refused(RefusalKind.IN_FLIGHT, texts.IN_FLIGHT)
        if reason == Refusal.RATE:
            return Refused(RefusalKind.RATE_LIMITED, texts.RATE_LIMITED)
        return Refused(RefusalKind.QUOTA, texts.quota_used_up(decision.allowance.resets_in))

    def _enqueue(
        self,
        job_id: str,
        who: Requester,
        prepared: Any,
        reply: Reply,
        style: str,
        strength: int | None,
        faces_only: bool,
    ) -> Ticket:
        progress = _Progress(reply, self._progress_interval)

        def on_progress(stage: str, step: int, total: int) -> None:
            if stage == "start":
                self._spawn(self._store.jobs.mark_running(job_id))
            else:
                progress.update(texts.progress(stage, step, total))

        job = self._worker.submit(
            job_id, prepared, style=style, strength=strength, on_progress=on_progress
        )
        self._spawn(self._complete(job_id, who, job.future, reply, faces_only))
        position = self._worker.position(job_id) or 1
        eta = position * self._seconds_per_job / max(1, self._config.worker.max_batch)
        return Ticket(job_id, position, eta, texts.queued(len(prepared.faces), position, eta))

    # -- completion --------------------------------------------------------------------------

    async def _complete(
        self,
        job_id: str,
        who: Requester,
        future: asyncio.Future[Any],
        reply: Reply,
        faces_only: bool,
    ) -> None:
        started = time.monotonic()
        try:
            prepared, result = await future
        except ShuttingDown:
            return  # stays queued in storage; resumed on the next start
        except Exception as exc:
            await self._fail(job_id, exc, reply)
            return
        self._seconds_per_job = 0.7 * self._seconds_per_job + 0.3 * (time.monotonic() - started)
        await self._store.jobs.mark_done(job_id, timings=result.timings)
        self._metrics.finished("done", result.timings)
        self._cache[job_id] = _Cached((who.platform, who.user_id), prepared, result, faces_only)
        await self._send(reply, await self._toon(job_id, result, faces_only))

    async def _fail(self, job_id: str, exc: BaseException, reply: Reply) -> None:
        """Nothing is charged for a job that produced no toon, whoever's fault it was."""
        error = self._explain(exc, job_id)
        if error.kind == RefusalKind.INTERNAL:
            log.error("job %s failed", job_id, exc_info=exc)
        if error.kind == RefusalKind.CANCELLED:
            await self._store.jobs.mark_cancelled(job_id, refund=True)
        else:
            await self._store.jobs.mark_failed(job_id, error.kind.value, refund=True)
        self._metrics.finished(error.kind.value, {})
        try:
            await reply.fail(error)
        except Exception:
            log.warning("could not tell job %s's user about its failure", job_id, exc_info=True)

    @staticmethod
    def _explain(exc: BaseException, job_id: str) -> Refused:
        if isinstance(exc, QueueFull):
            return Refused(RefusalKind.QUEUE_FULL, texts.QUEUE_FULL)
        if isinstance(exc, ShuttingDown):
            return Refused(RefusalKind.RESEND, texts.SHUTTING_DOWN)
        if isinstance(exc, NoFace):
            return Refused(RefusalKind.NO_FACE, texts.no_face(exc.skipped))
        if isinstance(exc, ImageError):
            return Refused(RefusalKind.NOT_IMAGE, exc.reason)
        if isinstance(exc, JobCancelled):
            return Refused(RefusalKind.CANCELLED, texts.CANCELLED)
        if isinstance(exc, JobTimeout):
            return Refused(RefusalKind.TIMEOUT, texts.TIMEOUT)
        if isinstance(exc, OutOfMemory):
            return Refused(RefusalKind.OUT_OF_MEMORY, texts.OUT_OF_MEMORY)
        if isinstance(exc, NonFinite):
            return Refused(RefusalKind.NON_FINITE, texts.NON_FINITE)
        return Refused(RefusalKind.INTERNAL, texts.internal_error(job_id), error_id=job_id)

    async def _toon(self, result_id: str, result: Result, faces_only: bool) -> Toon:
        info = self._styles[result.style]
        strengths = info.strengths
        image = await asyncio.to_thread(_encode, result, faces_only)
        return Toon(
            result_id=result_id,
            image=image,
            filename=f"toon-{result_id}.jpg",
            caption=texts.caption(info.label, result.strength, len(result.faces), result.skipped),
            style=result.style,
            strength=result.strength,
            styles=[(name, s.label) for name, s in self._styles.items()],
            can_less=result.strength != strengths[0],
            can_more=result.strength != strengths[-1],
            faces_only=faces_only,
        )

    @staticmethod
    async def _send(reply: Reply, toon: Toon) -> None:
        try:
            await reply.deliver(toon)
        except Exception:
            log.exception("delivering toon %s failed", toon.result_id)

    # -- re-renders ----------------------------------------------------------------------------

    async def rerender(self, who: Requester, result_id: str, reply: Reply, *, change: str) -> None:
        """Render cached latents again with another strength or style; free but rate-limited."""
        cached = self._cache.get(result_id)
        if cached is None:
            raise Refused(RefusalKind.EXPIRED, texts.EXPIRED)
        if cached.owner != (who.platform, who.user_id):
            raise Refused(RefusalKind.NOT_YOURS, texts.NOT_YOURS)
        style, strength, faces_only = self._apply(cached, change)
        refused = await self._store.quotas.rerender(_user(who))
        if refused is not None:
            raise self._refusal(refused)
        result = cached.result
        if (style, strength) != (result.style, result.strength):
            result = await self._worker.call(
                self._render, cached.prepared, result.latents, style, strength
            )
            self._metrics.rerendered()
        cached.result, cached.faces_only = result, faces_only
        self._cache[result_id] = cached
        await self._send(reply, await self._toon(result_id, result, faces_only))

    def _apply(self, cached: _Cached, change: str) -> tuple[str, int, bool]:
        style, strength = cached.result.style, cached.result.strength
        strengths = self._styles[style].strengths
        if change in ("less", "more"):
            index = strengths.index(strength) + (1 if change == "more" else -1)
            strength = strengths[min(max(index, 0), len(strengths) - 1)]
        elif change.startswith("style:"):
            style = self._check_style(change.removeprefix("style:"))
            info = self._styles[style]
            strength = strength if strength in info.strengths else info.default_strength
        elif change not in ("faces", "photo"):
            raise Refused(RefusalKind.BAD_INPUT, texts.UNKNOWN_CHANGE)
        faces_only = {"faces": True, "photo": False}.get(change, cached.faces_only)
        return style, strength, faces_only

    # -- the rest of the commands ------------------------------------------------------------

    async def cancel(self, who: Requester, job_id: str) -> bool:
        job = await self._store.jobs.get(job_id)
        if job is None or job.user != _user(who):
            return False
        return self._worker.cancel(job_id)

    async def quota_text(self, who: Requester) -> str:
        if await self._store.quotas.is_banned(_user(who)):
            return texts.BANNED
        allowance = await self._store.quotas.allowance(_user(who), who.group_id)
        return texts.quota_left(allowance.remaining, allowance.resets_in)

    async def forget(self, who: Requester) -> None:
        await self._store.forget(_user(who))
        for key, cached in list(self._cache.items()):
            if cached.owner == (who.platform, who.user_id):
                self._cache.pop(key, None)

    async def admin(
        self, who: Requester, action: str, target: str | None = None, value: str | None = None
    ) -> str:
        """quota <user> <n|unlimited|default>, ban <user>, unban <user>, stats.

        `target` is `platform:id`, or a bare id on the admin's own platform.
        """
        if not who.is_admin:
            raise Refused(RefusalKind.NOT_ADMIN, texts.NOT_ADMIN)
        actor = f"{who.platform}:{who.user_id}"
        try:
            if action == "stats":
                return texts.stats(await self._store.admin.stats())
            if target is None:
                raise Refused(RefusalKind.BAD_INPUT, texts.ADMIN_USAGE)
            user = _target(target, who.platform)
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
        return texts.admin_status(status)

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

    def register(self, platform: str, resumer: Resumer) -> None:
        self._resumers[platform] = resumer

    async def resume(self) -> int:
        """Queue again what was accepted before a restart; tell users to resend what is gone."""
        resumed = 0
        for job in await self._store.jobs.unfinished_jobs():
            resumer = self._resumers.get(job.platform)
            if resumer is None:
                await self._store.jobs.mark_failed(job.id, "platform disabled", refund=True)
                continue
            reply = resumer.reply_for(job.chat)
            image = await self._refetch(resumer, job.chat)
            if image is None:
                await self._store.jobs.mark_failed(job.id, RefusalKind.RESEND.value, refund=True)
                await reply.fail(Refused(RefusalKind.RESEND, texts.RESTARTED))
                continue
            who = Requester(job.platform, job.user.id, job.user.id)
            faces_only = bool(job.options.get("faces_only", False))
            try:
                prepared = await self._worker.prepare(image)
                self._enqueue(job.id, who, prepared, reply, job.style, job.strength, faces_only)
            except Exception as exc:
                error = self._explain(exc, job.id)
                await self._store.jobs.mark_failed(job.id, error.kind.value, refund=True)
                await reply.fail(error)
                continue
            resumed += 1
        return resumed

    @staticmethod
    async def _refetch(resumer: Resumer, ref: dict[str, Any]) -> bytes | None:
        try:
            return await resumer.refetch(ref)
        except Exception:
            log.warning("could not fetch a photo again after restart", exc_info=True)
            return None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, keeping a reference so shutdown can wait for it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the deliveries in progress (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _user(who: Requester) -> UserRef:
    return UserRef(who.platform, who.user_id)


def _target(text: str, platform: str) -> UserRef:
    """Admins type `telegram:123` or, for their own platform, just `123` (or `@`-less ids)."""
    text = text.strip()
    return UserRef.parse(text) if ":" in text else UserRef(platform, text)


def _encode(result: Result, faces_only: bool) -> bytes:
    """JPEG of the pasted-back photo, or of the toon faces side by side."""
    image = _grid(result.faces) if faces_only else result.photo
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _grid(faces: list[Image.Image]) -> Image.Image:
    height = max(face.height for face in faces)
    grid = Image.new("RGB", (sum(face.width for face in faces), height), "white")
    x = 0
    for face in faces:
        grid.paste(face, (x, 0))
        x += face.width
    return grid
