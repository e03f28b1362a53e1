"""scripts/bench_stream and scripts/bench_pool run on tiny sizes and write sane figures (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stream_benchmark_produces_its_figures(tmp_path: Path) -> None:
    output = tmp_path / "bench_stream.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_stream"),
            "--first-token",
            "0.05",
            "--tokens-per-second",
            "400",
            "--words",
            "20",
            "--runs",
            "2",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    for mode in ("plain", "stream"):
        for value in figures[mode].values():
            assert math.isfinite(value) and value > 0
    assert figures["first_words_speedup"] > 0
    assert "streaming shows the first words" in result.stdout


def test_pool_benchmark_produces_its_figures(tmp_path: Path) -> None:
    output = tmp_path / "bench_pool.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_pool"), "--requests", "20", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    for path in ("sdk", "post", "transport", "pool"):
        assert all(math.isfinite(v) and v > 0 for v in figures[path].values())
    assert math.isfinite(figures["pool_added_p50_ms"]) and figures["pool_to_sdk_create_p50_ratio"] > 0


def test_burst_benchmark_produces_its_figures(tmp_path: Path) -> None:
    output = tmp_path / "bench_burst.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_burst"),
            "--users",
            "2,3",
            "--latency",
            "0.02",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert list(figures["runs"]) == ["2", "3"]
    for users, sides in figures["runs"].items():
        assert list(sides) == ["defaults", "old defaults", "tuned"]
        for run in sides.values():
            for burst in (run["first"], run["repeat"]):
                assert burst["answered"] == int(users) and 1 <= burst["provider_peak_in_flight"] <= int(users)
                assert math.isfinite(burst["last_answer_s"]) and burst["last_answer_s"] > 0 and burst["over_tuned"] > 0
    assert "first post -> last answer" in result.stdout


def test_burst_benchmark_refuses_bad_sizes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_burst"), "--users", "ten", "--output", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--users takes comma-separated integers" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_rooms_benchmark_produces_its_figures(tmp_path: Path) -> None:
    output = tmp_path / "bench_rooms.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_rooms"),
            "--bots",
            "2",
            "--channels",
            "5",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["channels"] == 10 and figures["bytes_per_message"] > 0 and figures["traced_mib"] >= 0


def test_fleet_benchmark_produces_its_figures(tmp_path: Path, redis_url: str, postgres_dsn: str) -> None:
    output = tmp_path / "bench_fleet.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_fleet"), "--quick", "--redis-url", redis_url,
         "--postgres-dsn", postgres_dsn, "--output", str(output)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    [failover] = figures["failover"]
    assert failover["kills"] == 1 and failover["unanswered"] == 0 and failover["answered_twice"] == 0
    assert 0 < failover["best_s"] <= failover["median_s"] <= failover["worst_s"] < 60
    cost = figures["cost"]
    assert list(cost["sides"]) == ["single, SQLite", "single, PostgreSQL", "fleet, 1 node"]
    for side in cost["sides"].values():
        assert side["answered"] == side["offered"]
        assert all(math.isfinite(side[key]) and side[key] > 0 for key in ("cpu_ms_per_answer", "added_p50_ms"))
        assert side["added_p50_ms"] <= side["added_p99_ms"]
    assert math.isfinite(cost["fleet_minus_single"]["cpu_ms_per_answer"])
    assert set(cost["throughput_answers_per_s"]) == {"one process", "1 node", "2 nodes"}
    assert all(value > 0 for value in cost["throughput_answers_per_s"].values())
    reserve = figures["reserve"]
    assert reserve["calls"] == 50 and len(reserve["pairs"]) == 1
    assert all(math.isfinite(reserve[key]) and reserve[key] > 0 for key in ("fleet_ms_median", "local_ms_median"))
    assert "fleet-wide quotas per answer" in result.stdout
    assert "every bot it held answers again" in result.stdout and "fleet - single" in result.stdout


def test_fleet_benchmark_without_valgrind_says_how_to_get_it(tmp_path: Path, redis_url: str, postgres_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_fleet"), "--parts", "instructions", "--valgrind",
         str(tmp_path / "no-valgrind"), "--redis-url", redis_url, "--postgres-dsn", postgres_dsn,
         "--output", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "apt-get install valgrind" in result.stderr
    assert not (tmp_path / "x.json").exists()
