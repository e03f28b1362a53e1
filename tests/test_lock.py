"""The lock files agree with pyproject.toml: every declared dependency is pinned, within its range,
with hashes, and the Docker image's runtime subset has the same versions as the development lock."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCKED_EXTRAS = ("dev",)
REFRESH = "run scripts/lock to refresh the lock files"

# "name==version ; marker \" followed by its "--hash=sha256:..." lines.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)[^\n]*\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)*)", re.M)


def pins(name: str) -> dict[str, tuple[str, int]]:
    """{canonical name: (version, number of hashes)} of requirements/<name>."""
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    return {canonicalize_name(m[1]): (m[2], m[3].count("--hash=")) for m in PIN.finditer(text)}


def declared(*extras: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    texts = [*project["dependencies"], *PYPROJECT["build-system"]["requires"]]
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize(("lock", "extras"), [("lock.txt", LOCKED_EXTRAS), ("runtime.txt", ())])
def test_every_declared_dependency_is_pinned_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    pinned = pins(lock)
    for req in declared(*extras):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is declared in pyproject.toml but not pinned in {lock}: {REFRESH}"
        version = pinned[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {req.name}=={version}, outside pyproject.toml's {req}: {REFRESH}"
        )


@pytest.mark.parametrize("lock", ["lock.txt", "runtime.txt"])
def test_every_pin_has_hashes(lock: str) -> None:
    pinned = pins(lock)
    assert len(pinned) > 10, f"requirements/{lock} has too few pins to be a lock"
    unhashed = sorted(name for name, (_, hashes) in pinned.items() if hashes == 0)
    assert not unhashed, f"{lock} pins {unhashed} without hashes: {REFRESH}"


def test_the_runtime_lock_is_the_development_lock_less_the_dev_tools() -> None:
    full = {name: version for name, (version, _) in pins("lock.txt").items()}
    runtime = {name: version for name, (version, _) in pins("runtime.txt").items()}
    differing = {name: (version, full.get(name)) for name, version in runtime.items() if full.get(name) != version}
    assert not differing, f"runtime.txt and lock.txt pin different versions {differing}: {REFRESH}"


def test_env_refuses_a_python_older_than_3_11_by_name(tmp_path: Path) -> None:
    old_python = tmp_path / "python3.10"
    old_python.write_text("#!/bin/sh\nexit 1\n")
    old_python.chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", f'source "{ROOT}/scripts/_env.sh"'],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(old_python)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"{old_python} is not Python 3.11 or newer" in done.stderr
    assert "PYTHON=python3.11" in done.stderr
