"""Photo preparation in supervised processes: a hostile file costs one process, never the bot.

Decoding runs native code (libjpeg, libheif, libwebp...) on bytes from strangers, and some files
are built to keep it busy for minutes or to crash it. Every photo therefore goes to one of a few
spawned processes, each with its face detector loaded once, under a wall-clock budget: a photo
over budget has its process killed and replaced, and a process that dies (a segfault in a
decoder, the OOM killer) fails only the photo it held. Each process has a keeper thread that
does the blocking pipe work, so the event loop only awaits futures and other photos go to the
other processes meanwhile.

The processes are fresh interpreters (`python -c`, like multiprocessing's spawn start method:
nothing forked from a process that holds threads and CUDA state) that import only this module's
dependencies. multiprocessing's own spawn would also import the parent's main script, which
for `toonify` is the whole CLI: typer, the chat libraries, the generators and the inversion.

The decoded photo comes back through an anonymous in-memory file that each process shares with
the bot, not through the pipe: a 12 MP photo is 36 MB of pixels, which pickled and streamed
through a socket cost the bot's process a copy and its CPU, on the cores the prepare processes
need (bench/README.md#prepare-pool: the bot's share is now 14-34 ms per photo). Only the
aligned faces and the rest of the result are pickled. The bot reads exactly the pixels the
process says it wrote, after the process finished the photo, and empties the file before the
next photo goes out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import mmap
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import torch
from PIL import Image

from inference.errors import InferenceError, ShuttingDown
from inference.faces import FaceDetector, make_detector
from inference.images import ImageError
from inference.prepare import NoFace, Prepared, prepare_photo
from inference.settings import FacesSettings, LimitsSettings

log = logging.getLogger(__name__)

# Seconds a new process may take to import its modules and load its detector.
START_TIMEOUT = 120.0
# Waits before starting a process again after it failed to start.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
_CHILD = "import sys; from inference.prepare_pool import serve; serve(*map(int, sys.argv[1:]))"


class PrepareTimeout(InferenceError):
    """The photo took longer than the budget; its process was killed and replaced."""


class PrepareCrashed(InferenceError):
    """The process died while preparing this photo (a native crash, the OOM killer, a kill)."""


class PrepareFailed(InferenceError):
    """An unexpected error inside a prepare process; `details` is its traceback there."""

    def __init__(self, summary: str, details: str) -> None:
        super().__init__(summary)
        self.details = details

    def __reduce__(self) -> tuple[type[PrepareFailed], tuple[str, str]]:
        return (type(self), (str(self), self.details))


class PoolStartError(InferenceError):
    """A prepare process could not start; str() says why."""


@dataclass(frozen=True)
class PrepareSpec:
    """What a prepare process builds its preparer from; pickled into every process.

    `faces.backend` is the backend the main process resolved (never `auto`), so that every
    process uses the same one without trying the others again.
    """

    faces: FacesSettings
    device: str  # for the face-alignment backend
    limits: LimitsSettings
    resolution: int  # of the aligned faces, the generator's
    setup: Callable[[], None] | None = None  # tests: run first in each process

    @classmethod
    def of(
        cls,
        detector: FaceDetector,
        faces: FacesSettings,
        limits: LimitsSettings,
        resolution: int,
        setup: Callable[[], None] | None = None,
    ) -> PrepareSpec:
        """The spec that makes each process prepare exactly as `detector`'s owner would."""
        backend = detector.backend
        device = str(getattr(backend, "device", "cpu"))
        resolved = faces.model_copy(update={"backend": backend.name})
        return cls(resolved, device, limits, resolution, setup)


@dataclass(frozen=True)
class _Shipped:
    """A prepared photo on its way back: `prepared` with an empty photo, whose pixels (`mode`,
    `size`) wait in the process's pixel file."""

    prepared: Prepared
    mode: str
    size: tuple[int, int]


@dataclass(eq=False)
class _Request:
    image: bytes
    future: asyncio.Future[Prepared]
    loop: asyncio.AbstractEventLoop

    def settle(self, outcome: Prepared | BaseException) -> None:
        """From a keeper thread: resolve the future on its loop, unless nobody waits anymore."""

        def resolve() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(resolve)


class PreparePool:
    """`processes` prepare processes, each photo under a `timeout` seconds budget."""

    def __init__(self, spec: PrepareSpec, *, processes: int, timeout: float) -> None:
        self._spec = spec
        self._size = processes
        self._timeout = timeout
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._processes: dict[int, _Process] = {}
        self._exits: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._keepers: list[threading.Thread] = []

    @property
    def size(self) -> int:
        return self._size

    async def start(self) -> None:
        """Start every process and wait until each has loaded its detector."""
        started: list[concurrent.futures.Future[None]] = []
        for index in range(self._size):
            first = concurrent.futures.Future[None]()
            keeper = threading.Thread(
                target=self._keep, args=(index, first), name=f"prepare-keeper-{index}", daemon=True
            )
            keeper.start()
            self._keepers.append(keeper)
            started.append(first)
        await asyncio.gather(*(asyncio.wrap_future(future) for future in started))

    async def prepare(self, image: bytes) -> Prepared:
        """Decode, detect and align in a prepare process; raises what prepare_photo raises,
        PrepareTimeout, PrepareCrashed, PrepareFailed or ShuttingDown."""
        if self._closing.is_set():
            raise ShuttingDown
        loop = asyncio.get_running_loop()
        request = _Request(image, loop.create_future(), loop)
        self._requests.put(request)
        return await request.future

    async def stop(self) -> None:
        """Kill every process; photos still waiting or in preparation end in ShuttingDown."""
        self._closing.set()
        for _ in self._keepers:
            self._requests.put(None)
        with self._lock:
            running = list(self._processes.values())
        for entry in running:
            entry.process.kill()
        for keeper in self._keepers:
            await asyncio.to_thread(keeper.join)
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request.settle(ShuttingDown())

    # -- keeper threads ------------------------------------------------------------------------

    def _keep(self, index: int, first: concurrent.futures.Future[None]) -> None:
        """One process's life: start it, feed it photos, replace it when it hangs or dies."""
        if not first.set_running_or_notify_cancel():  # the start was called off
            return
        conn: Connection | None = None
        try:
            conn = self._launch(index)
        except Exception as exc:
            first.set_exception(exc)
        else:
            first.set_result(None)
        while (request := self._requests.get()) is not None:
            if request.future.done():  # its caller gave up while it waited
                continue
            conn = self._deliver(index, conn, request.image)
            if conn is None:
                request.settle(ShuttingDown() if self._closing.is_set() else PrepareCrashed())
                continue
            outcome, healthy = self._await(index, conn)
            if not healthy:
                self._retire(index)
            request.settle(ShuttingDown() if self._closing.is_set() else outcome)
            if not healthy:
                conn = self._relaunch(index)
        self._retire(index)

    def _deliver(self, index: int, conn: Connection | None, image: bytes) -> Connection | None:
        """Hand `image` to process `index`; one that died while idle is replaced first."""
        for _ in range(2):
            conn = conn or self._relaunch(index)
            if conn is None:
                return None
            try:
                conn.send_bytes(image)
                return conn
            except OSError:
                log.warning("a prepare process died (%s) while idle", self._exit_of(index))
                self._retire(index)
                conn = None
        return None

    def _await(self, index: int, conn: Connection) -> tuple[Prepared | Exception, bool]:
        """The outcome of the photo process `index` holds, and whether the process lives on."""
        try:
            if not conn.poll(self._timeout):
                if not self._closing.is_set():
                    log.warning(
                        "a photo took longer than %.0f s to prepare; its process is replaced",
                        self._timeout,
                    )
                return PrepareTimeout(), False
            _, outcome = conn.recv()
        except (EOFError, OSError):
            if not self._closing.is_set():
                log.warning(
                    "a prepare process died (%s) with a photo; it is replaced", self._exit_of(index)
                )
            return PrepareCrashed(), False
        if isinstance(outcome, _Shipped):
            try:
                return self._unpack(index, outcome), True
            except (OSError, ValueError) as exc:
                summary = f"the prepared photo could not be read back: {exc}"
                return PrepareFailed(summary, "".join(traceback.format_exception(exc))), False
        return outcome, True

    def _unpack(self, index: int, shipped: _Shipped) -> Prepared:
        """The prepared photo with its pixels read from process `index`'s pixel file, which is
        then emptied (its memory handed back) for the next photo."""
        with self._lock:
            pixels = self._processes[index].pixels
        photo = _read_pixels(pixels, shipped.mode, shipped.size)
        os.ftruncate(pixels, 0)
        return dataclasses.replace(shipped.prepared, photo=photo)

    def _relaunch(self, index: int) -> Connection | None:
        """A new process for `index`, retrying with a growing delay; None once closing."""
        for attempt in itertools.count():
            if self._closing.is_set():
                return None
            try:
                return self._launch(index)
            except PoolStartError as exc:
                if self._closing.is_set():
                    return None
                delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
                log.warning("prepare process failed to start (%s); retry in %.0f s", exc, delay)
                if self._closing.wait(delay):
                    return None
        return None

    def _launch(self, index: int) -> Connection:
        """Start process `index` and wait until its detector is loaded."""
        parent, child = Pipe()
        with self._lock:
            if self._closing.is_set():
                raise PoolStartError("the pool is stopping")
            try:
                pixels = _pixel_file()
            except OSError as exc:
                child.close()
                parent.close()
                raise PoolStartError(f"cannot make its pixel file: {exc}") from exc
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(child.fileno()), str(pixels)],
                    pass_fds=[child.fileno(), pixels],
                    stdin=subprocess.DEVNULL,
                    # Out of the terminal's process group: Ctrl-C is for the bot to handle.
                    start_new_session=True,
                )
            except OSError as exc:
                os.close(pixels)
                parent.close()
                raise PoolStartError(f"cannot start a process: {exc}") from exc
            finally:
                child.close()
            self._processes[index] = _Process(process, parent, pixels)
        try:
            parent.send(sys.path)
            parent.send(self._spec)
            if not parent.poll(START_TIMEOUT):
                raise PoolStartError(f"not ready after {START_TIMEOUT:.0f} s")
            kind, value = parent.recv()
        except (EOFError, OSError) as exc:
            self._retire(index)
            raise PoolStartError(f"it exited during start-up ({self._exit_of(index)})") from exc
        except PoolStartError:
            self._retire(index)
            raise
        if kind != "ready":
            self._retire(index)
            raise PoolStartError(str(value))
        return parent

    def _retire(self, index: int) -> None:
        """Kill process `index` (if it still runs) and reap it."""
        with self._lock:
            entry = self._processes.pop(index, None)
        if entry is None:
            return
        entry.process.kill()
        self._exits[index] = entry.process.wait()
        entry.conn.close()
        os.close(entry.pixels)

    def _exit_of(self, index: int) -> str:
        with self._lock:
            entry = self._processes.get(index)
        code = self._exits.get(index) if entry is None else _reaped(entry.process)
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"


@dataclass(frozen=True)
class _Process:
    """A running prepare process, the bot's end of its pipe, and its pixel file."""

    process: subprocess.Popen[bytes]
    conn: Connection
    pixels: int  # file descriptor


def _pixel_file() -> int:
    """An anonymous file in memory (Linux's memfd; elsewhere an unlinked temporary file)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("toonify-prepared-photo")
    with tempfile.TemporaryFile() as file:
        return os.dup(file.fileno())


def _write_pixels(fd: int, photo: Image.Image) -> None:
    data = photo.tobytes()
    os.ftruncate(fd, len(data))
    if data:
        with mmap.mmap(fd, len(data)) as view:
            view[:] = data


def _read_pixels(fd: int, mode: str, size: tuple[int, int]) -> Image.Image:
    """The photo the process wrote, copied straight from the file's memory into Pillow's."""
    expected = len(Image.new(mode, (1, 1)).tobytes()) * size[0] * size[1]
    if os.fstat(fd).st_size != expected:
        raise ValueError(f"the pixel file holds {os.fstat(fd).st_size} bytes, not {expected}")
    if not expected:
        return Image.new(mode, size)
    with mmap.mmap(fd, expected, prot=mmap.PROT_READ) as view, memoryview(view) as pixels:
        return Image.frombytes(mode, size, pixels)


def _ship(prepared: Prepared, pixels: int) -> _Shipped:
    """In a prepare process: the photo's pixels into the pixel file, the rest for the pipe."""
    photo = prepared.photo
    _write_pixels(pixels, photo)
    empty = Image.new(photo.mode, (0, 0))
    return _Shipped(dataclasses.replace(prepared, photo=empty), photo.mode, photo.size)


def _reaped(process: subprocess.Popen[bytes]) -> int | None:
    """The exit status, waiting a moment for a process whose pipe just closed."""
    try:
        return process.wait(1.0)
    except subprocess.TimeoutExpired:
        return None


def serve(fd: int, pixels: int) -> None:
    """A prepare process: load the detector once, then prepare photos until the pipe closes;
    each decoded photo goes back through the file `pixels`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Alignment resamples with torch: one thread per process, the pool is the parallelism.
    torch.set_num_threads(1)
    conn = Connection(fd)
    try:
        sys.path[:] = conn.recv()
        spec: PrepareSpec = conn.recv()
        try:
            if spec.setup is not None:
                spec.setup()
            detector = make_detector(spec.faces, spec.device)
        except Exception as exc:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", None))
        while True:
            image = conn.recv_bytes()
            try:
                prepared = prepare_photo(image, detector, spec.limits, spec.resolution)
                outcome: tuple[str, object] = ("ok", _ship(prepared, pixels))
            except Exception as exc:
                outcome = ("error", _portable(exc))
            conn.send(outcome)
    except (EOFError, OSError):  # the bot closed the pipe or is gone
        return


def _portable(exc: Exception) -> Exception:
    """What the user caused crosses the pipe as it is; anything else as PrepareFailed."""
    if isinstance(exc, ImageError | NoFace):
        return exc
    return PrepareFailed(f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))
