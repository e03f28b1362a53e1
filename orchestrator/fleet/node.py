"""One node of a fleet: the coordinator that decides which bots this process runs.

Every ``lease_ttl / 3`` seconds (:meth:`FleetCoordinator.tick`) the node

1. heartbeats (``node:<id>``, with the bots it holds) and learns the live nodes, and in the same
   round trip renews the leases it holds, saving where each bot's next holder would catch up from
   and marking the messages answered since the last round (claims.py); a lease found taken by
   another node is lost: its bot stops at once;
2. places every configured bot by rendezvous hashing over the live nodes (placement.py);
3. drains the bots it holds that now belong elsewhere (graceful stop, then release), and takes the
   free leases of the bots that belong here, starting each bot only once its lease is held.

A separate watchdog stops a bot at once when its lease's local deadline passes without a renewal
(Redis unreachable or slow, the process paused): by then another node may hold it. Until then the
bot keeps running, and :meth:`FleetCoordinator.may_post` lets it post. The node remembers where
each bot it stopped that way had got to: a Redis restarted without its data has no catch-up point,
and the bot catches up from there when this node takes it again (the messages sent during the outage).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..config import FleetSpec
from .claims import FleetClaims
from .connection import REDIS_ERRORS, describe, open_redis
from .leases import Lease, LeaseStore, node_of
from .placement import place

log = logging.getLogger(__name__)

NOT_YET = "not reached yet"


class BotRunner(Protocol):
    """What the coordinator drives: the :class:`~orchestrator.runtime.supervisor.Supervisor`."""

    @property
    def bot_names(self) -> Collection[str]: ...

    @property
    def stop_requested(self) -> bool: ...

    def running_bots(self) -> Collection[str]: ...

    def start_bot(self, name: str, catch_up_from: Mapping[int, int] | None = None) -> None: ...

    async def stop_bot(self, name: str, *, at_once: bool = False) -> dict[int, int]: ...

    def catch_up_positions(self, name: str) -> dict[int, int]: ...


class FleetCoordinator:
    """Runs this node's part of the fleet; ``run`` until cancelled (it then releases what it holds)."""

    def __init__(
        self, store: LeaseStore, runner: BotRunner, nodes_changed: Callable[[int], None] | None = None
    ) -> None:
        self.store = store
        self.claims = FleetClaims(store)  # the messages answered here, marked with each round
        self.runner = runner
        self.nodes_changed = nodes_changed  # told how many nodes are live whenever that changes (the pool)
        self.node_id = store.node_id
        self.interval = store.lease_ttl / 3
        self.leases: dict[str, Lease] = {}
        self.live_nodes: list[str] = []
        self.redis_error: str | None = NOT_YET  # why Redis could not be used, None while it answers
        self.acquisitions: Counter[str] = Counter()  # by bot
        self.losses: Counter[str] = Counter()  # leases lost without letting go of them
        self.failovers: Counter[str] = Counter()  # bots taken over from a node that never released them
        self._clock = store.clock  # the one the leases' deadlines are on
        self._stopping: set[str] = set()  # bots whose stop is under way here: not to be taken again yet
        # Where this node left off each bot it lost or could not release: the catch-up point to use
        # should it take the bot again from a Redis that has none (restarted without its data).
        self._left_off: dict[str, dict[int, int]] = {}
        self._tg: TaskGroup | None = None
        self._deadlines = anyio.Event()  # set when a lease is taken, renewed or dropped
        self._heartbeats = 0
        self._warned_twin = False

    def may_post(self, bot: str) -> bool:
        """Whether this node may post as ``bot`` now: its lease is held and within its local deadline."""
        lease = self.leases.get(bot)
        return lease is not None and lease.valid(self._clock())

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick every ``lease_ttl / 3`` seconds until cancelled; then give up the leases of the bots that
        have stopped and leave the fleet."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._watch_deadlines)
                task_status.started()
                while True:
                    started = self._clock()
                    await self.tick()
                    await anyio.sleep(max(0.0, started + self.interval - self._clock()))
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.interval):
                await self._leave()

    async def tick(self) -> None:
        """One round: heartbeat and renew (one round trip), place. Redis being unreachable is logged once
        per outage."""
        try:
            leases = list(self.leases.values())
            positions = {lease.bot: self.runner.catch_up_positions(lease.bot) for lease in leases}
            answered = {lease.bot: self.claims.take(lease.bot) for lease in leases}
            found = await self.store.keep_alive(leases, positions, answered)
            if found.twin is not None and self._heartbeats and not self._warned_twin:
                self._warned_twin = True
                log.error(
                    "fleet: another process also uses node id %s: give each node its own node_id (or "
                    "ORCHESTRATOR_NODE_ID); the leases still keep each bot on one process",
                    self.node_id,
                )
            self._heartbeats += 1
            for lease in leases:
                if not found.kept[lease.bot] and self.leases.get(lease.bot) is lease:
                    self._lose(lease, "its lease expired in Redis or another node holds it now")
            self._deadlines_changed()
            live = sorted(found.nodes)
            if live != self.live_nodes:
                log.info("fleet: %d live node(s): %s (this one: %s)", len(live), ", ".join(live), self.node_id)
                if self.nodes_changed is not None and len(live) != len(self.live_nodes):
                    self.nodes_changed(len(live))
            self.live_nodes = live
            if not self.runner.stop_requested:
                await self._place()
        except REDIS_ERRORS as exc:
            if self.redis_error in (None, NOT_YET):
                held = ", ".join(sorted(self.leases)) or "none"
                log.warning(
                    "fleet: cannot reach Redis (%s); the bots held here (%s) keep running until their leases "
                    "run out (%.1fs at most), then stop until Redis answers again",
                    describe(exc),
                    held,
                    self.store.lease_ttl,
                )
            self.redis_error = describe(exc)
            return
        if self.redis_error is not None and self.redis_error != NOT_YET:
            log.info("fleet: Redis answers again")
        self.redis_error = None

    async def _place(self) -> None:
        nodes = set(self.live_nodes) | {self.node_id}
        desired = place(self.runner.bot_names, nodes)
        for bot, lease in list(self.leases.items()):
            if not lease.draining and desired.get(bot) != self.node_id:
                lease.draining = True
                assert self._tg is not None
                self._tg.start_soon(self._drain, lease, desired.get(bot), name=f"fleet drain {bot}")
        busy = self._stopping | set(self.runner.running_bots()) | set(self.leases)
        wanted = [bot for bot, node in desired.items() if node == self.node_id and bot not in busy]
        if not wanted:
            return
        for bot, got in (await self.store.acquire(wanted)).items():
            if got.lease is None:
                continue  # its holder drains it first, or its lease runs out
            if self.runner.stop_requested or bot not in self.runner.bot_names:
                await self.store.release(got.lease, got.catch_up)
                continue
            self.leases[bot] = got.lease
            self.acquisitions[bot] += 1
            if got.holder and got.holder != self.store.holder:
                self.failovers[bot] += 1
                log.warning(
                    "fleet: bot %s taken over from node %s, whose lease ran out without being released",
                    bot,
                    node_of(got.holder),
                )
            log.info("fleet: bot %s starts on this node (lease token %d)", bot, got.lease.token)
            # Redis' catch-up point is the newest when it has one: every holder saves its own there.
            left_off = self._left_off.pop(bot, {})
            self.runner.start_bot(bot, got.catch_up or left_off)
        self._deadlines_changed()

    async def _drain(self, lease: Lease, to: str | None) -> None:
        """Stop the bot gracefully (its lease still renewed), then hand the lease on."""
        bot = lease.bot
        where = f"node {to}" if to else "no node (it is no longer configured)"
        log.info("fleet: bot %s moves to %s: stopping it here first", bot, where)
        positions = await self.runner.stop_bot(bot)
        if self.leases.get(bot) is not lease:
            return  # lost meanwhile: stopped at once by _lose
        del self.leases[bot]
        self._deadlines_changed()
        try:
            await self.store.release(lease, positions, self.claims.take(bot))
        except REDIS_ERRORS as exc:
            self._left_off[bot] = positions
            log.warning(
                "fleet: could not release the lease of bot %s (%s); it runs out within %.1fs",
                bot,
                describe(exc),
                self.store.lease_ttl,
            )
            return
        log.info("fleet: bot %s stopped here and its lease released", bot)

    # ------------------------------------------------------------------ losing a lease

    def _lose(self, lease: Lease, why: str) -> None:
        """The lease is no longer ours (or may not be): stop its bot at once."""
        del self.leases[lease.bot]
        self.claims.take(lease.bot)  # its marks not sent yet are dropped: its answers are replies catch-up skips
        self.losses[lease.bot] += 1
        self._deadlines_changed()
        log.error(
            "fleet: bot %s stops at once on this node: %s; it starts again on the node that takes its lease next",
            lease.bot,
            why,
        )
        self._stopping.add(lease.bot)
        assert self._tg is not None
        self._tg.start_soon(self._stop_at_once, lease.bot, name=f"fleet stop {lease.bot}")

    async def _stop_at_once(self, bot: str) -> None:
        try:
            self._left_off[bot] = await self.runner.stop_bot(bot, at_once=True)
        finally:
            self._stopping.discard(bot)

    async def _watch_deadlines(self) -> None:
        """Stop each bot whose lease passes its local deadline without having been renewed."""
        while True:
            now = self._clock()
            for lease in list(self.leases.values()):
                if not lease.valid(now):
                    why = self.redis_error or "Redis answered too slowly, or this process was paused"
                    self._lose(lease, f"its lease could not be renewed in time ({why})")
            soonest = min((lease.valid_until for lease in self.leases.values()), default=math.inf)
            changed = self._deadlines
            with anyio.move_on_after(soonest - self._clock()):
                await changed.wait()

    def _deadlines_changed(self) -> None:
        self._deadlines.set()
        self._deadlines = anyio.Event()

    # ------------------------------------------------------------------ leaving

    async def _leave(self) -> None:
        """Release the leases of the bots that have stopped (the others run out by themselves: another
        node must not start a bot whose Discord connection is still open here) and leave the fleet."""
        running = set(self.runner.running_bots())
        try:
            for bot, lease in list(self.leases.items()):
                if bot not in running:
                    await self.store.release(lease, self.runner.catch_up_positions(bot), self.claims.take(bot))
                    del self.leases[bot]
            await self.store.leave()
        except REDIS_ERRORS as exc:
            log.warning(
                "fleet: could not leave cleanly (%s); the leases held here run out within %.1fs",
                describe(exc),
                self.store.lease_ttl,
            )

    # ------------------------------------------------------------------ status

    def report(self) -> dict[str, Any]:
        """This node's view, for /healthz."""
        now = self._clock()
        return {
            "node": self.node_id,
            "key_prefix": self.store.key_prefix,
            "lease_ttl": self.store.lease_ttl,
            "redis_error": self.redis_error,
            "nodes": list(self.live_nodes),
            "leases": {
                bot: {
                    "token": lease.token,
                    "valid_for_s": round(max(0.0, lease.valid_until - now), 3),
                    "draining": lease.draining,
                }
                for bot, lease in sorted(self.leases.items())
            },
        }


@contextlib.asynccontextmanager
async def fleet_node(
    spec: FleetSpec, runner: BotRunner, nodes_changed: Callable[[int], None] | None = None
) -> AsyncIterator[FleetCoordinator]:
    """This process's coordinator for the fleet of ``spec``, with its Redis client (closed at the end)."""
    # Two attempts of a command fit in one tick, so a tick ends well within the lease.
    redis = open_redis(spec.redis_url.get_secret_value(), timeout=spec.lease_ttl / 6)
    try:
        yield FleetCoordinator(LeaseStore(redis, spec.key_prefix, spec.node_id, spec.lease_ttl), runner, nodes_changed)
    finally:
        with anyio.CancelScope(shield=True):
            await redis.aclose()
