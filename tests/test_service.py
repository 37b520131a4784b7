"""The request flow end to end on tiny models, driven by a scripted in-process adapter."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from PIL import Image

from bots import texts
from bots.app import App, Interrupted, serve
from bots.config import Settings
from bots.service import RefusalKind, Refused, Requester, ToonService, Upload
from bots.toons import ImageFormat, same_family
from inference.errors import Expired
from inference.pipeline import NonFinite, Toonifier
from inference.prepare_pool import PreparePool, PrepareSpec
from storage import Admitted, JobStatus, NewJob, Store, UserRef
from tests.support import prepare_hooks
from tests.support.service_fixtures import (
    PHOTOS,
    PLATFORM,
    Photos,
    RecordingReply,
    cat_jpeg,
    face_jpeg,
    settings,
    submit,
    tiny_app,
)
from tests.support.tiny_toonify import PSP_STYLE, write_psp_style

HANG_BUDGET = 20.0


class Gated:
    """The real Toonifier, with a gate in front of inversion and an optional fault."""

    def __init__(self, toonifier: Toonifier) -> None:
        self.inner = toonifier
        self.gate = threading.Event()
        self.gate.set()
        self.inverted = 0
        self.rerendered = 0
        self.fail_finish = False

    def invert(self, batch: list[Any], progress: Any = None, should_stop: Any = None) -> Any:
        self.gate.wait(30)
        self.inverted += len(batch)
        return self.inner.invert(batch, progress, should_stop)

    def finish(self, *args: Any) -> Any:
        if self.fail_finish:
            self.fail_finish = False
            raise RuntimeError("injected fault")
        return self.inner.finish(*args)

    def rerender(self, *args: Any) -> Any:
        self.rerendered += 1
        return self.inner.rerender(*args)


@pytest.fixture(scope="module")
def toonifier(tmp_path_factory: pytest.TempPathFactory) -> Toonifier:
    return Toonifier.from_config(settings(tmp_path_factory.mktemp("models")))


def user(n: int = 1) -> Requester:
    return Requester(PLATFORM, str(n), f"user {n}")


async def used(app: App, who: Requester) -> int:
    allowance = await app.store.quotas.allowance(UserRef(who.platform, who.user_id))
    return allowance.used


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_photo_becomes_a_toon_and_costs_one(tmp_path: Path, toonifier: Toonifier) -> None:
    async with tiny_app(tmp_path, toonifier=toonifier) as app:
        reply = RecordingReply()
        ticket = await submit(app, user(), face_jpeg(), reply)
        assert ticket.text.startswith("Found 1 face")
        await reply.wait()
        assert not reply.failures
        toon = reply.toons[0]
        with Image.open(io.BytesIO(toon.image)) as image:
            assert image.format == "JPEG"
            assert image.size == (512, 512)
        assert toon.style == "toon"
        assert toon.strength == 16
        assert toon.can_less and toon.can_more
        assert any("%" in text for text in reply.progress_texts)
        assert await used(app, user()) == 1
        assert "4 toons left today" in await app.service.quota_text(user())
        job = await app.store.jobs.get(ticket.job_id)
        assert job is not None
        assert job.status == JobStatus.DONE
        assert job.timings.keys() >= {"decode", "detect", "align", "invert", "render"}
        assert reply.tidied == 1


async def test_fifty_users_each_get_one_toon_in_fifo_order(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    gated = Gated(toonifier)
    gated.gate.clear()
    async with tiny_app(
        tmp_path, toonifier=toonifier, engine=gated, worker={"queue_size": 60, "max_batch": 4}
    ) as app:
        delivered: list[str] = []

        class Ordered(RecordingReply):
            def __init__(self, who: str) -> None:
                super().__init__()
                self.who = who

            async def deliver(self, toon: Any) -> None:
                delivered.append(self.who)
                await super().deliver(toon)

        users = [user(n) for n in range(50)]
        replies = [Ordered(who.user_id) for who in users]
        tickets = await asyncio.gather(
            *(
                submit(app, who, face_jpeg(), reply)
                for who, reply in zip(users, replies, strict=True)
            )
        )
        gated.gate.set()
        await asyncio.gather(*(reply.wait(120) for reply in replies))
        by_position = sorted(zip(tickets, users, strict=True), key=lambda t: t[0].position)
        assert [t.position for t, _ in by_position] == list(range(1, 51))
        assert delivered == [who.user_id for _, who in by_position]
        assert all(len(reply.toons) == 1 and not reply.failures for reply in replies)
        assert [await used(app, who) for who in users] == [1] * 50


async def test_full_queue_says_busy_and_charges_nothing(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    gated = Gated(toonifier)
    gated.gate.clear()
    async with tiny_app(
        tmp_path, toonifier=toonifier, engine=gated, worker={"queue_size": 1}
    ) as app:
        running, waiting = RecordingReply(), RecordingReply()
        await submit(app, user(1), face_jpeg(), running)
        await until(lambda: not app.worker.full)  # the first job left the queue: it runs
        await submit(app, user(2), face_jpeg(), waiting)
        with pytest.raises(Refused) as refused:
            await submit(app, user(3), face_jpeg(), RecordingReply())
        assert refused.value.kind == RefusalKind.QUEUE_FULL
        assert "busy" in refused.value.text
        assert await used(app, user(3)) == 0
        gated.gate.set()
        await running.wait()
        await waiting.wait()
        assert running.toons and waiting.toons


async def test_our_failure_is_refunded_and_the_next_job_runs(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    gated = Gated(toonifier)
    gated.fail_finish = True
    async with tiny_app(tmp_path, toonifier=toonifier, engine=gated) as app:
        broken, fine = RecordingReply(), RecordingReply()
        ticket = await submit(app, user(1), face_jpeg(), broken)
        await submit(app, user(2), face_jpeg(), fine)
        await broken.wait()
        await fine.wait()
        error = broken.failures[0]
        assert error.kind == RefusalKind.INTERNAL
        assert error.error_id == ticket.job_id
        assert ticket.job_id in error.text
        assert await used(app, user(1)) == 0
        job = await app.store.jobs.get(ticket.job_id)
        assert job is not None
        assert job.status == JobStatus.FAILED
        assert job.refunded
        assert fine.toons


@pytest.mark.parametrize(
    ("fault", "kind", "text"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), RefusalKind.OUT_OF_MEMORY, "memory"),
        (NonFinite("the rendered face is not finite"), RefusalKind.NON_FINITE, "drawing"),
    ],
)
async def test_out_of_memory_and_non_finite_get_their_reply_and_are_refunded(
    tmp_path: Path, toonifier: Toonifier, fault: Exception, kind: RefusalKind, text: str
) -> None:
    class Faulty(Gated):
        def finish(self, *args: Any) -> Any:
            raise fault

    async with tiny_app(tmp_path, toonifier=toonifier, engine=Faulty(toonifier)) as app:
        reply = RecordingReply()
        ticket = await submit(app, user(1), face_jpeg(), reply)
        await reply.wait()
        (error,) = reply.failures
        assert error.kind == kind
        assert text in error.text and "Nothing was charged" in error.text
        assert await used(app, user(1)) == 0
        job = await app.store.jobs.get(ticket.job_id)
        assert job is not None and job.refunded


@pytest.mark.parametrize(
    ("photo", "kind"),
    [(cat_jpeg, RefusalKind.NO_FACE), (lambda: b"hello, not a photo", RefusalKind.NOT_IMAGE)],
)
async def test_user_errors_are_refused_before_the_queue_and_cost_nothing(
    tmp_path: Path, toonifier: Toonifier, photo: Callable[[], bytes], kind: RefusalKind
) -> None:
    async with tiny_app(tmp_path, toonifier=toonifier) as app:
        with pytest.raises(Refused) as refused:
            await submit(app, user(), photo(), RecordingReply())
        assert refused.value.kind == kind
        assert await used(app, user()) == 0
        assert app.worker.depth == 0


async def test_quota_and_limits(tmp_path: Path, toonifier: Toonifier) -> None:
    async with tiny_app(
        tmp_path, toonifier=toonifier, quota={"daily": 1}, limits={"max_bytes": 200_000}
    ) as app:
        reply = RecordingReply()
        await submit(app, user(), face_jpeg(), reply)
        await reply.wait()
        with pytest.raises(Refused) as refused:
            await submit(app, user(), face_jpeg(), RecordingReply())
        assert refused.value.kind == RefusalKind.QUOTA
        assert "reset" in refused.value.text
        with pytest.raises(Refused) as too_big:
            await submit(app, user(2), b"\xff" * 200_001, RecordingReply())
        assert too_big.value.kind == RefusalKind.TOO_LARGE


async def test_cancel_a_queued_and_a_running_job(tmp_path: Path, toonifier: Toonifier) -> None:
    gated = Gated(toonifier)
    gated.gate.clear()
    async with tiny_app(tmp_path, toonifier=toonifier, engine=gated) as app:
        running, queued = RecordingReply(), RecordingReply()
        first = await submit(app, user(1), face_jpeg(), running)
        second = await submit(app, user(2), face_jpeg(), queued)
        assert not await app.service.cancel(user(1), second.job_id)  # not theirs
        assert await app.service.cancel(user(2), second.job_id)
        await queued.wait()
        assert queued.failures[0].kind == RefusalKind.CANCELLED
        assert await app.service.cancel(user(1), first.job_id)
        gated.gate.set()
        await running.wait()
        assert running.failures[0].kind == RefusalKind.CANCELLED
        assert (running.starts, queued.starts) == (1, 0)  # the one in line never "ran"
        assert gated.inverted <= 1
        assert [await used(app, user(n)) for n in (1, 2)] == [0, 0]
        rows = [await app.store.jobs.get(ticket.job_id) for ticket in (first, second)]
        # Only the job whose inference began was ever running.
        assert [(r.status, r.attempts) for r in rows if r] == [
            (JobStatus.CANCELLED, 1),
            (JobStatus.CANCELLED, 0),
        ]


async def test_rerender_without_a_new_inversion(tmp_path: Path, toonifier: Toonifier) -> None:
    gated = Gated(toonifier)
    async with tiny_app(tmp_path, toonifier=toonifier, engine=gated) as app:
        reply = RecordingReply()
        ticket = await submit(app, user(), face_jpeg(), reply)
        await reply.wait()
        await app.service.rerender(user(), ticket.job_id, reply, change="more")
        await app.service.rerender(user(), ticket.job_id, reply, change="faces")
        assert [toon.strength for toon in reply.toons] == [16, 32, 32]
        assert reply.toons[0].image != reply.toons[1].image
        assert not reply.toons[1].can_more
        assert reply.toons[2].faces_only
        assert (gated.inverted, gated.rerendered) == (1, 1)  # faces only: nothing drawn again
        assert await used(app, user()) == 1
        with pytest.raises(Refused) as other:
            await app.service.rerender(user(2), ticket.job_id, reply, change="less")
        assert other.value.kind == RefusalKind.NOT_YOURS
        await app.service.check_owner(user(), ticket.job_id)
        with pytest.raises(Refused) as checked:
            await app.service.check_owner(user(2), ticket.job_id)
        assert checked.value.kind == RefusalKind.NOT_YOURS
        for change in ("sideways", "style:cubist"):
            with pytest.raises(Refused) as bad:
                await app.service.rerender(user(), ticket.job_id, reply, change=change)
            assert bad.value.kind == RefusalKind.BAD_INPUT
        with pytest.raises(Refused) as expired:
            await app.service.rerender(user(), "unknown", reply, change="less")
        assert expired.value.kind == RefusalKind.EXPIRED


async def test_the_in_progress_refusal_says_how_many_may_run_at_once(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    gated = Gated(toonifier)
    gated.gate.clear()
    async with tiny_app(
        tmp_path, toonifier=toonifier, engine=gated, quota={"max_in_flight": 2}
    ) as app:
        replies = [RecordingReply(), RecordingReply()]
        for reply in replies:
            await submit(app, user(), face_jpeg(), reply)
        with pytest.raises(Refused) as busy:
            await submit(app, user(), face_jpeg(), RecordingReply())
        gated.gate.set()
        for reply in replies:
            await reply.wait()
    assert busy.value.kind == RefusalKind.IN_FLIGHT
    assert busy.value.text == texts.in_flight(2)


async def test_a_lossless_original_gets_a_png_toon_and_keeps_it_on_re_renders(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    async with tiny_app(tmp_path, toonifier=toonifier) as app:
        reply = RecordingReply()
        ticket = await submit(app, user(), face_jpeg(), reply, image_format=ImageFormat.PNG)
        await reply.wait()
        await app.service.rerender(user(), ticket.job_id, reply, change="faces")
    for toon in reply.toons:
        assert toon.filename.endswith(".png")
        with Image.open(io.BytesIO(toon.image)) as image:
            assert image.format == "PNG"
    assert same_family("image/png") == ImageFormat.PNG
    assert same_family("image/heic") == same_family(None) == ImageFormat.JPEG


async def test_forget_drops_the_toons_kept_for_re_renders(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    async with tiny_app(tmp_path, toonifier=toonifier) as app:
        reply = RecordingReply()
        ticket = await submit(app, user(), face_jpeg(), reply)
        await reply.wait()
        await app.service.forget(user())
        with pytest.raises(Refused) as gone:
            await app.service.rerender(user(), ticket.job_id, reply, change="more")
        assert gone.value.kind == RefusalKind.EXPIRED
        with pytest.raises(Expired):  # the photo and its codes left memory too
            await app.worker.rerender(ticket.job_id, "toon", 32)


async def test_a_psp_style_refuses_a_strength_it_lacks_in_words_and_charges_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "models").mkdir()
    write_psp_style(tmp_path / "models", resolution=64)  # its one strength: 64
    async with tiny_app(tmp_path, styles={"psp": PSP_STYLE}) as app:
        assert app.service.styles["psp"].strengths == [64]
        words = texts.bad_strength(32, "pSp", [64])
        with pytest.raises(Refused) as chosen:
            app.service.choose("psp", 32)
        assert (chosen.value.kind, chosen.value.text) == (RefusalKind.BAD_INPUT, words)
        with pytest.raises(Refused) as admitted:
            await submit(app, user(), face_jpeg(), RecordingReply(), style="psp", strength=32)
        assert (admitted.value.kind, admitted.value.text) == (RefusalKind.BAD_INPUT, words)
        assert await used(app, user()) == 0

        reply = RecordingReply()
        ticket = await submit(app, user(), face_jpeg(), reply, style="psp")
        await reply.wait()
        assert [(t.style, t.strength, t.can_less, t.can_more) for t in reply.toons] == [
            ("psp", 64, False, False)
        ]
        for change in ("style:toon", "more", "style:psp", "less"):
            await app.service.rerender(user(), ticket.job_id, reply, change=change)
        assert [(t.style, t.strength) for t in reply.toons[1:]] == [
            ("toon", 16),
            ("toon", 32),
            ("psp", 64),
            ("psp", 64),
        ]


class ScriptedAdapter(Photos):
    """The "test" platform as an adapter of the second start: fetches photos from PHOTOS."""

    def __init__(self, service: ToonService) -> None:
        super().__init__()
        service.register(PLATFORM, self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def admit(app: App, who: Requester, name: str, reply: RecordingReply) -> str:
    """Admit the photo PHOTOS[name] without waiting for it."""
    job_id = await app.service.admit(who, Upload(None, None), reply, ref={"photo": name})
    assert job_id is not None
    return job_id


def held_pool(gate: Path, processes: int = 2) -> Callable[[Settings, Any], PreparePool]:
    """Prepare processes whose photos wait in decoding while `gate` exists."""

    def make(config: Settings, engine: Any) -> PreparePool:
        spec = PrepareSpec.of(
            engine.detector,
            config.faces,
            config.limits,
            engine.resolution,
            functools.partial(prepare_hooks.hold_while, gate),
        )
        return PreparePool(spec, processes=processes, timeout=60)

    return make


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_a_stop_keeps_queued_and_preparing_jobs_for_the_next_start(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    gated = Gated(toonifier)
    gated.gate.clear()
    hold = tmp_path / "hold"
    PHOTOS.update(three=face_jpeg(), gone=face_jpeg())
    async with tiny_app(tmp_path, toonifier=toonifier, engine=gated, pool=held_pool(hold)) as app:
        running = RecordingReply()
        await submit(app, user(1), face_jpeg(), running)  # inverting, until the gate opens
        kept = await submit(app, user(2), face_jpeg(), RecordingReply())  # in line
        hold.write_text("")
        preparing = await admit(app, user(3), "three", RecordingReply())
        gone = await admit(app, user(4), "gone", RecordingReply())
        await until(lambda: lines(hold) == 2, timeout=30)  # both in their prepare processes
        stopping = asyncio.create_task(app.stop())
        await until(lambda: app.worker.depth == 1)  # the worker stopped taking jobs
        gated.gate.set()
        await stopping
        assert running.toons  # the running job finished and was delivered
    del PHOTOS["gone"]
    store = await Store.open(settings(tmp_path).storage.url, settings(tmp_path).quota)
    unfinished = await store.jobs.unfinished_jobs()
    await store.close()
    assert {job.id for job in unfinished} == {kept.job_id, preparing, gone}
    assert {job.status for job in unfinished} == {JobStatus.QUEUED}

    adapters: list[ScriptedAdapter] = []

    def make(_: Any, service: ToonService) -> list[Any]:
        adapters.append(ScriptedAdapter(service))
        return adapters

    async with tiny_app(tmp_path, adapters=make, toonifier=toonifier) as app:
        replies = adapters[0].replies
        for name in ("three", "gone"):
            await replies[name].wait()
        assert replies["three"].toons
        assert replies["gone"].failures[0].kind == RefusalKind.RESEND
        assert replies["gone"].failures[0].text == texts.RESTARTED
        await until(lambda: len(replies) == 3)
        [second] = set(replies) - {"three", "gone"}
        await replies[second].wait()
        assert replies[second].toons
        assert await app.store.jobs.unfinished_jobs() == []
        assert [await used(app, user(n)) for n in (1, 2, 3, 4)] == [1, 1, 1, 0]


def hanging_pool(config: Settings, engine: Any) -> PreparePool:
    spec = PrepareSpec.of(
        engine.detector,
        config.faces,
        config.limits,
        engine.resolution,
        prepare_hooks.hang_marked_photos,
    )
    return PreparePool(spec, processes=2, timeout=HANG_BUDGET)


async def test_a_photo_that_hangs_in_decoding_is_refused_while_another_user_is_served(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    pid_file = tmp_path / "pid"
    PHOTOS["hostile"] = prepare_hooks.hang_marker(pid_file)
    async with tiny_app(
        tmp_path, toonifier=toonifier, pool=hanging_pool, quota={"cooldown": 3600}
    ) as app:
        hostile, fine = RecordingReply(), RecordingReply()
        await admit(app, user(1), "hostile", hostile)
        await until(pid_file.exists, timeout=30)  # hanging in its prepare process
        await submit(app, user(2), face_jpeg(), fine)
        await fine.wait()
        assert fine.toons and not hostile.failures  # served while the other one still hangs
        await hostile.wait(HANG_BUDGET + 30)
        assert hostile.failures[0].kind == RefusalKind.TOO_COMPLEX
        assert hostile.failures[0].text == texts.TOO_COMPLEX
        assert await used(app, user(1)) == 0
        with pytest.raises(Refused) as again:  # it still counts for the cooldown
            await submit(app, user(1), face_jpeg(), RecordingReply())
        assert again.value.kind == RefusalKind.COOLDOWN


class Unreachable(RecordingReply):
    """A chat the toon cannot be sent to (the platform keeps refusing it)."""

    async def deliver(self, toon: Any) -> None:
        raise ConnectionError("the platform is down")


async def test_a_toon_that_cannot_be_delivered_is_failed_refunded_and_said(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    async with tiny_app(tmp_path, toonifier=toonifier) as app:
        reply = Unreachable()
        ticket = await submit(app, user(), face_jpeg(), reply)
        await reply.wait()
        assert reply.failures[0].kind == RefusalKind.UNDELIVERED
        assert reply.failures[0].text == texts.UNDELIVERED
        job = await app.store.jobs.get(ticket.job_id)
        assert job is not None
        assert (job.status, job.refunded) == (JobStatus.FAILED, True)
        assert await used(app, user()) == 0
        assert reply.tidied == 0


async def test_a_request_the_platform_delivers_twice_is_one_job(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    PHOTOS["twice"] = face_jpeg()
    async with tiny_app(tmp_path, toonifier=toonifier) as app:
        first, second = RecordingReply(), RecordingReply()
        upload, ref = Upload(None, None), {"photo": "twice"}
        job = await app.service.admit(user(), upload, first, ref=ref, key="test:1:1")
        again = await app.service.admit(user(), upload, second, ref=ref, key="test:1:1")
        assert job is not None and again is None
        await first.wait()
        assert first.toons and not second.queued_texts and not second.failures
        assert await used(app, user()) == 1


async def test_a_job_that_never_finishes_is_given_up_after_three_starts(
    tmp_path: Path, toonifier: Toonifier
) -> None:
    config = settings(tmp_path)
    store = await Store.open(config.storage.url, config.quota)
    decision = await store.quotas.consume(
        NewJob(UserRef(PLATFORM, "1"), "toon", chat={"photo": "x"})
    )
    assert isinstance(decision, Admitted)
    for _ in range(3):  # started three times, and each time the bot died
        await store.jobs.mark_running(decision.job_id)
        await store.jobs.requeue(decision.job_id)
    await store.close()
    adapters: list[ScriptedAdapter] = []

    def make(_: Any, service: ToonService) -> list[Any]:
        adapters.append(ScriptedAdapter(service))
        return adapters

    async with tiny_app(tmp_path, adapters=make, toonifier=toonifier) as app:
        reply = adapters[0].replies["x"]
        await reply.wait()
        assert reply.failures[0].kind == RefusalKind.INTERNAL
        job = await app.store.jobs.get(decision.job_id)
        assert job is not None
        assert (job.status, job.refunded) == (JobStatus.FAILED, True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_ops_endpoints_answer(tmp_path: Path, toonifier: Toonifier) -> None:
    port = free_port()
    async with tiny_app(tmp_path, toonifier=toonifier, ops={"port": port}) as app:
        reply = RecordingReply()
        await submit(app, user(), face_jpeg(), reply)
        await reply.wait()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                health = await response.json()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
        assert health["worker_alive"] and health["models_loaded"]
        assert health["queue_depth"] == 0
        assert 'toonify_jobs_total{outcome="done"} 1.0' in metrics
        assert "toonify_stage_seconds_bucket" in metrics
        assert "toonify_queue_depth 0.0" in metrics
        # The CPU holds no accelerator memory; on CUDA these read the configured cuda:N.
        assert 'toonify_gpu_memory_bytes{kind="allocated"} 0.0' in metrics
        assert 'toonify_gpu_memory_bytes{kind="reserved"} 0.0' in metrics


async def test_sigterm_shuts_the_bot_down_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "bots.app")
    port = free_port()
    config = settings(tmp_path, ops={"port": port})
    task = asyncio.create_task(serve(config))
    await until(lambda: "toonify-bot is running" in caplog.messages, timeout=60)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        assert response.status == 200
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 30)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz"):
            pass


async def test_sigterm_while_starting_stops_what_was_started(tmp_path: Path) -> None:
    config = settings(tmp_path)
    task = asyncio.create_task(serve(config))
    await asyncio.sleep(0.1)  # loading models
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted):
        await asyncio.wait_for(task, 30)
    # The models go on loading in their thread, which nothing waits for.
    await until(lambda: "load-models" not in {t.name for t in threading.enumerate()}, 60)
