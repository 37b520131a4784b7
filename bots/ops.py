"""The operator's HTTP endpoint: /healthz for the orchestrator, /metrics for Prometheus."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


class Metrics(Protocol):
    """A registry of metrics in Prometheus's text format (the bot's, or a worker's)."""

    def render(self) -> bytes: ...


def ops_app(metrics: Metrics, health: Callable[[], dict[str, Any]]) -> web.Application:
    """`health()` returns at least {"ok": bool}; not ok answers 503 so health checks fail."""

    async def healthz(_: web.Request) -> web.Response:
        state = health()
        return web.json_response(state, status=200 if state["ok"] else 503)

    async def metrics_page(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def start_ops(
    metrics: Metrics, health: Callable[[], dict[str, Any]], host: str, port: int
) -> web.AppRunner:
    runner = web.AppRunner(ops_app(metrics, health))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
