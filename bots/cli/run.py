"""`toonify run` (the bot) and `toonify worker` (inference behind a broker); every fault that
stops either is one line naming the fix."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import NoReturn

import typer

from bots.cli.common import err_console, fail, settings
from bots.config import DEFAULT_PATH, ENV_PREFIX, Settings, origin

log = logging.getLogger(__name__)

INTERRUPTED = 130


def missing_tokens(config: Settings) -> list[str]:
    """The environment variables an enabled adapter still needs (unset or empty)."""
    missing = []
    for name in ("telegram", "discord"):
        section = getattr(config, name)
        if section.enabled and (section.token is None or not section.token.get_secret_value()):
            missing.append(f"{ENV_PREFIX}{name.upper()}_TOKEN")
    return missing


def _config_file(ctx: typer.Context) -> Path | None:
    path: Path | None = ctx.find_root().params.get("config")
    return path or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)


def _stopped(message: str, exc: BaseException) -> NoReturn:
    """One line for the operator; the traceback only in the log, at DEBUG."""
    log.debug("the bot stopped", exc_info=exc)
    fail(message)


def _interrupted() -> NoReturn:
    """Exit now: models may still be loading in a thread that the interpreter's own exit
    would abort in the middle of torch (an uncaught C++ terminate)."""
    err_console.print("[red]error:[/red] stopped before the bot had started", highlight=False)
    logging.shutdown()
    os._exit(INTERRUPTED)


def run(ctx: typer.Context) -> None:
    """Start the enabled chat adapters and the GPU worker (or, with broker.url, only the
    adapters: `toonify worker`s run the models); stop cleanly on Ctrl-C or SIGTERM."""
    config = settings(ctx)
    if not (config.telegram.enabled or config.discord.enabled):
        fail(
            "no adapter is enabled: set telegram.enabled or discord.enabled "
            f"(or {ENV_PREFIX}TELEGRAM_ENABLED=true)"
        )
    if missing := missing_tokens(config):
        fail(f"an enabled adapter has no token: set {' and '.join(missing)}")
    _serve(ctx, config, worker=False)


def worker(ctx: typer.Context) -> None:
    """Load the models and run the jobs queued on broker.url (Redis); start as many as there
    are GPUs. Stops cleanly on Ctrl-C or SIGTERM: what it took and had not started goes to
    another worker."""
    config = settings(ctx)
    if not config.broker.url:
        where = origin("broker.url", _config_file(ctx), os.environ)
        fail(f"{where}: broker.url is empty: set it to the Redis the bot queues jobs on", code=2)
    _serve(ctx, config, worker=True)


def _serve(ctx: typer.Context, config: Settings, *, worker: bool) -> None:
    try:
        from bots.app import Interrupted, running_app, serve
        from bots.startup import StartupFault
        from bots.worker_app import running_worker
        from inference.devices import device_problem
        from inference.errors import ModelLoadError
    except KeyboardInterrupt:
        _interrupted()
    needs_models = worker or not config.broker.url
    if needs_models and (problem := device_problem(config.models.device)):
        where = origin("models.device", _config_file(ctx), os.environ)
        fail(f"{where}: models.device {config.models.device!r}: {problem}", code=2)
    try:
        if worker:
            asyncio.run(serve(config, running_worker, "toonify worker"))
        else:
            asyncio.run(serve(config, running_app))
    except (KeyboardInterrupt, Interrupted):
        _interrupted()
    except StartupFault as exc:
        _stopped(str(exc), exc)
    except ModelLoadError as exc:
        _stopped(f"cannot start: {exc}", exc)
    except Exception as exc:
        _stopped(f"stopped by {type(exc).__name__}: {exc} (logging.level = DEBUG tells where)", exc)
