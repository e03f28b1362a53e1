"""A small HTTP server for operations: ``GET /healthz`` (JSON) and ``GET /metrics`` (Prometheus).

It listens on 127.0.0.1 by default (``orchestrator run --health-port PORT`` or ``health_port:`` in
bots.yaml; off otherwise) and runs as one task of the app's task group, so it stops with the app.
``/healthz`` answers 200 while at least one bot is online, and 503 with a ``reason`` while none is
(every bot failed, or none could reach Discord yet) and once the process is stopping::

    {"status": "ok", "reason": null,
     "bots": {"sage": {"state": "running", "uptime_s": 12.5, "state_s": 12.5, "restarts": 0,
                       "connect_failures": 0, "last_error": "", "chats": 2, "answered": 2,
                       "provider": "openai", "model": "gpt-4o-mini",
                       "usage": {"requests_last_minute": 2, "tokens_last_minute": 80, "tokens_today": 80}}},
     "last_reload_error": null}

In fleet mode the body also carries ``"node"`` (this node's id) and ``"fleet"``: the live nodes, the
leases held here (token, seconds left, draining) and why Redis cannot be used, if it cannot. A node
that holds no bot is healthy (a standby) while it reaches Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from .logs import redactor
from .metrics import CONTENT_TYPE_LATEST, Metrics, MetricsSource
from .views import ChildView

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


class HealthSource(MetricsSource, Protocol):
    """What /healthz reads of the app (``orchestrator.app.App``), beside what /metrics reads."""

    @property
    def metrics(self) -> Metrics: ...


class HealthPortError(OSError):
    """The health server cannot listen (the port is taken, or the address is wrong)."""


def unhealthy_reason(children: Mapping[str, ChildView]) -> str | None:
    """Why no bot serves (each bot's state and last error), or None while one is online."""
    if any(child.state.value == "running" for child in children.values()):
        return None
    if not children:
        return "no bot is configured"
    states = (
        f"{name} {child.state.value}" + (f" ({child.last_error})" if child.last_error else "")
        for name, child in sorted(children.items())
    )
    return "no bot is running: " + "; ".join(states)


def health_report(app: HealthSource) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of ``/healthz``."""
    supervisor = app.supervisor
    if supervisor is None:
        return 503, {
            "status": "starting",
            "reason": "the process is starting",
            "bots": {},
            "last_reload_error": app.last_reload_error,
        }
    now = time.monotonic()
    bots: dict[str, Any] = {}
    for name, child in list(supervisor.children.items()):
        in_state = round(now - child.since, 3)
        entry: dict[str, Any] = {
            "state": child.state.value,
            "uptime_s": in_state if child.state.value == "running" else 0.0,
            "state_s": in_state,
            "restarts": child.restarts,
            "connect_failures": child.connect_failures,
            "last_error": redactor.redact(child.last_error),
            "chats": child.counters.chats,
            "answered": child.counters.answered,
            "busy": child.counters.busy,
            "errors": child.counters.errors,
            "provider": child.spec.provider,
            "model": child.spec.model,
        }
        if app.pool is not None:
            usage = app.pool.quotas.report(name)
            entry["usage"] = {
                "requests_last_minute": usage.requests_last_minute,
                "tokens_last_minute": usage.tokens_last_minute,
                "tokens_today": usage.tokens_today,
            }
        bots[name] = entry
    fleet = app.fleet
    reason: str | None
    if supervisor.stop_requested:
        status, reason = "stopping", "the process is stopping"
    elif fleet is not None and not supervisor.children:
        reason = f"cannot reach Redis: {fleet.redis_error}" if fleet.redis_error else None
        status = "ok" if reason is None else "unhealthy"
    else:
        reason = unhealthy_reason(supervisor.children)
        status = "ok" if reason is None else "unhealthy"
    body: dict[str, Any] = {
        "status": status,
        "reason": redactor.redact(reason) if reason else None,
        "bots": bots,
        "last_reload_error": redactor.redact(app.last_reload_error) if app.last_reload_error else None,
    }
    if fleet is not None:
        body["node"] = fleet.node_id
        report = fleet.report()
        report["redis_error"] = redactor.redact(report["redis_error"]) if report["redis_error"] else None
        body["fleet"] = report
    return (200 if status == "ok" else 503), body


class HealthServer:
    """Serves ``/healthz`` and ``/metrics`` for one :class:`~orchestrator.app.App`."""

    def __init__(self, app: HealthSource, port: int, host: str = DEFAULT_HOST) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound port through ``task_status``, serve until cancelled."""
        web_app = web.Application()
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.requested_port)
            try:
                await site.start()
            except OSError as exc:
                raise HealthPortError(
                    exc.errno, f"cannot serve /healthz on {self.host}:{self.requested_port}: {exc.strerror or exc}"
                ) from exc
            self.port = runner.addresses[0][1]
            log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)
            task_status.started(self.port)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        status, body = health_report(self.app)
        return web.json_response(body, status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.app.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
