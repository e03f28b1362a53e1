"""The benchmark keeps the median of repeated trials (scripts/bench --trials), never the best one."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_lib.scenarios import median_trial  # noqa: E402


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
