"""Live reconfiguration: edit bots.yaml (or .env, or send SIGHUP) while the bots run."""

from __future__ import annotations

import logging
import os
import signal
import sys

import anyio
import pytest

from orchestrator.runtime.supervisor import BotState

from .conftest import ROOT, World, token_for


@pytest.fixture
def live(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """A world whose secrets live in .env beside bots.yaml, as in production, so reloads re-read them."""
    for name, value in world.env().items():
        if name.startswith(("DISCORD_", "OPENAI_")):
            monkeypatch.setenv(name, value)
    return world


def write_dotenv(world: World, **tokens: str) -> None:
    lines = [f"TOKEN_{name.upper()}={token_for(name)}" for name in world.bot_ids] + [
        f"{key}={value}" for key, value in tokens.items()
    ]
    (world.tmp_path / ".env").write_text("\n".join(lines) + "\n")


async def test_add_change_and_remove_bots_by_editing_the_file(live: World) -> None:
    world = live
    world.write([{"name": "keep"}, {"name": "edit", "prefix": "?"}, {"name": "gone", "prefix": "%"}])
    write_dotenv(world)
    async with world.running() as app:
        supervisor = app.supervisor
        assert supervisor is not None
        keep_actor = supervisor.children["keep"].actor
        edit_actor = supervisor.children["edit"].actor
        world.write(
            [
                {"name": "keep"},
                {"name": "edit", "prefix": "?", "persona": "You are Edited now.", "model": "sandbox-small"},
                {"name": "new", "prefix": "&"},
            ]
        )
        write_dotenv(world)
        assert await app.reload()
        await supervisor.wait_for_state("new", BotState.RUNNING)
        [edited] = await world.chat("?chat who are you?")
        [new] = await world.chat("&chat hello newcomer")
        [kept] = await world.chat("!chat still you?")
        assert "gone" not in supervisor.children
        assert supervisor.children["keep"].actor is keep_actor
        assert supervisor.children["edit"].actor is edit_actor
    ids = world.discord.identify_count
    assert ids[token_for("keep")] == 1 and ids[token_for("edit")] == 1, "no reconnect for unchanged or hot changes"
    assert ids[token_for("new")] == 1
    assert token_for("gone") not in world.discord.sessions or world.discord.sessions[token_for("gone")].ws is None
    assert edited.content.startswith("[sandbox-small] You are Edited now.")
    assert new.author_id == world.bot_ids["new"] and kept.author_id == world.bot_ids["keep"]


async def test_removed_bot_finishes_its_answer_in_flight(live: World) -> None:
    world = live
    world.write([{"name": "stay"}, {"name": "leave", "prefix": "?"}])
    write_dotenv(world)
    world.openai.latency = 0.5
    async with world.running() as app:
        message = await world.discord.post("?chat last words?")
        await world.openai.wait_for_requests(1)
        world.write([{"name": "stay"}])
        assert await app.reload()
        assert app.supervisor is not None and "leave" not in app.supervisor.children
    [reply] = [m for m in world.discord.sent if m.reference_id == int(message["id"])]
    assert reply.author_id == world.bot_ids["leave"]


async def test_broken_edit_is_rejected_and_every_bot_keeps_answering(
    live: World, caplog: pytest.LogCaptureFixture
) -> None:
    world = live
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    write_dotenv(world)
    async with world.running() as app:
        good = world.path.read_text()
        world.path.write_text(good.replace("persona:", "persnoa:", 1))
        with caplog.at_level(logging.ERROR):
            assert not await app.reload()
        assert app.last_reload_error is not None and "did you mean 'persona'" in app.last_reload_error
        assert f"{world.path}:" in app.last_reload_error
        world.path.write_text(good)
        world.write(
            [{"name": "sage"}, {"name": "hafez", "prefix": "?"}, {"name": "extra", "token_env": "MISSING_TOKEN"}]
        )
        assert not await app.reload()
        assert "MISSING_TOKEN is not set" in (app.last_reload_error or "")
        [a] = await world.chat("!chat still alive?")
        [b] = await world.chat("?chat you too?")
        assert set(app.supervisor.children) == {"sage", "hafez"}  # type: ignore[union-attr]
    assert "rejected the edited configuration" in caplog.text
    assert a.author_id == world.bot_ids["sage"] and b.author_id == world.bot_ids["hafez"]


async def test_rotated_token_in_dotenv_restarts_only_that_bot(live: World) -> None:
    world = live
    world.write([{"name": "rotate"}, {"name": "steady", "prefix": "?"}])
    write_dotenv(world)
    new_token = "rotated-token-0123456789"
    world.discord.add_bot(new_token, "rotate-2")
    async with world.running(watch=True, watch_debounce_ms=100) as app:
        supervisor = app.supervisor
        assert supervisor is not None
        before = supervisor.children["rotate"]
        (world.tmp_path / ".env").write_text(
            (world.tmp_path / ".env").read_text().replace(token_for("rotate"), new_token)
        )
        with anyio.fail_after(10):
            await supervisor.wait_until(
                lambda s: s.children["rotate"] is not before and s.children["rotate"].state is BotState.RUNNING
            )
    assert world.discord.identify_count[new_token] == 1
    assert world.discord.identify_count[token_for("steady")] == 1


async def test_saving_the_file_in_steps_causes_no_spurious_rejection(live: World) -> None:
    world = live
    world.write([{"name": "sage"}])
    write_dotenv(world)
    async with world.running(watch=True, watch_debounce_ms=400) as app:
        supervisor = app.supervisor
        assert supervisor is not None
        final = world.path.read_text().replace("You are Sage.", "You are Sage, edited.")
        with world.path.open("w") as handle:  # an editor that writes in two steps
            handle.write(final[: len(final) // 2])
            handle.flush()
            handle.write(final[len(final) // 2 :])
        with anyio.fail_after(10):
            await supervisor.wait_until(lambda s: s.children["sage"].spec.persona == "You are Sage, edited.")
        assert app.last_reload_error is None


async def test_sighup_reloads_a_running_process(live: World) -> None:
    world = live
    world.write([{"name": "sage"}])
    write_dotenv(world)
    async with await anyio.open_process(
        [sys.executable, "-m", "orchestrator", "run", str(world.path), "--no-watch"], cwd=ROOT, env=dict(os.environ)
    ) as process:
        await world.discord.wait_for_ready(token_for("sage"), timeout=20)
        world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
        write_dotenv(world)
        process.send_signal(signal.SIGHUP)
        await world.discord.wait_for_ready(token_for("hafez"), timeout=20)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await process.wait() == 0
    assert world.discord.identify_count[token_for("sage")] == 1
