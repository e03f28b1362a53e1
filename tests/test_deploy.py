"""The deployment examples parse, and the commands they run are real commands of this CLI."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import yaml

from orchestrator.cli import build_parser
from orchestrator.config import load_config

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


FLEET_COMPOSE = ROOT / "deploy" / "fleet" / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "fleet.yaml"
# What a secret would look like written into a deployment file: a URL with a password, a key, a token.
INLINE_SECRET = re.compile(r"://[^/\s:@]*:(?!\$\{)[^@\s]+@|sk-[A-Za-z0-9]|[MN][A-Za-z0-9_-]{23}\.[A-Za-z0-9_-]{6}\.")


def no_inline_secrets(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.lstrip().startswith("#"):
            assert not INLINE_SECRET.search(line), f"{path.name}:{number} holds a secret: {line.strip()}"


def test_the_fleet_compose_file_runs_two_nodes_on_redis_and_postgresql_with_secrets_from_the_environment() -> None:
    compose = yaml.safe_load(FLEET_COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"redis", "postgres", "node-a", "node-b"} <= set(services)
    node_ids = set()
    for name in ("node-a", "node-b"):
        node = services[name]
        assert (FLEET_COMPOSE.parent / node["build"]["context"] / "Dockerfile").is_file()
        executable, *argv = node["command"]
        args = build_parser().parse_args(argv)
        assert (executable, args.command, args.config) == ("orchestrator", "run", "/config/bots.yaml")
        assert args.health_port == 8080  # the port the image's HEALTHCHECK asks
        assert set(node["depends_on"]) == {"redis", "postgres"}
        assert int(node["stop_grace_period"].removesuffix("s")) >= 30
        environment = node["environment"]
        node_ids.add(environment["ORCHESTRATOR_NODE_ID"])
        assert environment["FLEET_REDIS_URL"].startswith("redis://redis:")
        assert environment["DATABASE_URL"].startswith("postgresql://personas:${POSTGRES_PASSWORD:?")
        [config] = [v for v in node["volumes"] if v.endswith(":/config:ro")]
        assert (FLEET_COMPOSE.parent / config.split(":")[0]).resolve() == ROOT / "config"
    assert len(node_ids) == 2, "each node has an id of its own"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert all("healthcheck" in services[name] for name in ("redis", "postgres"))
    no_inline_secrets(FLEET_COMPOSE)


def test_the_kubernetes_deployment_runs_replicas_probed_on_healthz_with_secrets_from_a_secret(tmp_path: Path) -> None:
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8"))}
    deployment = documents["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30 and pod["securityContext"]["runAsUser"] == 10001
    [container] = pod["containers"]
    executable, *argv = container["args"]
    args = build_parser().parse_args(argv)
    assert (executable, args.command, args.health_host) == ("orchestrator", "run", "0.0.0.0")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz" and ports[readiness["port"]] == args.health_port
    assert liveness["path"] == "/metrics" and ports[liveness["port"]] == args.health_port
    [node_id] = [e for e in container["env"] if e["name"] == "ORCHESTRATOR_NODE_ID"]
    assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert all("value" not in e for e in container["env"]), "values come from the pod or a Secret"
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["personas"]
    # the ConfigMap's bots.yaml is a valid fleet configuration whose secrets all come from the environment
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == Path(args.config).parent.as_posix()]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    bots_yaml = tmp_path / "bots.yaml"
    bots_yaml.write_text(documents["ConfigMap"]["data"][Path(args.config).name], encoding="utf-8")
    assert volume["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    env = {
        "DISCORD_TOKEN_SAGE": "token",
        "OPENAI_API_KEY": "sk-key",
        "ORCHESTRATOR_NODE_ID": "personas-0",
        "FLEET_REDIS_URL": "redis://:secret@redis:6379/0",
        "DATABASE_URL": "postgresql://p:secret@pg/personas",
    }
    config = load_config(bots_yaml, env=env, require_redis=True)
    assert config.fleet is not None and config.fleet.redis_url.get_secret_value() == env["FLEET_REDIS_URL"]
    assert not config.warnings, config.warnings
    no_inline_secrets(KUBERNETES)
