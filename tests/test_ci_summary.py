""".ci/summary.py: CI's closing lines, read from the JUnit XML reports of its pytest runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def report(path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="{tests}"'
        f' failures="{failures}" errors="{errors}" skipped="{skipped}" time="1.5"></testsuite></testsuites>'
    )
    return path


def summary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "summary.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_one_line_per_run_then_the_totals_in_the_plain_closing_format(tmp_path: Path) -> None:
    main = report(tmp_path / "main.xml", tests=10, skipped=2)
    oldest = report(tmp_path / "oldest" / "junit.xml", tests=5)
    (oldest.parent / "ends.txt").write_text("discord-py==2.7.0\nopenai==3.50.0\n")
    done = summary(f"main suite={main}", f"compat oldest={oldest}")
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines() == [
        "main suite: 8 passed, 0 failed, 2 skipped",
        "compat oldest (discord-py==2.7.0 openai==3.50.0): 5 passed, 0 failed, 0 skipped",
        "total: 13 passed, 0 failed, 2 skipped",
    ]


def test_failures_and_errors_count_as_failed_and_fail_the_run(tmp_path: Path) -> None:
    main = report(tmp_path / "main.xml", tests=10, failures=1, errors=2, skipped=1)
    done = summary(f"main suite={main}")
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == "total: 6 passed, 3 failed, 1 skipped"


def test_a_missing_report_is_named_and_fails_the_run(tmp_path: Path) -> None:
    main = report(tmp_path / "main.xml", tests=3)
    done = summary(f"main suite={main}", f"compat newest={tmp_path / 'newest' / 'junit.xml'}")
    assert done.returncode == 1
    assert "compat newest: no report, it did not run to the end" in done.stdout
    assert done.stdout.splitlines()[-1] == "total: 3 passed, 0 failed, 0 skipped"
