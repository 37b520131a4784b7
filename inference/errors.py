"""The bases of every error inference/ raises on purpose, and the ways a job can end early.

`InferenceError` is what callers catch from inference/; `ModelLoadError` narrows it to a
configured model (or its device or face backend) that cannot be loaded here, so start-up
catches exactly that and names the fix, while a bug still shows as a bug. The job errors below
are raised by the worker and the prepare pool alike, and by any other inference backend
(inference/backend.py).
"""

from __future__ import annotations


class InferenceError(Exception):
    """Something inference/ refuses or could not do; its type says what, for code."""


class ModelLoadError(InferenceError):
    """A configured model, device or face backend that cannot be used here; str() names the
    fix, for the operator."""


class Cancelled(InferenceError):
    """Stopped because someone asked (between two optimisation steps, or before its turn)."""


class ShuttingDown(InferenceError):
    """The bot is stopping before the job could run; the service keeps it for the next start."""


class QueueFull(InferenceError):
    """The queue holds `worker.queue_size` jobs already."""


class JobTimeout(InferenceError):
    """The job ran longer than `worker.job_timeout` seconds."""


class OutOfMemory(InferenceError):
    """The job alone needs more accelerator memory than is free; the other jobs went on."""


class Expired(InferenceError):
    """What a re-render needs is gone: past `worker.cache_ttl`, evicted, or the bot restarted."""
