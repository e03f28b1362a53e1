"""Figures scripts/bench derives: the median of repeated trials, quantiles from the orchestrator's histogram."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_lib.scenarios import histogram_summary_ms, median_trial


@pytest.mark.parametrize(
    ("values", "kept"),
    [([3.0, 1.0, 2.0], 2.0), ([1.0, 2.0], 2.0), ([5.0], 5.0), ([None, 4.0, 1.0], 4.0)],
    ids=["odd", "even-takes-the-upper-middle", "single", "a-failed-trial-is-not-a-good-one"],
)
async def test_the_median_trial_is_kept_with_every_trials_value(values: list[float | None], kept: float) -> None:
    figures = iter([{"wall": {"p99": v}, "trial": i} for i, v in enumerate(values)])

    async def run() -> dict[str, Any]:
        return next(figures)

    bench = SimpleNamespace(args=SimpleNamespace(trials=len(values)))
    result = await median_trial(bench, "wall.p99", run)  # type: ignore[arg-type]
    assert result["wall"]["p99"] == kept
    assert result["trials"] == {"key": "wall.p99", "values": values}


def test_quantiles_of_what_the_histogram_observed_between_two_readings() -> None:
    before = [(0.001, 10.0), (0.002, 10.0), (0.005, 10.0), (math.inf, 10.0)]  # 10 observations before the window
    after = [(0.001, 10.0), (0.002, 60.0), (0.005, 110.0), (math.inf, 110.0)]  # 50 in (1, 2] ms, 50 in (2, 5] ms
    summary = histogram_summary_ms(before, after)
    assert summary is not None and summary["n"] == 100
    assert summary["p50"] == pytest.approx(2.0)  # the top of the first bucket that holds half
    assert summary["p99"] == pytest.approx(2.0 + 3.0 * 49 / 50)  # interpolated within (2, 5] ms
    assert histogram_summary_ms(after, after) is None  # nothing observed in the window
    beyond = histogram_summary_ms([], [(0.005, 0.0), (math.inf, 3.0)])
    assert beyond is not None and beyond["p99"] == 5.0  # above the last bound: only the bound is known
