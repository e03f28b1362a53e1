"""Spend in money: provider-reported usage × bots.yaml prices, per bot and day; the daily spend cap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.config import ModelPrice, QuotaSettings, parse_config
from orchestrator.errors import ConfigError
from orchestrator.llm.quota import utc_day
from orchestrator.llm.spend import SpendBook, SpendCapReached, format_usd
from orchestrator.memory import SQLiteStore
from orchestrator.sandbox.openai_server import RecordedRequest, echo_reply

from .conftest import World
from .inprocess import run_cli
from .stores import StoreKind
from .test_observability import samples, value

MINI = ModelPrice(input=0.15, output=0.60)
SMALL = ModelPrice(input=3.0, output=15.0)
NOON = 1_750_000_000.0 - 1_750_000_000.0 % 86400 + 43200  # 12:00 UTC on some day


def reported_usage(request: RecordedRequest) -> tuple[int, int]:
    """The sandbox's usage for a request it answered with its default reply (its documented formula)."""
    prompt = sum(len(m["content"]) // 4 + 4 for m in request.body["messages"])
    return prompt, len(echo_reply(request.body)) // 4 + 1


def expected_spend(requests: list[RecordedRequest], price: ModelPrice) -> float:
    return sum(price.cost(*reported_usage(r)) for r in requests)


class MemorySink:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], float] = {}

    def load_daily_spend(self, day: str) -> dict[tuple[str, str], float]:
        return {(bot, user): usd for (d, bot, user), usd in self.rows.items() if d == day}

    def add_daily_spend(self, day: str, bot: str, user: str, usd: float) -> None:
        self.rows[(day, bot, user)] = self.rows.get((day, bot, user), 0.0) + usd


# ---------------------------------------------------------------- the book


def test_a_price_is_usd_per_million_tokens() -> None:
    assert MINI.cost(1_000_000, 0) == pytest.approx(0.15)
    assert MINI.cost(2000, 1000) == pytest.approx((2000 * 0.15 + 1000 * 0.60) / 1e6)


def test_the_cap_refuses_once_reached_and_resets_at_utc_midnight() -> None:
    now = [NOON]
    sink = MemorySink()
    book = SpendBook(sink, wall_clock=lambda: now[0])
    cap = QuotaSettings(usd_per_day=0.01)
    book.check("p", "sage", "1", cap, QuotaSettings())
    assert book.record("sage", "1", SMALL, 2000, 100) == pytest.approx(0.0075)
    book.check("p", "sage", "1", cap, QuotaSettings())  # $0.0075 < $0.01: still allowed
    book.record("sage", "2", SMALL, 1000, 0)
    with pytest.raises(SpendCapReached) as refused:
        book.check("p", "sage", "3", cap, QuotaSettings())
    assert refused.value.user_message == (
        "This persona has reached today's spending limit ($0.0100). It resets at midnight UTC, in 12h."
    )
    assert book.rejections == {("sage", "bot"): 1}
    assert sink.rows[(utc_day(NOON), "sage", "*")] == pytest.approx(0.0105)
    now[0] += 12 * 3600  # midnight
    book.check("p", "sage", "3", cap, QuotaSettings())
    assert book.today("sage") == 0.0 and book.spent == {"sage": pytest.approx(0.0105)}


def test_a_user_cap_refuses_only_that_user() -> None:
    book = SpendBook(wall_clock=lambda: NOON)
    user_cap = QuotaSettings(usd_per_day=0.001)
    book.record("sage", "1", SMALL, 1000, 0)
    with pytest.raises(SpendCapReached, match="user quota usd_per_day") as refused:
        book.check("p", "sage", "1", QuotaSettings(), user_cap)
    assert refused.value.user_message.startswith("You have reached today's spending limit ($0.0010)")
    book.check("p", "sage", "2", QuotaSettings(), user_cap)


def test_without_a_price_nothing_is_counted_or_stored() -> None:
    sink = MemorySink()
    book = SpendBook(sink, wall_clock=lambda: NOON)
    assert book.record("sage", "1", None, 1000, 1000) == 0.0
    assert sink.rows == {} and book.spent == {}


def test_a_restarted_book_reads_the_days_spend_from_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    SpendBook(store, wall_clock=lambda: NOON).record("sage", "1", SMALL, 1000, 1000)
    store.close()
    store = SQLiteStore(tmp_path / "memory.sqlite3")
    assert SpendBook(store, wall_clock=lambda: NOON).today("sage", "1") == pytest.approx(0.018)
    assert store.load_daily_usage(utc_day(NOON)) == {("sage", "*"): 0, ("sage", "1"): 0}
    store.close()


@pytest.mark.parametrize(("usd", "shown"), [(0, "$0.00"), (0.0123456, "$0.0123"), (2, "$2.00"), (12.345, "$12.35")])
def test_format_usd(usd: float, shown: str) -> None:
    assert format_usd(usd) == shown


# ---------------------------------------------------------------- bots.yaml

CONFIG = """
providers:
  local:
    base_url: http://127.0.0.1:9/v1
    prices: {sandbox-small: {input: 3, output: 15}}
prices: {gpt-4o-mini: {input: 0.15, output: 0.60}, sandbox-small: {input: 1, output: 1}}
bots:
  - {name: sage, token_env: T1, persona: p, quota: {usd_per_day: 2.0}}
  - {name: hafez, token_env: T2, persona: p, model: sandbox-small}
  - {name: free, token_env: T3, persona: p, model: llama3}
"""
ENV = {"T1": "token-1-0123456789", "T2": "token-2-0123456789", "T3": "token-3-0123456789"}


def test_prices_come_from_the_provider_then_the_top_level() -> None:
    bots = parse_config(CONFIG, "bots.yaml", ENV).bots
    assert bots["sage"].price == MINI and bots["sage"].quota.usd_per_day == 2.0
    assert bots["hafez"].price == SMALL  # the provider's price wins
    assert bots["free"].price is None


@pytest.mark.bad_input
def test_a_spend_cap_without_a_price_is_refused_with_its_line() -> None:
    text = CONFIG.replace("persona: p, model: llama3}", "persona: p, model: llama3, user_quota: {usd_per_day: 1}}")
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "bots.yaml", ENV)
    [issue] = refused.value.issues
    assert issue.line == 10
    assert "bot 'free' has a daily spend limit (usd_per_day) but no price for its model 'llama3'" in str(issue)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("input: 0.15, output: 0.60", "input: -1, output: 0.60"),
        ("{input: 0.15, output: 0.60}", "{input: 0.15}"),
        ("usd_per_day: 2.0", "usd_per_day: 0"),
    ],
)
def test_bad_prices_and_caps_are_refused(change: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"bots\.yaml:"):
        parse_config(CONFIG.replace(change, message), "bots.yaml", ENV)


# ---------------------------------------------------------------- end to end


def write(world: World, *, cap: float | None = None, price: ModelPrice = MINI) -> None:
    quota: dict[str, Any] = {"usd_per_day": cap} if cap else {}
    world.write(
        [
            {"name": "sage", "quota": quota},
            {"name": "hafez", "prefix": "?", "model": "sandbox-small", "stream": True},
        ],
        providers={
            "openai": {
                "base_url": world.openai.base_url,
                "api_key_env": "OPENAI_API_KEY",
                "timeout": 10,
                "prices": {"sandbox-small": {"input": 3, "output": 15}},
            }
        },
        prices={"gpt-4o-mini": price.model_dump()},
    )


async def test_spend_is_the_reported_usage_times_the_prices(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(world)
    async with world.running() as app:
        for text in ("!chat one", "!chat two, a little longer", "?chat سه"):
            await world.chat(text)
        sage_requests = [r for r in world.openai.chat_requests if r.body["model"] == "gpt-4o-mini"]
        [hafez_request] = [r for r in world.openai.chat_requests if r.body["model"] == "sandbox-small"]
        sage_usd, hafez_usd = expected_spend(sage_requests, MINI), expected_spend([hafez_request], SMALL)
        assert app.pool is not None
        assert app.pool.spend.spent == {"sage": pytest.approx(sage_usd), "hafez": pytest.approx(hafez_usd)}
        metrics = samples(app.metrics.exposition().decode())
        assert value(metrics, "orchestrator_spend_usd_total", bot="sage") == pytest.approx(sage_usd)
        [usage] = await world.chat("!usage")
        mine = format_usd(sage_usd)
        assert f"- spent today: {mine}/∞ · {mine}/∞" in usage.content

    store = SQLiteStore(world.tmp_path / "memory.sqlite3")
    stored = store.load_daily_spend(utc_day())
    store.close()
    user = str(world.discord.default_user_id)
    assert stored[("sage", "*")] == pytest.approx(sage_usd) and stored[("sage", user)] == pytest.approx(sage_usd)
    assert stored[("hafez", "*")] == pytest.approx(hafez_usd)

    for name, variable in world.env().items():
        monkeypatch.setenv(name, variable)
    assert await anyio.to_thread.run_sync(lambda: run_cli("usage", str(world.path), "--days", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"usage on {utc_day()} (UTC):"
    [sage_line] = [line for line in lines[:4] if line.strip().startswith("sage")]
    assert sage_line.endswith(f"tokens  {format_usd(sage_usd)}")
    assert any(line.split() == ["user", user, line.split()[2], format_usd(sage_usd)] for line in lines)
    assert len([line for line in lines if line.startswith("usage on")]) == 2


async def test_the_daily_cap_refuses_with_a_clear_message_and_survives_a_restart(
    world: World, store_kind: StoreKind
) -> None:
    world.database = store_kind.database
    price = ModelPrice(input=100, output=100)
    write(world, cap=0.001, price=price)  # one answer of a few dozen tokens reaches it
    async with world.running() as app:
        await world.chat("!chat spend it all")
        assert len(world.openai.chat_requests) == 1
        [refused] = await world.chat("!chat one more?")
        assert len(world.openai.chat_requests) == 1  # refused before any provider call
        assert refused.content.startswith("This persona has reached today's spending limit ($0.0010).")
        assert "resets at midnight UTC" in refused.content
        metrics = samples(app.metrics.exposition().decode())
        assert value(metrics, "orchestrator_quota_rejections_total", bot="sage", scope="bot", limit="usd_per_day") == 1
        await world.chat("?chat other bots still answer")
        assert len(world.openai.chat_requests) == 2

    async with world.running():  # a new process reads today's spend from the store
        [refused] = await world.chat("!chat and now?")
        [usage] = await world.chat("!usage")
    assert len(world.openai.chat_requests) == 2
    assert refused.content.startswith("This persona has reached today's spending limit")
    spent = format_usd(expected_spend(world.openai.chat_requests[:1], price))
    assert f"- spent today: {spent}/∞ · {spent}/$0.0010" in usage.content


@pytest.mark.bad_input
def test_usage_days_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli("usage", "--days", "0")
    assert exited.value.code == 2 and "--days: must be 1 or more, not 0" in capsys.readouterr().err


def test_a_database_from_before_spend_gains_the_column_and_keeps_its_tokens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE daily_usage (day TEXT NOT NULL, bot TEXT NOT NULL, user TEXT NOT NULL, "
            "tokens INTEGER NOT NULL, PRIMARY KEY (day, bot, user))"
        )
        db.execute("INSERT INTO daily_usage VALUES (?, 'sage', '*', 1234)", (utc_day(NOON),))
    db.close()
    store = SQLiteStore(path)
    store.add_daily_spend(utc_day(NOON), "sage", "*", 0.5)
    store.close()
    store = SQLiteStore(path)
    assert store.load_daily_usage(utc_day(NOON)) == {("sage", "*"): 1234}
    assert store.load_daily_spend(utc_day(NOON)) == {("sage", "*"): 0.5}
    store.close()
