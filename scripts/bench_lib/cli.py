"""``scripts/bench``: argument parsing, running the selected scenarios, the results file."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from . import instructions, procfs, report
from .callgrind import CallgrindMissing
from .runner import GUILD_READY_TIMEOUT, PYCACHE, ROOT, Children, guild_ready_timeout_in_config, warm_bytecode_cache
from .scenarios import DEFAULT_SCENARIOS, SCENARIOS, TOPOLOGIES, Bench

FULL = {"messages": 200, "latency": 1.0, "duration": 10.0, "warmup": 5.0, "users": 100, "fleet": "10,50,100",
        "rate": 200.0, "overhead_bots": "1,{bots}", "low_rate": 50.0, "capacity_rate": 650.0,
        "fairness_duration": 20.0, "trials": 3}  # fmt: skip
QUICK = {"messages": 50, "latency": 0.25, "duration": 2.0, "warmup": 1.0, "users": 20, "fleet": "2,6", "rate": 100.0,
         "overhead_bots": "{bots}", "low_rate": 0.0, "capacity_rate": 650.0,
         "fairness_duration": 2.0, "trials": 1}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="One orchestrator process versus one baseline script per bot, side by side, on the loopback "
        "Discord and OpenAI sandboxes. Full mode takes about 5-10 minutes; --quick under a minute.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute in all")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (fleet = memory + start-up; "
                        "context, not run by default: the shared-channel burst at each --channel-messages) "
                        f"(default {','.join(DEFAULT_SCENARIOS)})")  # fmt: skip
    parser.add_argument("--channel-messages", default="0,20", metavar="N,M",
                        help="the context scenario: context.channel_messages values compared, alternated trial by "
                        "trial (0,20: no listener versus the default)")  # fmt: skip
    parser.add_argument("--bots", type=int, default=10, help="bots in the concurrency/overhead scenarios (10)")
    parser.add_argument("--messages", type=int, help="simultaneous !chat in the concurrency scenario (200; quick 50)")
    parser.add_argument("--latency", type=float, help="provider latency in the concurrency scenario, s (1; quick 0.25)")
    parser.add_argument("--topology", default=",".join(TOPOLOGIES),
                        help="where the concurrency scenario's bots live, a comma-separated subset of: "
                        "shared (all in one channel, every bot receives every message), "
                        "separate (each bot in a guild of its own) "
                        f"(default {','.join(TOPOLOGIES)}: both, side by side)")  # fmt: skip
    parser.add_argument("--rate", type=float, help="messages per second in the overhead scenario (200; quick 100)")
    parser.add_argument(
        "--low-rate", type=float, help="a second, sustainable rate for the overhead scenario (50; quick 0 = off)"
    )
    parser.add_argument("--capacity-rate", type=float,
                        help="the capacity run: one bot, orchestrator only, at this rate; "
                        "the CPU target is judged there "
                        "(650, the target's answers per second on one core; 0 = off)")  # fmt: skip
    parser.add_argument("--duration", type=float, help="measured seconds in the overhead scenario (10; quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before it (5; quick 1)")
    parser.add_argument(
        "--users", type=int, help="users (conversations per bot) in the overhead scenario (100; quick 20)"
    )
    parser.add_argument("--overhead-bots", help="bot counts for the overhead scenario (1,BOTS; quick BOTS)")
    parser.add_argument("--fleet", help="bot counts for memory and start-up (10,50,100; quick 2,6)")
    parser.add_argument("--fairness-bots", type=int, default=3, help="bots in the fairness scenario, weights 1,2,4 (3)")
    parser.add_argument("--fairness-duration", type=float, help="flood seconds in the fairness scenario (20; quick 2)")
    parser.add_argument("--trials", type=int,
                        help="how often the orchestrator's judged runs are repeated; the median trial is kept "
                             "(concurrency bursts, the runs at --rate, the capacity run, start-up at the largest "
                             "fleet) (3; quick 1)")  # fmt: skip
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead of the scenarios: count the orchestrator's instructions per answered !chat under "
        "valgrind's callgrind, for a fixed workload (results/bench_instructions.json)",
    )
    parser.add_argument(
        "--instructions-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --instructions: also count a window of SECONDS without messages, to tell the "
        "work done per second from the work per answer (default 0: none)",
    )
    parser.add_argument(
        "--instructions-messages",
        default="50,250",
        metavar="N1,N2",
        help="--instructions: messages in the two counted windows; the figure is (I(N2) - I(N1)) / (N2 - N1) (50,250)",
    )
    parser.add_argument("--valgrind", default="valgrind", help="--instructions: the valgrind executable (valgrind)")
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON results file (results/bench.json; with --instructions results/bench_instructions.json)",
    )
    parser.add_argument("--chart", type=Path, help="PNG chart (default: beside --output)")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--profile", nargs="?", const="orchestrator", choices=("orchestrator", "sandbox"),
                        help="py-spy the orchestrator (or, with --profile sandbox, the sandbox process) during each "
                             "measured window (raw stacks into the results folder)")  # fmt: skip
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.fleet = sorted({int(n) for n in str(args.fleet).split(",") if n.strip()})
        spec = str(args.overhead_bots).replace("{bots}", str(args.bots))
        args.overhead_bots = sorted({int(n) for n in spec.split(",") if n.strip()})
    except ValueError:
        parser.error("--fleet and --overhead-bots take comma-separated integers, e.g. 10,50,100")
    if args.output is None:
        args.output = ROOT / "results" / ("bench_instructions.json" if args.instructions else "bench.json")
    try:
        args.instructions_messages = [int(n) for n in args.instructions_messages.split(",")]
    except ValueError:
        args.instructions_messages = []
    counts = args.instructions_messages
    if len(counts) != 2 or not 0 < counts[0] < counts[1]:
        parser.error("--instructions-messages takes two message counts N1,N2 with 0 < N1 < N2, e.g. 50,250")
    try:
        args.channel_messages = [int(n) for n in args.channel_messages.split(",") if n.strip()]
    except ValueError:
        args.channel_messages = []
    if not args.channel_messages or min(args.channel_messages) < 0:
        parser.error("--channel-messages takes comma-separated counts of at least 0, e.g. 0,20")
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    chosen = {name.strip() for name in args.topology.split(",") if name.strip()}
    if not chosen or chosen - set(TOPOLOGIES):
        parser.error(f"--topology takes a comma-separated subset of {','.join(TOPOLOGIES)}, got {args.topology!r}")
    args.topology = [name for name in TOPOLOGIES if name in chosen]  # always shared first, then separate
    if args.bots < 1 or args.messages < 1 or min(args.fleet, default=0) < 1 or min(args.overhead_bots, default=0) < 1:
        parser.error("--bots, --messages, --fleet and --overhead-bots sizes must be at least 1")
    if args.rate <= 0 or args.duration <= 0 or min(args.latency, args.low_rate, args.capacity_rate) < 0:
        parser.error("--rate and --duration must be positive, --latency, --low-rate and --capacity-rate not negative")
    args.chart = args.chart or args.output.with_suffix(".png")
    for parent in (args.output.parent, *args.output.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                parser.error(f"--output: {parent} exists and is not a directory")
            break
    return args


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "discord.py": version("discord.py"),
        "openai": version("openai"),
        "aiohttp": version("aiohttp"),
    }


async def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    children = Children()
    atexit.register(children.kill_all_now)
    results_dir = args.output.parent
    results_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "command": "scripts/bench " + shlex.join(argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "quick": args.quick,
            "machine": machine(),
            "guild_ready_timeout_s": GUILD_READY_TIMEOUT,
            "orchestrator_guild_ready_timeout_from": "bots.yaml discord.guild_ready_timeout"
            if guild_ready_timeout_in_config()
            else "not settable for `orchestrator run` (ORCHESTRATOR_GUILD_READY_TIMEOUT set, maybe ignored)",
            "logs": str(results_dir / "bench-logs"),
            "bytecode_cache": f"children run with PYTHONPYCACHEPREFIX={PYCACHE}, warmed before the scenarios",
        },
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        bench = Bench(args, children, Path(tmp), results_dir / "bench-logs", results_dir)
        bench.log_dir.mkdir(parents=True, exist_ok=True)
        for stale in bench.log_dir.glob("*.log"):
            stale.unlink()
        try:
            await warm_bytecode_cache(children)
            for name in args.scenarios:
                t0 = time.monotonic()
                load_before = procfs.loadavg()
                try:
                    produced = await SCENARIOS[name](bench)
                except Exception as exc:  # noqa: BLE001 - report and go on with the next scenario
                    traceback.print_exc()
                    produced = {name: {"error": f"{type(exc).__name__}: {exc}"}}
                    if name == "fleet":
                        produced = {key: {"error": f"{type(exc).__name__}: {exc}"} for key in ("memory", "startup")}
                else:
                    if name != "fleet":
                        produced = {name: produced}
                for value in produced.values():
                    if isinstance(value, dict):
                        value["elapsed_s"] = time.monotonic() - t0
                        value["load_average_1min"] = {"before": load_before, "after": procfs.loadavg()}
                results["scenarios"].update(produced)
                await children.stop_all()
        finally:
            await children.stop_all()
    results["meta"]["elapsed_s"] = time.monotonic() - started
    results["targets"] = report.targets(results, args)
    return results


def _clean(value: Any) -> Any:
    """JSON without NaN/Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _child_watcher() -> None:
    """Python 3.11's default watcher runs one waitpid thread per child; pidfds need none (3.12+ use them)."""
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        with contextlib.suppress(OSError, AttributeError):
            watcher = asyncio.PidfdChildWatcher()
            asyncio.set_child_watcher(watcher)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    _child_watcher()
    if args.instructions:
        return count_instructions(args, argv)
    results = asyncio.run(run(args, argv))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_clean(results), indent=2) + "\n", encoding="utf-8")
    print()
    print(report.table(results, results["targets"]))
    print()
    print(f"raw figures: {args.output}")
    if not args.no_chart:
        print(report.chart(results, args.chart))
    print(f"logs: {results['meta']['logs']}   ({results['meta']['elapsed_s']:.0f} s in all)")
    failed = any(isinstance(v, dict) and "error" in v for v in results["scenarios"].values())
    return 1 if failed else 0


def count_instructions(args: argparse.Namespace, argv: list[str]) -> int:
    """``--instructions``: count, print the figure, write the results file."""
    try:
        results = asyncio.run(instructions.run(args, "scripts/bench " + shlex.join(argv)))
    except CallgrindMissing as exc:
        print(f"scripts/bench --instructions: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_clean(results), indent=2) + "\n", encoding="utf-8")
    print()
    print(instructions.table(results))
    print(f"raw figures: {args.output}")
    return 0
