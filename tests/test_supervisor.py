"""Supervision: a crashing or misconfigured bot is restarted or failed alone; siblings never notice."""

from __future__ import annotations

import random

import anyio

from orchestrator.supervisor import BotState, RestartPolicy

from .conftest import World, token_for


async def test_bad_token_fails_that_bot_at_once_and_others_run(world: World) -> None:
    world.write([{"name": "good"}, {"name": "bad", "prefix": "?"}])
    config = world.load({"TOKEN_BAD": "a-token-discord-does-not-know"})
    async with world.running(config) as app:
        supervisor = app.supervisor
        assert supervisor is not None
        bad = supervisor.children["bad"]
        assert bad.state is BotState.FAILED and bad.restarts == 0
        assert "refused the token (401)" in bad.last_error
        [reply] = await world.chat("!chat still here?")
        assert reply.author_id == world.bot_ids["good"]
        assert supervisor.children["good"].state is BotState.RUNNING


async def test_crashed_bot_is_restarted_while_its_sibling_keeps_answering(world: World) -> None:
    world.write([{"name": "flaky"}, {"name": "steady", "prefix": "?"}])
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        steady_actor = supervisor.children["steady"].actor
        await world.discord.drop_gateway(token_for("flaky"), code=4012)  # discord.py: fatal close code
        await supervisor.wait_until(lambda s: s.children["flaky"].restarts == 1)
        [during] = await world.chat("?chat are you fine?")
        flaky = await supervisor.wait_for_state("flaky", BotState.RUNNING)
        [after] = await world.chat("!chat back again?")
    assert during.author_id == world.bot_ids["steady"]
    assert after.author_id == world.bot_ids["flaky"]
    assert flaky.restarts == 1 and "ConnectionClosed" in flaky.last_error
    assert world.discord.identify_count[token_for("flaky")] == 2
    assert world.discord.identify_count[token_for("steady")] == 1, "the sibling never reconnected"
    assert supervisor.children["steady"].actor is steady_actor


async def test_restart_intensity_stops_a_crash_loop(world: World) -> None:
    world.write([{"name": "loop"}, {"name": "steady", "prefix": "?"}])  # restart: max_restarts 3 per 60 s
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        world.discord.reject_identify[token_for("loop")] = 4012
        await world.discord.drop_gateway(token_for("loop"), code=4012)
        with anyio.fail_after(10):
            child = await supervisor.wait_for_state("loop", BotState.FAILED)
        [reply] = await world.chat("?chat still answering?")
        assert supervisor.children["steady"].state is BotState.RUNNING
    assert child.restarts == 3
    assert world.discord.identify_count[token_for("loop")] == 1 + 3
    assert reply.author_id == world.bot_ids["steady"]


async def test_stop_lets_answers_in_flight_finish(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.latency = 0.5
    async with world.running() as app:
        message = await world.discord.post("!chat slow question")
        await world.openai.wait_for_requests(1)
        app.request_stop()
        assert app.supervisor is not None
        await app.supervisor.wait_for_state("sage", BotState.STOPPED)
    [reply] = world.discord.sent
    assert reply.reference_id == int(message["id"])


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RestartPolicy(max_restarts=5, window=60, backoff_initial=1.0, backoff_max=8.0)
    rng = random.Random(1)
    for restarts, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        delays = [policy.backoff(restarts, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base * 1.5 for d in delays)
        assert max(delays) - min(delays) > base * 0.5, "jitter spreads restarts out"


async def test_a_failed_bot_stays_failed_while_the_others_stop(world: World) -> None:
    world.write([{"name": "good"}, {"name": "bad", "prefix": "?"}])
    async with world.running(world.load({"TOKEN_BAD": "unknown-token-0000000"})) as app:
        supervisor = app.supervisor
        assert supervisor is not None
        app.request_stop()
        await supervisor.wait_for_state("good", BotState.STOPPED)
        assert supervisor.children["bad"].state is BotState.FAILED


async def test_messages_waiting_when_a_client_crashes_are_answered_after_the_restart(world: World) -> None:
    world.write([{"name": "flaky", "concurrency": 1}, {"name": "steady", "prefix": "?"}])
    world.openai.latency = 0.3
    users = [world.discord.add_user(f"user{i}") for i in range(3)]
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        posted = [await world.discord.post(f"!chat question {i}", author_id=user) for i, user in enumerate(users)]
        await world.openai.wait_for_requests(1)  # one answer in flight, two waiting
        await world.discord.drop_gateway(token_for("flaky"), code=4012)
        await supervisor.wait_until(lambda s: s.children["flaky"].restarts == 1)
        ids = {int(message["id"]) for message in posted}
        replies = await world.discord.wait_for_sent(3, predicate=lambda m: m.reference_id in ids, timeout=20)
    assert {m.reference_id for m in replies} == ids
    assert all(m.author_id == world.bot_ids["flaky"] and "question" in m.content for m in replies)
