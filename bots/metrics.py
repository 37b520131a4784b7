"""Prometheus metrics of the request flow, on a registry of their own (one per application)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inference.memory import device_memory

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._jobs = Counter(
            "toonify_jobs", "Jobs finished, by outcome.", ["outcome"], registry=self.registry
        )
        self._refusals = Counter(
            "toonify_refusals", "Requests refused, by reason.", ["reason"], registry=self.registry
        )
        self._accepted = Counter("toonify_accepted", "Jobs accepted.", registry=self.registry)
        self._rerenders = Counter("toonify_rerenders", "Re-renders.", registry=self.registry)
        self._stages = Histogram(
            "toonify_stage_seconds",
            "Seconds per pipeline stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self._queue = Gauge(
            "toonify_queue_depth", "Jobs queued or running.", registry=self.registry
        )
        self._memory = Gauge(
            "toonify_gpu_memory_bytes",
            "Memory of the inference device: allocated (in tensors) and reserved (held by the "
            "caching allocator, what nvidia-smi shows); 0 on the CPU.",
            ["kind"],
            registry=self.registry,
        )
        self.watch_device(torch.device("cpu"))

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self._queue.set_function(depth)

    def watch_device(self, device: torch.device) -> None:
        """Report the memory of the device inference runs on (`cuda:N` as configured)."""
        self._memory.labels("allocated").set_function(lambda: device_memory(device).allocated)
        self._memory.labels("reserved").set_function(lambda: device_memory(device).reserved)

    def accepted(self) -> None:
        self._accepted.inc()

    def refused(self, reason: str) -> None:
        self._refusals.labels(reason).inc()

    def rerendered(self) -> None:
        self._rerenders.inc()

    def finished(self, outcome: str, timings: Mapping[str, float]) -> None:
        self._jobs.labels(outcome).inc()
        for stage, seconds in timings.items():
            self._stages.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WorkerMetrics:
    """A `toonify worker`'s metrics: what it took from the queue and how each job ended."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._jobs = Counter(
            "toonify_worker_jobs",
            "Jobs and re-renders settled by this worker, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self._batches = Histogram(
            "toonify_worker_batch_size",
            "Entries taken from the queue in one read (at most worker.max_batch per stream).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._lag = Histogram(
            "toonify_worker_queue_lag_seconds",
            "Seconds the oldest entry of a read had waited on the queue.",
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self._held = Gauge(
            "toonify_worker_jobs_held", "Jobs taken and not yet settled.", registry=self.registry
        )
        self._memory = Gauge(
            "toonify_gpu_memory_bytes",
            "Memory of the inference device: allocated and reserved; 0 on the CPU.",
            ["kind"],
            registry=self.registry,
        )

    def watch(self, device: torch.device, held: Callable[[], int]) -> None:
        self._held.set_function(held)
        self._memory.labels("allocated").set_function(lambda: device_memory(device).allocated)
        self._memory.labels("reserved").set_function(lambda: device_memory(device).reserved)

    def read(self, entries: int, lag: float) -> None:
        self._batches.observe(entries)
        self._lag.observe(max(lag, 0.0))

    def finished(self, outcome: str) -> None:
        self._jobs.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
