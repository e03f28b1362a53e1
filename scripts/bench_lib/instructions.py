"""``scripts/bench --instructions``: the instructions the orchestrator executes per answered ``!chat``.

CPU times on this shared VM move by up to ~45% between runs of the same code; an instruction count
does not. The orchestrator runs under callgrind (:mod:`.callgrind`), the loopback servers in the
sandbox process as usual (not measured). The workload is fixed and closed-loop, so that the count
depends on the code only, not on the machine's speed:

- one bot, CONVERSATIONS conversations, each a user of its own in a channel of its own, memory on
  with ``max_turns`` = 2 x HISTORY_EXCHANGES. The warm-up answers HISTORY_EXCHANGES messages in every
  conversation, so each counted answer sends a full history of exchanges shaped like its own;
- one message every PERIOD s, on the sandbox's clock: long enough for an answer under callgrind
  and the memory's write-behind (50 ms) after it, so the orchestrator works on one message at a
  time (each window checks that every reply came before the next message). A fixed period rather
  than "the next one after the reply" keeps the timer-driven work per answer (timer heap, the
  typing keeper's channels) the same on a fast machine and a slow one: closed-loop runs spread
  over 1.8%. Consecutive messages go to different channels, and a channel comes round again only
  after CONVERSATIONS x PERIOD s (> 1 s), so every answer has exactly one typing POST (at most one
  per channel per second);
- every message text the same length (tags of seven digits); PYTHONHASHSEED=0; the gateway's
  heartbeat interval set beyond the run, so no heartbeat falls into a window.

Two windows of N1 and N2 messages are counted; ``(I(N2) - I(N1)) / (N2 - N1)`` is the figure (the
windows' fixed costs cancel). The per-window figures, the typing POSTs per answer and the
provider requests are kept beside it, so a run whose workload drifted shows it. Each window's
callgrind file stays in the results folder (``callgrind/``) for ``callgrind_annotate``.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .callgrind import Callgrind, per_unit
from .runner import ROOT, Children, make_bots, warm_bytecode_cache
from .scenarios import Bench, World, chat_messages, classify

CONVERSATIONS = 10
HISTORY_EXCHANGES = 10
PERIOD = 0.5  # seconds between counted messages; see the module docstring
IDLE = 1.5  # before each window: every channel's typing state has expired (1 s)
HEARTBEAT_MS = 24 * 3600 * 1000
FIRST_TAGS = {"warm-up": 1_000_000, "small": 2_000_000, "large": 3_000_000}  # seven digits each


def conversation_messages(count: int, first_tag: int) -> list[dict[str, Any]]:
    """``count`` !chat messages, message k in conversation k mod CONVERSATIONS (channel and user k)."""
    messages = chat_messages(make_bots(1), count, CONVERSATIONS, first_tag)
    return [{**message, "channel": message["user"]} for message in messages]


def git_commit() -> str | None:
    """The checkout's commit, with "+changes" when its orchestrator package differs from it."""
    git = ["git", "-C", str(ROOT)]
    run = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "orchestrator"], capture_output=True, text=True)
    return (run.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")) if run.returncode == 0 else None


async def run(args: Any, command: str) -> dict[str, Any]:
    """Count, and return the figures as JSON-able data."""
    small, large = args.instructions_messages
    results_dir = args.output.parent
    results_dir.mkdir(parents=True, exist_ok=True)
    children = Children()
    started = time.monotonic()
    callgrind = Callgrind.find(args.valgrind, results_dir / "callgrind")
    for stale in callgrind.out_dir.glob("orchestrator.*"):
        stale.unlink()
    with tempfile.TemporaryDirectory(prefix="orchestrator-instructions-") as tmp:
        bench = Bench(args, children, Path(tmp), results_dir / "bench-logs", results_dir)
        bench.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            await warm_bytecode_cache(children)
            async with World(bench, "instructions", "orchestrator", make_bots(1), CONVERSATIONS,
                             channels=CONVERSATIONS, heartbeat_interval_ms=HEARTBEAT_MS) as world:  # fmt: skip
                figures = await count(bench, world, callgrind, small, large, idle=args.instructions_idle)
        finally:
            await children.stop_all()
    return {
        "meta": {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "commit": git_commit(),
            "valgrind": callgrind.version(),
            "callgrind_files": str(callgrind.out_dir),
            "elapsed_s": time.monotonic() - started,
            "workload": {
                "bots": 1, "conversations": CONVERSATIONS, "history_exchanges": HISTORY_EXCHANGES,
                "seconds_between_messages": PERIOD, "idle_before_window_s": IDLE, "windows": [small, large],
            },
        },
        **figures,
    }  # fmt: skip


async def count(
    bench: Bench,
    world: World,
    callgrind: Callgrind,
    small: int,
    large: int,
    env: dict[str, str] | None = None,
    sections: dict[str, Any] | None = None,
    idle: float = 0.0,
) -> dict[str, Any]:
    """Launch the orchestrator of ``world`` under callgrind (``env`` and ``sections`` as in
    :meth:`World.launch`), warm it up, count the two windows; the figure and the windows. With
    ``idle`` > 0, a third window of ``idle`` seconds without messages counts the work done per unit
    of time (timers, a fleet node's rounds), which the figure charges to the answers at PERIOD each:
    ``idle_per_s`` and ``marginal_per_answer`` (the figure without it) are added."""
    await world.launch(
        provider={"max_concurrency": 4},
        defaults={
            "memory": {"scope": "user", "context_tokens": 3000, "max_turns": 2 * HISTORY_EXCHANGES},
            "quota": {"requests_per_minute": 10**5, "tokens_per_minute": 10**8, "tokens_per_day": 10**9},
            "user_quota": {"requests_per_minute": 600, "tokens_per_minute": 10**7, "tokens_per_day": 10**8},
        },
        wrapper=callgrind.command("orchestrator"),
        env={"PYTHONHASHSEED": "0", **(env or {})},
        sections=sections,
    )  # fmt: skip
    bench.say("instructions: the orchestrator is starting under callgrind (uninstrumented until counting)")
    await world.ready(timeout=300)
    warm = conversation_messages(HISTORY_EXCHANGES * CONVERSATIONS, FIRST_TAGS["warm-up"])
    bench.say(f"instructions: warm-up, {len(warm)} messages ({HISTORY_EXCHANGES} exchanges in every conversation)")
    await world.chat(warm, rate=None, timeout=120 + 10 * len(warm), after_reply=0.0)
    pid = world.pids[0]
    await asyncio.to_thread(callgrind.start, pid)
    await asyncio.to_thread(callgrind.lap, pid, "start")
    windows: dict[str, Any] = {}
    for label, count in (("small", small), ("large", large)):
        messages = conversation_messages(count, FIRST_TAGS[label])
        bench.say(f"instructions: counting {count} messages, one every {PERIOD} s")
        stats0 = await world.sandbox.call("stats")  # type: ignore[union-attr]
        await asyncio.sleep(IDLE)
        load = await world.chat(messages, rate=1 / PERIOD, timeout=120 + 10 * count)
        await asyncio.sleep(PERIOD)  # the last answer's period, its write-behind included
        await asyncio.to_thread(callgrind.lap, pid, label)
        counted = callgrind.read(pid, label)
        stats1 = await world.sandbox.call("stats")  # type: ignore[union-attr]
        records = load["messages"]
        answered = sum(classify(record["text"]) == "answer" for record in records)
        if answered != count:
            raise RuntimeError(f"{count - answered} of {count} counted messages got no answer; see the logs")
        overlapping = sum(this["reply"] > after["post"] for this, after in itertools.pairwise(records))
        windows[label] = {
            "messages": count,
            "instructions": counted,
            "instructions_per_answer": counted / count,
            "typing_posts_per_answer": (stats1["typing"] - stats0["typing"]) / count,
            "provider_requests_per_answer": (
                sum(stats1["provider_statuses"].values()) - sum(stats0["provider_statuses"].values())
            )
            / count,
            "answers_overlapping_the_next_message": overlapping,  # 0, or the machine is too slow for PERIOD
            "wall_s": load["end"] - load["start"],
        }
    figure = per_unit((small, windows["small"]["instructions"]), (large, windows["large"]["instructions"]))
    figures: dict[str, Any] = {"instructions_per_answer": figure, "windows": windows}
    if idle > 0:
        bench.say(f"instructions: counting {idle:g} s without messages")
        await asyncio.sleep(idle)
        await asyncio.to_thread(callgrind.lap, pid, "idle")
        idle_per_s = callgrind.read(pid, "idle") / idle
        figures |= {"idle_s": idle, "idle_per_s": idle_per_s, "marginal_per_answer": figure - idle_per_s * PERIOD}
    await asyncio.to_thread(callgrind.stop, pid)
    return figures


def table(results: dict[str, Any]) -> str:
    """The figure and its windows, for stdout."""
    meta, windows = results["meta"], results["windows"]
    lines = [
        f"Instructions per answered !chat (callgrind, commit {meta['commit']}): "
        f"{results['instructions_per_answer'] / 1e6:.3f} M",
        f"  = (I(N2) - I(N1)) / (N2 - N1) over windows of {windows['small']['messages']} and "
        f"{windows['large']['messages']} messages, one every {meta['workload']['seconds_between_messages']} s",
    ]
    for label in ("small", "large"):
        window = windows[label]
        lines.append(
            f"  {window['messages']:>5} messages: {window['instructions'] / 1e6:,.1f} M instructions "
            f"({window['instructions_per_answer'] / 1e6:.3f} M per answer), typing POSTs per answer "
            f"{window['typing_posts_per_answer']:.2f}, provider requests per answer "
            f"{window['provider_requests_per_answer']:.2f}, {window['wall_s']:.1f} s"
        )
        if window["answers_overlapping_the_next_message"]:
            lines.append(
                f"  WARNING: {window['answers_overlapping_the_next_message']} answers were still in progress when the "
                f"next message came ({PERIOD} s apart): this machine is too slow for the fixed workload"
            )
    if "idle_per_s" in results:
        lines.append(
            f"  {results['idle_s']:g} s without messages: {results['idle_per_s'] / 1e6:.3f} M instructions per second; "
            f"per answer without that work: {results['marginal_per_answer'] / 1e6:.3f} M"
        )
    return "\n".join(lines)
