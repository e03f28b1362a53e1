"""CI's closing lines: one line of test counts per pytest run, read from its JUnit XML report, then
the totals as "total: N passed, N failed, N skipped". Exits 1 when a test failed or a report is missing.

    python3 .ci/summary.py "LABEL=REPORT.xml"...

A report with an ends.txt beside it (scripts/compat's) gets the versions it pins in its label.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(report: Path) -> dict[str, int]:
    """passed, failed (failures and errors) and skipped of one pytest JUnit XML report."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = n["failures"] + n["errors"]
    return {"passed": n["tests"] - failed - n["skipped"], "failed": failed, "skipped": n["skipped"]}


def label_of(label: str, report: Path) -> str:
    ends = report.parent / "ends.txt"
    if not ends.exists():
        return label
    return f"{label} ({' '.join(word for word in ends.read_text().split() if '==' in word)})"


def main(args: list[str]) -> int:
    total = {"passed": 0, "failed": 0, "skipped": 0}
    missing = False
    for arg in args:
        label, _, path = arg.partition("=")
        report = Path(path)
        label = label_of(label, report)
        if not report.exists():
            print(f"{label}: no report, it did not run to the end (see its output above)")
            missing = True
            continue
        run = counts(report)
        print(f"{label}: {run['passed']} passed, {run['failed']} failed, {run['skipped']} skipped")
        for key in total:
            total[key] += run[key]
    print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if missing or total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
