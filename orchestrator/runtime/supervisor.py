"""The supervisor: one anyio task group, one supervised child per bot (OTP-style).

Each child runs a restart loop around a fresh :class:`PersonaBot`. A crash is caught inside the
child (so siblings are never cancelled), logged, and followed by a restart after exponential
backoff with jitter, unless more than ``max_restarts`` happened within ``window`` seconds: then
the child is marked FAILED and stays down until the next reload. Fatal configuration errors (bad
token, missing intent) fail the child at once. Discord being unreachable is not a crash: the
child stays UNREACHABLE and tries again after the same capped backoff, for as long as it takes.
:meth:`Supervisor.reconcile` applies a new configuration and restarts the children that are down.

In fleet mode (``placed``) the supervisor runs only the bots this node holds a lease on: it starts
none by itself, and the fleet coordinator (orchestrator/fleet/node.py) calls :meth:`start_bot` and
:meth:`stop_bot`. Its graceful stops are hand-overs: what arrives meanwhile is left to the next node.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..config import BotSpec, Config, RestartSettings
from ..discord_io.client import DiscordUnreachable, configure_discord
from ..errors import BotFatalError
from ..ops.logs import current_bot
from ..ops.sentry import report_exception
from ..persona.bot import PersonaBot
from .mailbox import Mailbox
from .services import BotCounters, Services

log = logging.getLogger(__name__)


class BotState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"  # crashed; restarting after a pause
    UNREACHABLE = "unreachable"  # cannot reach Discord; trying again after a pause, without limit
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


DOWN = frozenset({BotState.FAILED, BotState.UNREACHABLE, BotState.STOPPED})  # what a reload starts again


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    window: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    @classmethod
    def from_settings(cls, settings: RestartSettings) -> RestartPolicy:
        return cls(settings.max_restarts, settings.window, settings.backoff_initial, settings.backoff_max)

    def backoff(self, restarts: int, rng: random.Random) -> float:
        """Exponential backoff with ±50% jitter for the ``restarts``-th restart in the window."""
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, restarts - 1))
        return base * rng.uniform(0.5, 1.5)


@dataclass
class Child:
    spec: BotSpec
    state: BotState = BotState.STARTING
    restarts: int = 0
    connect_failures: int = 0  # failed attempts to reach Discord since it was last online
    recent_crashes: deque[float] = field(default_factory=deque)
    actor: PersonaBot | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stopping: bool = False
    since: float = field(default_factory=time.monotonic)
    last_error: str = ""
    done: anyio.Event = field(default_factory=anyio.Event)
    # Both outlive each restart's actor: counters keep counting, waiting jobs are not lost.
    counters: BotCounters = field(default_factory=BotCounters)
    mailbox: Mailbox = field(init=False)

    def __post_init__(self) -> None:
        self.mailbox = Mailbox(self.spec.mailbox_size, self.spec.concurrency)

    def stop_requested(self) -> bool:
        """Whether ``stopping`` is set: a call, so a check after an await is not taken as already known."""
        return self.stopping


class Supervisor:
    def __init__(
        self, config: Config, services: Services, *, policy: RestartPolicy | None = None, placed: bool = False
    ) -> None:
        """``placed``: fleet mode, the bots to run are chosen from outside (:meth:`start_bot`)."""
        self.config = config
        self.services = services
        self.policy = policy or RestartPolicy.from_settings(config.restart)
        self.placed = placed
        self.children: dict[str, Child] = {}
        self._tg: TaskGroup | None = None
        self._changed = anyio.Event()
        self._stop = anyio.Event()
        self._rng = random.Random()

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run every bot until :meth:`request_stop`; then stop them all gracefully."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if not self.placed:
                for spec in self.config.bots.values():
                    self._start_child(spec)
            task_status.started(self)
            await self._stop.wait()
            await self._stop_children(list(self.children.values()))
        self._tg = None

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ fleet mode: one bot at a time

    @property
    def bot_names(self) -> list[str]:
        """Every bot of the configuration, running here or not."""
        return list(self.config.bots)

    def running_bots(self) -> list[str]:
        """The bots whose child has not ended (its Discord connection may be open)."""
        return [name for name, child in self.children.items() if not child.done.is_set()]

    def start_bot(self, name: str, catch_up_from: Mapping[int, int] | None = None) -> None:
        """Start bot ``name`` of the configuration; its first session catches up from ``catch_up_from``
        (channel -> message id: where the node that ran it before left off)."""
        if name in self.children:
            raise RuntimeError(f"bot {name} is already running here")
        # Another node may have answered as the bot since this one last ran it: what is cached here is stale.
        self.services.store.drop_cached(name)
        self._start_child(self.config.bots[name], catch_up_from)
        self._notify()

    async def stop_bot(self, name: str, *, at_once: bool = False) -> dict[int, int]:
        """Stop bot ``name`` and forget it; returns where the next node to run it catches up from.
        Graceful (answers in flight finish) unless ``at_once``, which also cuts a graceful stop short."""
        child = self.children.get(name)
        if child is None:
            return {}
        if at_once:
            child.stopping = True
            child.scope.cancel()
            with anyio.CancelScope(shield=True):
                await child.done.wait()
        else:
            await self._stop_children([child])
        if self.children.get(name) is child:
            del self.children[name]
            self._notify()
        return child.mailbox.catch_up_positions()

    def catch_up_positions(self, name: str) -> dict[int, int]:
        """Where another node would catch up from, were it to take bot ``name`` over now."""
        child = self.children.get(name)
        return child.mailbox.catch_up_positions() if child is not None else {}

    # ------------------------------------------------------------------ children

    def _start_child(self, spec: BotSpec, catch_up_from: Mapping[int, int] | None = None) -> None:
        assert self._tg is not None, "the supervisor is not running"
        child = Child(spec)
        if catch_up_from:
            child.mailbox.seed(dict(catch_up_from))
        self.children[spec.name] = child
        self._tg.start_soon(self._supervise, child, name=f"bot:{spec.name}")

    async def _stop_children(self, children: list[Child]) -> None:
        for child in children:
            child.stopping = True
            if child.state not in (BotState.FAILED, BotState.STOPPED):
                self._set_state(child, BotState.STOPPING)
            if child.actor is not None:
                child.actor.stop(hand_over=self.placed)
            else:
                child.scope.cancel()
        grace = self.services.options.drain_timeout + self.services.options.close_timeout + 1
        with anyio.move_on_after(grace):
            for child in children:
                await child.done.wait()
        for child in children:
            child.scope.cancel()  # whoever did not finish in time
        with anyio.CancelScope(shield=True):
            for child in children:
                await child.done.wait()

    async def _supervise(self, child: Child) -> None:
        current_bot.set(child.spec.name)
        try:
            with child.scope:
                await self._restart_loop(child)
        finally:
            child.mailbox.close()
            if child.state is not BotState.FAILED:
                self._set_state(child, BotState.STOPPED)
            child.done.set()

    async def _restart_loop(self, child: Child) -> None:
        name = child.spec.name
        while not child.stop_requested():
            if child.state is not BotState.UNREACHABLE:  # it stays so until it is online
                self._set_state(child, BotState.STARTING)
            try:
                child.actor = PersonaBot(
                    child.spec, self.services, child.mailbox, child.counters, on_ready=lambda: self._online(child)
                )
                await child.actor.run()
                return
            except BotFatalError as exc:
                child.last_error = exc.reason
                log.error("bot %s failed and will not be restarted: %s", name, exc.reason)
                report_exception(exc, bot=name, provider=child.spec.provider, model=child.spec.model)
                self._fail(child)
                return
            except DiscordUnreachable as exc:
                child.actor = None
                child.last_error = f"cannot reach Discord: {exc.reason}"
                if child.stop_requested():
                    return
                child.connect_failures += 1
                delay = self.policy.backoff(child.connect_failures, self._rng)
                log.warning(
                    "bot %s cannot reach Discord (%s); trying again in %.1fs (attempt %d)",
                    name,
                    exc.reason,
                    delay,
                    child.connect_failures,
                )
                self._set_state(child, BotState.UNREACHABLE)
                await anyio.sleep(delay)
            except Exception as exc:
                child.actor = None
                child.last_error = f"{type(exc).__name__}: {exc}"
                if child.stop_requested():
                    return
                report_exception(exc, bot=name, provider=child.spec.provider, model=child.spec.model)
                now = time.monotonic()
                child.recent_crashes.append(now)
                while child.recent_crashes and child.recent_crashes[0] < now - self.policy.window:
                    child.recent_crashes.popleft()
                if len(child.recent_crashes) > self.policy.max_restarts:
                    log.error(
                        "bot %s crashed %d times within %.0fs; giving up on it (the other bots keep running). "
                        "Last error: %s",
                        name,
                        len(child.recent_crashes),
                        self.policy.window,
                        child.last_error,
                    )
                    self._fail(child)
                    return
                delay = self.policy.backoff(len(child.recent_crashes), self._rng)
                log.warning(
                    "bot %s crashed (%s); restart %d/%d in %.1fs",
                    name,
                    child.last_error,
                    len(child.recent_crashes),
                    self.policy.max_restarts,
                    delay,
                    exc_info=exc,
                )
                child.restarts += 1
                self._set_state(child, BotState.BACKOFF)
                await anyio.sleep(delay)

    # ------------------------------------------------------------------ state and waiting

    def _online(self, child: Child) -> None:
        child.connect_failures = 0
        self._set_state(child, BotState.RUNNING)

    def _fail(self, child: Child) -> None:
        self._set_state(child, BotState.FAILED)
        if all(other.state is BotState.FAILED for other in self.children.values()):
            log.error(
                "every bot has failed; /healthz reports unhealthy. Fix the cause, then save bots.yaml "
                "(or send SIGHUP) to start them again"
            )

    def _set_state(self, child: Child, state: BotState) -> None:
        if child.state is not state:
            child.state = state
            child.since = time.monotonic()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[Supervisor], bool]) -> None:
        """Wait (without polling) until ``predicate(self)`` holds after some state change."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_for_state(self, name: str, *states: BotState) -> Child:
        await self.wait_until(lambda sup: name in sup.children and sup.children[name].state in states)
        return self.children[name]

    # ------------------------------------------------------------------ live reconfiguration

    async def reconcile(self, config: Config) -> dict[str, list[str]]:
        """Bring the running bots in line with ``config``; returns what changed, by kind.

        Bots that are down (failed, unreachable) start again even when their settings did not
        change: a reload is how an operator says the cause is fixed. Changed Discord URLs restart every
        bot, because discord.py's URLs are process-wide. In fleet mode new bots are not started here
        (the coordinator places them) and a restarted bot catches up where it stopped."""
        old = self.config
        self.config = config
        await self.services.pool.update_providers(config.providers)
        urls = (config.discord.api_url, config.discord.gateway_url)
        discord_changed = urls != (old.discord.api_url, old.discord.gateway_url)
        added = [] if self.placed else [name for name in config.bots if name not in self.children]
        removed = [name for name in self.children if name not in config.bots]
        restarted, updated = [], []
        for name, spec in config.bots.items():
            child = self.children.get(name)
            if child is None:
                continue
            if discord_changed or child.state in DOWN or (child.spec != spec and child.spec.needs_reconnect(spec)):
                restarted.append(name)
            elif child.spec != spec:
                updated.append(name)
        for name in updated:
            child = self.children[name]
            child.spec = config.bots[name]
            if child.actor is not None:
                child.actor.update(child.spec)
        gone = {name: self.children[name] for name in removed + restarted}
        async with anyio.create_task_group() as tg:
            for child in gone.values():
                tg.start_soon(self._stop_children, [child])
        for name in removed:
            del self.children[name]
        if discord_changed:  # every old client is closed by now
            configure_discord(config.discord)
            log.warning("the Discord URLs changed: every bot reconnects to %s", config.discord.api_url)
        for name in added:
            self._start_child(config.bots[name])
        for name in restarted:  # in fleet mode what arrived while it was down was left to its catch-up
            self._start_child(config.bots[name], gone[name].mailbox.catch_up_positions() if self.placed else None)
        self._notify()
        changes = {"added": added, "removed": removed, "restarted": restarted, "updated": updated}
        log.info("configuration reloaded: %s", ", ".join(f"{k} {v}" for k, v in changes.items() if v) or "no changes")
        return changes
