"""PostgreSQL memory (`database: postgresql://...`): what only this store does. The behaviour it shares
with SQLite is tested on both stores (the `store_kind` tests of test_memory.py, test_data_requests.py
and test_spend.py). Each test has its tables in a schema of its own (`postgres_url`)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import asyncpg
import pytest

from orchestrator.app import config_secrets
from orchestrator.config import PostgresURL, parse_config
from orchestrator.errors import ConfigError
from orchestrator.memory import ConversationKey, NoDatabase, PostgresStore, StoreUnavailable, Turn
from orchestrator.memory.postgres import SchemaTooNew
from orchestrator.ops.logs import redactor

from .conftest import World
from .inprocess import run_cli
from .stores import PostgresKind
from .test_fleet_services import closed_port
from .waiting import until

KEY = ConversationKey("sage", 1, 2)
LOGGER = "orchestrator.memory.postgres"


async def query(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def unreachable(password: str = "") -> str:
    """A postgresql:// URL where nothing listens."""
    secret = f":{password}" if password else ""
    return f"postgresql://postgres{secret}@127.0.0.1:{closed_port()}/test"


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


# ---------------------------------------------------------------- the schema


async def test_the_tables_are_made_once_and_a_newer_schema_is_refused(postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url):
        pass
    async with PostgresStore.open(postgres_url) as store:
        await store.append_exchange(KEY, "q", "a")
    assert await query(postgres_url, "SELECT version FROM schema_version") == [(4,)]
    await query(postgres_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaTooNew, match="schema version 99, newer than this orchestrator's 4: upgrade"):
        async with PostgresStore.open(postgres_url):
            pass
    assert await query(postgres_url, "SELECT content FROM turns ORDER BY id") == [("q",), ("a",)]


@pytest.mark.bad_input
async def test_the_commands_that_only_read_find_no_database_and_make_none(postgres_url: str) -> None:
    with pytest.raises(NoDatabase, match=r"no orchestrator memory in PostgreSQL at \S+ \(no schema_version table\)"):
        async with PostgresStore.open(postgres_url, create=False):
            pass
    assert await query(postgres_url, "SELECT to_regclass('schema_version') IS NULL") == [(True,)]


# ---------------------------------------------------------------- writing


async def test_many_appends_are_written_in_one_transaction_in_append_order(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresStore.open(postgres_url) as store:
        connections = 0
        real = store._connection

        def counting() -> object:
            nonlocal connections
            connections += 1
            return real()

        monkeypatch.setattr(store, "_connection", counting)
        keys = [ConversationKey("sage", 1, user) for user in range(20)]
        for i in range(10):
            for key in keys:
                await store.append_exchange(key, f"q{i} of {key.user}", f"a{i} of {key.user}")
        await store.flush()
        assert connections == 1, "200 appends, one transaction"
    written = await PostgresKind(postgres_url).turns()
    assert [content for *_, content in written] == [
        text for i in range(10) for key in keys for text in (f"q{i} of {key.user}", f"a{i} of {key.user}")
    ]


@pytest.mark.bad_input
async def test_text_postgresql_cannot_hold_is_replaced_not_lost(postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.append_exchange(KEY, "nul\x00here", "lone \ud800 surrogate")
        await store.flush()
    written = [content for *_, content in await PostgresKind(postgres_url).turns()]
    assert written == ["nul\ufffdhere", "lone \ufffd surrogate"]


@pytest.mark.fault
async def test_refused_writes_warn_once_and_say_when_writing_works_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    kind = PostgresKind(postgres_url)
    async with PostgresStore.open(postgres_url) as store:
        await kind.refuse_answers(True)
        for i in range(3):
            await store.append_exchange(KEY, f"q{i}", f"a{i}")
            await store.flush()
        assert len(messages(caplog)) == 1 and "keeping them in memory" in messages(caplog)[0]
        await kind.refuse_answers(False)
        await store.flush()
    assert any("works again" in message for message in messages(caplog, logging.INFO))
    assert [content for *_, content in await kind.turns()] == ["q0", "a0", "q1", "a1", "q2", "a2"]


async def test_a_batch_is_written_whole_or_not_at_all(postgres_url: str) -> None:
    """The turns and the daily totals of a batch go in one statement: a refused total keeps the turns
    back too, and the next write saves each once."""
    usage = "SELECT tokens FROM daily_usage WHERE bot = 'sage'"
    async with PostgresStore.open(postgres_url) as store:
        refuse = "CREATE FUNCTION refuse_usage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'no'; END $$"
        await query(postgres_url, refuse)
        on_insert = "BEFORE INSERT ON daily_usage FOR EACH ROW EXECUTE FUNCTION refuse_usage()"
        await query(postgres_url, f"CREATE TRIGGER refuse_usage {on_insert}")
        await store.append_exchange(KEY, "q", "a")
        store.add_daily_usage("2026-12-01", "sage", "*", 40)
        await store.flush()
        assert await PostgresKind(postgres_url).turns() == [] and await query(postgres_url, usage) == []
        await query(postgres_url, "DROP FUNCTION refuse_usage CASCADE")
        await store.flush()
    assert [content for *_, content in await PostgresKind(postgres_url).turns()] == ["q", "a"]
    assert await query(postgres_url, usage) == [(40,)]


@pytest.mark.fault
async def test_connections_postgresql_closed_a_restart_cost_no_exchange(postgres_url: str) -> None:
    name = f"orchestrator_{postgres_url.rsplit('=', 1)[1]}"
    async with PostgresStore.open(f"{postgres_url}&application_name={name}") as store:
        await store.append_exchange(KEY, "before", "the restart")
        await store.flush()
        terminated = "SELECT count(pg_terminate_backend(pid)) > 0 FROM pg_stat_activity WHERE application_name = $1"
        assert await query(postgres_url, terminated, name) == [(True,)]
        await store.append_exchange(KEY, "after", "it")
        await store.flush()  # may fail on the dead connection: the exchange stays pending
        await store.flush()
        store.drop_cached("sage")
        assert [t.content for t in await store.history(KEY, 10)] == ["before", "the restart", "after", "it"]
    assert len(await PostgresKind(postgres_url).turns()) == 4


class WriteAnswerHolder:
    """A loopback TCP proxy to PostgreSQL that, once armed, holds back the answer to the store's next
    write (one statement, committed on its own) until released: the database has committed while the
    client still waits to hear so. The write is prepared first (its text goes to the server; asyncpg
    waits for that answer, and may look up its types in between), then executed: a chunk that begins
    with a Bind message naming that statement."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.url = url
        self.commit_sent = anyio.Event()
        self._armed = False
        self._statement: bytes | None = None  # the write's prepared statement, once its Parse went by
        self._released = anyio.Event()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        parts = urlsplit(self.url)
        self.url = urlunsplit(parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{port}"))
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            await listener.serve(self._pipe, task_group=tg)

    def arm(self) -> None:
        self._armed = True

    def release(self) -> None:
        self._released.set()

    async def _pipe(self, client: anyio.abc.SocketStream) -> None:
        server = await anyio.connect_tcp(*self.target)
        async with client, server, anyio.create_task_group() as tg:
            tg.start_soon(self._copy, client, server, True, tg.cancel_scope)
            await self._copy(server, client, False, tg.cancel_scope)

    async def _copy(
        self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, to_server: bool, done: anyio.CancelScope
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for chunk in source:
                if to_server and self._armed and chunk[:1] == b"P" and b"new_turns" in chunk:
                    self._statement = chunk[5 : chunk.index(b"\x00", 5) + 1]  # Parse: type, length, name
                elif to_server and self._statement and chunk[:1] == b"B" and self._statement in chunk:
                    self.commit_sent.set()  # its execution (Bind, Execute), before the server can answer it
                elif not to_server and self.commit_sent.is_set():
                    await self._released.wait()
                await sink.send(chunk)
        done.cancel()


@pytest.mark.fault
async def test_a_write_cancelled_while_its_answer_is_on_its_way_is_not_written_again(postgres_url: str) -> None:
    """Stopping (or giving up a read that waits for the pending writes) while the answer to a write is
    on its way must not put its batch back: the database may have committed it, and the close would add it again."""
    proxy = WriteAnswerHolder(postgres_url)
    usage = "SELECT tokens, usd FROM daily_usage WHERE day = '2026-12-01' AND bot = 'sage'"
    async with anyio.create_task_group() as proxies:
        await proxies.start(proxy.serve)
        async with PostgresStore.open(proxy.url, flush_interval=3600) as store:  # only flush() writes
            proxy.arm()
            store.add_daily_usage("2026-12-01", "sage", "*", 72)
            store.add_daily_spend("2026-12-01", "sage", "*", 0.0072)
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.flush)
                await proxy.commit_sent.wait()
                await until(lambda: query(postgres_url, usage))  # committed; the store awaits the answer
                tg.cancel_scope.cancel()
                proxy.release()  # the cancellation was requested first
        proxies.cancel_scope.cancel()
    assert await query(postgres_url, usage) == [(72, 0.0072)]


# ---------------------------------------------------------------- several processes


async def test_processes_share_conversations_and_usage_and_a_takeover_drops_the_cache(postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as first, PostgresStore.open(postgres_url) as second:
        await first.append_exchange(KEY, "q1", "a1")
        first.add_daily_usage("2025-01-02", "sage", "2", 10)
        await first.flush()
        assert await second.history(KEY, 10) == [Turn("user", "q1"), Turn("assistant", "a1")], "not taken for new"
        await first.append_exchange(KEY, "q2", "a2")
        await first.flush()
        assert len(await second.history(KEY, 10)) == 2, "the second process's cache"
        second.drop_cached("sage")  # it takes the bot over: another process may have answered meanwhile
        assert [t.content for t in await second.history(KEY, 10)] == ["q1", "a1", "q2", "a2"]
        second.add_daily_usage("2025-01-02", "sage", "2", 5)
        await second.flush()
        assert await anyio.to_thread.run_sync(first.load_daily_usage, "2025-01-02") == {("sage", "2"): 15}


# ---------------------------------------------------------------- PostgreSQL down


@pytest.mark.fault
async def test_unreachable_it_opens_fails_reads_at_once_and_keeps_writes_in_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = unreachable(password="pg-secret-123")
    with anyio.fail_after(20):  # a hang guard, not a timing assertion
        async with PostgresStore.open(url) as store:
            assert "does not answer" not in "".join(messages(caplog))
            [opened] = messages(caplog)
            assert "answering without memory until it does" in opened
            with pytest.raises(StoreUnavailable, match=r"PostgreSQL at postgres@127\.0\.0\.1:\d+/test failed"):
                await store.history(KEY, 10)
            await store.append_exchange(KEY, "q", "a")  # in memory; the writer keeps trying
            assert store.load_daily_usage("2025-01-02") == {}
    [lost] = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert "1 exchange(s) and the unsaved token usage are lost" in lost
    assert not any("pg-secret-123" in r.getMessage() for r in caplog.records)


@pytest.mark.fault
async def test_a_postgresql_that_never_answers_fails_a_read_within_the_timeout_instead_of_hanging() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as server:
        server.start_soon(listener.serve, silent)
        with anyio.fail_after(20):  # asyncpg alone would wait 60 s to connect
            async with PostgresStore.open(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=0.2) as store:
                with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2 s"):
                    await store.history(KEY, 10)
        server.cancel_scope.cancel()


@pytest.mark.fault
async def test_unreachable_a_command_fails_at_once_saying_where() -> None:
    with anyio.fail_after(20), pytest.raises(StoreUnavailable, match="Connect call failed"):
        async with PostgresStore.open(unreachable(), create=False):
            pass


@pytest.mark.fault
async def test_the_bot_answers_without_memory_when_postgresql_is_down(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.database = unreachable()
    world.write([{"name": "sage"}])
    async with world.running():
        [first] = await world.chat("!chat hello?")
        [second] = await world.chat("!chat still there?")
    assert first.content and second.content
    assert [len(r.body["messages"]) for r in world.openai.chat_requests] == [2, 2], "persona and question only"
    read_errors = [r for r in caplog.records if "could not read conversation memory" in r.getMessage()]
    assert len(read_errors) == 2 and isinstance(read_errors[0].exc_info[1], StoreUnavailable)  # type: ignore[index]


# ---------------------------------------------------------------- the command line


async def test_usage_export_and_forget_read_postgresql_while_run_runs_and_backup_names_pg_dump(
    world: World, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.database = postgres_url
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # these commands need no secrets
    user = str(world.discord.default_user_id)

    def cli(*argv: str) -> int:
        return run_cli(*argv, str(world.path))

    async with world.running() as app:
        await world.chat("!chat remember me")
        await world.chat("?chat and me")
        assert app.supervisor is not None
        await app.supervisor.services.store.flush()
        assert await anyio.to_thread.run_sync(cli, "usage") == 0
        today = capsys.readouterr().out.split("usage on")[1].splitlines()
        bots = {line.split()[0]: int(line.split()[1]) for line in today if line.startswith("  ") and "user" not in line}
        assert bots.keys() == {"sage", "hafez"} and all(bots.values()), today
        assert sum(line.split()[:2] == ["user", user] for line in today) == 2

        assert await anyio.to_thread.run_sync(lambda: cli("memory", "export", "--user", user)) == 0
        exported = json.loads(capsys.readouterr().out)
        said = [(t["bot"], t["content"]) for t in exported["turns"]][::2]
        assert said == [("sage", "remember me"), ("hafez", "and me")]
        assert {u["bot"] for u in exported["usage"]} == {"sage", "hafez"}

        assert await anyio.to_thread.run_sync(lambda: cli("memory", "forget", "--user", user, "--bot", "sage")) == 0
        assert f"forgot user {user} (bot 'sage'): 2 turn(s), 1 daily usage record(s)" in capsys.readouterr().out

        assert await anyio.to_thread.run_sync(lambda: cli("memory", "backup", str(world.tmp_path / "b"))) == 2
        err = capsys.readouterr().err
        assert "back it up with PostgreSQL's own tool" in err and "pg_dump --format=custom" in err
        assert not (world.tmp_path / "b").exists()
    assert await query(postgres_url, "SELECT DISTINCT bot FROM turns") == [("hafez",)]


@pytest.mark.fault
def test_a_command_on_unreachable_postgresql_says_so_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORY_URL", unreachable(password="pg-secret-123"))
    config = tmp_path / "bots.yaml"
    config.write_text(
        "providers: {local: {base_url: 'http://127.0.0.1:9/v1'}}\ndatabase_env: MEMORY_URL\n"
        "bots:\n  - {name: sage, token_env: TOKEN_SAGE, persona: p}\n",
        encoding="utf-8",
    )
    assert run_cli("memory", "export", "--user", "80351110224678912", str(config)) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL at postgres@127.0.0.1:" in err and "failed" in err and f"the database of {config}" in err
    assert "pg-secret-123" not in err


# ---------------------------------------------------------------- bots.yaml

BOTS = "providers: {local: {base_url: 'http://127.0.0.1:9/v1'}}\nbots:\n  - {name: sage, token_env: T, persona: p}\n"
ENV = {"T": "token-aaaaaaaa"}


def issues(text: str, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bots.yaml", env, base_dir=Path("/srv"))
    return [str(issue) for issue in info.value.issues]


def test_a_postgresql_url_is_the_database_and_its_password_is_a_secret() -> None:
    url = "postgresql://bots:p%40ss-word-1@db.internal:5433/memory?search_path=personas"
    config = parse_config(BOTS + "database_env: DATABASE_URL\n", "bots.yaml", {**ENV, "DATABASE_URL": url})
    assert isinstance(config.database, PostgresURL) and config.database.url == url
    assert str(config.database) == "postgresql://bots@db.internal:5433/memory"
    assert "p%40ss" not in repr(config) and config.warnings == []
    redactor.update(config_secrets(config))
    redacted = redactor.redact(f"failed: {url} / p@ss-word-1")
    assert "ss-word" not in redacted and redacted.endswith(" / ***")


def test_a_path_is_sqlite_beside_bots_yaml() -> None:
    config = parse_config(BOTS + "database: memory.sqlite3\n", "bots.yaml", ENV, base_dir=Path("/srv"))
    assert config.database == Path("/srv/memory.sqlite3")


def test_a_password_written_into_bots_yaml_works_but_is_warned_about() -> None:
    config = parse_config(BOTS + "database: postgresql://bots:hunter2-pw@db/memory\n", "bots.yaml", ENV)
    assert isinstance(config.database, PostgresURL)
    [warning] = config.warnings
    assert warning.startswith("bots.yaml:4: database: the database URL in bots.yaml carries a password")
    assert "database_env" in warning and "hunter2" not in warning


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("tail", "env", "expected"),
    [
        ("database_env: NOPE\n", {}, "bots.yaml:4: database_env: environment variable NOPE is not set"),
        (
            "database: x.sqlite3\ndatabase_env: DB\n",
            {"DB": "postgresql://h/d"},
            "bots.yaml:5: database_env: set either",
        ),
        ("database_env: postgresql://h/d\n", {}, "bots.yaml:4: database_env: must be the *name* of an environment"),
        (
            "database: mysql://u:pw@h/d\n",
            {},
            "bots.yaml:4: database: the database must be a SQLite file path or a postgresql:// URL, not a mysql:// URL",
        ),
        ("database_env: DB\n", {"DB": "postgresql://h:port/d"}, "bots.yaml:4: database_env: the database URL's port"),
    ],
)
def test_a_database_that_cannot_be_is_refused_with_its_line(tail: str, env: dict[str, str], expected: str) -> None:
    [problem] = issues(BOTS + tail, {**ENV, **env})
    assert problem.startswith(expected), problem
    assert "pw@" not in problem


@pytest.mark.bad_input
def test_a_fleet_needs_postgresql() -> None:
    fleet = "fleet: {redis_url: 'redis://127.0.0.1:6379/0'}\n"
    [problem] = issues(BOTS + "database: memory.sqlite3\n" + fleet)
    assert problem.startswith("bots.yaml:5: fleet: a fleet needs PostgreSQL: its nodes share memory, and SQLite")
    assert "postgresql://" in problem
    config = parse_config(BOTS + "database: postgresql://h/d\n" + fleet, "bots.yaml", ENV)
    assert config.fleet is not None and config.fleet.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert config.fleet.lease_ttl == 6.0 and config.fleet.node_id
    [ttl] = issues(BOTS + "database: postgresql://h/d\nfleet: {lease_ttl: 0}\n")
    assert ttl.startswith("bots.yaml:5: fleet.lease_ttl: Input should be greater than or equal to 0.3")


@pytest.mark.bad_input
def test_check_says_a_fleet_needs_postgresql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T", "token-aaaaaaaa")
    config = tmp_path / "bots.yaml"
    config.write_text(BOTS + "fleet: {redis_url: 'redis://127.0.0.1:6379/0'}\n", encoding="utf-8")
    assert run_cli("check", str(config)) == 2
    assert "fleet: a fleet needs PostgreSQL" in capsys.readouterr().err


async def test_turns_keep_their_speaker_and_message_ids(postgres_url: str) -> None:
    key = ConversationKey("sage", 1, 0)
    async with PostgresStore.open(postgres_url) as store:
        await store.append_exchange(key, "hi", "hello", speaker="Alice", question_id=11, answer_ids=(12, 13))
    async with PostgresStore.open(postgres_url) as reopened:
        assert await reopened.history(key, 10) == [
            Turn("user", "hi", "Alice", (11,)),
            Turn("assistant", "hello", "", (12, 13)),
        ]
