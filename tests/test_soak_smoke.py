"""scripts/soak, run for a few seconds: it finishes by itself and reports sane figures.

No timing assertions: a busy machine answers fewer messages, never none.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.fault
def test_soak_smoke_run_reports_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "soak"),
            "--seconds",
            "5",
            "--bots",
            "2",
            "--users",
            "5",
            "--grace",
            "3",
            "--fault-interval",
            "0.3",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + (out.with_suffix(".log").read_text()[-3000:])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["crashed"] is False and report["error"] is None
    assert report["config"]["bots"] == 2 and report["config"]["users"] == 5
    assert report["posted"] > 0 and report["answered"] > 0
    assert report["answered"] + report["errors_shown"] + report["unanswered"] == report["posted"]
    assert report["errors_shown"] == sum(report["errors_by_kind"].values())
    assert "other" not in report["errors_by_kind"] and "apology" not in report["errors_by_kind"], report
    assert report["faults_injected"] == sum(report["faults_by_kind"].values()) > 0
    assert report["provider_requests"] >= report["answered"]
    assert report["restarts"] >= 0 and report["bots_failed"] == []
    assert all(report["rss_kb"][phase] > 0 for phase in ("start", "after_warmup", "end"))
    assert all(report["quota_book"][phase]["events"] >= 0 for phase in ("start", "after_warmup", "end"))
    assert "messages posted" in result.stdout and "RSS start / warm / end" in result.stdout
    assert "quota book events start / warm / end" in result.stdout
