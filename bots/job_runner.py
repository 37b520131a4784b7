"""A job's life after admission: fetch the photo, hand it to inference, relay its progress, move
its row through running and delivering to done, deliver the toon; settle every failure.

The row moves by explicit calls driven by the inference backend's Handle: inference began
(`started`) -> running; the toon is drawn (`finished`) -> delivering; the platform confirmed
the message -> done. Every failure after the row exists is settled: failed and refunded with a
reply, or left queued for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from bots import texts
from bots.chat import JobReply, JobSource, Reply, Requester
from bots.config import Settings
from bots.metrics import Metrics
from bots.refusals import RefusalKind, Refused, explain, internal_error
from bots.styles import Styles
from bots.toons import ImageFormat, View, make_toon
from inference.backend import Handle, InferenceBackend
from inference.errors import ShuttingDown
from inference.pipeline import Finished
from inference.prepare_pool import PrepareFailed
from inference.stages import Stage
from storage import JobRecord, JobStatus, Store

log = logging.getLogger(__name__)

# A job whose inference started this often without finishing (the bot died each time) is
# given up at the next start instead of taking the bot down again.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Job:
    """An admitted request on its way from the stored reference to the delivered toon."""

    id: str
    who: Requester
    ref: dict[str, Any]
    reply: JobReply
    style: str
    strength: int | None
    """As asked; None: the style's default."""
    faces_only: bool
    resumed: bool
    image_format: ImageFormat = ImageFormat.JPEG


@dataclass
class _Progress:
    """Throttles progress edits to one every `interval` seconds, never two at once."""

    reply: Reply
    interval: float
    last: float = 0.0
    sending: asyncio.Task[None] | None = field(default=None, repr=False)

    def __call__(self, stage: Stage, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval or (self.sending and not self.sending.done()):
            return
        self.last = now
        self.sending = asyncio.create_task(self._send(texts.progress(stage, step, total)))

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


class JobRunner:
    """Runs admitted and resumed jobs in the background, each to a delivered toon or a reply
    that says why not. `views` receives each delivered toon's view, for its buttons."""

    def __init__(
        self,
        config: Settings,
        store: Store,
        backend: InferenceBackend,
        styles: Styles,
        views: TTLCache[str, View],
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._backend = backend
        self._styles = styles
        self._views = views
        self._metrics = metrics
        self._progress_interval = config.worker.progress_interval
        self._sources: dict[str, JobSource] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._preparing: set[asyncio.Task[None]] = set()
        self._seconds_per_job = 30.0

    @property
    def preparing(self) -> int:
        """Jobs whose photo is still being fetched or prepared: they count as queued."""
        return len(self._preparing)

    def register(self, platform: str, source: JobSource) -> None:
        self._sources[platform] = source

    def start(self, job: Job) -> None:
        """Run the job in the background; until it is queued for inference, stopping the bot
        cancels it and leaves its row queued for the next start."""
        task = asyncio.create_task(self._serve(job), name=f"job-{job.id}")
        self._tasks.add(task)
        self._preparing.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._preparing.discard)

    async def resume(self) -> int:
        """Start again every job accepted before a restart: queued ones, and running or
        delivering ones (their toon was never stored, so it is drawn again). Each job is
        settled on its own; nothing here stops the start-up."""
        resumed = 0
        for record in await self._store.jobs.unfinished_jobs():
            if await self._resume(record):
                resumed += 1
        return resumed

    async def stop(self) -> None:
        """Stop the jobs still being fetched or prepared (their rows stay queued), let the
        backend finish its running jobs, then wait for the deliveries in progress."""
        for task in list(self._preparing):
            task.cancel()
        await self._backend.stop()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _resume(self, record: JobRecord) -> bool:
        source = self._sources.get(record.platform)
        if source is None:
            await self._store.jobs.mark_failed(record.id, "platform disabled", refund=True)
            return False
        job = Job(
            record.id,
            Requester(record.platform, record.user.id, record.user.id),
            record.chat,
            source.reply_for(record.chat),
            record.style,
            record.strength,
            bool(record.options.get("faces_only", False)),
            resumed=True,
            image_format=ImageFormat(record.options.get("image_format", ImageFormat.JPEG)),
        )
        if record.attempts >= MAX_ATTEMPTS:
            log.error(
                "job %s was started %d times without finishing; given up", job.id, record.attempts
            )
            await self._fail(job, RuntimeError("too many attempts"))
            return False
        if record.status != JobStatus.QUEUED:
            await self._store.jobs.requeue(record.id)
        self.start(job)
        return True

    async def _serve(self, job: Job) -> None:
        try:
            style, strength = self._styles.choose(job.style, job.strength)
            photo = await self._fetch(job)
            handle = await self._backend.submit(
                job.id,
                photo,
                style=style,
                strength=strength,
                on_progress=_Progress(job.reply, self._progress_interval),
            )
        except ShuttingDown:
            return  # the bot is stopping: the row stays queued and is resumed at the next start
        except Exception as exc:
            await self._fail(job, exc)
            return
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._preparing.discard(task)  # from here on, stopping lets the job finish
        self._metrics.accepted()
        eta = handle.position * self._seconds_per_job / handle.lanes
        await _best_effort(
            job.reply.queued(texts.queued(handle.faces, handle.position, eta)), job.id
        )
        await self._follow(job, handle)

    async def _fetch(self, job: Job) -> bytes:
        """The photo from the platform, by the reference stored with the job."""
        try:
            return await self._sources[job.who.platform].fetch(job.ref)
        except Refused:
            raise
        except Exception as exc:
            log.warning("could not fetch the photo of job %s: %s", job.id, exc)
            text = texts.RESTARTED if job.resumed else texts.DOWNLOAD_FAILED
            raise Refused(RefusalKind.RESEND, text) from None

    async def _follow(self, job: Job, handle: Handle[Finished]) -> None:
        """The row follows the handle: running when inference begins, delivering once drawn."""
        started = time.monotonic()
        if await handle.started:
            await self._store.jobs.mark_running(job.id)
            await _best_effort(job.reply.started(), job.id)
        try:
            finished = await handle.finished
        except ShuttingDown:
            return  # stays queued in storage; resumed on the next start
        except Exception as exc:
            await self._fail(job, exc)
            return
        self._seconds_per_job = 0.7 * self._seconds_per_job + 0.3 * (time.monotonic() - started)
        if not await self._store.jobs.mark_delivering(job.id, timings=finished.timings):
            log.info("job %s was settled while it ran (cancelled or forgotten)", job.id)
            await self._backend.discard(job.id)
            return
        await self._deliver(job, finished)

    async def _deliver(self, job: Job, finished: Finished) -> None:
        """Done once the platform has the toon; a toon it will not take is failed and refunded."""
        view = View(finished.style, finished.strength, job.faces_only, job.image_format)
        toon = await make_toon(job.id, finished, view, self._styles)
        self._views[job.id] = view
        try:
            await job.reply.deliver(toon)
        except Exception as exc:
            self._views.pop(job.id, None)
            await self._backend.discard(job.id)
            log.warning("toon %s could not be delivered: %s", job.id, exc)
            await self._store.jobs.mark_failed(job.id, RefusalKind.UNDELIVERED.value, refund=True)
            self._metrics.finished(RefusalKind.UNDELIVERED.value, {})
            failed = Refused(RefusalKind.UNDELIVERED, texts.UNDELIVERED)
            await _best_effort(job.reply.fail(failed), job.id)
            return
        await self._store.jobs.mark_done(job.id)
        self._metrics.finished("done", finished.timings)
        await _best_effort(job.reply.delivered(), job.id)

    async def _fail(self, job: Job, error: BaseException) -> None:
        """Nothing is charged for a job that produced no toon, whoever's fault it was."""
        refused = explain(error)
        if refused is None:
            refused = internal_error(error, f"job {job.id}", job_id=job.id)
            if isinstance(error, PrepareFailed):
                log.debug("in the prepare process: %s", error.details)
        if refused.kind == RefusalKind.CANCELLED:
            await self._store.jobs.mark_cancelled(job.id, refund=True)
        else:
            await self._store.jobs.mark_failed(job.id, refused.kind.value, refund=True)
        self._metrics.finished(refused.kind.value, {})
        await _best_effort(job.reply.fail(refused), job.id)
