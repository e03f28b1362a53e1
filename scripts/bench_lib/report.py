"""The project's targets, the table printed on stdout, and the PNG chart.

The concurrency scenario is reported once per topology it measured: "shared channel" (all bots in
one channel; its figures are at ``scenarios.concurrency.{orchestrator,baseline}``) and "own guild
each" (``scenarios.concurrency.separate.{orchestrator,baseline}``), each with its own target line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _get(data: dict[str, Any], *path: str | int) -> Any:
    for key in path:
        if data is None:
            return None
        try:
            data = data[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return data


TOPOLOGY_LABELS = {"shared": "shared channel", "separate": "own guild each"}


def concurrency_runs(s: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(topology, figures) for each topology the concurrency scenario measured, shared first."""
    c = s.get("concurrency")
    if not isinstance(c, dict):
        return []
    found = [("shared", c), ("separate", c.get("separate"))]
    return [(name, figures) for name, figures in found if isinstance(figures, dict) and "orchestrator" in figures]


def _ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def targets(results: dict[str, Any], args: Any) -> list[dict[str, Any]]:
    """Each target with the measured value, pass/fail, and a note when the run's sizes differ from the target's."""
    s = results.get("scenarios", {})
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: float, kind: str, unit: str, note: str = "", trials: Any = None) -> None:
        passed = None if not _ok(value) else value <= limit if kind == "max" else value >= limit
        values = _get(trials, "values") or []
        if len(values) > 1:  # see scenarios.median_trial
            spread = f"median of {len(values)} trials: {' / '.join(_fmt(v) for v in values)}"
            note = f"{note}; {spread}" if note else spread
        out.append({"target": name, "value": value, "limit": limit, "kind": kind, "unit": unit,
                    "passed": passed, "note": note})  # fmt: skip

    L = _get(s, "concurrency", "params", "latency_s")
    at_target_sizes = (_get(s, "concurrency", "params", "messages"), L) == (200, 1.0)
    sizes = "" if at_target_sizes else "sizes differ from the target's (200 msgs, L=1 s)"
    B = _get(s, "concurrency", "params", "bots")
    where = {"shared": f"{B} bots sharing a channel", "separate": f"{B} bots, own guild each"}
    for topology, figures in concurrency_runs(s) or [("", {})]:
        name = f"concurrency wall <= 1.25 x L ({where[topology]})" if topology else "concurrency wall <= 1.25 x L"
        add(
            name,
            _get(figures, "orchestrator", "wall_over_latency"),
            1.25,
            "max",
            "x L",
            sizes,
            _get(figures, "orchestrator", "trials"),
        )
    rate = _get(s, "overhead", "params", "rate_per_s")
    runs = _get(s, "overhead", "runs") or []
    capacity = [run for run in runs if run.get("capacity")]
    for run in capacity:  # the CPU target names its rate: 650 answers per second on one core
        offered = run["rate_per_s"]
        add(
            f"CPU per answered !chat <= 1.5 ms (1 bot, {offered:g} msg/s)",
            _get(run, "orchestrator", "cpu_ms_per_answer"),
            1.5,
            "max",
            "ms",
            "" if offered >= 650 else "offered below the target's 650 answers/s",
            _get(run, "orchestrator", "trials"),
        )
        add(
            f"answers/s at {offered:g} msg/s offered >= 650",
            _get(run, "orchestrator", "throughput_per_s"),
            650 * 0.98,
            "min",
            "/s",
            "within 2% of 650: the open-loop sender's own jitter",
        )
    for run in runs:
        if run.get("capacity") or run.get("rate_per_s", rate) != rate:
            continue  # the low-rate runs are for information; the latency targets are judged at --rate
        n = run["bots"]
        where = "1 bot" if n == 1 else f"{n} bots sharing a channel"
        if not capacity:
            add(
                f"CPU per answered !chat <= 1.5 ms ({where})",
                _get(run, "orchestrator", "cpu_ms_per_answer"),
                1.5,
                "max",
                "ms",
                f"measured at {rate:g} msg/s, not at the target's 650",
            )
        at_rate = "" if rate == 200 else f"measured at {rate:g} msg/s, target is at 200 msg/s"
        add(
            f"orchestrator-added latency p99 <= 5 ms ({where})",
            _get(run, "orchestrator", "added_latency_inside_ms", "total", "p99"),
            5.0,
            "max",
            "ms",
            f"timed inside the orchestrator{'; ' + at_rate if at_rate else ''}",
            _get(run, "orchestrator", "trials"),
        )
        add(
            f"  the same, as the sandbox sees it ({where})",
            _get(run, "orchestrator", "added_latency_ms", "total", "p99"),
            5.0,
            "max",
            "ms",
            "adds 4 loopback transits and the sandbox's own scheduling",
        )
    at = _get(s, "memory", "at_bots")
    add("RSS per additional bot <= 0.5 MiB", _get(s, "memory", "orchestrator_rss_per_bot_mib"), 0.5, "max", "MiB")
    add(
        "total RSS >= 50x less than N baseline processes",
        _get(s, "memory", "baseline_over_orchestrator_rss"),
        50.0,
        "min",
        "x",
        "" if at == 100 else f"measured at N={at}, target is at N=100",
    )
    points = _get(s, "startup", "points") or []
    startup_at = _get(s, "startup", "at_bots")
    add(
        "100 bots ready <= 2 s",
        _get(points[-1], "orchestrator", "online_s") if points else None,
        2.0,
        "max",
        "s",
        "" if startup_at == 100 else f"measured with N={startup_at}, target is N=100",
        _get(points[-1], "orchestrator", "trials") if points else None,
    )
    add("429s that reached a user = 0", _get(s, "fairness", "orchestrator", "user_visible_429"), 0, "max", "")
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def rows(results: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(scenario, metric, orchestrator, baseline) rows for the side-by-side table."""
    s = results.get("scenarios", {})
    r: list[tuple[str, str, Any, Any]] = []

    def both(scenario: str, metric: str, *path: str) -> None:
        r.append((scenario, metric, _get(s, scenario, "orchestrator", *path), _get(s, scenario, "baseline", *path)))

    for topology, figures in concurrency_runs(s):
        p = s["concurrency"].get("params", {})
        label = f"{p.get('bots')} bots, {p.get('messages')} msgs, L={p.get('latency_s')} s"

        def side(metric: str, *path: str, figures: Any = figures) -> None:
            r.append(("concurrency", metric, _get(figures, "orchestrator", *path), _get(figures, "baseline", *path)))

        side(f"[{TOPOLOGY_LABELS[topology]}: {label}] wall s", "wall_s")
        side("  wall / L", "wall_over_latency")
        side("  answer latency p50 ms", "answer_latency_ms", "p50")
        side("  answer latency p99 ms", "answer_latency_ms", "p99")
        side("    inbound p99 ms (msg -> provider)", "inbound_ms", "p99")
        side("    outbound p99 ms (provider -> send)", "outbound_ms", "p99")
        side("  CPU ms per !chat (all bots' processes)", "cpu_ms_per_chat")
        side("  gateway MESSAGE_CREATEs per !chat", "message_events_per_chat")
        side("  sandbox time to post the burst s", "sandbox_posting_s")
        side("  other processes' cores used (noise)", "other_processes_cores_used")
        side("  repeat burst, connections pooled: wall / L", "repeat_burst", "wall_over_latency")
        side("    its CPU ms per !chat", "repeat_burst", "cpu_ms_per_chat")
    if "overhead" in s:
        p = s["overhead"].get("params", {})
        for run in s["overhead"].get("runs") or []:

            def pair(metric: str, *path: str, run: Any = run) -> None:
                r.append(("overhead", metric, _get(run, "orchestrator", *path), _get(run, "baseline", *path)))

            run_rate = run.get("rate_per_s", p.get("rate_per_s"))
            kind = "capacity run: " if run.get("capacity") else ""
            pair(f"[{kind}{run['bots']} bot(s), {run_rate:g} msg/s x {p.get('duration_s'):g} s] answered", "answered")
            pair("  throughput answers/s", "throughput_per_s")
            pair("  CPU ms per answered !chat", "cpu_ms_per_answer")
            pair("    of which user / system (kernel)", "cpu_user_ms_per_answer")
            cpu = ("cpu_user_ms_per_answer",), ("cpu_system_ms_per_answer",)
            r[-1] = (r[-1][0], r[-1][1], _two(run, "orchestrator", *cpu), _two(run, "baseline", *cpu))
            pair("  => answers/s per core", "capacity_per_core_per_s")
            pair("  added latency p50 ms (as the sandbox sees it)", "added_latency_ms", "total", "p50")
            pair("  added latency p99 ms (as the sandbox sees it)", "added_latency_ms", "total", "p99")
            pair("    inbound p99 ms (msg -> provider)", "added_latency_ms", "inbound", "p99")
            pair("    outbound p99 ms (provider -> send)", "added_latency_ms", "outbound", "p99")
            pair("  added latency p50 ms, timed inside", "added_latency_inside_ms", "total", "p50")
            pair("  added latency p99 ms, timed inside", "added_latency_inside_ms", "total", "p99")
            pair("    inbound / outbound p99 ms, inside", "added_latency_inside_ms", "inbound", "p99")
            inside = ("added_latency_inside_ms", "inbound", "p99"), ("added_latency_inside_ms", "outbound", "p99")
            r[-1] = (r[-1][0], r[-1][1], _two(run, "orchestrator", *inside), None)
            pair("  sandbox cores used", "sandbox_cores_used")
            pair("  other processes' cores used (noise)", "other_processes_cores_used")

    def sides(group: str, metric: str, point: Any, key: str) -> None:  # the orchestrator's figure and the baseline's
        r.append((group, metric, _get(point, "orchestrator", key), _get(point, "baseline", key)))

    for point in _get(s, "memory", "points") or []:
        sides("memory", f"RSS MiB, {point['bots']} bots", point, "rss_mib")
        sides("memory", f"PSS MiB, {point['bots']} bots", point, "pss_mib")
    if "memory" in s:
        m = s["memory"]
        for kind in ("rss", "pss"):
            r.append(
                (
                    "memory",
                    f"{kind.upper()} MiB per additional bot",
                    m.get(f"orchestrator_{kind}_per_bot_mib"),
                    m.get(f"baseline_{kind}_per_bot_mib"),
                )
            )
        for kind in ("rss", "pss"):
            r.append(
                (
                    "memory",
                    f"baseline/orchestrator {kind.upper()} at {m.get('at_bots')}",
                    m.get(f"baseline_over_orchestrator_{kind}"),
                    None,
                )
            )
    for point in _get(s, "startup", "points") or []:
        sides("start-up", f"{point['bots']} bots online s (on_ready)", point, "online_s")
        sides("start-up", f"{point['bots']} bots gateway READY s", point, "gateway_ready_s")
    for point in _get(s, "latency_by_bots", "points") or []:
        sides("latency", f"1 !chat/bot at once, {point['bots']} bots, p99 ms", point, "p99")
    if "fairness" in s:
        both("fairness", "Jain index (share / weighted fair share)", "jain_index")
        for i, share in enumerate(_get(s, "fairness", "orchestrator", "shares") or []):
            baseline_share = _get(s, "fairness", "baseline", "shares", i, "achieved_share")
            r.append(("fairness", f"{share['bot']} (w={share['weight']:g}) share, fair {share['fair_share']:.2f}",
                      share["achieved_share"], baseline_share))  # fmt: skip
        both("fairness", "provider 429 responses", "provider_statuses", "429")
        both("fairness", "429s that reached a user", "user_visible_429")
        both("fairness", "  unanswered after a 429", "unanswered_after_429")
        both("fairness", "'provider busy' replies (all causes)", "replies", "provider_busy")
        both("fairness", "'bot busy' replies (mailbox full)", "replies", "bot_busy")
        both("fairness", "answered", "replies", "answer")
        both("fairness", "unanswered at the end", "replies", "unanswered")
    return r


def _two(run: dict[str, Any], side: str, first: tuple[str, ...], second: tuple[str, ...]) -> str | None:
    """Two figures of one side in one cell: "a / b"."""
    a, b = _get(run, side, *first), _get(run, side, *second)
    return None if a is None or b is None else f"{_fmt(a)} / {_fmt(b)}"


def table(results: dict[str, Any], goal: list[dict[str, Any]]) -> str:
    lines = []
    data = rows(results)
    w = max([len(m) for _, m, _, _ in data] + [10])
    lines.append(f"{'scenario':<12} {'metric':<{w}} {'orchestrator':>13} {'baseline':>13}")
    lines.append("-" * (12 + w + 30))
    for scenario, metric, orch, base in data:
        lines.append(f"{scenario:<12} {metric:<{w}} {_fmt(orch):>13} {_fmt(base):>13}")
    lines.append("")
    lines.append("targets")
    lines.append("-" * (12 + w + 30))
    for t in goal:
        mark = {True: "PASS", False: "FAIL", None: "n/a"}[t["passed"]]
        sign = "<=" if t["kind"] == "max" else ">="
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(
            f"{mark:<5} {t['target']:<50} measured {_fmt(t['value'])} {t['unit']} ({sign} {t['limit']:g}){note}"
        )
    context = results.get("scenarios", {}).get("context")
    if isinstance(context, dict) and "channel_messages" in context:
        per = ", ".join(f"{n}: {f['cpu_ms_per_chat']:.2f} ms (repeat {f['repeat_cpu_ms_per_chat']:.2f})"
                        for n, f in context["channel_messages"].items())  # fmt: skip
        lines.append(
            f"channel context, CPU per !chat by context.channel_messages: {per}; last / first "
            f"{_fmt(context['last_over_first_cpu'])} (repeat {_fmt(context['last_over_first_repeat_cpu'])})"
        )
    for name, scenario in results.get("scenarios", {}).items():
        if isinstance(scenario, dict) and "error" in scenario:
            lines.append(f"ERROR in {name}: {scenario['error']}")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> str:
    """Write the PNG chart; returns a message (the path, or why there is no chart)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib)"
    s = results.get("scenarios", {})
    memory = _get(s, "memory", "points") or []
    startup = _get(s, "startup", "points") or []
    latency = _get(s, "latency_by_bots", "points") or []
    if not memory and not startup and not latency:
        return "no chart: the memory/start-up scenario did not run"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"orchestrator": ("tab:blue", "o"), "baseline": ("tab:red", "s")}

    def plot(ax: Any, points: list[dict[str, Any]], key: str | None, label: str) -> None:
        for side, (color, marker) in styles.items():
            xs = [p["bots"] for p in points if _ok(_get(p, side, key) if key else None)]
            ys = [_get(p, side, key) for p in points if _ok(_get(p, side, key) if key else None)]
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, label=f"{side} {label}".strip())

    ax = axes[0]
    plot(ax, memory, "rss_mib", "RSS")
    for side, (color, _marker) in styles.items():
        xs = [p["bots"] for p in memory if _ok(_get(p, side, "pss_mib"))]
        ys = [_get(p, side, "pss_mib") for p in memory if _ok(_get(p, side, "pss_mib"))]
        if xs:
            ax.plot(xs, ys, color=color, linestyle="--", marker="x", label=f"{side} PSS")
    ax.set_yscale("log")
    ax.set_title("total memory (MiB, log scale)")
    ax.set_xlabel("bots")
    ax.legend()
    ax = axes[1]
    plot(ax, startup, "online_s", "")
    ax.set_yscale("log")
    ax.set_title("start-up: all bots ready (s, log scale)")
    ax.set_xlabel("bots")
    ax.legend()
    ax = axes[2]
    for side, (color, marker) in styles.items():
        for q, style in (("p50", "-"), ("p99", ":")):
            xs = [p["bots"] for p in latency if _ok(_get(p, side, q))]
            ys = [_get(p, side, q) for p in latency if _ok(_get(p, side, q))]
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, linestyle=style, label=f"{side} {q}")
    ax.set_yscale("log")
    ax.set_title("answer latency, one !chat per bot at once (ms)")
    ax.set_xlabel("bots")
    ax.legend()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle("persona-bot orchestrator vs one baseline process per bot (loopback sandbox)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"
