"""scripts/services: starts a stopped local service, leaves a running one alone, and names what is
missing. Only a throwaway Redis on a free port is started and stopped here, never the shared ones."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = str(ROOT / "scripts" / "services")
BASH = shutil.which("bash") or "/bin/bash"


def services(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, SERVICES, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_stopped_redis_is_started_and_a_running_one_left_alone(tmp_path: Path) -> None:
    port = str(free_port())
    started = services("redis", REDIS_PORT=port, TMPDIR=str(tmp_path))
    try:
        assert started.returncode == 0, started.stderr
        assert f"starting Redis on 127.0.0.1:{port}" in started.stderr
        ping = subprocess.run(["redis-cli", "-p", port, "ping"], capture_output=True, text=True, timeout=10)
        assert ping.stdout.strip() == "PONG"
        again = services("redis", REDIS_PORT=port, TMPDIR=str(tmp_path))
        assert again.returncode == 0, again.stderr
        assert "starting" not in again.stderr
        assert f"Redis answers on 127.0.0.1:{port}" in again.stderr
    finally:
        subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], capture_output=True, timeout=10, check=False)


def test_the_local_services_answer_and_nothing_is_started() -> None:
    done = services()
    assert done.returncode == 0, done.stderr
    assert "starting" not in done.stderr
    assert "PostgreSQL answers on 127.0.0.1:5432 (database test)" in done.stderr
    assert "Redis answers on 127.0.0.1:6379" in done.stderr


@pytest.mark.parametrize(
    ("service", "install"), [("redis", "apt-get install redis-server"), ("postgres", "apt-get install postgresql")]
)
def test_a_service_that_is_not_installed_says_how_to_install_it(tmp_path: Path, service: str, install: str) -> None:
    # A PATH with the shell's basic tools only.
    for tool in ("awk", "sleep"):
        (tmp_path / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    done = services(service, PATH=str(tmp_path))
    assert done.returncode == 1
    assert "is not installed" in done.stderr
    assert install in done.stderr


def test_an_unknown_service_is_refused() -> None:
    done = services("mysql")
    assert done.returncode == 1
    assert "no service 'mysql'; say postgres or redis" in done.stderr
