"""The provider's adaptive concurrency limit (AIMD) and the fair limiter's changing number of slots."""

from __future__ import annotations

import logging
from dataclasses import replace

import anyio
import pytest
from pydantic import SecretStr

from orchestrator.config import ProviderSettings, ProviderSpec, parse_config
from orchestrator.errors import ConfigError
from orchestrator.llm.aimd import CEILING, INITIAL, AIMDLimit
from orchestrator.llm.limiter import FairLimiter
from orchestrator.llm.pool import ChatCall, LLMPool
from orchestrator.sandbox.openai_server import Fault, OpenAISandbox

from .conftest import API_KEY, FAST, World
from .test_pool import Clock


def round_trip(limit: AIMDLimit, clock: Clock, latency: float, answers: int, *, saturated: bool = True) -> None:
    """``answers`` requests sent together come back ``latency`` seconds later."""
    sent = clock.now
    clock.now += latency
    for _ in range(answers):
        limit.succeeded(sent, saturated=saturated)


def test_the_limit_grows_while_it_is_reached_fast_until_the_first_decrease_then_one_per_round() -> None:
    clock = Clock()
    limit = AIMDLimit("openai", initial=16, clock=clock)
    round_trip(limit, clock, 1.0, 10, saturated=False)
    assert limit.limit == 16, "a limit nobody reaches says nothing about the provider"
    round_trip(limit, clock, 1.0, 10)
    assert limit.limit == 26
    limit.overloaded(clock.now)
    assert limit.limit == 13
    for _ in range(4):
        round_trip(limit, clock, 1.0, limit.limit)
    assert limit.limit == 16, "after a decrease: about one more per round trip"


def test_a_429_halves_the_limit_once_per_round(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limit = AIMDLimit("openai", initial=32, clock=clock)
    sent_before = clock.now
    clock.now += 1
    with caplog.at_level(logging.INFO, logger="orchestrator.llm.aimd"):
        limit.overloaded(sent_before)
    assert limit.limit == 16
    assert "provider openai: at most 16 requests at once now (was 32): it answered 429" in caplog.text
    limit.overloaded(sent_before)  # a request of the same burst, sent under the old limit
    assert limit.limit == 16
    limit.overloaded(clock.now)  # sent after the decrease: the provider still refuses
    assert limit.limit == 8


def test_rising_latency_takes_back_growth_but_not_below_the_start() -> None:
    clock = Clock()
    limit = AIMDLimit("openai", initial=16, clock=clock)
    round_trip(limit, clock, 1.0, 24)
    assert limit.limit == 40
    round_trip(limit, clock, 5.0, 40)  # the provider queues: the smoothed latency passes twice its baseline
    assert limit.limit == 30, "cut by a quarter once for the round, and no growth while slow"
    round_trip(limit, clock, 5.0, 30)
    assert limit.limit == 22
    for _ in range(5):
        round_trip(limit, clock, 5.0, limit.limit)
    assert limit.limit == 16, "latency varies with the answers' length: it never throttles below the start"


def test_a_lasting_change_of_latency_is_learnt() -> None:
    clock = Clock()
    limit = AIMDLimit("openai", initial=16, clock=clock)
    round_trip(limit, clock, 1.0, 8)
    round_trip(limit, clock, 3.0, 24)  # the answers are three times as long from now on
    assert limit.limit == 20, "three answers grew it before the smoothed latency passed 2 s: then 27 x 0.75"
    round_trip(limit, clock, 3.0, 20)
    assert limit.limit == 16, "still slow: back to the start"
    for _ in range(200):  # ten minutes
        round_trip(limit, clock, 3.0, 16, saturated=False)
    round_trip(limit, clock, 3.0, 17)
    assert limit.limit == 17, "the baseline followed: the limit grows again at the new latency"


def test_the_limit_respects_its_ceiling_and_never_falls_below_one() -> None:
    clock = Clock()
    limit = AIMDLimit("openai", initial=4, ceiling=6, clock=clock)
    round_trip(limit, clock, 1.0, 10)
    assert limit.limit == 6
    for _ in range(10):
        limit.overloaded(clock.now)
        clock.now += 1
    assert limit.limit == 1
    with pytest.raises(ValueError, match="initial limit"):
        AIMDLimit("openai", initial=0)
    with pytest.raises(ValueError, match="ceiling=8"):
        AIMDLimit("openai", initial=9, ceiling=8)


async def test_new_slots_go_to_waiting_bots_at_once_and_lost_ones_are_withdrawn_on_release() -> None:
    limiter = FairLimiter(capacity=1, max_waiting=10)
    await limiter.acquire("holder", 1, 1)
    granted: list[str] = []

    async def wait(bot: str) -> None:
        await limiter.acquire(bot, 1, 5)
        granted.append(bot)

    async with anyio.create_task_group() as tg:
        for bot in ("a", "b", "c", "d"):
            tg.start_soon(wait, bot)
        await anyio.wait_all_tasks_blocked()
        assert limiter.saturated and not granted
        limiter.resize(3)
        await anyio.wait_all_tasks_blocked()
        assert granted == ["a", "b"] and limiter.statistics() == type(limiter.statistics())(3, 3, 2)
        limiter.resize(1)
        limiter.release()
        limiter.release()
        await anyio.wait_all_tasks_blocked()
        assert granted == ["a", "b"], "the first two releases only bring the slots in use down to the new size"
        assert limiter.statistics().in_use == 1
        limiter.release()
        limiter.release()
    assert granted == ["a", "b", "c", "d"] and limiter.statistics().in_use == 1
    limiter.release()
    assert not limiter.saturated


# ---------------------------------------------------------------- bots.yaml


def provider_yaml(extra: str = "") -> str:
    return (
        "providers:\n  openai:\n    base_url: http://127.0.0.1:1/v1\n"
        + extra
        + "bots:\n  - {name: sage, token_env: TOKEN, persona: You are Sage.}\n"
    )


def test_max_concurrency_is_an_optional_hard_cap_and_old_files_still_load() -> None:
    env = {"TOKEN": "token-aaaaaaaa"}
    adaptive = parse_config(provider_yaml(), "bots.yaml", env)
    assert adaptive.providers["openai"].settings.max_concurrency is None
    assert adaptive.bots["sage"].concurrency == 32, "the per-bot default is not the bottleneck"
    explicit_none = parse_config(provider_yaml("    max_concurrency: null\n"), "bots.yaml", env)
    assert explicit_none.providers == adaptive.providers
    old = parse_config(provider_yaml("    max_concurrency: 16\ndefaults: {concurrency: 4}\n"), "bots.yaml", env)
    assert old.providers["openai"].settings.max_concurrency == 16 and old.bots["sage"].concurrency == 4
    assert (INITIAL, CEILING) == (16, 256)


@pytest.mark.bad_input
def test_a_max_concurrency_below_one_is_refused_with_its_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(provider_yaml("    max_concurrency: 0\n"), "bots.yaml", {"TOKEN": "token-aaaaaaaa"})
    [problem] = [str(issue) for issue in info.value.issues]
    assert problem.startswith("bots.yaml:4: providers.openai.max_concurrency:")
    assert "greater than or equal to 1" in problem


# ---------------------------------------------------------------- end to end, real SDK and discord.py


async def test_with_default_settings_ten_users_of_one_persona_are_at_the_provider_at_once(world: World) -> None:
    world.write([{"name": "sage"}])  # no concurrency or max_concurrency anywhere: the defaults
    world.openai.latency = 60  # nobody is answered while the test looks
    users = [world.discord.add_user(f"user{n}") for n in range(10)]
    async with world.running(options=replace(FAST, drain_timeout=0.1)):
        for user in users:
            await world.discord.post("!chat hello", author_id=user)
        await world.openai.wait_for_requests(10)
        assert world.openai.in_flight == 10


async def test_a_429_halves_the_providers_limit(world: World) -> None:
    world.write([{"name": "sage"}])
    async with world.running() as app:
        assert app.pool is not None
        assert app.pool.concurrency("openai").capacity == 16
        world.openai.inject(Fault.rate_limited(0.01))
        [reply] = await world.chat("!chat hello")
        assert reply.content.startswith("[gpt-4o-mini]"), "retried after the 429"
        assert app.pool.concurrency("openai").capacity == 8


async def test_a_burst_above_the_limit_teaches_it_the_bursts_size(openai_server: OpenAISandbox) -> None:
    settings = ProviderSettings(base_url=openai_server.base_url)
    spec = ProviderSpec("openai", openai_server.base_url, SecretStr(API_KEY), settings)
    openai_server.latency = 0.3  # the 20 calls below all reach the pool before the first answer
    async with LLMPool({"openai": spec}) as pool:

        async def ask(user: int) -> None:
            await pool.complete(
                ChatCall("sage", str(user), "openai", "gpt-4o-mini", [{"role": "user", "content": "hi"}])
            )

        async with anyio.create_task_group() as tg:
            for user in range(20):
                tg.start_soon(ask, user)
        assert openai_server.max_in_flight == 16
        assert pool.concurrency("openai").capacity >= 20, "the same burst again goes out at once"
