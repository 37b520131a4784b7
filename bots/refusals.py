"""Every way the bot says no, in one shape: `Refused` (a kind for code, words for the user, a
code to quote when it was our fault), and the translation of what storage denies and what
inference raises into it.
"""

from __future__ import annotations

import logging
import secrets
from enum import StrEnum

from bots import texts
from inference.errors import Cancelled, JobTimeout, OutOfMemory, QueueFull
from inference.images import ImageError, ImageProblem
from inference.pipeline import NonFinite
from inference.prepare import NoFace
from inference.prepare_pool import PrepareCrashed, PrepareTimeout
from storage import DenialReason, Denied

log = logging.getLogger(__name__)


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


def internal_error(error: BaseException, what: str, *, job_id: str | None = None) -> Refused:
    """Our fault: one log line with a code the user can quote, and the refusal that shows it.

    The code is the job's id when there is a job (the operator finds its row too), else a new
    short random one. Every internal-error code of the bot is made here.
    """
    error_id = job_id or secrets.token_hex(4)
    log.error("%s failed (error %s)", what, error_id, exc_info=error)
    return Refused(RefusalKind.INTERNAL, texts.internal_error(error_id), error_id)


def explain(error: BaseException) -> Refused | None:
    """What to tell the user about a job that ended with `error`; None when it is a bug."""
    if isinstance(error, Refused):
        return error
    if isinstance(error, QueueFull):
        return Refused(RefusalKind.QUEUE_FULL, texts.QUEUE_FULL)
    if isinstance(error, NoFace):
        return Refused(RefusalKind.NO_FACE, texts.no_face(error.skipped))
    if isinstance(error, PrepareTimeout) or (
        isinstance(error, ImageError) and error.problem == ImageProblem.TOO_COMPLEX
    ):
        return Refused(RefusalKind.TOO_COMPLEX, texts.TOO_COMPLEX)
    if isinstance(error, PrepareCrashed):
        return Refused(RefusalKind.NOT_IMAGE, texts.UNREADABLE)
    if isinstance(error, ImageError):
        return Refused(RefusalKind.NOT_IMAGE, texts.image_problem(error))
    if isinstance(error, Cancelled):
        return Refused(RefusalKind.CANCELLED, texts.CANCELLED)
    if isinstance(error, JobTimeout):
        return Refused(RefusalKind.TIMEOUT, texts.TIMEOUT)
    if isinstance(error, OutOfMemory):
        return Refused(RefusalKind.OUT_OF_MEMORY, texts.OUT_OF_MEMORY)
    if isinstance(error, NonFinite):
        return Refused(RefusalKind.NON_FINITE, texts.NON_FINITE)
    return None


def denied(denial: Denied, max_in_flight: int) -> Refused:
    """What storage's denial of a request or re-render means to the user (who may have up to
    `max_in_flight` toons in progress)."""
    reason = denial.reason
    wait = denial.retry_after.total_seconds() if denial.retry_after else 0.0
    if reason == DenialReason.BANNED:
        return Refused(RefusalKind.BANNED, texts.BANNED)
    if reason == DenialReason.COOLDOWN:
        return Refused(RefusalKind.COOLDOWN, texts.cooldown(wait))
    if reason == DenialReason.IN_FLIGHT:
        return Refused(RefusalKind.IN_FLIGHT, texts.in_flight(max_in_flight))
    if reason == DenialReason.RATE:
        return Refused(RefusalKind.RATE_LIMITED, texts.RATE_LIMITED)
    return Refused(RefusalKind.QUOTA, texts.quota_used_up(denial.allowance.resets_in))
