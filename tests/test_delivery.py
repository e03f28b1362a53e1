"""Retrying a post: only what discord.py does not retry itself, within a time budget."""

from __future__ import annotations

import aiohttp
import discord
import pytest

from orchestrator.discord_io.delivery import retry_server_errors


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "error"


def server_error(status: int) -> discord.DiscordServerError:
    return discord.DiscordServerError(_Response(status), "boom")  # type: ignore[arg-type]


class Flaky:
    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "sent"


async def test_503_and_dropped_connections_are_retried() -> None:
    action = Flaky(server_error(503), aiohttp.ServerDisconnectedError())
    assert await retry_server_errors(action, pauses=(0, 0, 0)) == "sent"
    assert action.calls == 3


@pytest.mark.parametrize("status", [500, 502, 504, 524])
async def test_errors_discord_py_already_retried_are_not_retried_again(status: int) -> None:
    action = Flaky(server_error(status))
    with pytest.raises(discord.DiscordServerError):
        await retry_server_errors(action, pauses=(0, 0, 0))
    assert action.calls == 1


async def test_no_retry_starts_after_the_budget() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    async def slow_failure() -> str:
        now[0] += 6.0  # each try takes 6 s of the 10 s budget
        raise server_error(503)

    with pytest.raises(discord.DiscordServerError):
        await retry_server_errors(slow_failure, pauses=(0, 0, 0), budget=10.0, clock=clock)
    assert now[0] == 12.0, "two tries: the third would start after the budget"
