"""The waits providers and gateways ask for: honoured, and never hammered through."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from orchestrator.llm.retry_hints import parse_duration, retry_after_from, used_up
from orchestrator.sandbox.openai_server import Fault

from .conftest import World

NOW = 1_750_000_000.0


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": http_date(90)}, 90.0),
        ({"retry-after": http_date(-5)}, 0.0),  # a date already past: go now
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # the precise one wins
        ({"llm_provider-retry-after": "60"}, 60.0),  # LiteLLM passing its upstream's hint on
        ({"x-upstream-retry-after-ms": "1500"}, 1.5),
        (
            {
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "6m0s",
                "x-ratelimit-remaining-requests": "99",
                "x-ratelimit-reset-requests": "120ms",
            },
            360.0,
        ),
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),  # nothing says which limit: the reset given
        # OpenAI sends resets on every answer; a 5xx with limits left asks for no wait
        ({"x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-requests": "8.6s"}, None),
        ({"retry-after": "soon", "x-ratelimit-remaining-requests": "0"}, None),  # spent, but no time given
        ({}, None),
    ],
    ids=[
        "seconds",
        "http-date",
        "past-date",
        "ms-first",
        "litellm-prefixed",
        "prefixed-ms",
        "spent-tokens-reset",
        "reset-alone",
        "reset-with-limits-left",
        "unreadable",
        "none",
    ],
)
def test_retry_hints(headers: dict[str, str], wait: float | None) -> None:
    got = retry_after_from(headers, now=NOW)
    assert got == (None if wait is None else pytest.approx(wait))


def test_duration_and_spent_limits() -> None:
    assert parse_duration("6m0s") == 360 and parse_duration("12ms") == pytest.approx(0.012)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2") == 2 and parse_duration("soon") is None
    assert used_up({"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "12"}) == ["requests"]
    assert used_up({"x-ratelimit-remaining-tokens": "many"}) == []


def sage(world: World, *, stream: bool = False, timeout: float = 10) -> None:
    world.write(
        [{"name": "sage", "stream": stream}],
        providers={
            "openai": {
                "base_url": world.openai.base_url,
                "api_key_env": "OPENAI_API_KEY",
                "timeout": timeout,
                "max_retries": 3,
            }
        },
    )


@pytest.mark.fault
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"llm_provider-retry-after": "60"}, id="litellm-retry-after"),
        pytest.param({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m0s"}, id="openai-reset"),
    ],
)
async def test_a_wait_beyond_the_deadline_fails_at_once_and_names_it(
    world: World, headers: dict[str, str], stream: bool
) -> None:
    sage(world, stream=stream)
    world.openai.inject(Fault(status=429, headers=headers))
    async with world.running():
        [reply] = await world.chat("!chat hi")
        [held] = await world.chat("!chat again")
    assert len(world.openai.chat_requests) == 1, "no retry bound to fail, and the next chat waits its turn too"
    assert reply.content == "The model provider is busy right now; it asks to wait 1m. Please try again then."
    assert "busy right now; it asks to wait " in held.content  # what is left of the minute


@pytest.mark.fault
async def test_an_http_date_beyond_the_deadline_fails_at_once(world: World) -> None:
    sage(world)
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=2), usegmt=True)
    world.openai.inject(Fault(status=503, headers={"retry-after": later}))
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert len(world.openai.chat_requests) == 1
    assert "busy right now; it asks to wait " in reply.content  # about 2m: the date has a one-second grain


@pytest.mark.fault
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_gateways_short_hint_is_the_retry_delay(
    world: World, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sage(world, stream=stream)
    world.openai.inject(Fault(status=429, headers={"llm_provider-retry-after": "0.2"}))
    with caplog.at_level(logging.INFO, logger="orchestrator.llm.pool"):
        async with world.running():
            [reply] = await world.chat("!chat hi")
    assert reply.content.endswith("| hi")
    assert [r.status for r in world.openai.chat_requests] == [429, 200]
    assert any(m.endswith("retry 1/3 in 0.20s") for m in caplog.messages), caplog.messages


@pytest.mark.fault
async def test_a_spent_limit_without_a_reset_time_is_not_hammered(world: World) -> None:
    sage(world, timeout=1)
    world.openai.inject(Fault(status=429, headers={"x-ratelimit-remaining-requests": "0"}))
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert len(world.openai.chat_requests) == 1, "a limit said to be spent is not retried at once"
    assert reply.content == "The model provider is busy right now. Please try again in a moment."


@pytest.mark.fault
async def test_an_answer_saying_nothing_is_left_holds_the_next_request(world: World) -> None:
    sage(world, timeout=1)
    world.openai.inject(Fault(headers={"x-ratelimit-remaining-tokens": "0"}))  # answered, but the last of it
    async with world.running():
        [first] = await world.chat("!chat first")
        [second] = await world.chat("!chat second")
    assert first.content.endswith("| first")
    assert "busy" in second.content
    assert len(world.openai.chat_requests) == 1
