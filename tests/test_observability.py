"""Operations: /metrics, /healthz, ``orchestrator status``, JSON logs, Sentry, and no secret anywhere.

Everything runs the real app (:class:`World`) against the loopback Discord and OpenAI servers.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio
import discord
import pytest
import sentry_sdk
from prometheus_client.parser import text_string_to_metric_families
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from orchestrator import cli
from orchestrator.app import App
from orchestrator.llm import transport
from orchestrator.ops import logs, sentry
from orchestrator.ops.health import HealthPortError
from orchestrator.ops.logs import build_handler, redactor, setup_logging
from orchestrator.ops.metrics import error_kind
from orchestrator.ops.sentry import report_exception, scrub
from orchestrator.persona import bot as persona_bot
from orchestrator.runtime.supervisor import BotState
from orchestrator.sandbox.openai_server import Fault

from .conftest import API_KEY, World, token_for


class SkewedClock:
    """Stands for the ``time`` module: the real monotonic time plus ``skew``, which a test moves on
    to stand for time spent without spending it."""

    def __init__(self) -> None:
        self.skew = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skew


BAD_TOKEN = "bad-discord-token-secret-7777"
REFUSED_KEY = "sk-refused-secret-key-4242"
DSN = "https://0123456789abcdef@sentry.invalid/42"


# ---------------------------------------------------------------- helpers


async def get(app: App, path: str) -> tuple[int, str, str]:
    """GET ``path`` from the app's health server: (status, content type, body)."""
    assert app.health_port_bound is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{app.health_port_bound}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse Prometheus text: {(sample name, labels): value}."""
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


class CapturingTransport(Transport):
    """Sentry transport that keeps envelopes in memory instead of sending them."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    @property
    def events(self) -> list[dict]:
        return [event for envelope in self.envelopes if (event := envelope.get_event()) is not None]

    def serialized(self) -> str:
        return "\n".join(envelope.serialize().decode("utf-8", "replace") for envelope in self.envelopes)


@pytest.fixture
def sentry_transport() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry.set_bot_tag_source(None)


@pytest.fixture
def root_logs() -> Iterator[dict[str, io.StringIO]]:
    """Everything logged at DEBUG, through a plain (non-redacting) text handler and our JSON handler."""
    streams = {"plain": io.StringIO(), "json": io.StringIO()}
    plain = logging.StreamHandler(streams["plain"])
    plain.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers = [plain, build_handler("json", streams["json"])]
    root, discord_logger = logging.getLogger(), logging.getLogger("discord")
    levels = root.level, discord_logger.level
    root.setLevel(logging.DEBUG)
    discord_logger.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield streams
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(levels[0])
        discord_logger.setLevel(levels[1])


# ---------------------------------------------------------------- metrics


async def test_added_latency_counts_the_orchestrators_time_and_not_the_providers(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.latency = 0.05
    async with world.running(health_port=0) as app:
        await world.chat("!chat one")
        await world.chat("!chat two")
        _status, _type, text = await get(app, "/metrics")
    parsed = samples(text)

    def added(part: str, sample: str) -> float:
        return value(parsed, f"orchestrator_added_latency_seconds_{sample}", bot="sage", part=part)

    assert [added(part, "count") for part in ("inbound", "outbound", "total")] == [2, 2, 2]
    assert added("inbound", "sum") > 0 and added("outbound", "sum") > 0
    assert added("total", "sum") == pytest.approx(added("inbound", "sum") + added("outbound", "sum"))
    # whatever the machine's load, the provider's 0.05 s per answer is in the answer's latency, not in
    # the orchestrator's share (a lower bound by construction, so no upper bound on time is needed)
    answered = value(parsed, "orchestrator_answer_latency_seconds_sum", bot="sage")
    assert answered - added("total", "sum") >= 2 * 0.05


async def test_added_latency_starts_when_the_event_is_decoded_not_when_its_message_is_built(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time discord.py takes to build a Message from the event is the orchestrator's too."""
    build = discord.Message.__init__
    clock = SkewedClock()

    def slow_build(self: discord.Message, *args: Any, **kwargs: Any) -> None:
        clock.skew += 0.3  # as if the loop took 0.3 s to build it
        build(self, *args, **kwargs)

    monkeypatch.setattr(discord.Message, "__init__", slow_build)
    monkeypatch.setattr(persona_bot, "time", clock)  # where the event's decoding is timed ...
    monkeypatch.setattr(transport, "time", clock)  # ... and where the request is
    world.write([{"name": "sage"}])
    async with world.running(health_port=0) as app:
        await world.chat("!chat one")
        _status, _type, text = await get(app, "/metrics")
    inbound = value(samples(text), "orchestrator_added_latency_seconds_sum", bot="sage", part="inbound")
    assert inbound >= 0.3


async def test_metrics_count_chats_latency_provider_errors_quota_and_tokens(world: World) -> None:
    world.write(
        [{"name": "sage"}, {"name": "hafez", "prefix": "?", "quota": {"requests_per_minute": 1}}],
        providers={"openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "max_retries": 0}},
    )
    async with world.running(health_port=0) as app:
        await world.chat("!chat one")
        await world.chat("!chat two")
        world.openai.inject(Fault.server_error(503))
        [busy] = await world.chat("?chat you there?")
        [refused] = await world.chat("?chat and now?")
        status, content_type, text = await get(app, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "busy" in busy.content and "requests per minute" in refused.content
    parsed = samples(text)
    assert value(parsed, "orchestrator_chats_total", bot="sage") == 2
    assert value(parsed, "orchestrator_answers_total", bot="sage") == 2
    assert value(parsed, "orchestrator_chats_total", bot="hafez") == 2
    assert value(parsed, "orchestrator_answers_total", bot="hafez") == 0
    assert value(parsed, "orchestrator_answer_latency_seconds_count", bot="sage") == 2
    assert 0 < value(parsed, "orchestrator_answer_latency_seconds_sum", bot="sage") < 10
    assert value(parsed, "orchestrator_answer_latency_seconds_bucket", bot="sage", le="+Inf") == 2
    assert value(parsed, "orchestrator_provider_errors_total", provider="openai", kind="busy") == 1
    assert value(parsed, "orchestrator_provider_requests_total") == 3
    rejections = {"bot": "hafez", "scope": "bot", "limit": "requests_per_minute"}
    assert value(parsed, "orchestrator_quota_rejections_total", **rejections) == 1
    assert value(parsed, "orchestrator_tokens_total", bot="sage", provider="openai") > 0
    assert ("orchestrator_tokens_total", frozenset({("bot", "hafez"), ("provider", "openai")})) not in parsed
    assert value(parsed, "orchestrator_bot_state", bot="sage", state="running") == 1
    assert value(parsed, "orchestrator_bot_state", bot="sage", state="failed") == 0
    assert value(parsed, "orchestrator_bot_restarts_total", bot="sage") == 0
    assert value(parsed, "orchestrator_config_reload_failed") == 0
    # hafez ('?') dropped sage's two chats and replies undecoded
    assert value(parsed, "orchestrator_gateway_events_dropped_total", bot="hafez") == 4


def test_error_kinds_are_short_snake_case() -> None:
    names = (
        "ProviderAuthError",
        "ProviderBusy",
        "ProviderBadResponse",
        "ProviderTimeout",
        "ProviderModelNotFound",
        "ProviderRefused",
    )
    assert [error_kind(n) for n in names] == ["auth", "busy", "bad_response", "timeout", "model_not_found", "refused"]


async def test_each_app_has_its_own_registry(world: World) -> None:
    world.write([{"name": "sage"}])
    first, second = App(world.load()), App(world.load())
    first.metrics.observe_answer("sage", 1.0)
    assert first.metrics.registry is not second.metrics.registry
    assert b'orchestrator_answer_latency_seconds_count{bot="sage"} 1.0' in first.metrics.exposition()
    assert b'bot="sage"' not in second.metrics.exposition()


# ---------------------------------------------------------------- health and status


async def test_healthz_reports_every_bot_and_status_prints_them(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.write([{"name": "good"}, {"name": "bad", "prefix": "?"}])
    async with world.running(world.load({"TOKEN_BAD": BAD_TOKEN}), health_port=0) as app:
        await world.chat("!chat hello")
        status, content_type, text = await get(app, "/healthz")
        args = cli.build_parser().parse_args(["status", "--health-port", str(app.health_port_bound)])
        code = await anyio.to_thread.run_sync(args.func, args)
    assert status == 200 and content_type.startswith("application/json")
    report = json.loads(text)
    assert report["status"] == "ok" and report["last_reload_error"] is None
    good, bad = report["bots"]["good"], report["bots"]["bad"]
    assert good["state"] == "running" and good["uptime_s"] >= 0 and good["restarts"] == 0
    assert (good["chats"], good["answered"]) == (1, 1)
    assert good["usage"]["requests_last_minute"] == 1 and good["usage"]["tokens_today"] > 0
    assert (good["provider"], good["model"]) == ("openai", "gpt-4o-mini")
    assert bad["state"] == "failed" and "refused the token (401)" in bad["last_error"]

    out = capsys.readouterr().out
    assert code == 1, "a failed bot makes `status` exit non-zero"
    lines = out.splitlines()
    assert lines[0].endswith("/healthz: ok")
    assert lines[1].split()[:4] == ["BOT", "STATE", "UPTIME", "RESTARTS"]
    assert lines[2].split()[:2] == ["bad", "failed"] and "refused the token (401)" in lines[2]
    good_line = lines[3].split()
    assert good_line[:2] == ["good", "running"] and good_line[-5:] == [
        "0",
        "1",
        "1",
        "1",
        str(good["usage"]["tokens_today"]),
    ]
    assert BAD_TOKEN not in out


async def test_healthz_is_503_while_stopping(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.latency = 0.5
    async with world.running(health_port=0) as app:
        await world.discord.post("!chat slow question")
        await world.openai.wait_for_requests(1)
        app.request_stop()
        status, _, text = await get(app, "/healthz")
    assert status == 503 and json.loads(text)["status"] == "stopping"
    assert app.health is not None and app.supervisor is not None
    assert app.supervisor.children["sage"].state is BotState.STOPPED


async def test_health_port_from_bots_yaml(world: World) -> None:
    world.write([{"name": "sage"}], health_port=0)
    async with world.running() as app:
        status, _, _ = await get(app, "/healthz")
    assert status == 200


async def test_a_taken_health_port_stops_the_app_before_any_bot_connects(world: World) -> None:
    world.write([{"name": "sage"}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = App(world.load(), handle_signals=False, watch=False, health_port=taken.getsockname()[1])
        with pytest.raises(ExceptionGroup) as raised:
            await app.run()
    assert raised.group_contains(HealthPortError, match="cannot serve /healthz on 127.0.0.1")
    assert not world.discord.identify_count.get(token_for("sage"))


def test_status_without_a_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["status", "--url", "http://127.0.0.1:9/"])
    assert args.func(args) == 2
    assert "cannot read http://127.0.0.1:9/healthz" in capsys.readouterr().err


# ---------------------------------------------------------------- logs


async def test_json_log_lines_parse_and_name_their_bot(world: World) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("INFO", "json", stream)
    try:
        world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
        async with world.running():
            await world.chat("!chat hello")
            await world.chat("?chat سلام")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records and all({"time", "level", "bot", "logger", "message"} <= record.keys() for record in records)
    online = {record["bot"] for record in records if " is online as " in record["message"]}
    assert online == {"sage", "hafez"}
    assert all(record["bot"] in ("sage", "hafez") for record in records if record["message"].startswith("bot "))


async def test_no_secret_in_any_log_record_even_through_foreign_handlers(
    world: World, root_logs: dict[str, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world.write(
        [
            {"name": "sage", "provider": "openai"},
            {"name": "hafez", "prefix": "?", "provider": "other"},
            {"name": "bad", "prefix": "$", "provider": "openai"},
        ],
        providers={
            "openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY"},
            "other": {"base_url": world.openai.base_url, "api_key_env": "OTHER_KEY"},
        },
    )
    secrets = [API_KEY, REFUSED_KEY, BAD_TOKEN, token_for("sage"), token_for("hafez")]
    async with world.running(world.load({"OTHER_KEY": REFUSED_KEY, "TOKEN_BAD": BAD_TOKEN})) as app:
        assert app.supervisor is not None and app.supervisor.children["bad"].state is BotState.FAILED
        await world.chat("!chat hello")
        [refused] = await world.chat("?chat hello")
        await world.discord.drop_gateway(token_for("sage"), code=4012)
        await app.supervisor.wait_until(lambda s: s.children["sage"].restarts == 1)
        await app.supervisor.wait_for_state("sage", BotState.RUNNING)
        # Anything at all that logs a secret, in the message, the arguments or a traceback:
        logger = logging.getLogger("some.library")
        logger.debug("authorization: Bearer %s", API_KEY)
        logger.info(f"token={token_for('sage')}")
        logger.warning("headers %r", {"Authorization": f"Bot {BAD_TOKEN}"})
        try:
            raise RuntimeError(f"request failed with key {REFUSED_KEY}")
        except RuntimeError:
            logger.exception("call failed")
    assert "API key was refused" in refused.content

    plain, as_json = root_logs["plain"].getvalue(), root_logs["json"].getvalue()
    assert "refused the API key (HTTP 401)" in plain and "refused the token (401)" in plain
    assert "crashed (ConnectionClosed" in plain and "Traceback" in plain
    assert "Bearer ***" in plain and "token=***" in plain and "Bot ***" in plain and "with key ***" in plain
    records_text = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {r.stack_info or ''}" for r in caplog.records
    )
    for secret in secrets:
        assert secret not in plain, "a plain handler saw a secret"
        assert secret not in as_json
        assert secret not in caplog.text
        assert secret not in records_text


def test_records_without_secrets_keep_their_template_and_arguments() -> None:
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    logs.redact_record(record)
    assert (record.msg, record.args) == ("hello %s", ("world",))


# ---------------------------------------------------------------- Sentry


async def test_bot_crash_and_failure_reach_sentry_tagged_and_scrubbed(
    world: World, sentry_transport: CapturingTransport
) -> None:
    world.write([{"name": "flaky"}, {"name": "bad", "prefix": "?", "model": "sandbox-small"}])
    config = world.load({"TOKEN_BAD": BAD_TOKEN})
    async with world.running(config, sentry_dsn=DSN, sentry_transport=sentry_transport) as app:
        assert app.supervisor is not None
        await world.discord.drop_gateway(token_for("flaky"), code=4012)
        await app.supervisor.wait_until(lambda s: s.children["flaky"].restarts == 1)
        await app.supervisor.wait_for_state("flaky", BotState.RUNNING)
        try:
            raise ValueError(f"an error message quoting {API_KEY} and {token_for('flaky')}")
        except ValueError:
            token = logs.current_bot.set("flaky")
            report_exception()  # as the persona's handlers do: the exception being handled, bot from context
            logs.current_bot.reset(token)

        async def stray() -> None:
            raise LookupError("a bug in a bare asyncio task")

        token = logs.current_bot.set("flaky")
        task = asyncio.get_running_loop().create_task(stray())  # inherits the bot's context
        logs.current_bot.reset(token)
        with pytest.raises(LookupError):
            await task

    events = sentry_transport.events
    crash = [e for e in events if e["exception"]["values"][-1]["type"] == "ConnectionClosed"]
    assert crash and crash[0]["tags"] == {"bot": "flaky", "provider": "openai", "model": "gpt-4o-mini"}
    assert crash[0]["level"] == "error"
    failed = [e for e in events if e["tags"].get("bot") == "bad"]
    assert failed and failed[0]["tags"]["model"] == "sandbox-small"
    assert failed[0]["exception"]["values"][-1]["type"] == "BotFatalError"
    quoted = [e for e in events if e["exception"]["values"][-1]["type"] == "ValueError"]
    assert quoted and quoted[0]["tags"] == {"bot": "flaky", "provider": "openai", "model": "gpt-4o-mini"}
    assert quoted[0]["exception"]["values"][-1]["value"] == "an error message quoting *** and ***"
    [unhandled] = [e for e in events if e["exception"]["values"][-1]["type"] == "LookupError"]
    assert unhandled["exception"]["values"][-1]["mechanism"] == {"type": "asyncio", "handled": False}
    assert unhandled["tags"] == {"bot": "flaky", "provider": "openai", "model": "gpt-4o-mini"}
    for frame in (f for e in events for v in e["exception"]["values"] for f in v["stacktrace"]["frames"]):
        assert "vars" not in frame, "local variables are never sent"
    sent = sentry_transport.serialized()
    for secret in (API_KEY, BAD_TOKEN, token_for("flaky"), token_for("bad")):
        assert secret not in sent


def test_report_exception_without_sentry_is_a_no_op() -> None:
    assert not sentry_sdk.get_client().is_active()
    report_exception(RuntimeError("nothing happens"), bot="x")


def test_scrub_walks_every_string() -> None:
    redactor.update(["scrub-me-secret-1"])
    event = {"a": ["x scrub-me-secret-1", {"b": ("scrub-me-secret-1", 3)}], "scrub-me-secret-1": None, "n": 1.5}
    assert scrub(event) == {"a": ["x ***", {"b": ("***", 3)}], "***": None, "n": 1.5}


async def test_unexpected_handler_error_is_reported_and_apologised_for(
    world: World, sentry_transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.persona.bot import PersonaBot
    from orchestrator.persona.replies import APOLOGY
    from orchestrator.runtime.mailbox import Job

    async def broken(self: PersonaBot, job: Job, key: object) -> None:
        raise KeyError(f"bug near {API_KEY}")

    monkeypatch.setattr(PersonaBot, "_chat", broken)
    world.write([{"name": "sage"}])
    async with world.running(sentry_dsn=DSN, sentry_transport=sentry_transport):
        [reply] = await world.chat("!chat hi")
    assert reply.content == APOLOGY
    [event] = [e for e in sentry_transport.events if e["exception"]["values"][-1]["type"] == "KeyError"]
    assert event["tags"] == {"bot": "sage", "provider": "openai", "model": "gpt-4o-mini"}
    assert API_KEY not in sentry_transport.serialized()
