"""Memory after failures: out-of-memory recovery and failed jobs, with the real Toonifier and
worker on tiny models; weak references show which tensors are still alive."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from bots.config import Settings
from inference.errors import OutOfMemory
from inference.invert import Distance, perceptual_distance
from inference.memory import detach_frames, is_out_of_memory
from inference.pipeline import Finished, Toonifier
from inference.prepare import Prepared
from inference.worker import Worker
from tests.support.tiny_toonify import write_tiny_models
from tests.support.weak_tensors import Watched
from tests.test_invert import FakeVgg16

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
]


class Allocates(torch.nn.Module):
    """Asks the allocator for petabytes: a real out-of-memory error, raised inside TorchScript."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty([x.shape[0] << 48]).sum() + x


class GreedyVgg16(torch.nn.Module):
    """FakeVgg16 (NVIDIA's vgg16.pt call) that runs out of memory on more than `fits` images
    with gradients, as the real one does on a GPU that is too small for the batch."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.vgg = FakeVgg16()
        self.allocates = Allocates()
        self.fits = fits

    def forward(
        self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False
    ) -> torch.Tensor:
        if img.requires_grad and img.shape[0] > self.fits:
            img = self.allocates(img)  # used, or TorchScript drops the call
        return self.vgg(img, resize_images, return_lpips)


def scripted_vgg16(fits: int) -> Any:
    return torch.jit.script(GreedyVgg16(fits))


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def toonifier(tmp_path_factory: pytest.TempPathFactory) -> Toonifier:
    config = write_tiny_models(tmp_path_factory.mktemp("models"), steps=3)
    return Toonifier.from_config(Settings(**config))


def prepare(toonifier: Toonifier, faces: int = 1) -> Prepared:
    """The astronaut, `faces` times side by side."""
    return toonifier.prepare(jpeg(np.concatenate([data.astronaut()] * faces, axis=1)))


class Given:
    """Photos prepared beforehand; a photo's bytes are its index."""

    def __init__(self, jobs: list[Prepared]) -> None:
        self.jobs = jobs

    async def prepare(self, image: bytes) -> Prepared:
        return self.jobs[int(image)]


async def run_together(toonifier: Toonifier, jobs: list[Prepared]) -> list[BaseException | Any]:
    """Submit the jobs in one go to a worker that batches them all; their outcomes."""
    worker = Worker(toonifier, Given(jobs), queue_size=10, max_batch=len(jobs))
    worker.start()
    handles = [
        await worker.submit(f"job{i}", str(i).encode(), style="toon", strength=16)
        for i in range(len(jobs))
    ]
    outcomes = await asyncio.gather(*(h.finished for h in handles), return_exceptions=True)
    await worker.stop()
    return outcomes


def test_out_of_memory_is_recognised_however_it_arrives() -> None:
    scripted = torch.jit.script(Allocates())
    with pytest.raises(RuntimeError) as info:
        scripted(torch.zeros(2))
    assert "TorchScript interpreter" in str(info.value)
    assert not isinstance(info.value, torch.OutOfMemoryError)
    assert is_out_of_memory(info.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(
        RuntimeError(
            "The following operation failed in the TorchScript interpreter.\n"
            "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB)"
        )
    )
    assert not is_out_of_memory(RuntimeError("The size of tensor a (3) must match"))
    assert not is_out_of_memory(ValueError("out of memory"))


async def test_a_batch_out_of_memory_in_torchscript_is_freed_then_retried_one_by_one(
    toonifier: Toonifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    vgg = scripted_vgg16(fits=1)
    watched = Watched(lambda targets: perceptual_distance(vgg, targets))
    monkeypatch.setattr(toonifier, "make_distance", watched)
    outcomes = await run_together(toonifier, [prepare(toonifier) for _ in range(3)])
    assert all(isinstance(outcome, Finished) for outcome in outcomes), outcomes
    assert [size for size, _ in watched.batches] == [3, 1, 1, 1]
    failed = watched.batches[0][1]
    assert len(failed) >= 3, "targets, images and the optimised leaves are watched"
    # Each retry started with none of the failed batch's tensors (nor earlier retries') alive.
    assert watched.alive_at_start == [0, 0, 0, 0]


async def test_a_job_that_runs_out_of_memory_alone_fails_alone(
    toonifier: Toonifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    vgg = scripted_vgg16(fits=1)
    watched = Watched(lambda targets: perceptual_distance(vgg, targets))
    monkeypatch.setattr(toonifier, "make_distance", watched)
    two_faces, one_face = prepare(toonifier, faces=2), prepare(toonifier)
    assert len(two_faces.faces) == 2
    big, small = await run_together(toonifier, [two_faces, one_face])
    assert isinstance(big, OutOfMemory)
    assert isinstance(small, Finished)
    assert [size for size, _ in watched.batches] == [3, 2, 1]
    assert watched.alive_at_start == [0, 0, 0]
    assert watched.alive() == 0


async def test_a_failed_job_keeps_no_tensors_while_its_error_is_handled(
    toonifier: Toonifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(targets: torch.Tensor) -> Distance:
        def distance(images: torch.Tensor) -> torch.Tensor:
            raise ValueError("the loss broke")

        return distance

    watched = Watched(broken)
    monkeypatch.setattr(toonifier, "make_distance", watched)
    (error,) = await run_together(toonifier, [prepare(toonifier)])
    # The service still holds the error while it replies and logs; its tensors are gone.
    assert isinstance(error, ValueError)
    assert watched.batches and len(watched.batches[0][1]) >= 3
    assert watched.alive() == 0
    assert "the loss broke" in "".join(traceback.format_exception(error))
    assert "invert.py" in "".join(traceback.format_tb(error.__traceback__)), "lines kept"


def test_detached_frames_keep_file_and_line_but_no_locals() -> None:
    def fails() -> None:
        kept = torch.zeros(3)
        raise RuntimeError(f"kaboom {kept.shape}")

    try:
        fails()
    except RuntimeError as exc:
        error = detach_frames(exc)
    frames = traceback.extract_tb(error.__traceback__)
    assert frames[-1].name == "fails"
    assert error.__traceback__ is not None
    last = error.__traceback__
    while last.tb_next is not None:
        last = last.tb_next
    assert last.tb_frame.f_locals == {}


FIRST_INVERSION = """
import gc, sys
gc.disable()
import torch
from inference.invert import invert, pixel_distance, warm_up_optimiser
from tests.support.tiny_models import random_ws, render
from tests.support.tiny_toonify import tiny_face_generator
from tests.support.weak_tensors import Watched
assert "torch._dynamo" not in sys.modules
if sys.argv[1] == "warm":
    warm_up_optimiser()
generator = tiny_face_generator(32)
watched = Watched(pixel_distance)
targets = render(generator, random_ws(generator, 2))
invert(generator, watched(targets), steps=2, seeds=[0, 1])
del targets
print(watched.alive())
"""


@pytest.mark.parametrize(("start", "alive"), [("cold", True), ("warm", False)])
def test_the_first_inversion_frees_its_tensors_once_the_optimiser_is_warm(
    start: str, alive: bool
) -> None:
    """In a fresh process without the cyclic collector: the first Adam of a process imports
    torch._dynamo, which ties the caller's frames into a cycle. The cold run shows that
    cycle (if torch stops making it, the warm-up can go); the warm one, the Toonifier's way."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", FIRST_INVERSION, start],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert (int(run.stdout.split()[-1]) > 0) == alive, run.stdout
