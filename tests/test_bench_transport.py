"""scripts/bench_transport: the SDK's two HTTP backends against ChatTransport, at tiny sizes.

Checks the shape and sanity of the figures, never their values. valgrind is part of the
benchmark's toolbox: without it the full run fails, saying so.
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
SCRIPT = [sys.executable, str(ROOT / "scripts" / "bench_transport")]
PATHS = ("create-httpx2", "create-aiohttp", "post-httpx2", "post-aiohttp", "transport")


def test_cpu_and_instructions_per_call_for_every_path(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        pytest.fail(
            "valgrind is not installed; scripts/bench_transport counts instructions with it (apt-get install valgrind)"
        )
    output = tmp_path / "transport.json"
    run = subprocess.run(
        [*SCRIPT, "--calls", "5", "--warm-calls", "2", "--instruction-calls", "1,2", "--output", str(output)],
        capture_output=True, text=True, timeout=300,  # a hang guard, not a speed assertion
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(output.read_text())
    counted = results["instructions"]
    for path in PATHS:
        assert math.isfinite(results["cpu_ms_per_call"][path]) and results["cpu_ms_per_call"][path] > 0
        assert counted["per_call"][path] > 0
        (small, small_count), (large, large_count) = counted["windows"][path]
        assert (small, large) == (1, 2) and large_count > small_count > 0
        assert path in run.stdout
    assert results["cpu_ratio_to_transport"]["transport"] == 1.0 and counted["ratio_to_transport"]["transport"] == 1.0


def test_without_valgrind_it_stops_before_measuring(tmp_path: Path) -> None:
    output = tmp_path / "transport.json"
    run = subprocess.run(
        [*SCRIPT, "--valgrind", str(tmp_path / "no-valgrind"), "--output", str(output)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "valgrind not found" in run.stderr and "--no-instructions" in run.stderr
    assert not output.exists()


def test_cpu_figures_alone_need_no_valgrind(tmp_path: Path) -> None:
    output = tmp_path / "transport.json"
    run = subprocess.run(
        [*SCRIPT, "--no-instructions", "--valgrind", str(tmp_path / "no-valgrind"), "--calls", "3", "--warm-calls", "1",
         "--output", str(output)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(output.read_text())
    assert set(results["cpu_ms_per_call"]) == set(PATHS) and "instructions" not in results


@pytest.mark.parametrize("bad", [["--instruction-calls", "3,1"], ["--instruction-calls", "x"], ["--calls", "0"]])
def test_bad_sizes_are_refused(bad: list[str]) -> None:
    run = subprocess.run([*SCRIPT, *bad], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and ("N1" in run.stderr or "at least 1" in run.stderr)
