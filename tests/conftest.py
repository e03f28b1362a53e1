"""Shared fixtures: the anyio backend (asyncio: discord.py is asyncio-only), the loopback Discord and
OpenAI servers, and :class:`World`, which writes a bots.yaml for them and runs the real app."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest
import yaml

from orchestrator.app import App
from orchestrator.config import Config, load_config
from orchestrator.runtime.services import RuntimeOptions
from orchestrator.runtime.supervisor import BotState, Supervisor
from orchestrator.sandbox.discord_server import DiscordSandbox
from orchestrator.sandbox.openai_server import OpenAISandbox

from .stores import PostgresKind, SQLiteKind, StoreKind, with_search_path


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-key-0123456789"
FAST = RuntimeOptions(guild_ready_timeout=0.05, reidentify_delay=0.0, drain_timeout=5.0, close_timeout=2.0)


@pytest.fixture
async def discord_server() -> AsyncIterator[DiscordSandbox]:
    async with DiscordSandbox() as server:
        yield server


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAISandbox]:
    async with OpenAISandbox(api_keys=[API_KEY], echo=True) as server:
        yield server


def token_for(name: str) -> str:
    return f"discord-token-{name}-abcdef0123456789"


class World:
    """Writes bots.yaml for the loopback servers and builds the matching environment."""

    def __init__(self, tmp_path: Path, discord_server: DiscordSandbox, openai_server: OpenAISandbox) -> None:
        self.tmp_path = tmp_path
        self.discord = discord_server
        self.openai = openai_server
        self.path = tmp_path / "bots.yaml"
        self.database = str(tmp_path / "memory.sqlite3")  # bots.yaml's `database:`
        self.bot_ids: dict[str, int] = {}
        self.app: App | None = None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "OPENAI_API_KEY": API_KEY,
            "DISCORD_API_URL": self.discord.api_url,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
        }
        for name in self.bot_ids:
            env[f"TOKEN_{name.upper()}"] = token_for(name)
        return env | (extra or {})

    def write(self, bots: list[dict], **top: object) -> Path:
        """Write bots.yaml; every bot gets a registered sandbox token unless it says otherwise."""
        for bot in bots:
            name = bot["name"]
            bot.setdefault("token_env", f"TOKEN_{name.upper()}")
            bot.setdefault("persona", f"You are {name.capitalize()}.")
            if name not in self.bot_ids:
                self.bot_ids[name] = self.discord.add_bot(token_for(name), name)
        document = {
            "providers": {"openai": {"base_url": self.openai.base_url, "api_key_env": "OPENAI_API_KEY", "timeout": 10}},
            # Channel context is off unless a test turns it on: most tests assert the exact request.
            "defaults": {"model": "gpt-4o-mini", "params": {"max_tokens": 200}, "context": {"channel_messages": 0}},
            "database": self.database,
            "restart": {"max_restarts": 3, "window": 60, "backoff_initial": 0.01, "backoff_max": 0.05},
            **top,
            "bots": bots,
        }
        self.path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return self.path

    def load(self, extra_env: dict[str, str] | None = None) -> Config:
        return load_config(self.path, env=self.env(extra_env))

    @contextlib.asynccontextmanager
    async def running(self, config: Config | None = None, **app_kwargs: object) -> AsyncIterator[App]:
        """Run the app until the block ends; waits until every bot is RUNNING or FAILED first."""
        settings: dict[str, object] = {"options": FAST, "handle_signals": False, "watch": False, **app_kwargs}
        app = App(config or self.load(), **settings)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            supervisor: Supervisor = await tg.start(app.run)
            with anyio.fail_after(10):
                for name in app.config.bots:
                    await supervisor.wait_for_state(name, BotState.RUNNING, BotState.FAILED)
            self.app = app
            yield app
            app.request_stop()

    async def chat(self, text: str, *, bot: str | None = None, timeout: float = 10.0, **post: object) -> list:
        """Post ``text`` and return the bot's reply chain (the reply and its follow-ups)."""
        before = len(self.discord.sent)
        message = await self.discord.post(text, **post)  # type: ignore[arg-type]
        message_id = int(message["id"])
        await self.discord.wait_for_sent(predicate=lambda m: m.reference_id == message_id, timeout=timeout)
        await self.idle()
        return self.discord.sent[before:]

    async def idle(self) -> None:
        """Wait until every bot has finished every job it accepted."""
        assert self.app is not None and self.app.supervisor is not None
        for child in self.app.supervisor.children.values():
            if child.actor is not None:
                await child.actor.wait_idle()


@pytest.fixture
def world(tmp_path: Path, discord_server: DiscordSandbox, openai_server: OpenAISandbox) -> World:
    return World(tmp_path, discord_server, openai_server)


@pytest.fixture
async def postgres_url(postgres_dsn: str) -> AsyncIterator[str]:
    """The local PostgreSQL, with the tables in a schema of this test's own (tests run side by side),
    dropped with everything in it after the test."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield with_search_path(postgres_dsn, schema)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    """Each store in turn (PostgreSQL in its own schema): for the tests of behaviour both must share."""
    if request.param == "postgres":
        return PostgresKind(request.getfixturevalue("postgres_url"))
    return SQLiteKind(tmp_path / "memory.sqlite3")


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


# ---------------------------------------------------------------- reliability accounting (issue 6)
#
# Tests marked ``fault`` inject a failure (network, provider, database, signal, crash); tests marked
# ``bad_input`` feed hostile or malformed input (messages, model output, bots.yaml, unauthorized
# senders). Each executed case counts once (parametrized cases individually); property-based tests
# add the number of generated examples they tried through :func:`count_generated`.

_RELIABILITY = pytest.StashKey[dict[str, int]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault: injects a failure the orchestrator must survive (counted in the summary)"
    )
    config.addinivalue_line("markers", "bad_input: feeds malformed or hostile input (counted in the summary)")
    config.stash[_RELIABILITY] = {"fault": 0, "bad_input": 0, "generated": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":  # a case skipped at setup was not tried
        return
    counts = _reliability_counts()
    if counts is None:
        return
    for marker in ("fault", "bad_input"):
        if marker in report.keywords:
            counts[marker] += 1


_CONFIG: list[pytest.Config] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG[:] = [session.config]


def _reliability_counts() -> dict[str, int] | None:
    return _CONFIG[0].stash.get(_RELIABILITY, None) if _CONFIG else None


def count_generated(n: int) -> None:
    """Add ``n`` generated bad inputs (e.g. hypothesis examples) to the summary."""
    counts = _reliability_counts()
    if counts is not None:
        counts["generated"] += n


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    counts = config.stash.get(_RELIABILITY, None)
    if not counts or not (counts["fault"] or counts["bad_input"]):
        return
    line = f"reliability: {counts['fault']} fault scenarios and {counts['bad_input']} bad inputs tried"
    if counts["generated"]:
        line += f" (plus {counts['generated']} generated bots.yaml files)"
    terminalreporter.write_line(line)
