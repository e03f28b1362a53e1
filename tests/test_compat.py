"""scripts/compat's arguments (the compatibility runs themselves are CI's job: .ci/run)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_unknown_end_is_refused_before_anything_is_built() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "compat"), "oldest", "sideways"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "no end 'sideways'; say oldest or newest" in done.stderr
    assert not (ROOT / ".venv-compat" / "sideways").exists()
