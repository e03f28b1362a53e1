"""The scenarios. Each runs the orchestrator and the baseline fleet, one after the other, against a
fresh sandbox process, and returns plain JSON-able figures (times in seconds or milliseconds as named).

Every message is ``<prefix>chat #m<tag> ...`` for one bot (each bot has its own prefix ``b<i>!``,
so all bots can share #general and each message is for exactly one of them); the tag links the
Discord message, the provider request and the reply. Message ``k`` goes to bot ``k % B`` from
user ``(k // B) % U``, so consecutive messages belong to different conversations.

All bots share one channel of one guild, except in the concurrency scenario's "separate" topology
(``--topology``), where each bot is alone in a guild of its own and users post to its channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procfs
from .runner import (
    API_KEY,
    BaselineFleet,
    BotDef,
    Children,
    OrchestratorProc,
    SandboxProc,
    make_bots,
    opened,
    orchestrator_env,
    write_orchestrator_config,
)

SIDES = ("orchestrator", "baseline")
SEED_EXCHANGES = 10


# ----------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": sum(ms) / len(ms),
    }


def histogram_summary_ms(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> dict[str, float] | None:
    """n, p50 and p99 (ms) of what a cumulative histogram observed between two readings, interpolated
    within a bucket as Prometheus' ``histogram_quantile`` does."""
    earlier = dict(before)
    counts = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    total = counts[-1][1] if counts else 0.0
    if not total:
        return None

    def quantile(q: float) -> float:
        rank, lower_bound, lower_count = q * total, 0.0, 0.0
        for bound, count in counts:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound * 1000  # above the highest bucket: its bound is all we know
                share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
                return (lower_bound + (bound - lower_bound) * share) * 1000
            lower_bound, lower_count = bound, count
        return lower_bound * 1000

    return {"n": int(total), "p50": quantile(0.5), "p99": quantile(0.99)}


def jain_index(values: list[float]) -> float | None:
    if not values or not any(values):
        return None
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def classify(text: str | None) -> str:
    """What a user saw as the first reply to a message."""
    if text is None:
        return "unanswered"
    if text.startswith("["):  # the sandbox model's answers start with "[<model>]"
        return "answer"
    if "429" in text:
        return "error_429"
    if "too many messages" in text:
        return "bot_busy"
    if "provider is busy" in text:
        return "provider_busy"
    if "reached the limit" in text:
        return "quota"
    return "other_error"


def chat_messages(bots: list[BotDef], count: int, users: int, first_tag: int = 0) -> list[dict[str, Any]]:
    out = []
    for k in range(first_tag, first_tag + count):
        bot = bots[k % len(bots)]
        out.append(
            {
                "content": f"{bot.prefix}chat #m{k} what do you think about item {k}?",
                "user": (k // len(bots)) % users,
                "target": bot.token,
                "tag": k,
            }
        )
    return out


@dataclass
class Exchange:
    """One message's timeline (monotonic seconds), as seen by the sandbox."""

    tag: int
    bot: str
    post: float
    dispatch: float | None
    provider_in: float | None
    provider_out: float | None
    reply: float | None
    kind: str

    @property
    def e2e(self) -> float | None:
        return None if self.reply is None or self.dispatch is None else self.reply - self.dispatch

    @property
    def inbound(self) -> float | None:
        if self.provider_in is None or self.dispatch is None:
            return None
        return self.provider_in - self.dispatch

    @property
    def outbound(self) -> float | None:
        if self.reply is None or self.provider_out is None:
            return None
        return self.reply - self.provider_out


def exchanges(load: dict[str, Any], messages: list[dict[str, Any]], bots: list[BotDef]) -> list[Exchange]:
    by_tag: dict[int, tuple[float, float]] = {}
    for tag, _bot, status, arrived, answered in load["provider"]:
        if tag is not None and status == 200:
            by_tag[tag] = (arrived, answered)
    names = {bot.token: bot.name for bot in bots}
    out = []
    for spec, record in zip(messages, load["messages"], strict=True):
        provider = by_tag.get(spec["tag"])
        out.append(
            Exchange(
                tag=spec["tag"],
                bot=names[spec["target"]],
                post=record["post"],
                dispatch=record["dispatch"],
                provider_in=provider[0] if provider else None,
                provider_out=provider[1] if provider else None,
                reply=record["reply"],
                kind=classify(record["text"]),
            )
        )
    return out


def kinds(items: list[Exchange]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return counts


def provider_statuses(load: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _tag, _bot, status, _a, _b in load["provider"]:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept), or None with fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


# ----------------------------------------------------------------------------- one side, one sandbox


class World:
    """A fresh sandbox process plus one side (the orchestrator or the baseline fleet)."""

    def __init__(self, bench: Bench, label: str, side: str, bots: list[BotDef], users: int, **sandbox: Any) -> None:
        self.bench, self.label, self.side, self.bots, self.users = bench, label, side, bots, users
        self.sandbox_args = sandbox
        self.workdir = bench.workdir / f"{label}-{side}"
        self.sandbox: SandboxProc | None = None
        self.proc: OrchestratorProc | BaselineFleet | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> World:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        log_path = self.bench.log_dir / f"{self.label}-sandbox-{self.side}.log"
        log = await self._stack.enter_async_context(opened(log_path))
        self.sandbox = await SandboxProc.start(
            self.bench.children, log, bots=[[b.token, b.name] for b in self.bots], users=self.users,
            api_key=API_KEY, **self.sandbox_args,
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        children = self.bench.children
        try:
            if isinstance(self.proc, OrchestratorProc):
                await children.stop(self.proc.proc)
                await self.proc.finish()
            elif isinstance(self.proc, BaselineFleet):
                await asyncio.gather(*(children.stop(p, 2.0) for p in self.proc.procs))
            if self.sandbox is not None:
                with contextlib.suppress(Exception):
                    await self.sandbox.call("quit", rpc_timeout=1)
                await children.stop(self.sandbox.proc)
        finally:
            await self._stack.aclose()

    @property
    def info(self) -> dict[str, Any]:
        assert self.sandbox is not None
        return self.sandbox.info

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None
        return self.proc.pids

    async def launch(
        self,
        *,
        provider: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
        seed: bool = False,
        wrapper: Sequence[str] = (),
        env: dict[str, str] | None = None,
        sections: dict[str, Any] | None = None,
    ) -> None:
        """Start the side; ``wrapper`` (an argv prefix), ``env`` (extra variables) and ``sections``
        (more top-level sections of bots.yaml) apply to the orchestrator only."""
        log = await self._stack.enter_async_context(opened(self.bench.log_dir / f"{self.label}-{self.side}.log"))
        if self.side == "orchestrator":
            database = self.workdir / "memory.sqlite3"
            if seed:
                seed_memory(database, self.bots, self.info["channel_id"], self.info["user_ids"])
            config = write_orchestrator_config(
                self.workdir / "bots.yaml",
                self.bots,
                self.info,
                database,
                provider=provider,
                defaults=defaults,
                sections=sections,
            )
            environment = {**orchestrator_env(self.bots, self.info, database), **(env or {})}
            self.proc = await OrchestratorProc.start(self.bench.children, config, environment, log, wrapper)
        else:
            self.proc = await BaselineFleet.start(
                self.bench.children, self.bots, self.info, log, seed_history=SEED_EXCHANGES if seed else 0
            )

    async def ready(self, timeout: float) -> dict[str, Any]:
        """Wait for every bot; times are seconds after the process(es) were spawned."""
        assert self.sandbox is not None and self.proc is not None
        names = [b.name for b in self.bots]
        online = await self.proc.wait_ready(names, timeout)
        tokens = [b.token for b in self.bots]
        gateway = await self.sandbox.call("wait_ready", tokens=tokens, timeout=timeout, rpc_timeout=timeout + 10)
        spawned = self.proc.spawned
        return {
            "gateway_ready_s": max(gateway.values()) - spawned,
            "first_gateway_ready_s": min(gateway.values()) - spawned,
            "online_s": max(online.values()) - spawned,
            "first_online_s": min(online.values()) - spawned,
        }

    async def chat(
        self, messages: list[dict[str, Any]], *, rate: float | None, timeout: float, after_reply: float | None = None
    ) -> dict[str, Any]:
        """Post ``messages`` (see sandbox_proc.Helper.load) and return their timelines."""
        assert self.sandbox is not None
        return await self.sandbox.call(
            "load", messages=messages, rate=rate, timeout=timeout, after_reply=after_reply, rpc_timeout=timeout + 30
        )

    async def set_provider(self, **settings: Any) -> None:
        assert self.sandbox is not None
        await self.sandbox.call("set", **settings)

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the side's process(es)."""
        times = [procfs.cpu_times(pid) for pid in self.pids]
        return sum(t[0] for t in times), sum(t[1] for t in times)


def seed_memory(database: Path, bots: list[BotDef], channel_id: int, user_ids: list[int]) -> None:
    """Give every (bot, user) conversation SEED_EXCHANGES earlier exchanges in the orchestrator's store.

    The texts are those of ``seed_history`` in scripts/baseline_bot.py (kept in step by hand, so that
    this process never imports discord.py), so both sides send the same requests."""
    from orchestrator.memory import SQLiteStore

    SQLiteStore(database).close()  # creates the schema, whatever its current shape
    rows = []
    now = time.time()
    for bot in bots:
        for user in user_ids:
            for i in range(SEED_EXCHANGES):
                question = f"earlier question {i}: what do you think about topic {i}?"
                answer = f"earlier answer {i}: topic {i} is interesting because of {i}."
                rows.append((bot.name, channel_id, user, "user", question, now))
                rows.append((bot.name, channel_id, user, "assistant", answer, now))
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.executemany("INSERT INTO turns (bot, channel, user, role, content, created) VALUES (?, ?, ?, ?, ?, ?)", rows)


# ----------------------------------------------------------------------------- the scenarios


@dataclass
class Bench:
    args: Any
    children: Children
    workdir: Path
    log_dir: Path
    results_dir: Path

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


async def warm_up(world: World, bots: list[BotDef], users: int, first_tag: int) -> None:
    """One answered !chat per bot at zero provider latency: connections and lazy imports are made."""
    messages = chat_messages(bots, len(bots), users, first_tag)
    await world.chat(messages, rate=None, timeout=30 + len(bots) * 0.5)


TOPOLOGIES = {
    "shared": "shared channel: all bots in one channel of one guild, so every bot receives every message and reply "
              "(about 2 x B gateway events per answered !chat)",
    "separate": "own guild each: every bot alone in a guild of its own with its own channel, users post to the "
                "bot's channel (about 2 gateway events per answered !chat)",
}  # fmt: skip


async def median_trial(bench: Bench, key: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run ``run`` ``--trials`` times and keep the median trial by ``key`` (a dotted path into its
    figures), with every trial's value under ``trials``. On a shared VM single runs of the same code
    differ by up to ~45%; the targets are judged on the median of trials in one run."""

    def value(figures: Any) -> Any:
        for part in key.split("."):
            figures = figures.get(part) if isinstance(figures, dict) else None
        return figures

    results = [await run() for _ in range(max(1, bench.args.trials))]
    measured = sorted((r for r in results if value(r) is not None), key=value)
    chosen = measured[len(measured) // 2] if measured else results[-1]  # for an even count the upper middle
    return {**chosen, "trials": {"key": key, "values": [value(r) for r in results]}}


def burst_limits(B: int, K: int) -> dict[str, int]:
    """The orchestrator's limits for a burst of K !chat to B bots, raised so that they allow it."""
    return {"max_concurrency": max(16, K), "concurrency": max(4, math.ceil(K / B)),
            "mailbox_size": max(32, 2 * math.ceil(K / B))}  # fmt: skip


async def concurrency(bench: Bench) -> dict[str, Any]:
    """B bots, K simultaneous !chat, provider latency L; once per topology in --topology.

    "shared" puts all bots in one channel (several bots in one community); "separate" gives each bot
    a guild and channel of its own (one persona per community, the common case). The shared figures
    stay at ``orchestrator`` / ``baseline`` (as before topologies existed), the separate ones are at
    ``separate.orchestrator`` / ``separate.baseline``.

    The target is judged on the first burst after a one-message-per-bot warm-up, so the orchestrator
    opens about 2 x K TCP connections in it (K to the provider, about K to Discord's REST API). It
    then gets the same burst again ("repeat_burst"), with those connections pooled, as in a running
    deployment; the baseline keeps one connection per process either way."""
    args = bench.args
    B, K, L = args.bots, args.messages, args.latency
    users = max(20, math.ceil(K / B))
    bots = make_bots(B)
    topologies = list(getattr(args, "topology", None) or TOPOLOGIES)
    limits = burst_limits(B, K)
    result: dict[str, Any] = {
        "params": {"bots": B, "messages": K, "latency_s": L, "users": users, "orchestrator_limits": limits,
                   "topologies": {name: TOPOLOGIES[name] for name in topologies}},
    }  # fmt: skip
    for topology in topologies:
        figures: dict[str, Any] = {}
        for side in SIDES:
            run = functools.partial(_concurrency_side, bench, topology, side, bots, users, limits)
            figures[side] = await (median_trial(bench, "wall_over_latency", run) if side == "orchestrator" else run())
        o, b = figures["orchestrator"], figures["baseline"]
        figures["baseline_over_orchestrator_wall"] = b["wall_s"] / o["wall_s"] if o["wall_s"] and b["wall_s"] else None
        if topology == "shared":
            result.update(figures)
        else:
            result[topology] = figures
    return result


async def channel_context(bench: Bench) -> dict[str, Any]:
    """The cost of channel context on the gateway path: the shared-channel burst of the concurrency
    scenario (every bot receives every message), orchestrator only, with ``context.channel_messages``
    at each value of ``--channel-messages``, the values alternated trial by trial so that the machine's
    noise falls on each alike. With 0 no persona listens: each bot's gateway filter drops what does
    not concern it; with more, one listener per guild decodes every message and keeps it."""
    args = bench.args
    B, K = args.bots, args.messages
    users = max(20, math.ceil(K / B))
    bots = make_bots(B)
    limits = burst_limits(B, K)
    trials: dict[int, list[dict[str, Any]]] = {n: [] for n in args.channel_messages}
    for _ in range(args.trials):
        for n in args.channel_messages:
            run = await _concurrency_side(bench, "shared", "orchestrator", bots, users, limits, channel_messages=n)
            trials[n].append(run)
    figures: dict[str, Any] = {}
    for n, runs in trials.items():
        cpu = sorted(run["cpu_ms_per_chat"] for run in runs)
        repeat = statistics.median(run["repeat_burst"]["cpu_ms_per_chat"] for run in runs)
        figures[str(n)] = {"cpu_ms_per_chat": cpu[len(cpu) // 2], "cpu_ms_per_chat_trials": cpu,
                           "repeat_cpu_ms_per_chat": repeat, "replies": runs[0]["replies"],
                           "message_events_per_chat": runs[0]["message_events_per_chat"]}  # fmt: skip
    first, last = (figures[str(n)] for n in (args.channel_messages[0], args.channel_messages[-1]))
    return {
        "params": {"bots": B, "messages": K, "latency_s": args.latency, "trials": args.trials, "topology": "shared"},
        "channel_messages": figures,
        "last_over_first_cpu": last["cpu_ms_per_chat"] / first["cpu_ms_per_chat"] if first["cpu_ms_per_chat"] else None,
        "last_over_first_repeat_cpu": (last["repeat_cpu_ms_per_chat"] / first["repeat_cpu_ms_per_chat"]
                                       if first["repeat_cpu_ms_per_chat"] else None),
    }  # fmt: skip


async def _concurrency_side(
    bench: Bench, topology: str, side: str, bots: list[BotDef], users: int, limits: dict[str, int],
    *, channel_messages: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    args = bench.args
    B, K, L = len(bots), args.messages, args.latency
    where = "sharing one channel" if topology == "shared" else "each in its own guild"
    context = "" if channel_messages is None else f", context.channel_messages {channel_messages}"
    bench.say(f"concurrency: {side}, {B} bots {where}, {K} simultaneous !chat, provider latency {L} s{context}")
    label = "concurrency" if topology == "shared" else f"concurrency-{topology}"
    async with World(bench, label, side, bots, users, topology=topology) as world:
        await world.launch(
            provider={"max_concurrency": limits["max_concurrency"], "timeout": 60 + K / B * L},
            defaults={"concurrency": limits["concurrency"], "mailbox_size": limits["mailbox_size"],
                      "user_quota": {"requests_per_minute": 1000},
                      **({} if channel_messages is None else {"context": {"channel_messages": channel_messages}})},
        )  # fmt: skip
        await world.ready(timeout=60 + 2 * B)
        await warm_up(world, bots, users, first_tag=1_000_000)
        await world.set_provider(latency=L)
        messages = chat_messages(bots, K, users)
        profiler = await start_profiler(bench, world, 2 * L + 2, label) if side == "orchestrator" else None
        before = await world.sandbox.call("stats")  # type: ignore[union-attr]
        noise = NoiseMeter(world)
        cpu0 = world.cpu()
        load = await world.chat(messages, rate=None, timeout=30 + 2 * K / B * L)
        cpu1 = world.cpu()
        other_cores = noise.cores()
        if profiler is not None:
            await finish_profiler(bench, profiler)
        stats = await world.sandbox.call("stats")  # type: ignore[union-attr]
        repeat = None
        if side == "orchestrator":  # the same burst again: provider and Discord connections are pooled now
            again = chat_messages(bots, K, users, first_tag=3_000_000)
            cpu2 = world.cpu()
            repeat_load = await world.chat(again, rate=None, timeout=30 + 2 * K / B * L)
            repeat = _burst_figures(repeat_load, again, bots, L, K, cpu2, world.cpu())
    return {
        "topology": topology,
        **_burst_figures(load, messages, bots, L, K, cpu0, cpu1),
        "message_events_per_chat": (stats["message_events"] - before["message_events"]) / K,
        "sandbox_posting_s": load["posting_done"] - load["start"],
        "other_processes_cores_used": other_cores,
        "provider_max_in_flight": stats["provider_max_in_flight"],
        "repeat_burst": repeat,
    }


def _burst_figures(
    load: dict[str, Any], messages: list[Any], bots: list[BotDef], L: float, K: int,
    cpu_before: tuple[float, float], cpu_after: tuple[float, float],
) -> dict[str, Any]:  # fmt: skip
    items = exchanges(load, messages, bots)
    replies = [x.reply for x in items if x.reply is not None]
    wall = max(replies) - min(x.post for x in items) if replies else None
    answered = [x for x in items if x.kind == "answer"]
    provider_in = [x.provider_in for x in answered if x.provider_in is not None]
    return {
        "wall_s": wall,
        "wall_over_latency": wall / L if wall is not None and L else None,
        "answer_latency_ms": summary_ms([x.e2e for x in answered if x.e2e is not None]),
        "inbound_ms": summary_ms([x.inbound for x in answered if x.inbound is not None]),
        "outbound_ms": summary_ms([x.outbound for x in answered if x.outbound is not None]),
        "cpu_ms_per_chat": (sum(cpu_after) - sum(cpu_before)) / K * 1000,
        "sandbox_cpu_ms_per_chat": load["sandbox_cpu"] / K * 1000,
        "provider_requests_spread_s": max(provider_in) - min(provider_in) if provider_in else None,
        "replies": kinds(items),
    }


async def overhead(bench: Bench) -> dict[str, Any]:
    """Zero provider latency, a sustained open-loop message rate; one run per bot count in --overhead-bots.

    With one bot the figures are the cost of the !chat pipeline itself. With B bots in one channel
    every bot also receives (and discord.py parses) every other bot's messages and replies, as on
    Discord: about 2 x B gateway events per answered !chat.

    The capacity run (--capacity-rate, orchestrator only, one bot) offers the rate the CPU target
    names (650 answers per second on one core). At lower rates an idle event loop is woken for each
    event, and in this VM every wake-up costs CPU, so the CPU per answer there is higher."""
    args = bench.args
    result: dict[str, Any] = {
        "params": {
            "bot_counts": args.overhead_bots, "rate_per_s": args.rate, "duration_s": args.duration,
            "warmup_s": args.warmup, "users": args.users, "history_exchanges": SEED_EXCHANGES,
            "provider_latency_s": 0.0,
            "orchestrator": "typing indicator on; memory scope=user, max_turns=20 (10 exchanges), seeded for every "
                            "conversation; quotas per bot and per user configured (not binding); concurrency 8/bot",
        },
        "runs": [],
    }  # fmt: skip
    rates = [args.rate] + ([args.low_rate] if args.low_rate else [])
    result["params"]["rates_per_s"] = rates
    result["params"]["capacity_rate_per_s"] = args.capacity_rate
    for n in args.overhead_bots:
        for rate in rates:
            run: dict[str, Any] = {"bots": n, "rate_per_s": rate, "conversations": n * args.users}
            for side in SIDES:
                measure = functools.partial(_overhead_side, bench, side, n, rate)
                judged = side == "orchestrator" and rate == args.rate  # the added-latency target's rate
                key = "added_latency_inside_ms.total.p99"
                run[side] = await (median_trial(bench, key, measure) if judged else measure())
            result["runs"].append(run)
    if args.capacity_rate:  # the baseline's capacity is clear from the runs above (it falls behind at --rate)
        rate = args.capacity_rate
        run = {"bots": 1, "rate_per_s": rate, "conversations": args.users, "capacity": True}
        run["orchestrator"] = await median_trial(
            bench, "cpu_ms_per_answer", functools.partial(_overhead_side, bench, "orchestrator", 1, rate)
        )
        result["runs"].append(run)
    return result


async def _overhead_side(bench: Bench, side: str, n: int, rate: float) -> dict[str, Any]:
    args = bench.args
    duration, users = args.duration, args.users
    bots = make_bots(n)
    total = max(1, round(rate * duration))
    warm_rate = max(rate, 200.0)  # not measured; the warm-up waits for its last answer anyway
    warm_count = max(n * users, round(rate * args.warmup))  # every conversation's history is loaded once
    warm = f"after {warm_count} warm-up messages" if side == "orchestrator" else "after one warm-up message per bot"
    bench.say(f"overhead: {side}, {n} bot(s), {rate:g} msg/s for {duration:g} s ({warm})")
    async with World(bench, "overhead", side, bots, users) as world:
        await world.launch(
            provider={"max_concurrency": 32},
            defaults={
                "concurrency": 8,
                "mailbox_size": 64,
                "memory": {"scope": "user", "context_tokens": 3000, "max_turns": 2 * SEED_EXCHANGES},
                "quota": {
                    "requests_per_minute": 100_000, "tokens_per_minute": 100_000_000, "tokens_per_day": 1_000_000_000
                },
                "user_quota": {
                    "requests_per_minute": 600, "tokens_per_minute": 10_000_000, "tokens_per_day": 100_000_000
                },
            },
            seed=True,
        )  # fmt: skip
        await world.ready(timeout=60 + 2 * n)
        await warm_up(world, bots, users, first_tag=1_000_000)
        if side == "orchestrator":  # loads every conversation's history from SQLite into its cache
            await world.chat(
                chat_messages(bots, warm_count, users, first_tag=2_000_000),
                rate=warm_rate,
                timeout=60 + warm_count / 20,
            )
        messages = chat_messages(bots, total, users)
        label = f"overhead-{n}bots-{rate:g}per_s"
        profiler = await start_profiler(bench, world, duration, label) if side == "orchestrator" else None
        orchestrator = world.proc if isinstance(world.proc, OrchestratorProc) else None  # it has /metrics
        histogram0 = await orchestrator.added_latency_buckets() if orchestrator else {}
        noise = NoiseMeter(world)
        cpu0 = world.cpu()
        load = await world.chat(messages, rate=rate, timeout=30 + 2 * duration)
        cpu1 = world.cpu()
        other_cores = noise.cores()
        histogram1 = await orchestrator.added_latency_buckets() if orchestrator else {}
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        cpu = user + system
        window = load["end"] - load["start"]
        if profiler is not None:
            await finish_profiler(bench, profiler)
    items = exchanges(load, messages, bots)
    answered = [x for x in items if x.kind == "answer"]
    replies = [x.reply for x in answered if x.reply is not None]
    span = max(replies) - min(x.post for x in items) if replies else None
    per_answer = cpu / len(answered) if answered else None
    inbound = [x.inbound for x in answered if x.inbound is not None]
    outbound = [x.outbound for x in answered if x.outbound is not None]
    added = [x.inbound + x.outbound for x in answered if x.inbound is not None and x.outbound is not None]  # type: ignore[operator]
    return {
        "offered": total,
        "answered": len(answered),
        "replies": kinds(items),
        "throughput_per_s": len(answered) / span if span else None,
        "kept_up": bool(span) and len(answered) == total and span < duration * 1.2 + 1,
        "cpu_s": cpu,
        "processes": len(world.pids),
        "cpu_ms_per_answer": per_answer * 1000 if per_answer else None,
        "cpu_user_ms_per_answer": user / len(answered) * 1000 if answered else None,
        "cpu_system_ms_per_answer": system / len(answered) * 1000 if answered else None,
        "capacity_per_core_per_s": 1 / per_answer if per_answer else None,
        "cpu_cores_used": cpu / span if span else None,
        "added_latency_ms": {
            "total": summary_ms(added),
            "inbound": summary_ms(inbound),
            "outbound": summary_ms(outbound),
        },
        # the same points timed inside the orchestrator (no loopback transits, no sandbox scheduling)
        "added_latency_inside_ms": {
            part: histogram_summary_ms(histogram0.get(part, []), histogram1[part]) for part in histogram1
        }
        or None,
        "answer_latency_ms": summary_ms([x.e2e for x in answered if x.e2e is not None]),
        "sandbox_cores_used": load["sandbox_cpu"] / window,
        "other_processes_cores_used": other_cores,
        "profiled": profiler is not None,
    }


class NoiseMeter:
    """CPU the rest of the machine used during a window: all busy CPU minus ours (side, sandbox, driver)."""

    def __init__(self, world: World) -> None:
        assert world.sandbox is not None
        self.pids = [*world.pids, world.sandbox.pid]
        self.start = (procfs.machine_busy_seconds(), _cpu(self.pids), time.process_time(), time.monotonic())

    def cores(self) -> float:
        machine, ours, driver, t0 = self.start
        foreign = (procfs.machine_busy_seconds() - machine) - (_cpu(self.pids) - ours) - (time.process_time() - driver)
        return max(0.0, foreign / max(1e-9, time.monotonic() - t0))


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += procfs.cpu_seconds(pid)
    return total


async def start_profiler(
    bench: Bench, world: World, duration: float, label: str, settle: float = 0.3
) -> dict[str, Any] | None:
    """With --profile: py-spy (raw collapsed stacks, active samples only) on the orchestrator, or the sandbox
    process with ``--profile sandbox``, for ``duration`` s."""
    if not bench.args.profile:
        return None
    py_spy = str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():  # noqa: ASYNC240 - once, before profiling starts
        py_spy = shutil.which("py-spy") or py_spy
    if not Path(py_spy).exists():  # noqa: ASYNC240 - once, before profiling starts
        bench.say("--profile: py-spy is not installed (pip install py-spy); not profiling")
        return None
    assert world.sandbox is not None
    target = world.sandbox.proc.pid if bench.args.profile == "sandbox" else world.pids[0]
    output = bench.results_dir / f"profile-{label}{'-sandbox' if bench.args.profile == 'sandbox' else ''}.txt"
    proc = await bench.children.spawn(
        py_spy, "record", "--pid", str(target), "--duration", str(math.ceil(duration)), "--rate", "250",
        "--format", "raw", "--nonblocking", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(settle)  # py-spy attaches
    return {"proc": proc, "output": output}


async def finish_profiler(bench: Bench, profiler: dict[str, Any]) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(profiler["proc"].wait(), 30)
    await bench.children.stop(profiler["proc"])
    bench.say(f"profile written to {profiler['output']}")


async def fleet(bench: Bench) -> dict[str, Any]:
    """Scenarios 3 and 4: start N bots (memory, start-up), plus one !chat per bot (latency vs N)."""
    users = 10
    memory_points, startup_points, latency_points = [], [], []
    for n in bench.args.fleet:
        bots = make_bots(n)
        mem: dict[str, Any] = {"bots": n}
        start: dict[str, Any] = {"bots": n}
        lat: dict[str, Any] = {"bots": n}
        for side in SIDES:
            measure = functools.partial(_fleet_side, bench, side, bots, users)
            judged = side == "orchestrator" and n == max(bench.args.fleet)  # the start-up target's N
            figures = await (median_trial(bench, "startup.online_s", measure) if judged else measure())
            start[side], lat[side], mem[side] = figures["startup"], figures["latency"], figures["memory"]
            if "trials" in figures:
                start[side] = {**start[side], "trials": figures["trials"]}
        memory_points.append(mem)
        startup_points.append(start)
        latency_points.append(lat)
    ns = [p["bots"] for p in memory_points]
    memory: dict[str, Any] = {
        "measure": "rss_mib = sum of VmRSS (/proc/PID/status); pss_mib = sum of Pss (/proc/PID/smaps_rollup), "
        "which splits shared pages between the processes that map them",
        "points": memory_points,
    }
    for side in SIDES:
        for kind in ("rss", "pss"):
            ys = [p[side][f"{kind}_mib"] for p in memory_points]
            fit = None if any(y is None for y in ys) else linear_fit(ns, ys)
            memory[f"{side}_{kind}_per_bot_mib"] = fit[0] if fit else None
            memory[f"{side}_{kind}_intercept_mib"] = fit[1] if fit else None
    last = memory_points[-1]
    memory["at_bots"] = last["bots"]
    for kind in ("rss", "pss"):
        o, b = last["orchestrator"][f"{kind}_mib"], last["baseline"][f"{kind}_mib"]
        memory[f"baseline_over_orchestrator_{kind}"] = b / o if o and b else None
    startup = {"points": startup_points, "at_bots": startup_points[-1]["bots"]}
    latency_by_bots = {"provider_latency_s": 0.0, "points": latency_points}
    return {"memory": memory, "startup": startup, "latency_by_bots": latency_by_bots}


async def _fleet_side(bench: Bench, side: str, bots: list[BotDef], users: int) -> dict[str, Any]:
    n = len(bots)
    bench.say(f"memory/start-up: {side}, {n} bots")
    async with World(bench, "fleet", side, bots, users) as world:
        await world.launch()
        profiler = None
        if side == "orchestrator" and n == max(bench.args.fleet):
            profiler = await start_profiler(bench, world, 4.0, f"startup-{n}bots", settle=0.0)
        startup = await world.ready(timeout=60 + (2.0 if side == "baseline" else 0.2) * n)
        if profiler is not None:
            await finish_profiler(bench, profiler)
        await warm_up(world, bots, users, first_tag=1_000_000)
        probe = chat_messages(bots, n, users)
        load = await world.chat(probe, rate=None, timeout=30 + n)
        items = exchanges(load, probe, bots)
        latency = summary_ms([x.e2e for x in items if x.e2e is not None and x.kind == "answer"])
        await asyncio.sleep(0.5)
        return {"startup": startup, "latency": latency, "memory": procfs.memory(world.pids)}


async def fairness(bench: Bench) -> dict[str, Any]:
    args = bench.args
    n = max(2, min(args.bots, args.fairness_bots))
    weights = [1.0, 2.0, 4.0]
    bots = make_bots(n, weights)
    slots, latency = 4, 0.1
    capacity = slots / latency  # answers per second the provider's concurrency allows
    duration = args.fairness_duration
    offered = 2 * capacity
    rate_limit = max(10, int(capacity * duration * 2 / 3))  # binds about two thirds into the flood
    timeout = 3.0 if args.quick else 10.0
    users = 50
    total = round(offered * duration)
    fair = {b.name: b.weight / sum(x.weight for x in bots) for b in bots}
    result: dict[str, Any] = {
        "params": {
            "bots": n, "weights": {b.name: b.weight for b in bots}, "provider_max_concurrency": slots,
            "provider_latency_s": latency, "provider_capacity_per_s": capacity, "offered_per_s": offered,
            "flood_s": duration, "rate_limit_per_minute": rate_limit, "provider_timeout_s": timeout,
        },
    }  # fmt: skip
    for side in SIDES:
        bench.say(f"fairness: {side}, {n} bots weighted {[b.weight for b in bots]}, "
                  f"{offered:g} msg/s for {duration:g} s, provider {slots} slots x {latency} s, "
                  f"limit {rate_limit}/min")  # fmt: skip
        async with World(bench, "fairness", side, bots, users, rate_limit_per_minute=rate_limit) as world:
            await world.launch(
                provider={"max_concurrency": slots, "timeout": timeout, "max_retries": 3},
                defaults={"concurrency": 8, "quota": {"requests_per_minute": 100_000},
                          "user_quota": {"requests_per_minute": 600}},
            )  # fmt: skip
            await world.ready(timeout=60 + 2 * n)
            await world.set_provider(latency=latency)
            messages = chat_messages(bots, total, users)
            drain = timeout + (
                1.0 if args.quick else 5.0
            )  # baseline bots blocked in the SDK's retry sleep never finish
            load = await world.chat(messages, rate=offered, timeout=duration + drain)
            items = exchanges(load, messages, bots)
            admitted: dict[str, int] = {b.name: 0 for b in bots}
            for _tag, bot, status, _a, _b in load["provider"]:
                if status == 200 and bot in admitted:
                    admitted[bot] += 1
            total_admitted = sum(admitted.values())
            shares = []
            for b in bots:
                achieved = admitted[b.name] / total_admitted if total_admitted else 0.0
                shares.append({"bot": b.name, "weight": b.weight, "fair_share": fair[b.name],
                               "achieved_share": achieved, "provider_answers": admitted[b.name]})  # fmt: skip
            # A 429 reached a user when a message's provider attempts include a 429 and no 200 and the
            # user got an error reply (derived from the sandbox's records: no log format involved).
            attempts: dict[int, set[int]] = {}
            for tag, _bot, status, _a, _b in load["provider"]:
                if tag is not None:
                    attempts.setdefault(tag, set()).add(status)
            failed_by_429 = [x for x in items if 429 in attempts.get(x.tag, ()) and 200 not in attempts.get(x.tag, ())]
            from_log = None
            if isinstance(world.proc, OrchestratorProc):
                from_log = sum(count for detail, count in world.proc.provider_errors.items() if "429" in detail)
            result[side] = {
                "shares": shares,
                "jain_index": jain_index([s["achieved_share"] / s["fair_share"] for s in shares]),
                "provider_statuses": provider_statuses(load),
                "user_visible_429": sum(x.kind not in ("answer", "unanswered") for x in failed_by_429),
                "unanswered_after_429": sum(x.kind == "unanswered" for x in failed_by_429),
                "user_visible_429_from_log": from_log,
                "replies": kinds(items),
                "user_facing_provider_errors": (
                    dict(world.proc.provider_errors) if isinstance(world.proc, OrchestratorProc) else None
                ),
            }  # fmt: skip
    return result


SCENARIOS = {
    "concurrency": concurrency,
    "overhead": overhead,
    "fleet": fleet,  # memory + start-up (+ latency by bot count)
    "fairness": fairness,
    "context": channel_context,  # not run by default: --scenarios context --channel-messages 0,20
}
DEFAULT_SCENARIOS = ("concurrency", "overhead", "fleet", "fairness")
