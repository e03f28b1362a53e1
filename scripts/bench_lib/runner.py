"""Child processes of a benchmark run: the sandbox helper, the orchestrator, the baseline fleet.

Every child is started through :class:`Children`, which asks the kernel to SIGKILL it if the
benchmark process dies (PR_SET_PDEATHSIG), and stops whatever is left in ``stop_all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HELPER = Path(__file__).with_name("sandbox_proc.py")
BASELINE = ROOT / "scripts" / "baseline_bot.py"
API_KEY = "sk-bench-0123456789"
GUILD_READY_TIMEOUT = 0.05
PR_SET_PDEATHSIG = 1
# Children cache their bytecode here (never beside the sources), also where PYTHONDONTWRITEBYTECODE
# is set: a deployment has .pyc files, and compiling on every start would skew the start-up figures.
PYCACHE = Path(tempfile.gettempdir()) / "orchestrator-bench-pycache"
WARM_IMPORTS = (
    "import orchestrator.cli, orchestrator.app, orchestrator.sandbox.discord_server, "
    "orchestrator.sandbox.openai_server, discord.ext.commands, openai, yarl, yaml"
)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # This checkout's orchestrator, also where the installed one is another checkout's (a shared .venv)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra or {})
    return env


async def warm_bytecode_cache(children: Children) -> None:
    """Import everything the children import once, so that every measured start finds its .pyc files."""
    proc = await children.spawn(PYTHON, "-c", WARM_IMPORTS, env=child_env(), stdout=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(proc.wait(), 120)
    await children.stop(proc)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Children:
    """Every process the benchmark started, so that all of them can be stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def spawn(self, *argv: str | Path, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*map(str, argv), preexec_fn=_die_with_parent, **kwargs)
        self.procs.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 3.0) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    async def stop_all(self, grace: float = 3.0) -> None:
        await asyncio.gather(*(self.stop(proc, grace) for proc in list(self.procs)))

    def kill_all_now(self) -> None:
        """Last resort (synchronous): SIGKILL every child still running."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class BotDef:
    name: str
    prefix: str
    weight: float = 1.0

    @property
    def token(self) -> str:
        return f"bench-token-{self.name}-0123456789"

    @property
    def token_env(self) -> str:
        return f"BENCH_TOKEN_{self.name.upper()}"

    @property
    def persona(self) -> str:
        return f"You are {self.name}, a benchmark persona. Answer in one short sentence."


def make_bots(n: int, weights: list[float] | None = None) -> list[BotDef]:
    return [BotDef(f"b{i}", f"b{i}!", weights[i % len(weights)] if weights else 1.0) for i in range(n)]


class SandboxProc:
    """The helper process (sandbox_proc.py) and its JSON-lines RPC."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, children: Children, log: TextIO, **setup: Any) -> SandboxProc:
        proc = await children.spawn(
            PYTHON, HELPER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, limit=1 << 26,
            env=child_env(),
        )  # fmt: skip
        helper = cls(proc, {})
        helper.info = await helper.call("setup", rpc_timeout=30, **setup)
        return helper

    async def call(self, cmd: str, *, rpc_timeout: float = 120.0, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps({"cmd": cmd, **kwargs}) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), rpc_timeout)
        if not line:
            raise RuntimeError(f"the sandbox process exited (code {self.proc.returncode}) during {cmd!r}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"sandbox {cmd!r} failed: {reply['error']}")
        return reply["result"]


_ONLINE = re.compile(r"bot (\S+) is online")
_USER_FACING = re.compile(r"\bbot (\S+): provider '[^']*': (.+)$")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for the orchestrator's health server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrchestratorProc:
    """``python -m orchestrator run bots.yaml --no-watch`` with its log read line by line."""

    proc: asyncio.subprocess.Process
    spawned: float
    health_port: int
    online: dict[str, float] = field(default_factory=dict)
    provider_errors: dict[str, int] = field(default_factory=dict)  # user-facing ProviderError detail -> count
    errors: int = 0
    _online_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    @classmethod
    async def start(
        cls, children: Children, config: Path, env: dict[str, str], log: TextIO, wrapper: Sequence[str] = ()
    ) -> OrchestratorProc:
        """Spawn it, under ``wrapper`` (an argv prefix such as valgrind's) if given."""
        spawned = time.monotonic()
        health_port = free_port()
        proc = await children.spawn(
            *wrapper, PYTHON, "-m", "orchestrator", "--log-level", "INFO", "run", config, "--no-watch",
            "--health-port", str(health_port),
            cwd=config.parent, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip
        self = cls(proc, spawned, health_port)
        self._reader = asyncio.create_task(self._read(log))
        return self

    async def _read(self, log: TextIO) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            log.write(line + "\n")
            if (match := _ONLINE.search(line)) is not None:
                self.online.setdefault(match.group(1), now)
                self._online_changed.set()
            elif (match := _USER_FACING.search(line)) is not None:
                self.provider_errors[match.group(2)] = self.provider_errors.get(match.group(2), 0) + 1
            if " ERROR " in line or "Traceback" in line:
                self.errors += 1
        self._online_changed.set()

    async def added_latency_buckets(self) -> dict[str, list[tuple[float, float]]]:
        """The orchestrator's own ``orchestrator_added_latency_seconds`` histogram, all bots summed:
        {part: [(upper bound s, cumulative count)]}, read from its /metrics."""
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        buckets: dict[str, dict[float, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "orchestrator_added_latency_seconds_bucket":
                    part = buckets.setdefault(sample.labels["part"], {})
                    bound = float(sample.labels["le"])
                    part[bound] = part.get(bound, 0.0) + sample.value
        return {part: sorted(counts.items()) for part, counts in buckets.items()}

    async def wait_ready(self, names: list[str], timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while not all(name in self.online for name in names):
            if self.proc.returncode is not None:
                raise RuntimeError(f"the orchestrator exited with code {self.proc.returncode}; see its log")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(self.online)} of {len(names)} bots came online")
            self._online_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._online_changed.wait(), min(remaining, 0.5))
        return {name: self.online[name] for name in names}

    async def finish(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2)


@dataclass
class BaselineFleet:
    """One ``scripts/baseline_bot.py`` process per bot."""

    procs: list[asyncio.subprocess.Process]
    spawned: float
    ready: dict[str, float] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    @classmethod
    async def start(
        cls, children: Children, bots: list[BotDef], sandbox: dict[str, Any], log: TextIO, seed_history: int = 0
    ) -> BaselineFleet:
        spawned = time.monotonic()
        self = cls([], spawned)
        env = child_env({"PYTHONUNBUFFERED": "1"})
        for bot in bots:
            proc = await children.spawn(
                PYTHON, BASELINE, "--name", bot.name, "--token", bot.token, "--prefix", bot.prefix,
                "--persona", bot.persona, "--discord-api-url", sandbox["api_url"],
                "--discord-gateway-url", sandbox["gateway_url"], "--openai-base-url", sandbox["openai_url"],
                "--openai-api-key", API_KEY, "--max-tokens", "200", "--history", "10",
                "--seed-history", str(seed_history), "--guild-ready-timeout", str(GUILD_READY_TIMEOUT),
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(proc)))
        return self

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            parts = raw.decode(errors="replace").split()
            if len(parts) == 3 and parts[0] == "READY":
                self.ready.setdefault(parts[1], float(parts[2]))
                self._changed.set()
        self._changed.set()

    async def wait_ready(self, names: list[str], timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while not all(name in self.ready for name in names):
            dead = [proc.returncode for proc in self.procs if proc.returncode is not None]
            if dead:
                raise RuntimeError(f"{len(dead)} baseline bot(s) exited (codes {sorted(set(dead))}); see the log")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(self.ready)} of {len(names)} baseline bots became ready")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return {name: self.ready[name] for name in names}


def guild_ready_timeout_in_config() -> bool:
    """Whether this orchestrator reads ``discord.guild_ready_timeout`` from bots.yaml."""
    try:
        from orchestrator.config import DiscordSettings
    except ImportError:
        return False
    return "guild_ready_timeout" in getattr(DiscordSettings, "model_fields", {})


def orchestrator_env(bots: list[BotDef], sandbox: dict[str, Any], database: Path) -> dict[str, str]:
    env = child_env()
    env.update(
        {
            "DISCORD_API_URL": sandbox["api_url"],
            "DISCORD_GATEWAY_URL": sandbox["gateway_url"],
            "OPENAI_API_KEY": API_KEY,
            "ORCHESTRATOR_DATABASE": str(database),
            "ORCHESTRATOR_GUILD_READY_TIMEOUT": str(GUILD_READY_TIMEOUT),  # harmless if ignored
        }
    )
    env.update({bot.token_env: bot.token for bot in bots})
    return env


def write_orchestrator_config(
    path: Path,
    bots: list[BotDef],
    sandbox: dict[str, Any],
    database: Path,
    *,
    provider: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
) -> Path:
    """bots.yaml for ``bots`` against the sandbox; ``sections`` adds top-level sections (``fleet``)."""
    discord: dict[str, Any] = {"api_url": sandbox["api_url"], "gateway_url": sandbox["gateway_url"]}
    if guild_ready_timeout_in_config():
        discord["guild_ready_timeout"] = GUILD_READY_TIMEOUT
    document = {
        "discord": discord,
        "providers": {
            "sandbox": {
                "base_url": sandbox["openai_url"],
                "api_key_env": "OPENAI_API_KEY",
                "max_concurrency": 16,
                "timeout": 60,
                **(provider or {}),
            }
        },
        "defaults": {
            "provider": "sandbox",
            "model": "gpt-4o-mini",
            "params": {"max_tokens": 200, "temperature": 0.7},
            **(defaults or {}),
        },
        "database": str(database),
        "bots": [
            {"name": b.name, "token_env": b.token_env, "persona": b.persona, "prefix": b.prefix, "weight": b.weight}
            for b in bots
        ],
        **(sections or {}),
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as f:  # noqa: ASYNC230 - once per child process, before it runs
        yield f
