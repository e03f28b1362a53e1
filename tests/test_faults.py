"""Faults survived: gateway drops, Discord REST 429/5xx, provider failures, SQLite trouble, signals,
and a handler that crashes. Nothing delivered is lost, and the sibling bot keeps answering.

Every test here is marked ``fault`` (counted in the reliability line of the test summary).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.abc import Process

from orchestrator.app import App
from orchestrator.discord_io.streaming import CUT_NOTE
from orchestrator.memory import SQLiteStore
from orchestrator.persona import bot as persona_bot
from orchestrator.persona.replies import APOLOGY
from orchestrator.runtime.supervisor import BotState
from orchestrator.sandbox.discord_server import RestFault
from orchestrator.sandbox.openai_server import Fault, echo_reply, said

from .conftest import World, token_for
from .fake_time import FakeTime
from .processes import base_env, orchestrator_run
from .waiting import until

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parent.parent


def two_bots(world: World, *, stream: bool = False, **provider: object) -> None:
    """sage (``!``) is the bot under fault; hafez (``?``) is the sibling that must not notice."""
    world.write(
        [{"name": "sage", "stream": stream}, {"name": "hafez", "prefix": "?"}],
        providers={
            "openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "timeout": 10, **provider}
        },
    )


def is_answer(message: object, question: str) -> bool:
    """The sandbox's default answer echoes the question; error texts never do."""
    content = getattr(message, "content", "")
    return content.endswith(f"| {question}")


async def sibling_answers(world: World, text: str = "?chat are you fine?") -> None:
    [reply] = await world.chat(text)
    assert reply.author_id == world.bot_ids["hafez"]
    assert is_answer(reply, text.removeprefix("?chat "))


def turns_in(db: Path) -> dict[tuple[str, int, int], list[tuple[str, str]]]:
    """Every conversation in the SQLite file: (bot, channel, user) -> [(role, content), ...] in order."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT bot, channel, user, role, content FROM turns ORDER BY id").fetchall()
    conversations: dict[tuple[str, int, int], list[tuple[str, str]]] = {}
    for bot, channel, user, role, content in rows:
        conversations.setdefault((bot, channel, user), []).append((role, content))
    return conversations


def assert_whole_exchanges(db: Path) -> None:
    """Nothing half-written: every conversation alternates user/assistant and ends with an answer."""
    for key, turns in turns_in(db).items():
        assert len(turns) % 2 == 0, f"{key} has an unanswered question stored"
        assert [role for role, _ in turns] == ["user", "assistant"] * (len(turns) // 2), key


# ---------------------------------------------------------------- Discord gateway


@pytest.mark.parametrize(
    ("drop", "resumes", "identifies", "restarts"),
    [
        pytest.param({"resumable": True}, 1, 1, 0, id="resumable-session-is-resumed"),
        pytest.param({"resumable": False}, 0, 2, 0, id="invalidated-session-identifies-again"),
        pytest.param({"code": 4009}, 1, 2, 0, id="timed-out-session-resume-refused-then-identify"),
        pytest.param({"code": 4012}, 0, 2, 1, id="fatal-close-code-restarts-only-that-bot"),
    ],
)
async def test_gateway_drop_is_survived_and_the_sibling_never_reconnects(
    world: World, drop: dict, resumes: int, identifies: int, restarts: int
) -> None:
    two_bots(world)
    sage, hafez = token_for("sage"), token_for("hafez")
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        sibling_actor = supervisor.children["hafez"].actor
        await world.chat("!chat before the drop")
        await world.discord.drop_gateway(sage, **drop)
        await sibling_answers(world)
        await world.discord.wait_for_ready(sage)
        if restarts:
            await supervisor.wait_until(lambda s: s.children["sage"].restarts == restarts)
            await supervisor.wait_for_state("sage", BotState.RUNNING)
        [after] = await world.chat("!chat after the drop")
        assert supervisor.children["hafez"].actor is sibling_actor
        assert supervisor.children["sage"].restarts == restarts
    assert is_answer(after, "after the drop") and after.author_id == world.bot_ids["sage"]
    assert (world.discord.resume_count[sage], world.discord.identify_count[sage]) == (resumes, identifies)
    assert (world.discord.resume_count[hafez], world.discord.identify_count[hafez]) == (0, 1)
    history = world.openai.chat_requests[-1].body["messages"]
    assert [said(m) for m in history[1:2]] == ["before the drop"], "memory survived the reconnect"


# ---------------------------------------------------------------- Discord REST


@pytest.mark.parametrize(
    ("stream", "fault"),
    [
        pytest.param(False, RestFault(429, "POST", "/messages"), id="send-429-per-route"),
        pytest.param(False, RestFault(429, "POST", "/messages", global_=True), id="send-429-global"),
        pytest.param(False, RestFault(500, "POST", "/messages"), id="send-500"),
        pytest.param(False, RestFault(503, "POST", "/messages"), id="send-503"),
        pytest.param(False, RestFault(503, "POST", "/messages", after_handling=True), id="send-503-after-creating"),
        pytest.param(True, RestFault(503, "POST", "/messages"), id="stream-first-send-503"),
        pytest.param(
            True, RestFault(503, "POST", "/messages", after_handling=True), id="stream-first-send-503-after-creating"
        ),
        pytest.param(True, RestFault(429, "PATCH", "/messages/"), id="stream-edit-429"),
        pytest.param(True, RestFault(502, "PATCH", "/messages/"), id="stream-edit-502"),
        pytest.param(True, RestFault(503, "PATCH", "/messages/"), id="stream-edit-503"),
    ],
)
async def test_discord_rate_limits_and_server_errors_still_deliver_the_answer(
    world: World, stream: bool, fault: RestFault
) -> None:
    two_bots(world, stream=stream)
    answer = " ".join(f"word{i}" for i in range(30))
    world.openai.queue_replies(answer)
    if stream:
        world.openai.tokens_per_second = 60  # slow enough that the answer is edited while it grows
    async with world.running():
        world.discord.inject_rest(fault)
        messages = await world.chat("!chat a question")
        world.openai.tokens_per_second = None
        await sibling_answers(world)
    assert fault not in world.discord.faults, "the fault was hit"
    assert any(status == fault.status for _method, _path, status in world.discord.rest_log)
    assert [m.content for m in messages if m.author_id == world.bot_ids["sage"] and not m.deleted] == [answer]
    if stream:
        assert messages[0].edits, "the streamed answer was edited in place"


@pytest.mark.parametrize(
    ("error", "failures", "delivered"),
    [
        pytest.param(
            aiohttp.ClientConnectionError("Connection reset by peer"), 1, True, id="connection-reset-is-retried"
        ),
        pytest.param(RuntimeError("Session is closed"), 2, False, id="send-and-apology-both-fail"),
    ],
)
async def test_a_send_failing_outside_http_never_takes_other_answers_down(
    world: World, monkeypatch: pytest.MonkeyPatch, error: Exception, failures: int, delivered: bool
) -> None:
    two_bots(world)
    world.openai.latency = 0.3  # both questions are in flight together
    bob = world.discord.add_user("bob")
    async with world.running() as app:
        assert app.supervisor is not None
        actor = app.supervisor.children["sage"].actor
        assert actor is not None
        http = actor.client.http
        original = http.request
        raised = []

        async def flaky(route, **kwargs):  # type: ignore[no-untyped-def]
            if route.method == "POST" and route.path.endswith("/messages") and len(raised) < failures:
                raised.append(route)
                raise error
            return await original(route, **kwargs)

        monkeypatch.setattr(http, "request", flaky)
        first = await world.discord.post("!chat first")
        await world.openai.wait_for_requests(1)
        second = await world.discord.post("!chat second", author_id=bob)
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(second["id"]))
        await world.idle()
        await sibling_answers(world)
        assert app.supervisor.children["sage"].restarts == 0 and app.supervisor.children["sage"].actor is actor
    replies = {m.reference_id: m for m in world.discord.sent}
    assert len(raised) == failures
    assert is_answer(replies[int(second["id"])], "second"), "the other conversation was answered"
    if delivered:
        assert is_answer(replies[int(first["id"])], "first")
    else:
        assert int(first["id"]) not in replies


# ---------------------------------------------------------------- model provider

PROVIDER_FAULTS = [
    pytest.param(Fault.timeout(5), "took too long", id="timeout"),
    pytest.param(Fault.server_error(500), "busy", id="server-error-500"),
    pytest.param(Fault.server_error(503), "busy", id="server-error-503"),
    pytest.param(Fault.rate_limited(0.05), "busy", id="rate-limited-429"),
    pytest.param(Fault.malformed_json(), "could not read", id="malformed-json"),
    pytest.param(Fault.cut(after=2), None, id="cut-mid-way"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(("fault", "explained"), PROVIDER_FAULTS)
async def test_provider_failure_is_explained_and_the_next_chat_works(
    world: World, fault: Fault, explained: str | None, stream: bool
) -> None:
    two_bots(world, stream=stream, timeout=0.5, max_retries=0)
    world.openai.inject(fault)
    async with world.running():
        [failed] = await world.chat("!chat first")
        [after] = await world.chat("!chat second")
        await sibling_answers(world)
    if explained is None and stream:  # a cut stream keeps its partial text, marked as cut
        assert failed.content.startswith("[gpt-4o-mini] You") and failed.content.endswith(CUT_NOTE)
    elif explained is None:  # without streaming, the connection closes before any answer
        assert "unavailable" in failed.content
    else:
        assert explained in failed.content
    assert "Traceback" not in failed.content and "provider 'openai'" not in failed.content
    assert is_answer(after, "second")
    second = world.openai.chat_requests[1].body["messages"]
    assert [said(m) for m in second[1:]] == ["second"], "a failed answer is not remembered"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.rate_limited(0.05), id="429"),
        pytest.param(Fault.server_error(500), id="500"),
        pytest.param(Fault.server_error(503), id="503"),
    ],
)
async def test_one_provider_hiccup_is_retried_invisibly(world: World, fault: Fault) -> None:
    two_bots(world)
    world.openai.inject(fault)
    async with world.running():
        [reply] = await world.chat("!chat hello")
    assert is_answer(reply, "hello")
    assert [r.status for r in world.openai.chat_requests] == [fault.status, 200]


@pytest.mark.parametrize(
    "probe_fault",
    [
        pytest.param(Fault.rate_limited(0.01), id="probe-rate-limited"),
        pytest.param(Fault(status=400), id="probe-bad-request"),
        pytest.param(Fault.server_error(500), id="probe-server-error"),
    ],
)
async def test_circuit_breaker_closes_again_whatever_its_probe_met(world: World, probe_fault: Fault) -> None:
    cooldown = 0.3
    two_bots(world, max_retries=0, breaker_threshold=1, breaker_cooldown=cooldown)
    world.openai.inject(Fault.server_error(500), probe_fault)
    async with world.running() as app:
        assert app.pool is not None
        fake = FakeTime().install(app.pool)
        [opened] = await world.chat("!chat the provider fails")
        [fast] = await world.chat("!chat while the circuit is open")
        fake.advance(cooldown)
        [probed] = await world.chat("!chat the probe")
        fake.advance(cooldown)  # a failed probe opened the circuit again
        [after] = await world.chat("!chat the provider is fine again")
    assert "busy" in opened.content and "unavailable" in fast.content
    assert "unavailable" not in probed.content, "the probe reached the provider"
    assert is_answer(after, "the provider is fine again"), "the circuit closed again"
    assert [r.status for r in world.openai.chat_requests] == [500, probe_fault.status, 200]


# ---------------------------------------------------------------- SQLite


def store_of(app: App) -> SQLiteStore:
    assert app.supervisor is not None
    store = app.supervisor.services.store
    assert isinstance(store, SQLiteStore)
    return store


def on_store(store: SQLiteStore, sql: str) -> None:
    with store._lock:
        store._db.execute(sql)


@contextlib.contextmanager
def locked_by_another_connection(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    on_store(store, "PRAGMA busy_timeout=200")  # the production 2 s, shortened so the test stays quick
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


@contextlib.contextmanager
def read_only(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Running as root ignores file modes, so ask SQLite itself to refuse writes ("attempt to write a
    # readonly database", SQLITE_READONLY: what a read-only file or directory produces).
    on_store(store, "PRAGMA query_only=ON")
    try:
        yield
    finally:
        on_store(store, "PRAGMA query_only=OFF")


@contextlib.contextmanager
def disk_full(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with store._lock:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")  # no new page: "database or disk is full"
    try:
        yield
    finally:
        on_store(store, "PRAGMA max_page_count=1073741823")


@contextlib.contextmanager
def insert_fails(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def full(*_args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_insert", full)
        yield


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(locked_by_another_connection, id="busy-exclusive-lock"),
        pytest.param(read_only, id="read-only"),
        pytest.param(disk_full, id="disk-full-max-page-count"),
        pytest.param(insert_fails, id="disk-full-on-insert"),
    ],
)
async def test_database_trouble_still_answers_and_keeps_serving(
    world: World, monkeypatch: pytest.MonkeyPatch, fault: Callable[..., contextlib.AbstractContextManager[None]]
) -> None:
    two_bots(world)
    long_answer = " ".join(["memory"] * 1500)  # needs new database pages, so a page limit bites
    world.openai.set_reply(
        lambda body: long_answer if said(body["messages"][-1]) == "during the fault" else echo_reply(body)
    )
    async with world.running() as app:
        store = store_of(app)
        await world.chat("!chat remember this")
        with fault(store, monkeypatch):
            during = await world.chat("!chat during the fault")
            await sibling_answers(world, "?chat sibling during the fault")
        [after] = await world.chat("!chat after the fault")
    assert " ".join(m.content for m in during).split() == long_answer.split(), "the user got the whole answer"
    assert is_answer(after, "after the fault")
    history = [said(m) for m in world.openai.chat_requests[-1].body["messages"][1:]]
    assert history[0] == "remember this" and history[-1] == "after the fault"
    db = world.tmp_path / "memory.sqlite3"
    assert_whole_exchanges(db)
    saved = [content for turns in turns_in(db).values() for _role, content in turns]
    assert "after the fault" in saved, "memory works again once the fault is gone"


async def test_read_only_database_file_at_startup_still_answers(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    two_bots(world)
    async with world.running():  # create the database and one exchange
        await world.chat("!chat remember this")
    connect = sqlite3.connect

    def read_only_connect(path: str, **kwargs: object) -> sqlite3.Connection:
        return connect(f"file:{path}?mode=ro", uri=True, **kwargs)  # what a file without write permission gives

    monkeypatch.setattr("orchestrator.memory.sqlite.sqlite3.connect", read_only_connect)
    async with world.running():
        [reply] = await world.chat("!chat still there?")
        await sibling_answers(world)
    assert is_answer(reply, "still there?")
    assert said(world.openai.chat_requests[-2].body["messages"][1]) == "remember this", "memory was read"


# ---------------------------------------------------------------- signals, on a real process


@contextlib.asynccontextmanager
async def orchestrator_process(world: World, log: Path) -> AsyncIterator[Process]:
    """`orchestrator run` on the world's bots.yaml, once every bot is online."""
    async with orchestrator_run(world.path, log, base_env() | world.env()) as process:
        for name in world.bot_ids:
            await world.discord.wait_for_ready(token_for(name), timeout=30)
        yield process


async def test_sigterm_with_two_bots_mid_answer_delivers_and_remembers_both(world: World) -> None:
    two_bots(world)
    world.openai.latency = 1.0
    log = world.tmp_path / "run.log"
    async with orchestrator_process(world, log) as process:
        first = await world.discord.post("!chat sage, still there?")
        second = await world.discord.post("?chat hafez, still there?")
        await world.openai.wait_for_requests(2)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await process.wait()
    assert code == 0, log.read_text()
    replies = {m.reference_id: m for m in world.discord.sent}
    assert is_answer(replies[int(first["id"])], "sage, still there?")
    assert is_answer(replies[int(second["id"])], "hafez, still there?")
    saved = turns_in(world.tmp_path / "memory.sqlite3")
    assert sorted(len(turns) for turns in saved.values()) == [2, 2]
    assert_whole_exchanges(world.tmp_path / "memory.sqlite3")


async def test_sigkill_mid_answer_keeps_every_written_exchange_and_nothing_half_written(world: World) -> None:
    world.write(
        [{"name": "sage"}, {"name": "hafez", "prefix": "?", "stream": True}],
        providers={"openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "timeout": 60}},
    )
    bob = world.discord.add_user("bob")
    log = world.tmp_path / "run.log"
    db = world.tmp_path / "memory.sqlite3"
    async with orchestrator_process(world, log) as process:
        [one] = await chat_and_wait(world, "!chat first question")
        [two] = await chat_and_wait(world, "?chat streamed first", author_id=bob)
        world.openai.inject(Fault.timeout(30))  # sage's next answer hangs at the provider...
        await world.discord.post("!chat second question")
        await world.openai.wait_for_requests(3)
        world.openai.queue_replies(" ".join(f"w{i}" for i in range(200)))
        world.openai.tokens_per_second = 4  # ...and hafez is half-way through streaming
        partial = await world.discord.post("?chat streamed second", author_id=bob)
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(partial["id"]), timeout=20)
        # exchanges are written behind, by another process: on disk within the store's flush_interval
        await until(lambda: sorted(len(turns) for turns in turns_in(db).values()) == [2, 2], within=10)
        process.kill()
        await process.wait()
    assert [said(m) for m in world.openai.chat_requests[2].body["messages"][1:]] == [
        "first question",
        one.content,
        "second question",
    ], "the first exchange was committed before the next question was asked"
    before_restart = turns_in(db)
    assert_whole_exchanges(db)
    stored = sorted(content for turns in before_restart.values() for role, content in turns if role == "assistant")
    assert stored == sorted([one.content, two.content]), "every delivered answer, and only those, is in memory"

    world.openai.tokens_per_second = None
    async with orchestrator_process(world, log) as process:
        await chat_and_wait(world, "!chat third question")
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 0
    assert [said(m) for m in world.openai.chat_requests[-1].body["messages"][1:]] == [
        "first question",
        one.content,
        "third question",
    ]
    assert_whole_exchanges(db)


async def chat_and_wait(world: World, text: str, **post: object) -> list:
    message = await world.discord.post(text, **post)  # type: ignore[arg-type]
    reply_to = int(message["id"])
    return await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == reply_to, timeout=20)


# ---------------------------------------------------------------- a handler that raises


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_unexpected_error_in_a_handler_apologises_once_and_keeps_serving(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    two_bots(world, stream=stream)
    reports: list[dict] = []
    monkeypatch.setattr(persona_bot, "report_exception", lambda *args, **kwargs: reports.append(kwargs))
    async with world.running() as app:
        pool = app.pool
        assert pool is not None
        name = "stream" if stream else "complete"
        original = getattr(pool, name)
        calls = []

        def broken_once(call):  # type: ignore[no-untyped-def]
            calls.append(call)
            if len(calls) == 1:
                raise RuntimeError("an unexpected bug")
            return original(call)

        monkeypatch.setattr(pool, name, broken_once)
        [apology] = await world.chat("!chat trigger the bug")
        [after] = await world.chat("!chat and now?")
        await sibling_answers(world)
        assert app.supervisor is not None
        assert app.supervisor.children["sage"].restarts == 0
    assert apology.content == APOLOGY
    assert is_answer(after, "and now?")
    logged = [r for r in caplog.records if "unexpected error while handling" in r.getMessage()]
    assert len(logged) == 1 and "an unexpected bug" in (logged[0].exc_text or str(logged[0].exc_info))
    assert [r["bot"] for r in reports] == ["sage"]


async def test_a_second_sigint_while_draining_stops_at_once_and_quietly(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.latency = 8.0  # shorter than the drain timeout (10 s): a graceful stop would deliver it
    stderr = ""

    async def read_until(process: Process, marker: str) -> None:
        nonlocal stderr
        assert process.stderr is not None
        with anyio.fail_after(30):
            async for chunk in process.stderr:
                stderr += chunk.decode(errors="replace")
                if marker in stderr:
                    return
        assert marker == "", f"no {marker!r} in {stderr}"  # the end of the output was what we waited for

    async with await anyio.open_process(
        [sys.executable, "-m", "orchestrator", "run", str(world.path), "--no-watch"],
        cwd=ROOT,
        env=base_env() | world.env(),
    ) as process:
        await read_until(process, "bot sage is online")
        slow = await world.discord.post("!chat a slow question")
        await world.openai.wait_for_requests(1)
        process.send_signal(signal.SIGINT)
        await read_until(process, "SIGINT: finishing answers in flight")
        process.send_signal(signal.SIGINT)
        await read_until(process, "")
        with anyio.fail_after(30):
            code = await process.wait()
    assert code == 130, stderr
    assert "second signal: stopping now" in stderr
    assert "Traceback" not in stderr
    assert not [m for m in world.discord.sent if m.reference_id == int(slow["id"])], "it did not wait for the answer"


# ---------------------------------------------------------------- Discord refusing what a bot sends


async def test_discord_refusing_an_answer_is_logged_and_counted_as_an_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    two_bots(world)
    async with world.running(health_port=0) as app:
        world.discord.inject_rest(RestFault(403, "POST", "/messages"))
        with caplog.at_level(logging.ERROR):
            await world.discord.post("!chat are you allowed to answer?")
            await world.openai.wait_for_requests(1)
            await world.idle()
        await sibling_answers(world)
        assert app.supervisor is not None
        sage = app.supervisor.children["sage"]
        metrics = app.metrics.exposition().decode()
    assert "bot sage: Discord refused the answer (HTTP 403" in caplog.text
    assert (sage.counters.errors, sage.counters.answered) == (1, 0)
    assert 'orchestrator_handler_errors_total{bot="sage"} 1.0' in metrics


async def test_a_streamed_update_refused_by_discord_is_logged_counted_and_shown_by_the_next(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    two_bots(world, stream=True)
    answer = " ".join(f"word{i}" for i in range(120))
    world.openai.queue_replies(answer)
    world.openai.tokens_per_second = 60  # ~2 s: the answer is edited while it grows
    async with world.running() as app:
        world.discord.inject_rest(RestFault(403, "PATCH", "/messages/"))  # the first edit, an intermediate one
        with caplog.at_level(logging.WARNING):
            [message] = await world.chat("!chat a long story")
        assert app.supervisor is not None
        errors = app.supervisor.children["sage"].counters.errors
    assert message.content == answer, "the final text was shown all the same"
    assert any(status == 403 for _method, _path, status in world.discord.rest_log)
    assert "bot sage: could not update a streamed answer (Forbidden: 403" in caplog.text
    assert errors == 1
