"""bots.yaml's ``fleet:`` section: the Redis URL from the file (never with a password) or from the
environment, this node's id, and every mistake named with its file and line; ``orchestrator status
--fleet`` says what is wrong when it cannot show the fleet."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from tests.test_config import ENV, GOOD

pytestmark = pytest.mark.bad_input

# A fleet shares its memory in PostgreSQL (a SQLite path is refused with a fleet).
FLEET_ENV = ENV | {"ORCHESTRATOR_DATABASE": "postgresql://db.internal/orchestrator"}


def fleet(section: str, env: dict[str, str] = FLEET_ENV, **options: bool) -> object:
    return parse_config(GOOD + section, "bots.yaml", env, **options).fleet  # type: ignore[arg-type]


def problems(section: str, env: dict[str, str] = FLEET_ENV, **options: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD + section, "bots.yaml", env, **options)  # type: ignore[arg-type]
    return [str(issue) for issue in info.value.issues]


def test_a_fleet_section_resolves_with_defaults_and_the_node_id_from_the_environment() -> None:
    spec = fleet("fleet: {redis_url: 'redis://10.0.0.5:6379/0'}\n")
    assert spec is not None and spec.redis_url.get_secret_value() == "redis://10.0.0.5:6379/0"
    assert (spec.lease_ttl, spec.key_prefix) == (6.0, "default")
    assert spec.node_id == f"{socket.gethostname()}-{os.getpid()}"
    named = fleet(
        "fleet: {redis_url_env: REDIS_URL, node_id: box-1, lease_ttl: 2}\n",
        FLEET_ENV | {"REDIS_URL": "redis://:s3cret-password@h:6379", "ORCHESTRATOR_NODE_ID": "pod-7"},
        require_redis=True,
    )
    assert named is not None and named.node_id == "pod-7" and named.lease_ttl == 2
    assert "s3cret" not in repr(named)
    assert parse_config(GOOD, "bots.yaml", FLEET_ENV).fleet is None


def test_a_password_in_the_file_is_refused_without_being_echoed() -> None:
    [problem] = problems("fleet:\n  redis_url: redis://:hunter2-pass@10.0.0.5:6379\n")
    assert problem.startswith("bots.yaml:23: fleet.redis_url: this URL has a password")
    assert "redis_url_env" in problem and "hunter2" not in problem


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("fleet: {}\n", "bots.yaml:22: fleet: fleet needs the Redis server: set either 'redis_url'"),
        ("fleet: {redis_url: a, redis_url_env: B}\n", "fleet needs the Redis server: set either"),
        ("fleet: {redis_url: 'http://h:6379'}\n", "must start with redis://, rediss:// or unix://, not http://"),
        ("fleet: {redis_url: 'redis://h:port/0'}\n", "fleet.redis_url: not a valid Redis URL: Port could not be cast"),
        ("fleet: {redis_url_env: 'redis://h'}\n", "fleet.redis_url_env: must be the *name* of an environment variable"),
        ("fleet: {redis_url_env: NOT_SET_HERE}\n", "environment variable NOT_SET_HERE is not set; put the Redis URL"),
        ("fleet: {redis_ur: 'redis://h'}\n", "fleet.redis_ur: unknown key 'redis_ur'; did you mean 'redis_url'?"),
        ("fleet: {redis_url: 'redis://h', lease_ttl: 0.1}\n", "fleet.lease_ttl: Input should be greater than or equal"),
        ("fleet: {redis_url: 'redis://h', node_id: 'a b'}\n", "fleet.node_id: node id 'a b' (from"),
        ("fleet: {redis_url: 'redis://h', key_prefix: 'a:b'}\n", "fleet.key_prefix: String should match pattern"),
    ],
)
def test_a_wrong_fleet_section_is_named_with_its_line(section: str, expected: str) -> None:
    [problem] = problems(section, require_redis=True)
    assert expected in problem and problem.startswith("bots.yaml:22: ")


def test_only_the_commands_that_use_redis_ask_for_its_url() -> None:
    spec = fleet("fleet: {redis_url_env: NOT_SET_HERE}\n")
    assert spec is not None and spec.redis_url.get_secret_value() == ""


def test_status_says_why_it_cannot_show_the_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bots.yaml"
    path.write_text(GOOD)
    parser = cli.build_parser()
    assert cli.cmd_status(parser.parse_args(["status"])) == 2
    assert "say where to look: --health-port PORT or --url URL" in capsys.readouterr().err
    assert cli.cmd_status(parser.parse_args(["status", "--fleet", str(path)])) == 2
    assert "has no 'fleet:' section" in capsys.readouterr().err
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        path.write_text(GOOD + "fleet: {redis_url_env: FLEET_URL}\n")
        (tmp_path / ".env").write_text(
            f"FLEET_URL=redis://:pass-w0rd-x@127.0.0.1:{port}/0\nORCHESTRATOR_DATABASE=postgresql://db.internal/x\n"
        )
        assert cli.cmd_status(parser.parse_args(["status", "--fleet", str(path)])) == 2
    err = capsys.readouterr().err
    assert f"cannot read the fleet from Redis at redis://:***@127.0.0.1:{port}/0" in err
    assert "pass-w0rd" not in err
