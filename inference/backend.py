"""The seam between the service and whatever runs inference for it.

Today that is the in-process `Worker` (inference/worker.py): prepare processes, one queue, one
inference thread, the cached codes in memory. Scaled out, another implementation of the same
protocol can put jobs on a broker and read results back from `toonify worker` processes; the
service (bots/service.py) speaks only this protocol, in its own terms: a job id, the photo's
bytes, a style and strength already checked, and what comes back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from inference.pipeline import Finished
from inference.stages import ProgressFn

T = TypeVar("T")


@dataclass(eq=False)
class Handle(Generic[T]):
    """A job once it is queued, as its submitter follows it."""

    job_id: str
    faces: int
    """Faces found in the photo (and to be toonified)."""
    position: int
    """Place in line when queued: 1 runs next (or now), 2 waits for one job, ..."""
    started: asyncio.Future[bool]
    """True once inference of this job begins; False if it ended before (cancelled while
    waiting, or the bot stopped)."""
    finished: asyncio.Future[T]
    """The result, or the error the job ended with (Cancelled, JobTimeout, OutOfMemory,
    NonFinite, ShuttingDown, or a bug)."""
    lanes: int = 1
    """Jobs that run at once (workers x batch): a place in line waits position / lanes jobs."""


class InferenceBackend(Protocol):
    """What the service needs of inference; every call answers on the caller's event loop."""

    async def submit(
        self,
        job_id: str,
        photo: bytes,
        *,
        style: str,
        strength: int,
        on_progress: ProgressFn | None = None,
    ) -> Handle[Finished]:
        """Prepare the photo and queue it. Raises what is wrong with the photo (ImageError,
        NoFace, PrepareTimeout, PrepareCrashed, PrepareFailed), QueueFull or ShuttingDown."""
        ...

    async def waiting(self) -> int:
        """Jobs queued and not running yet."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """A queued job ends now, a running one at its next step (both with Cancelled);
        False when no such job is queued or running."""
        ...

    async def rerender(self, job_id: str, style: str, strength: int) -> Finished:
        """The job's faces in another style or strength from its cached codes (no inversion),
        or as they are when nothing changed; Expired when the codes are gone."""
        ...

    async def discard(self, job_id: str) -> None:
        """Forget what re-renders of the job need (its user is gone, or never got the toon)."""
        ...

    async def stop(self) -> None:
        """Take no more jobs, let the running ones finish; queued ones end in ShuttingDown."""
        ...
