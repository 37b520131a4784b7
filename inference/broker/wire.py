"""Prepared photos and finished jobs as bytes for Redis, and back.

One safetensors blob each: pixels as uint8 arrays, codes as float32, the rest (skipped faces,
timings, style) as JSON in its header. No pickle crosses the broker, so a blob read from Redis
can never run code, and nothing is compressed: copying pixels is the whole cost.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load, save

from inference.align import AlignedFace
from inference.errors import Cancelled, Expired, InferenceError, JobTimeout, OutOfMemory
from inference.faces import Face, SkippedFace, SkipProblem
from inference.pipeline import Finished, Latents, NonFinite
from inference.prepare import Prepared

_META = "toonify"


def dump_prepared(prepared: Prepared) -> bytes:
    arrays, meta = _prepared_parts(prepared)
    return save(arrays, metadata={_META: json.dumps(meta)})


def load_prepared(data: bytes) -> Prepared:
    return _prepared_of(load(data), _metadata(data))


def dump_finished(finished: Finished) -> bytes:
    arrays, meta = _prepared_parts(finished.source)
    arrays["ws"] = finished.latents.ws.numpy()
    for index, noise in enumerate(finished.latents.noises or []):
        arrays[f"noise.{index}"] = noise.numpy()
    arrays["pasted"] = _pixels(finished.photo)
    for index, toon in enumerate(finished.faces):
        arrays[f"toon.{index}"] = _pixels(toon)
    meta |= {
        "style": finished.style,
        "strength": finished.strength,
        "finished_timings": finished.timings,
        "noises": len(finished.latents.noises) if finished.latents.noises is not None else None,
    }
    return save(arrays, metadata={_META: json.dumps(meta)})


def load_finished(data: bytes) -> Finished:
    arrays, meta = load(data), _metadata(data)
    noises = meta["noises"]
    latents = Latents(
        ws=torch.from_numpy(arrays["ws"]),
        noises=None
        if noises is None
        else [torch.from_numpy(arrays[f"noise.{i}"]) for i in range(noises)],
    )
    return Finished(
        source=_prepared_of(arrays, meta),
        latents=latents,
        style=meta["style"],
        strength=int(meta["strength"]),
        photo=_image(arrays["pasted"]),
        faces=[_image(arrays[f"toon.{i}"]) for i in range(meta["faces"])],
        timings=meta["finished_timings"],
    )


def _prepared_parts(prepared: Prepared) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {"photo": _pixels(prepared.photo)}
    for index, face in enumerate(prepared.faces):
        arrays[f"face.{index}"] = _pixels(face.image)
        arrays[f"quad.{index}"] = np.ascontiguousarray(face.quad, dtype=np.float64)
    meta = {
        "faces": len(prepared.faces),
        "skipped": [_skipped(skipped) for skipped in prepared.skipped],
        "timings": prepared.timings,
    }
    return arrays, meta


def _prepared_of(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Prepared:
    faces = [
        AlignedFace(_image(arrays[f"face.{i}"]), arrays[f"quad.{i}"]) for i in range(meta["faces"])
    ]
    skipped = [
        SkippedFace(
            Face(tuple(s["box"]), s["score"], np.asarray(s["landmarks"], dtype=np.float64)),
            SkipProblem(s["problem"]),
            s["limit"],
        )
        for s in meta["skipped"]
    ]
    return Prepared(_image(arrays["photo"]), faces, skipped, dict(meta["timings"]))


def _skipped(skipped: SkippedFace) -> dict[str, Any]:
    face = skipped.face
    return {
        "box": list(face.box),
        "score": face.score,
        "landmarks": np.asarray(face.landmarks).tolist(),
        "problem": skipped.problem.value,
        "limit": skipped.limit,
    }


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels, "RGB")


def _metadata(data: bytes) -> dict[str, Any]:
    """The JSON this module put in the safetensors header (an 8-byte length, then the JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta: dict[str, Any] = json.loads(header["__metadata__"][_META])
    return meta


class WorkerFailed(InferenceError):
    """A job failed on a worker for a reason of ours (a bug there); the worker logged it."""


_FAILURES: dict[str, type[Exception]] = {
    "cancelled": Cancelled,
    "timeout": JobTimeout,
    "out_of_memory": OutOfMemory,
    "non_finite": NonFinite,
    "expired": Expired,
}


def failure_kind(error: BaseException) -> str:
    """How a worker names the error a job ended with, for the adapter to raise again."""
    for kind, cls in _FAILURES.items():
        if isinstance(error, cls):
            return kind
    return "error"


def failure(kind: str) -> Exception:
    """The error a job ended with on a worker, as the adapter's job runner knows it."""
    return _FAILURES.get(kind, WorkerFailed)()
