"""Smoke test of the benchmark harness (scripts/bench): tiny sizes, every scenario, sane figures.

It checks the shape and sanity of results/bench.json, never the speed of anything: the figures of
a tiny run on a shared test machine mean little, and the real ones live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--quick", "--bots", "2", "--messages", "10", "--fleet", "1,2", "--rate", "50", "--duration", "1",
    "--warmup", "0.5", "--users", "5", "--fairness-duration", "1.5", "--capacity-rate", "60", "--no-chart",
]  # fmt: skip


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_quick_produces_every_scenario_with_sane_numbers(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), *TINY, "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # a hang guard, not a speed assertion
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "targets" in run.stdout and "orchestrator" in run.stdout
    results = json.loads(output.read_text())
    scenarios = results["scenarios"]
    for name in ("concurrency", "overhead", "memory", "startup", "latency_by_bots", "fairness"):
        assert name in scenarios and "error" not in scenarios[name], (name, scenarios.get(name))

    concurrency = scenarios["concurrency"]
    assert list(concurrency["params"]["topologies"]) == ["shared", "separate"]
    # "shared" stays where it always was; "separate" (each bot in a guild of its own) is beside it.
    for topology, where in (("shared", concurrency), ("separate", concurrency["separate"])):
        for side in ("orchestrator", "baseline"):
            figures = where[side]
            assert figures["topology"] == topology
            assert positive(figures["wall_s"]) and positive(figures["wall_over_latency"])
            assert positive(figures["answer_latency_ms"]["p50"])
            assert figures["answer_latency_ms"]["p99"] >= figures["answer_latency_ms"]["p50"]
            assert figures["replies"].get("answer") == 10, (topology, side, figures["replies"])
            assert positive(figures["cpu_ms_per_chat"])
            assert finite(figures["inbound_ms"]["p99"]) and finite(figures["outbound_ms"]["p99"])
        assert positive(where["baseline_over_orchestrator_wall"])
        repeat = where["orchestrator"]["repeat_burst"]
        assert repeat["replies"].get("answer") == 10 and positive(repeat["wall_over_latency"])
        assert where["baseline"]["repeat_burst"] is None
    # The fan-out: with 2 bots in one channel each bot gets every message and reply; alone, only its own.
    assert (
        concurrency["orchestrator"]["message_events_per_chat"]
        > concurrency["separate"]["orchestrator"]["message_events_per_chat"]
    )
    assert "[shared channel:" in run.stdout and "[own guild each:" in run.stdout

    [run_2_bots, capacity] = scenarios["overhead"]["runs"]
    assert run_2_bots["bots"] == 2 and not run_2_bots.get("capacity")
    assert (
        capacity["capacity"] and capacity["bots"] == 1 and capacity["rate_per_s"] == 60 and "baseline" not in capacity
    )
    assert positive(capacity["orchestrator"]["cpu_ms_per_answer"]) and positive(
        capacity["orchestrator"]["throughput_per_s"]
    )
    for side in ("orchestrator", "baseline"):
        figures = run_2_bots[side]
        assert figures["answered"] > 0 and positive(figures["throughput_per_s"])
        assert positive(figures["cpu_ms_per_answer"]) and positive(figures["capacity_per_core_per_s"])
        for part in ("total", "inbound", "outbound"):
            assert finite(figures["added_latency_ms"][part]["p50"]) and finite(figures["added_latency_ms"][part]["p99"])
    inside = run_2_bots["orchestrator"]["added_latency_inside_ms"]  # from the orchestrator's own histogram
    assert inside["total"]["n"] == run_2_bots["orchestrator"]["answered"]
    assert positive(inside["total"]["p99"]) and inside["total"]["p99"] >= inside["total"]["p50"]
    assert run_2_bots["baseline"]["added_latency_inside_ms"] is None

    memory = scenarios["memory"]
    assert [point["bots"] for point in memory["points"]] == [1, 2]
    for point in memory["points"]:
        assert positive(point["orchestrator"]["rss_mib"]) and positive(point["baseline"]["rss_mib"])
        assert point["baseline"]["processes"] == point["bots"] and point["orchestrator"]["processes"] == 1
    assert finite(memory["orchestrator_rss_per_bot_mib"]) and finite(memory["baseline_rss_per_bot_mib"])
    assert positive(memory["baseline_over_orchestrator_rss"])

    for point in scenarios["startup"]["points"]:
        for side in ("orchestrator", "baseline"):
            assert positive(point[side]["online_s"]) and positive(point[side]["gateway_ready_s"])
            assert point[side]["online_s"] >= point[side]["first_online_s"]
    for point in scenarios["latency_by_bots"]["points"]:
        assert positive(point["orchestrator"]["p50"]) and positive(point["baseline"]["p50"])

    fairness = scenarios["fairness"]
    for side in ("orchestrator", "baseline"):
        figures = fairness[side]
        assert 0 < figures["jain_index"] <= 1 + 1e-9
        assert math.isclose(sum(s["achieved_share"] for s in figures["shares"]), 1.0, rel_tol=1e-6)
        assert isinstance(figures["user_visible_429"], int) and figures["user_visible_429"] >= 0

    targets = results["targets"]
    assert len(targets) >= 7 and all("passed" in target and "limit" in target for target in targets)
    names = [target["target"] for target in targets]
    assert "concurrency wall <= 1.25 x L (2 bots sharing a channel)" in names
    assert "concurrency wall <= 1.25 x L (2 bots, own guild each)" in names
    assert any(target["passed"] is not None for target in targets)


def test_bench_context_compares_channel_context_settings(tmp_path: Path) -> None:
    """``--scenarios context``: the shared-channel burst at each --channel-messages, trial by trial."""
    output = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--scenarios", "context", "--bots", "2",
         "--messages", "10", "--trials", "2", "--channel-messages", "0,20", "--no-chart", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # a hang guard, not a speed assertion
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "channel context, CPU per !chat by context.channel_messages: 0: " in run.stdout
    context = json.loads(output.read_text())["scenarios"]["context"]
    for n in ("0", "20"):
        figures = context["channel_messages"][n]
        assert figures["replies"] == {"answer": 10} and len(figures["cpu_ms_per_chat_trials"]) == 2
        assert finite(figures["cpu_ms_per_chat"]) and finite(figures["repeat_cpu_ms_per_chat"])
    assert finite(context["last_over_first_cpu"]) or context["last_over_first_cpu"] is None


def test_bench_rejects_bad_channel_message_counts() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--scenarios", "context", "--channel-messages", "0,x"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--channel-messages takes comma-separated counts of at least 0, e.g. 0,20" in run.stderr
