"""The platform-neutral request flow that both chat adapters share.

admit (type, size, ban, cooldown, in flight, quota) and write the job row -> in the background:
fetch the photo from the platform, prepare it in the prepare pool, queue it on the worker,
relay throttled progress, deliver the toon and mark it done once the platform confirmed it.
Every failure after the row exists is settled: failed and refunded with a reply, or left
queued for the next start. Adapters turn updates into `Requester`/`Upload`, implement
`JobReply` and `JobSource`; everything they show comes from `Refused.text` and the replies.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

from cachetools import TTLCache
from PIL import Image

from bots import texts
from bots.config import Settings
from bots.metrics import Metrics
from inference.images import ImageError, ImageProblem
from inference.pipeline import Latents, NoFace, NonFinite, Prepared, Result, StyleInfo
from inference.prepare_pool import PoolClosed, PrepareCrashed, PrepareFailed, PrepareTimeout
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
    JobRecord,
    JobStatus,
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
# A job whose inference started this often without finishing (the bot died each time) is
# given up at the next start instead of taking the bot down again.
MAX_ATTEMPTS = 3


class RefusalKind(StrEnum):
    NOT_IMAGE = "not_image"
    TOO_LARGE = "too_large"
    TOO_COMPLEX = "too_complex"
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
    UNDELIVERED = "undelivered"
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
    """How a re-render answers."""

    async def progress(self, text: str) -> None: ...

    async def deliver(self, toon: Toon) -> None: ...

    async def fail(self, error: Refused) -> None: ...


class JobReply(Reply, Protocol):
    """How a job answers: `deliver` returns once the platform has the toon and raises when it
    refused it for good (after the adapter's own retries)."""

    async def queued(self, text: str) -> None:
        """The first status: faces found, place in line."""

    async def delivered(self) -> None:
        """The job is done: tidy up (status messages); best effort."""


class JobSource(Protocol):
    """What the service needs of an adapter to work from a job's stored chat reference."""

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        """The photo again; Refused for what the user must fix, anything else means gone."""

    def reply_for(self, ref: dict[str, Any]) -> JobReply:
        """A reply to the chat the request came from, for jobs resumed after a restart."""


class Preparer(Protocol):
    """The prepare pool (inference/prepare_pool.py)."""

    async def prepare(self, image: bytes) -> Prepared: ...


@dataclass
class _Cached:
    """What a re-render needs: kept in memory only, for `worker.cache_ttl` seconds."""

    owner: tuple[str, str]
    prepared: Prepared
    result: Result
    faces_only: bool


@dataclass(frozen=True)
class _Job:
    """An admitted request on its way from the stored reference to the delivered toon."""

    id: str
    who: Requester
    ref: dict[str, Any]
    reply: JobReply
    style: str
    strength: int | None
    faces_only: bool
    resumed: bool


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


async def _best_effort(notice: Awaitable[None], job_id: str) -> None:
    """A message to the user that may fail (blocked bot, deleted chat, network) without
    changing what happened to the job."""
    try:
        await notice
    except Exception as exc:
        log.warning("could not tell job %s's user: %s", job_id, exc)


class ToonService:
    """Admission, jobs, delivery and re-renders on top of storage, the prepare pool and the
    single worker."""

    def __init__(
        self,
        config: Settings,
        store: Store,
        preparer: Preparer,
        worker: Worker,
        styles: dict[str, StyleInfo],
        default_style: str,
        render: Callable[[Prepared, Latents, str, int], Result],
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._preparer = preparer
        self._worker = worker
        self._styles = styles
        self._default_style = default_style
        self._render = render
        self._metrics = metrics or Metrics()
        self._cache: TTLCache[str, _Cached] = TTLCache(
            config.worker.cache_size, config.worker.cache_ttl
        )
        self._sources: dict[str, JobSource] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._preparing: set[asyncio.Task[None]] = set()
        self._seconds_per_job = 30.0
        self._progress_interval = config.worker.progress_interval

    @property
    def styles(self) -> Mapping[str, StyleInfo]:
        """The styles this bot renders (names, labels, strengths, defaults), read-only:
        adapters build their choices from this, never from the configuration."""
        return MappingProxyType(self._styles)

    @property
    def default_style(self) -> str:
        return self._default_style

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
    ) -> str | None:
        """Judge a request from what the platform says about it, charge it and write its job
        row with `ref` (what `JobSource.fetch` needs); download, preparation and the rest run
        in the background. The job id, or None when `key` was admitted before (the platform
        delivered the same request twice). Raises Refused; nothing is charged then.
        """
        if upload.content_type and not upload.content_type.startswith(IMAGE_TYPES):
            raise self._refused(RefusalKind.NOT_IMAGE, texts.NOT_IMAGE)
        if upload.size is not None and upload.size > self._config.limits.max_bytes:
            raise self._refused(
                RefusalKind.TOO_LARGE, texts.too_large(self._config.limits.max_bytes)
            )
        style = self._check_style(style)
        if self._busy():
            raise self._refused(RefusalKind.QUEUE_FULL, texts.QUEUE_FULL)
        decision = await self._store.quotas.consume(
            NewJob(
                _user(who),
                style,
                strength,
                chat=ref,
                options={"faces_only": faces_only},
                display_name=who.name,
                group=who.group_id,
                key=key,
            )
        )
        if isinstance(decision, StoreRefused):
            if decision.reason == Refusal.DUPLICATE:
                return None
            raise self._refusal(decision)
        job = _Job(decision.job_id, who, ref, reply, style, strength, faces_only, resumed=False)
        self._start(job)
        return job.id

    def _busy(self) -> bool:
        """The queue counts the photos still being fetched and prepared too."""
        waiting = self._worker.waiting + len(self._preparing)
        return waiting >= self._config.worker.queue_size

    def _check_style(self, style: str | None) -> str:
        if style is None:
            return self._default_style
        if style not in self._styles:
            raise Refused(RefusalKind.BAD_INPUT, texts.unknown_style(style, list(self._styles)))
        return style

    def _refused(self, kind: RefusalKind, text: str) -> Refused:
        self._metrics.refused(kind.value)
        return Refused(kind, text)

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

    # -- a job's life --------------------------------------------------------------------------

    def _start(self, job: _Job) -> None:
        """Run the job in the background; until it is queued on the worker, stopping the bot
        cancels it and leaves its row queued for the next start."""
        task = asyncio.create_task(self._serve(job), name=f"job-{job.id}")
        self._tasks.add(task)
        self._preparing.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._preparing.discard)

    async def _serve(self, job: _Job) -> None:
        try:
            image = await self._fetch(job)
            prepared = await self._preparer.prepare(image)
            future, position = self._enqueue(job, prepared)
        except (ShuttingDown, PoolClosed):
            return  # the bot is stopping: the row stays queued and is resumed at the next start
        except Exception as exc:
            await self._fail(job, exc)
            return
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._preparing.discard(task)  # from here on, stopping lets the job finish
        self._metrics.accepted()
        eta = position * self._seconds_per_job / max(1, self._config.worker.max_batch)
        await _best_effort(
            job.reply.queued(texts.queued(len(prepared.faces), position, eta)), job.id
        )
        await self._complete(job, future)

    async def _fetch(self, job: _Job) -> bytes:
        """The photo from the platform, by the reference stored with the job."""
        try:
            return await self._sources[job.who.platform].fetch(job.ref)
        except Refused:
            raise
        except Exception as exc:
            log.warning("could not fetch the photo of job %s: %s", job.id, exc)
            text = texts.RESTARTED if job.resumed else texts.DOWNLOAD_FAILED
            raise Refused(RefusalKind.RESEND, text) from None

    def _enqueue(self, job: _Job, prepared: Prepared) -> tuple[asyncio.Future[Any], int]:
        progress = _Progress(job.reply, self._progress_interval)

        def on_progress(stage: str, step: int, total: int) -> None:
            if stage == "start":
                self._spawn(self._mark_running(job.id))
            else:
                progress.update(texts.progress(stage, step, total))

        queued = self._worker.submit(
            job.id, prepared, style=job.style, strength=job.strength, on_progress=on_progress
        )
        return queued.future, self._worker.position(job.id) or 1

    async def _mark_running(self, job_id: str) -> None:
        await self._store.jobs.mark_running(job_id)

    async def _complete(self, job: _Job, future: asyncio.Future[Any]) -> None:
        started = time.monotonic()
        try:
            prepared, result = await future
        except ShuttingDown:
            return  # stays queued in storage; resumed on the next start
        except Exception as exc:
            await self._fail(job, exc)
            return
        self._seconds_per_job = 0.7 * self._seconds_per_job + 0.3 * (time.monotonic() - started)
        if not await self._store.jobs.mark_delivering(job.id, timings=result.timings):
            log.info("job %s was settled while it ran (cancelled or forgotten)", job.id)
            return
        toon = await self._toon(job.id, result, job.faces_only)
        owner = (job.who.platform, job.who.user_id)
        self._cache[job.id] = _Cached(owner, prepared, result, job.faces_only)  # for its buttons
        try:
            await job.reply.deliver(toon)
        except Exception as exc:
            self._cache.pop(job.id, None)
            log.warning("toon %s could not be delivered: %s", job.id, exc)
            await self._store.jobs.mark_failed(job.id, RefusalKind.UNDELIVERED.value, refund=True)
            self._metrics.finished(RefusalKind.UNDELIVERED.value, {})
            failed = Refused(RefusalKind.UNDELIVERED, texts.UNDELIVERED)
            await _best_effort(job.reply.fail(failed), job.id)
            return
        await self._store.jobs.mark_done(job.id)
        self._metrics.finished("done", result.timings)
        await _best_effort(job.reply.delivered(), job.id)

    async def _fail(self, job: _Job, exc: BaseException) -> None:
        """Nothing is charged for a job that produced no toon, whoever's fault it was."""
        error = self._explain(exc, job.id)
        if error.kind == RefusalKind.INTERNAL and error is not exc:
            log.error("job %s failed", job.id, exc_info=exc)
            if isinstance(exc, PrepareFailed):
                log.debug("in the prepare process: %s", exc.details)
        if error.kind == RefusalKind.CANCELLED:
            await self._store.jobs.mark_cancelled(job.id, refund=True)
        else:
            await self._store.jobs.mark_failed(job.id, error.kind.value, refund=True)
        self._metrics.finished(error.kind.value, {})
        await _best_effort(job.reply.fail(error), job.id)

    @staticmethod
    def _explain(exc: BaseException, job_id: str) -> Refused:
        if isinstance(exc, Refused):
            return exc
        if isinstance(exc, QueueFull):
            return Refused(RefusalKind.QUEUE_FULL, texts.QUEUE_FULL)
        if isinstance(exc, NoFace):
            return Refused(RefusalKind.NO_FACE, texts.no_face(exc.skipped))
        if isinstance(exc, PrepareTimeout) or (
            isinstance(exc, ImageError) and exc.problem == ImageProblem.TOO_COMPLEX
        ):
            return Refused(RefusalKind.TOO_COMPLEX, texts.TOO_COMPLEX)
        if isinstance(exc, PrepareCrashed):
            return Refused(RefusalKind.NOT_IMAGE, texts.UNREADABLE)
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
        await reply.deliver(await self._toon(result_id, result, faces_only))

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

    def register(self, platform: str, source: JobSource) -> None:
        self._sources[platform] = source

    async def resume(self) -> int:
        """Start again every job accepted before a restart: queued ones, and running or
        delivering ones (their toon was never stored, so it is drawn again). Each job is
        settled on its own; nothing here stops the start-up."""
        resumed = 0
        for record in await self._store.jobs.unfinished_jobs():
            if await self._resume(record):
                resumed += 1
        return resumed

    async def _resume(self, record: JobRecord) -> bool:
        source = self._sources.get(record.platform)
        if source is None:
            await self._store.jobs.mark_failed(record.id, "platform disabled", refund=True)
            return False
        job = _Job(
            record.id,
            Requester(record.platform, record.user.id, record.user.id),
            record.chat,
            source.reply_for(record.chat),
            record.style,
            record.strength,
            bool(record.options.get("faces_only", False)),
            resumed=True,
        )
        if record.attempts >= MAX_ATTEMPTS:
            log.error(
                "job %s was started %d times without finishing; given up", job.id, record.attempts
            )
            await self._fail(job, RuntimeError("too many attempts"))
            return False
        if record.status != JobStatus.QUEUED:
            await self._store.jobs.requeue(record.id)
        self._start(job)
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, keeping a reference so shutdown can wait for it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop the jobs still being fetched or prepared (their rows stay queued), let the
        worker finish its running batch, then wait for the deliveries in progress."""
        for task in list(self._preparing):
            task.cancel()
        await self._worker.stop()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


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
