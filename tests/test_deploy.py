"""The deployment examples parse, and the commands they run are real commands of this CLI."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import yaml

from orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "personas.service"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    unit.optionxform = str  # type: ignore[assignment,method-assign] - systemd keys are case-sensitive
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit


def test_the_systemd_unit_runs_the_real_command_hardened() -> None:
    unit = read_unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    executable, *argv = shlex.split(service["ExecStart"])
    assert executable.endswith("/bin/orchestrator")
    args = build_parser().parse_args(argv)
    assert (args.command, args.config, args.health_port) == ("run", "/etc/personas/bots.yaml", 8080)
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root") and service["User"] == service["Group"]
    assert service["WorkingDirectory"] == f"/var/lib/{service['StateDirectory']}"
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/personas/")
    # the database must be in the one writable place, not beside the read-only bots.yaml
    assert service["Environment"] == f"ORCHESTRATOR_DATABASE={service['WorkingDirectory']}/orchestrator.sqlite3"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert float(service["TimeoutStopSec"]) >= 30
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_commands_in_the_units_comments_are_real() -> None:
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "/bin/orchestrator " in line:
            argv = shlex.split(line.split("/bin/orchestrator ", 1)[1])
            build_parser().parse_args(argv)  # exits on an unknown command or option


def test_the_compose_file_runs_the_real_command_with_writable_data() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = compose["services"]["personas"]
    assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").is_file()
    executable, *argv = service["command"]
    args = build_parser().parse_args(argv)
    assert executable == "orchestrator" and args.command == "run" and args.config == "/config/bots.yaml"
    assert "../config:/config:ro" in service["volumes"]
    # the config folder (readable by the image's user only) is not sent to the build
    assert "config" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    [data] = [v for v in service["volumes"] if v.endswith(":/data")]
    assert data.split(":")[0] in compose["volumes"]  # a named volume: Docker copies the image's /data ownership
    assert service["restart"] == "unless-stopped"
    assert int(service["stop_grace_period"].removesuffix("s")) >= 30


def test_the_image_user_is_the_one_the_docs_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [uid] = re.findall(r"--uid (\d+)", dockerfile)
    assert f"uid {uid}" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"uid {uid}" in COMPOSE.read_text(encoding="utf-8")
    assert re.search(r"chown \S+ /data", dockerfile)
    [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)
    executable, *argv = json.loads(cmd)
    assert executable == "orchestrator" and build_parser().parse_args(argv).command == "run"
