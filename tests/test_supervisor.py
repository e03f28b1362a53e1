"""Supervision: a crashing or misconfigured bot is restarted or failed alone; siblings never notice."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import anyio

from orchestrator.app import App
from orchestrator.runtime.mailbox import Mailbox
from orchestrator.runtime.supervisor import BotState, RestartPolicy
from orchestrator.sandbox.discord_server import RestFault, SentMessage

from .conftest import FAST, World, token_for


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


# ---------------------------------------------------------------- catching up after a restart


def flaky_and_steady(world: World) -> None:
    world.write([{"name": "flaky"}, {"name": "steady", "prefix": "?"}])


async def crash_and_post(world: World, app: App, text: str) -> dict[str, Any]:
    """Let flaky take one message, crash it with a fatal close (its next incarnation gets a new
    session, to which Discord replays nothing), post ``text`` while it is down; returns that message
    once flaky runs again."""
    supervisor = app.supervisor
    assert supervisor is not None
    await world.chat("!chat before")
    await world.discord.drop_gateway(token_for("flaky"), code=4012)
    missed = await world.discord.post(text)
    await supervisor.wait_until(lambda s: s.children["flaky"].restarts == 1)
    await supervisor.wait_for_state("flaky", BotState.RUNNING)
    return missed


def replies_to(world: World, message: dict[str, Any]) -> list[SentMessage]:
    return [m for m in world.discord.sent if m.reference_id == int(message["id"])]


async def test_a_message_sent_while_a_crashed_bot_was_down_is_answered_once_it_is_back(world: World) -> None:
    flaky_and_steady(world)
    async with world.running() as app:
        missed = await crash_and_post(world, app, "!chat while you were away")
        [reply] = await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(missed["id"]))
        [later] = await world.chat("!chat and now?")
    assert reply.author_id == world.bot_ids["flaky"] and reply.content.endswith("| while you were away")
    assert later.author_id == world.bot_ids["flaky"]
    assert [m.content.split("| ")[-1] for m in world.discord.sent] == ["before", "while you were away", "and now?"]
    assert world.discord.identify_count[token_for("flaky")] == 2


async def test_a_message_both_caught_up_and_delivered_by_the_gateway_is_answered_once(world: World) -> None:
    general = world.discord.channel_id
    world.discord.inject_rest(RestFault(None, "GET", f"/channels/{general}/messages", delay=0.5))
    flaky_and_steady(world)
    async with world.running() as app:
        missed = await crash_and_post(world, app, "!chat while you were away")
        both = await world.discord.post("!chat just after the restart")  # before the delayed GET is answered
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(missed["id"]))
        await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(both["id"]))
        await world.chat("!chat one more")
    assert not world.discord.faults, "the catch-up read the channel"
    assert len(replies_to(world, missed)) == 1
    assert len(replies_to(world, both)) == 1, "taken once, although it came both ways"


async def test_messages_older_than_the_catch_up_window_are_left_alone(world: World) -> None:
    listed = ("GET", f"/api/v10/channels/{world.discord.channel_id}/messages")
    flaky_and_steady(world)
    async with world.running(options=replace(FAST, catch_up_window=0.0)) as app:
        missed = await crash_and_post(world, app, "!chat long ago")
        await world.discord.wait_for_rest(*listed, timeout=5)
        await world.chat("!chat and now?")
    assert replies_to(world, missed) == []


async def test_a_message_sent_while_discord_invalidated_the_session_is_answered(world: World) -> None:
    world.write([{"name": "sage"}])
    async with world.running() as app:
        await world.chat("!chat before")
        await world.discord.drop_gateway(token_for("sage"), resumable=False)  # discord.py identifies again
        missed = await world.discord.post("!chat while the session was gone")
        [reply] = await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(missed["id"]))
        restarts = app.supervisor.children["sage"].restarts if app.supervisor else None
    assert reply.content.endswith("| while the session was gone")
    assert world.discord.identify_count[token_for("sage")] == 2 and restarts == 0


async def test_a_resumed_session_is_not_read_again(world: World) -> None:
    listed = ("GET", f"/api/v10/channels/{world.discord.channel_id}/messages")
    world.write([{"name": "sage"}])
    async with world.running():
        await world.chat("!chat before")
        await world.discord.drop_gateway(token_for("sage"))  # resumable: Discord replays what was missed
        missed = await world.discord.post("!chat while resuming")
        [reply] = await world.discord.wait_for_sent(predicate=lambda m: m.reference_id == int(missed["id"]))
    assert world.discord.resume_count[token_for("sage")] == 1
    assert reply.content.endswith("| while resuming")
    assert listed not in [(method, path) for method, path, _ in world.discord.rest_log]


def test_the_mailbox_takes_each_message_once_and_remembers_the_newest_per_channel() -> None:
    mailbox = Mailbox(size=4, concurrency=1)
    mailbox.close()  # only its bookkeeping is used here
    assert mailbox.take_once(1, 10) and mailbox.take_once(1, 12) and mailbox.take_once(2, 11)
    assert not mailbox.take_once(1, 12)
    assert mailbox.take_once(1, 9)  # an older one, not taken before: still taken once
    assert mailbox.last_taken == {1: 12, 2: 11}
    for channel in range(3, 3 + 30):
        mailbox.take_once(channel, 100 + channel)
    assert len(mailbox.last_taken) == 20 and 2 not in mailbox.last_taken, "the most recently active channels"
