"""The running process: shared services, the supervisor, signals, live reload and housekeeping.

App.run
├── LLMPool            shared providers (closed last)
├── store              memory + usage: SQLite, or PostgreSQL with its writer task (memory/open.py)
└── task group
    ├── HealthServer.serve     /healthz and /metrics on 127.0.0.1 (when a health port is set)
    ├── QuotaBook.follow_days  each UTC day's token usage, read in a worker thread
    ├── Supervisor.run         every bot (see supervisor.py); in fleet mode the bots this node holds
    ├── FleetCoordinator.run   fleet mode: heartbeats, leases, placement (see fleet/node.py)
    ├── signal handler         SIGINT/SIGTERM → graceful stop (a second one: stop now), SIGHUP → reload
    ├── config watcher         bots.yaml / .env saved → reload
    ├── start-up GC freeze     once every bot has started
    └── retention pruning      old conversation turns, in the background
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import watchfiles
from anyio.abc import TaskStatus

from .config import Config, PostgresURL, load_config, read_environment
from .discord_io.client import configure_discord, install_reconnect_log_filter
from .errors import ConfigError
from .fleet.connection import shown
from .fleet.node import FleetCoordinator, fleet_node
from .fleet.quotas import FleetQuotas
from .llm.images import ImageBook
from .llm.pool import LLMPool
from .llm.quota import QuotaBook
from .llm.spend import SpendBook
from .memory import ConversationStore, open_store
from .ops.health import DEFAULT_HOST, HealthServer
from .ops.logs import install_log_redaction, redactor
from .ops.metrics import Metrics
from .ops.sentry import flush_sentry, init_sentry, set_bot_tag_source
from .runtime.services import RuntimeOptions, Services
from .runtime.supervisor import BotState, Supervisor

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
USAGE_LOG_INTERVAL = 600.0
STARTUP_GRACE = 60.0  # bots still connecting after this are not waited for before the GC freeze


def config_secrets(config: Config) -> list[str]:
    secrets = [bot.token.get_secret_value() for bot in config.bots.values()] + [
        provider.api_key.get_secret_value() for provider in config.providers.values()
    ]
    if isinstance(config.database, PostgresURL):
        secrets += config.database.secrets()
    if config.fleet is not None:
        secrets.append(urlsplit(config.fleet.redis_url.get_secret_value()).password or "")
    return secrets


class App:
    """Owns everything ``orchestrator run`` starts; ``run`` returns after a graceful stop.

    ``health_port`` (default: bots.yaml's ``health_port``; 0 picks a free port) turns on the
    /healthz and /metrics server; :attr:`health_port_bound` is the port it listens on.
    ``sentry_dsn`` defaults to ``SENTRY_DSN`` from the environment or the ``.env`` beside bots.yaml;
    ``sentry_transport`` replaces Sentry's network transport (tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        options: RuntimeOptions | None = None,
        handle_signals: bool = True,
        watch: bool = True,
        watch_debounce_ms: int = 1600,
        health_port: int | None = None,
        health_host: str = DEFAULT_HOST,
        sentry_dsn: str | None = None,
        sentry_transport: Any = None,
    ) -> None:
        self.config = config
        self.options = options or RuntimeOptions(guild_ready_timeout=config.discord.guild_ready_timeout)
        self.handle_signals = handle_signals
        self.watch = watch
        self.watch_debounce_ms = watch_debounce_ms
        self.health_port = health_port
        self.health_host = health_host
        self.sentry_dsn = sentry_dsn
        self.sentry_transport = sentry_transport
        self.supervisor: Supervisor | None = None
        self.fleet: FleetCoordinator | None = None  # fleet mode only
        self.pool: LLMPool | None = None
        self.health: HealthServer | None = None
        self.metrics = Metrics()
        self.metrics.source = self
        self.last_reload_error: str | None = None
        self.exit_code = 0  # 128 + the signal's number when a second signal cut the graceful stop short
        self._reload_lock = anyio.Lock()
        self._scope: anyio.CancelScope | None = None

    @property
    def health_port_bound(self) -> int | None:
        """The port /healthz and /metrics listen on, once the server is up."""
        return self.health.port if self.health is not None else None

    def _bot_tags(self, name: str) -> Mapping[str, str]:
        spec = self.config.bots.get(name)
        return {"provider": spec.provider, "model": spec.model} if spec is not None else {}

    async def run(self, *, task_status: TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        redactor.update(config_secrets(config))
        install_log_redaction()
        dsn = self.sentry_dsn if self.sentry_dsn is not None else read_environment(config.path.parent).get("SENTRY_DSN")
        if init_sentry(dsn, transport=self.sentry_transport):
            set_bot_tag_source(self._bot_tags)
        configure_discord(config.discord)
        install_reconnect_log_filter()
        try:
            async with (
                open_store(config.database) as store,
                LLMPool(config.providers, QuotaBook(store), SpendBook(store), images=ImageBook(store)) as pool,
            ):
                self.pool = pool
                services = Services(pool, store, self.options, metrics=self.metrics)
                services.community.configure(bot.context.channel_messages for bot in config.bots.values())
                self.supervisor = supervisor = Supervisor(config, services, placed=config.fleet is not None)
                async with self._fleet_node(supervisor, services) as fleet, anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    port = self.health_port if self.health_port is not None else config.health_port
                    if port is not None:
                        self.health = HealthServer(self, port, self.health_host)
                        await tg.start(self.health.serve)
                    log.info("%s", self._start_up_line())
                    await tg.start(pool.quotas.follow_days)  # today's token usage, before any bot answers
                    await tg.start(services.community.panels.run)
                    await tg.start(self._supervise, supervisor, tg.cancel_scope)
                    if fleet is not None:
                        await tg.start(fleet.run)
                    if self.handle_signals:
                        tg.start_soon(self._handle_signals)
                    if self.watch:
                        tg.start_soon(self._watch_config)
                    tg.start_soon(self._prune_forever, store)
                    tg.start_soon(self._freeze_start_up_objects, supervisor)
                    tg.start_soon(self._log_usage_forever, pool)
                    task_status.started(supervisor)
        finally:
            await flush_sentry()
        log.info("all bots stopped; bye")

    @contextlib.asynccontextmanager
    async def _fleet_node(self, supervisor: Supervisor, services: Services) -> AsyncIterator[FleetCoordinator | None]:
        """The fleet coordinator in fleet mode (None otherwise), for as long as the app runs. The bots
        then answer and post only under their lease and mark the messages they answered in the fleet's
        Redis, the pool's quotas are counted there, and its providers' max_concurrency is shared among
        the nodes."""
        spec = self.config.fleet
        if spec is None:
            yield None
            return
        pool = services.pool
        async with fleet_node(spec, supervisor, pool.share_concurrency) as coordinator:
            self.fleet = coordinator
            leases = coordinator.store
            services.may_post = coordinator.may_post
            services.claims = coordinator.claims
            quotas = FleetQuotas(leases.redis, spec.key_prefix, pool.quotas, pool.spend, pool.images)
            async with quotas.settling():  # settles reach Redis in batches, the last ones as the node stops
                pool.admission = quotas
                yield coordinator

    def _start_up_line(self) -> str:
        """``starting 2 bots: sage, hafez; health on 127.0.0.1:8080``: what this process will run."""
        count = len(self.config.bots)
        health = f"health on {self.health.host}:{self.health.port}" if self.health is not None else "no health port"
        bots = f"{count} bot{'s' if count != 1 else ''}: {', '.join(self.config.bots)}"
        fleet = self.config.fleet
        if fleet is None:
            return f"starting {bots}; {health}"
        return (
            f"node {fleet.node_id} joins fleet {fleet.key_prefix!r} at {shown(fleet.redis_url.get_secret_value())} "
            f"and runs its share of {bots}; {health}"
        )

    @staticmethod
    async def _supervise(
        supervisor: Supervisor, helpers: anyio.CancelScope, *, task_status: TaskStatus[Supervisor]
    ) -> None:
        await supervisor.run(task_status=task_status)
        helpers.cancel()  # the bots are down: stop the watcher, signal handler and pruning too

    @staticmethod
    async def _freeze_start_up_objects(supervisor: Supervisor) -> None:
        """Once every bot has started, take what exists (modules, clients, caches: long-lived) out of
        the cyclic GC's walks. A full collection over it paused the event loop for ~27 ms, a tail
        latency spike (scripts/bench); objects made later are collected as usual."""
        with anyio.move_on_after(STARTUP_GRACE):
            await supervisor.wait_until(
                lambda sup: all(child.state is not BotState.STARTING for child in sup.children.values())
            )
        gc.collect()  # start-up garbage goes first, so it is not frozen with the rest
        gc.freeze()
        log.debug("start-up objects frozen out of the cyclic GC (%d)", gc.get_freeze_count())

    def request_stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.request_stop()

    async def reload(self) -> bool:
        """Re-read bots.yaml and reconcile; a broken file is rejected and the running bots keep going."""
        async with self._reload_lock:
            try:
                config = load_config(self.config.path, require_redis=self.config.fleet is not None)
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                log.error("rejected the edited configuration; the bots keep running with the last good one.\n%s", exc)
                return False
            self.last_reload_error = None
            redactor.update(config_secrets(config))
            for warning in config.warnings:
                log.warning("%s", warning)
            if config.fleet != self.config.fleet:
                log.warning("the fleet section of %s changed; restart the process to apply it", config.path)
            assert self.supervisor is not None
            self.supervisor.services.community.configure(bot.context.channel_messages for bot in config.bots.values())
            await self.supervisor.reconcile(config)
            self.config = config
            return True

    async def _handle_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading %s", self.config.path)
                    await self.reload()
                elif self.supervisor is not None and self.supervisor.stop_requested:
                    log.warning(
                        "second signal: stopping now (%s), without finishing the answers in flight",
                        signal.Signals(signum).name,
                    )
                    self.exit_code = 128 + signum
                    assert self._scope is not None
                    self._scope.cancel()  # every task, bots included, ends through its own cleanup
                    return
                else:
                    log.info("%s: finishing answers in flight, then stopping", signal.Signals(signum).name)
                    self.request_stop()

    async def _watch_config(self) -> None:
        """Reload when bots.yaml or the .env beside it is saved. The directory is watched, not the two
        files: editors save by replacing the file, which ends a watch on the file itself, and .env may
        not exist yet. Other files there (the database, logs) change often: the filter drops them, and
        watchfiles, which logs each batch of changes (kept or dropped) at INFO/DEBUG, logs warnings only."""
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        path = self.config.path.resolve()
        names = {path.name, ".env"}
        # Cancelling awatch waits for its watcher thread, which looks at stop_event between steps but
        # otherwise returns only after its 5 s timeout: set the event as soon as we are cancelled.
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_when_cancelled, stop)
            async for _changes in watchfiles.awatch(
                path.parent,
                watch_filter=lambda _change, changed: Path(changed).name in names,
                debounce=self.watch_debounce_ms,
                recursive=False,
                stop_event=stop,
            ):
                log.info("%s changed on disk: reloading", path.name)
                await self.reload()

    def log_usage(self, pool: LLMPool) -> None:
        """One log line per bot: requests and tokens in the last minute, tokens today, against limits."""
        for bot in self.config.bots.values():
            usage = pool.quotas.report(bot.name)
            limit = bot.quota.tokens_per_day
            log.info(
                "usage of bot %s: %d requests and %d tokens in the last minute, %d tokens today%s",
                bot.name,
                usage.requests_last_minute,
                usage.tokens_last_minute,
                usage.tokens_today,
                f" of {limit}" if limit else "",
            )

    async def _log_usage_forever(self, pool: LLMPool) -> None:
        while True:
            await anyio.sleep(USAGE_LOG_INTERVAL)
            self.log_usage(pool)

    async def _prune_forever(self, store: ConversationStore) -> None:
        while True:
            for bot in self.config.bots.values():
                max_age = bot.memory.max_age_days * 86400 if bot.memory.max_age_days else None
                try:
                    removed = await store.prune(bot.name, max_age, bot.memory.max_turns)
                except Exception:
                    log.exception("retention: could not prune old turns of bot %s; trying again later", bot.name)
                    continue
                if removed:
                    log.info("retention: pruned %d old turns of bot %s", removed, bot.name)
            await anyio.sleep(PRUNE_INTERVAL)


async def _set_when_cancelled(event: anyio.Event) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        event.set()
