"""The shared provider pool: quotas at their boundaries, retries, circuit breaker, fairness."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from orchestrator.config import QuotaSettings
from orchestrator.errors import QuotaExceeded
from orchestrator.llm.limiter import FairLimiter, QueueFull, QueueTimeout
from orchestrator.llm.quota import QuotaBook, utc_day
from orchestrator.memory import SQLiteStore
from orchestrator.sandbox.openai_server import Fault, said

from .conftest import World
from .fake_time import FakeTime

NONE = QuotaSettings()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock, sink: object = None) -> QuotaBook:
    return QuotaBook(sink, clock=clock, wall_clock=lambda: 1_750_000_000.0 + clock.now)  # type: ignore[arg-type]


def test_requests_per_minute_is_enforced_exactly_at_the_boundary() -> None:
    clock = Clock()
    quotas = book(clock)
    limit = QuotaSettings(requests_per_minute=3)
    for _ in range(3):
        quotas.reserve("p", "sage", "u1", 10, limit, NONE)
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("p", "sage", "u2", 10, limit, NONE)
    assert info.value.limit == "requests_per_minute" and info.value.scope == "bot"
    assert info.value.retry_after == pytest.approx(60.0)
    clock.now += 59.999
    with pytest.raises(QuotaExceeded):
        quotas.reserve("p", "sage", "u2", 10, limit, NONE)
    clock.now += 0.001
    quotas.reserve("p", "sage", "u2", 10, limit, NONE)


def test_tokens_per_minute_counts_the_estimate_then_the_real_usage() -> None:
    clock = Clock()
    quotas = book(clock)
    limit = QuotaSettings(tokens_per_minute=100)
    reservation = quotas.reserve("p", "sage", "u", 100, limit, NONE)
    with pytest.raises(QuotaExceeded, match="tokens_per_minute"):
        quotas.reserve("p", "sage", "u", 1, limit, NONE)
    quotas.settle(reservation, 40)  # the provider used less than estimated
    quotas.reserve("p", "sage", "u", 60, limit, NONE)
    with pytest.raises(QuotaExceeded):
        quotas.reserve("p", "sage", "u", 1, limit, NONE)


def test_user_quota_is_separate_per_user_and_bot_quota_is_shared() -> None:
    clock = Clock()
    quotas = book(clock)
    per_user = QuotaSettings(requests_per_minute=1)
    quotas.reserve("p", "sage", "alice", 1, NONE, per_user)
    with pytest.raises(QuotaExceeded) as info:
        quotas.reserve("p", "sage", "alice", 1, NONE, per_user)
    assert info.value.scope == "user" and "You have reached" in info.value.user_message
    quotas.reserve("p", "sage", "bob", 1, NONE, per_user)
    quotas.reserve("p", "hafez", "alice", 1, NONE, per_user)


def test_failed_call_releases_its_tokens_but_not_its_request() -> None:
    clock = Clock()
    quotas = book(clock)
    limit = QuotaSettings(tokens_per_day=100, requests_per_minute=2)
    reservation = quotas.reserve("p", "sage", "u", 100, limit, NONE)
    quotas.settle(reservation, 0)
    quotas.reserve("p", "sage", "u", 100, limit, NONE)
    with pytest.raises(QuotaExceeded, match="requests_per_minute"):
        quotas.reserve("p", "sage", "u", 1, QuotaSettings(requests_per_minute=2), NONE)


def test_daily_budget_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    limit = QuotaSettings(tokens_per_day=1000)
    store = SQLiteStore(tmp_path / "usage.sqlite3")
    first = book(clock, store)
    first.settle(first.reserve("p", "sage", "u", 100, limit, NONE), 900)
    store.close()
    store = SQLiteStore(tmp_path / "usage.sqlite3")
    second = book(clock, store)  # a new process
    assert second.report("sage").tokens_today == 900
    second.reserve("p", "sage", "u", 100, limit, NONE)
    with pytest.raises(QuotaExceeded, match="tokens_per_day") as info:
        second.reserve("p", "sage", "u", 1, limit, NONE)
    assert 0 < info.value.retry_after <= 86400
    store.close()


async def test_fair_limiter_serves_waiting_bots_by_weight() -> None:
    limiter = FairLimiter(capacity=1, max_waiting=100)
    await limiter.acquire("holder", 1, 1)
    order: list[str] = []

    async def worker(bot: str, weight: float) -> None:
        await limiter.acquire(bot, weight, 5)
        order.append(bot)
        limiter.release()

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(worker, "heavy", 2.0)
        for _ in range(6):
            tg.start_soon(worker, "light", 1.0)
        await anyio.wait_all_tasks_blocked()
        limiter.release()
    first_nine = order[:9]
    assert first_nine.count("heavy") == 6 and first_nine.count("light") == 3


async def test_fair_limiter_bounds_its_queue_and_its_waits() -> None:
    limiter = FairLimiter(capacity=1, max_waiting=1)
    await limiter.acquire("a", 1, 1)

    async def waits_too_long() -> None:
        with pytest.raises(QueueTimeout):
            await limiter.acquire("b", 1, 0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waits_too_long)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(QueueFull):
            await limiter.acquire("c", 1, 1)
    assert limiter.statistics() == type(limiter.statistics())(capacity=1, in_use=1, waiting=0)


# ---------------------------------------------------------------- end to end, real SDK


def provider(world: World, **settings: object) -> dict[str, object]:
    return {"openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", **settings}}


async def test_chat_over_quota_makes_no_provider_call_and_says_which_limit(world: World) -> None:
    world.write([{"name": "sage", "user_quota": {"requests_per_minute": 1}}])
    async with world.running():
        await world.chat("!chat first")
        [refusal] = await world.chat("!chat second")
    assert len(world.openai.chat_requests) == 1
    assert "You have reached the limit of requests per minute" in refusal.content
    assert "resets in" in refusal.content


async def test_usage_command_shows_the_callers_share(world: World) -> None:
    world.write([{"name": "sage", "user_quota": {"tokens_per_day": 5000}}])
    async with world.running():
        await world.chat("!chat count me")
        [usage] = await world.chat("!usage")
    used = world.openai.chat_requests[0]
    assert "Usage of sage" in usage.content
    assert "requests this minute: 1/∞" in usage.content
    assert "/5000 ·" in usage.content and "tokens today: 0/" not in usage.content
    assert used.status == 200


async def test_rate_limited_request_is_retried_after_retry_after(world: World) -> None:
    world.write([{"name": "sage"}], providers=provider(world, max_retries=2))
    world.openai.inject(Fault.rate_limited(retry_after=3.0))  # far from the backoff's 0.25-0.5 s
    async with world.running() as app:
        assert app.pool is not None
        fake = FakeTime().install(app.pool)
        [reply] = await world.chat("!chat hi")
    assert reply.content.endswith("| hi")
    assert [r.status for r in world.openai.chat_requests] == [429, 200]
    assert [r.headers.get("x-stainless-retry-count") for r in world.openai.chat_requests] == ["0", "1"], (
        "the pool is the only retry owner, and it reports its retries as the SDK would"
    )
    assert fake.slept == [pytest.approx(3.0)], "one wait, as long as the provider asked"


async def test_circuit_breaker_opens_fails_fast_then_closes(world: World) -> None:
    world.write([{"name": "sage"}], providers=provider(world, max_retries=0, breaker_threshold=2, breaker_cooldown=0.5))
    world.openai.inject(Fault.server_error(500), Fault.server_error(500))
    async with world.running() as app:
        assert app.supervisor is not None
        pool = app.supervisor.services.pool
        fake = FakeTime().install(pool)
        first_client = pool.client("openai")
        await world.chat("!chat 1")
        await world.chat("!chat 2")
        assert pool.client("openai") is not first_client, "the failing client was rebuilt"
        fake.advance(0.49)
        [fast] = await world.chat("!chat 3")
        assert len(world.openai.chat_requests) == 2, "open circuit: no provider call until the cool-down is over"
        assert "unavailable" in fast.content
        fake.advance(0.01)
        [probe] = await world.chat("!chat 4")
        [after] = await world.chat("!chat 5")
    assert probe.content.endswith("| 4") and after.content.endswith("| 5")


async def test_pool_slows_down_near_the_providers_limit_instead_of_hitting_429(world: World) -> None:
    world.openai.rate_limit_per_minute = 3
    world.write([{"name": "sage"}], providers=provider(world, timeout=2))
    bob = world.discord.add_user("bob")
    async with world.running():
        await world.chat("!chat 1")
        await world.chat("!chat 2", author_id=bob)
        [held] = await world.chat("!chat 3")
    assert [r.status for r in world.openai.chat_requests] == [200, 200]
    assert "busy" in held.content


async def test_a_flooding_bot_does_not_starve_another(world: World) -> None:
    world.write(
        [{"name": "chatty", "concurrency": 16, "mailbox_size": 64}, {"name": "quiet", "prefix": "?"}],
        providers=provider(world, max_concurrency=1),
    )
    world.openai.latency = 0.02
    users = [world.discord.add_user(f"u{i}") for i in range(16)]
    async with world.running():
        for i in range(32):
            await world.discord.post(f"!chat flood {i}", author_id=users[i % 16])
        await world.openai.wait_for_requests(2)
        for i in range(3):
            await world.discord.post(f"?chat quiet {i}", author_id=users[i])
        await world.discord.wait_for_sent(35, timeout=30)
        await world.idle()
    order = [said(r.body["messages"][-1]).split()[0] for r in world.openai.chat_requests]
    assert order.count("quiet") == 3
    last_quiet = max(i for i, word in enumerate(order) if word == "quiet")
    assert last_quiet < 12, f"quiet's requests were served within its fair share, got order {order}"


def test_utc_day_format() -> None:
    assert utc_day(0) == "1970-01-01"


async def test_usage_is_logged_per_bot_for_ops(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.write([{"name": "sage", "quota": {"tokens_per_day": 100000}}, {"name": "hafez", "prefix": "?"}])
    async with world.running() as app:
        await world.chat("!chat count this")
        assert app.supervisor is not None
        with caplog.at_level("INFO", logger="orchestrator.app"):
            app.log_usage(app.supervisor.services.pool)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("usage of bot")]
    assert len(lines) == 2
    assert lines[0].startswith("usage of bot sage: 1 requests") and lines[0].endswith("of 100000")
    assert lines[1].startswith("usage of bot hafez: 0 requests")


async def test_a_probe_answered_with_429_closes_the_circuit(world: World) -> None:
    world.write([{"name": "sage"}], providers=provider(world, max_retries=0, breaker_threshold=1, breaker_cooldown=0.3))
    world.openai.inject(Fault.server_error(500), Fault.rate_limited(retry_after=0.01))
    async with world.running() as app:
        assert app.pool is not None
        fake = FakeTime().install(app.pool)
        await world.chat("!chat opens the circuit")
        [refused] = await world.chat("!chat still cooling down")
        fake.advance(0.3)
        [probe] = await world.chat("!chat probe")
        [after] = await world.chat("!chat after")
    assert "unavailable" in refused.content
    assert "busy" in probe.content, "the probe reached the provider, which answered 429"
    assert after.content.endswith("| after"), "a provider that answers is up: the circuit closed"


@pytest.mark.fault
@pytest.mark.parametrize(
    ("fault", "requests", "answered"),
    [
        (Fault(status=503, headers={"x-should-retry": "false"}), 1, False),  # retryable kind, provider says no
        (Fault(status=400, headers={"x-should-retry": "true"}), 2, True),  # not retryable kind, provider says yes
        (Fault(status=409), 2, True),  # a lock timeout: the SDK retries it, so do we
    ],
    ids=["5xx-should-retry-false", "400-should-retry-true", "409-retried"],
)
async def test_the_providers_x_should_retry_verdict_is_obeyed(
    world: World, fault: Fault, requests: int, answered: bool
) -> None:
    world.write([{"name": "sage"}], providers=provider(world, max_retries=2))
    world.openai.inject(fault)
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert len(world.openai.chat_requests) == requests
    assert reply.content.endswith("| hi") is answered
