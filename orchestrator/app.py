"""The running process: shared services, the supervisor, signals, live reload and housekeeping.

    App.run
    ├── LLMPool            shared providers (closed last)
    ├── SQLiteStore        memory + usage
    └── task group
        ├── Supervisor.run         every bot (see supervisor.py)
        ├── signal handler         SIGINT/SIGTERM → graceful stop, SIGHUP → reload
        ├── config watcher         bots.yaml / .env saved → reload
        └── retention pruning      old conversation turns, in the background
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import anyio
import watchfiles
from anyio.abc import TaskStatus

from .config import Config, load_config
from .errors import ConfigError
from .llm.pool import LLMPool
from .llm.quota import QuotaBook
from .memory import SQLiteStore
from .observability import redactor
from .persona_bot import RuntimeOptions, Services, configure_discord
from .supervisor import Supervisor

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0


def config_secrets(config: Config) -> list[str]:
    return [bot.token.get_secret_value() for bot in config.bots.values()] + [
        provider.api_key.get_secret_value() for provider in config.providers.values()
    ]


class App:
    """Owns everything ``orchestrator run`` starts; ``run`` returns after a graceful stop."""

    def __init__(
        self,
        config: Config,
        *,
        options: RuntimeOptions | None = None,
        handle_signals: bool = True,
        watch: bool = True,
        watch_debounce_ms: int = 1600,
    ) -> None:
        self.config = config
        self.options = options or RuntimeOptions(guild_ready_timeout=config.discord.guild_ready_timeout)
        self.handle_signals = handle_signals
        self.watch = watch
        self.watch_debounce_ms = watch_debounce_ms
        self.supervisor: Supervisor | None = None
        self.last_reload_error: str | None = None
        self._reload_lock = anyio.Lock()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: object) -> App:
        return cls(load_config(path), **kwargs)  # type: ignore[arg-type]

    async def run(self, *, task_status: TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        redactor.update(config_secrets(config))
        configure_discord(config.discord)
        store = SQLiteStore(config.database)
        try:
            async with LLMPool(config.providers, QuotaBook(store)) as pool:
                services = Services(pool, store, self.options)
                self.supervisor = supervisor = Supervisor(config, services)
                async with anyio.create_task_group() as tg:
                    await tg.start(self._supervise, supervisor, tg.cancel_scope)
                    if self.handle_signals:
                        tg.start_soon(self._handle_signals)
                    if self.watch:
                        tg.start_soon(self._watch_config)
                    tg.start_soon(self._prune_forever, store)
                    task_status.started(supervisor)
        finally:
            store.close()
        log.info("all bots stopped; bye")

    @staticmethod
    async def _supervise(
        supervisor: Supervisor, helpers: anyio.CancelScope, *, task_status: TaskStatus[None]
    ) -> None:
        await supervisor.run(task_status=task_status)
        helpers.cancel()  # the bots are down: stop the watcher, signal handler and pruning too

    def request_stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.request_stop()

    async def reload(self) -> bool:
        """Re-read bots.yaml and reconcile; a broken file is rejected and the running bots keep going."""
        async with self._reload_lock:
            try:
                config = load_config(self.config.path)
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                log.error("rejected the edited configuration; the bots keep running with the last good one.\n%s", exc)
                return False
            self.last_reload_error = None
            redactor.update(config_secrets(config))
            for warning in config.warnings:
                log.warning("%s", warning)
            assert self.supervisor is not None
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
                    log.warning("second stop signal: stopping now")
                    raise SystemExit(1)
                else:
                    log.info("%s: finishing answers in flight, then stopping", signal.Signals(signum).name)
                    self.request_stop()

    async def _watch_config(self) -> None:
        path = self.config.path.resolve()
        names = {path.name, ".env"}
        async for _changes in watchfiles.awatch(
            path.parent,
            watch_filter=lambda _change, changed: Path(changed).name in names,
            debounce=self.watch_debounce_ms,
            recursive=False,
        ):
            log.info("%s changed on disk: reloading", path.name)
            await self.reload()

    async def _prune_forever(self, store: SQLiteStore) -> None:
        while True:
            for bot in self.config.bots.values():
                max_age = bot.memory.max_age_days * 86400 if bot.memory.max_age_days else None
                removed = await store.prune(bot.name, max_age, bot.memory.max_turns)
                if removed:
                    log.info("retention: pruned %d old turns of bot %s", removed, bot.name)
            await anyio.sleep(PRUNE_INTERVAL)
