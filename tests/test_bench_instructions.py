"""scripts/bench --instructions: callgrind counts the orchestrator's instructions per answered !chat.

The smoke run is tiny (windows of 1 and 3 messages) and checks the shape of the results, never the
figure itself. valgrind is part of the benchmark's toolbox: without it the test fails, saying so.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_lib.callgrind import per_unit, read_dump  # noqa: E402

BENCH = [sys.executable, str(ROOT / "scripts" / "bench")]


def test_instructions_per_answer_of_a_tiny_workload(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed; scripts/bench --instructions needs it (apt-get install valgrind)")
    output = tmp_path / "instructions.json"
    run = subprocess.run(
        [*BENCH, "--instructions", "--instructions-messages", "1,3", "--instructions-idle", "1",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # a hang guard, not a speed assertion
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Instructions per answered !chat" in run.stdout
    results = json.loads(output.read_text())
    assert math.isfinite(results["instructions_per_answer"]) and results["instructions_per_answer"] > 0
    small, large = results["windows"]["small"], results["windows"]["large"]
    assert (small["messages"], large["messages"]) == (1, 3)
    assert large["instructions"] > small["instructions"] > 0
    for window in (small, large):  # the fixed workload: one provider request and one typing POST per answer
        assert window["provider_requests_per_answer"] == 1.0
        assert window["typing_posts_per_answer"] == 1.0
        assert window["answers_overlapping_the_next_message"] in range(window["messages"])  # reported, not judged
    # the idle window: work per second (timers), and the figure without it
    assert results["idle_s"] == 1 and results["idle_per_s"] > 0
    assert results["marginal_per_answer"] < results["instructions_per_answer"]
    assert "without messages" in run.stdout
    assert results["meta"]["commit"] and "valgrind" in results["meta"]["valgrind"]
    dumps = [p for p in Path(results["meta"]["callgrind_files"]).glob("orchestrator.*") if p.suffix != ".log"]
    assert len(dumps) >= 2  # one per window (and one at exit), for callgrind_annotate


def test_without_valgrind_the_count_stops_with_a_clear_error(tmp_path: Path) -> None:
    output = tmp_path / "instructions.json"
    run = subprocess.run(
        [*BENCH, "--instructions", "--valgrind", str(tmp_path / "no-valgrind"), "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "valgrind not found" in run.stderr and "apt-get install valgrind" in run.stderr
    assert not output.exists()


def test_window_sizes_must_grow(tmp_path: Path) -> None:
    run = subprocess.run([*BENCH, "--instructions", "--instructions-messages", "5,2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2 and "0 < N1 < N2" in run.stderr


def test_a_window_total_is_read_from_callgrind_totals_line(tmp_path: Path) -> None:
    # A dump taken after instrumentation was switched off says "summary: 0"; "totals:" has the count.
    (tmp_path / "orchestrator.42.1").write_text("desc: Trigger: dump small\nevents: Ir\nsummary: 0\ntotals: 1234\n")
    (tmp_path / "orchestrator.42.2").write_text("desc: Trigger: dump large\nsummary: 99\ntotals: 99\n")
    (tmp_path / "orchestrator.42.log").write_text("desc: Trigger: dump small\ntotals: 7\n")
    assert read_dump(tmp_path, 42, "small") == 1234
    assert read_dump(tmp_path, 42, "large") == 99
    with pytest.raises(RuntimeError, match="no dump 'other'"):
        read_dump(tmp_path, 42, "other")


def test_per_unit_takes_the_difference_of_two_windows() -> None:
    assert per_unit((10, 1_500), (30, 3_500)) == 100.0  # 500 of fixed cost cancel
    with pytest.raises(ValueError):
        per_unit((10, 1), (10, 2))
