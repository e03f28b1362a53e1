"""Discord unreachable: a bot that cannot connect keeps trying (it is not a crash, so no restart limit
and no traceback), /healthz says why nothing runs, and the bot comes online once Discord answers, or
once a reload points it at the right server. A reload also revives bots that failed for good."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest

from orchestrator import cli
from orchestrator.app import App
from orchestrator.config import load_config
from orchestrator.runtime.supervisor import BotState, Supervisor
from orchestrator.sandbox.discord_server import DiscordSandbox
from orchestrator.sandbox.openai_server import OpenAISandbox

from .conftest import API_KEY, FAST, World, token_for

pytestmark = pytest.mark.fault

RETRIES = 6  # past the restart limit of World.write (max_restarts 3)


def refusing_socket() -> socket.socket:
    """A loopback port that refuses connections (bound, never listening) until the socket is closed."""
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    return reserved


def discord_env(api_url: str, gateway_url: str) -> list[str]:
    return [f"DISCORD_API_URL={api_url}", f"DISCORD_GATEWAY_URL={gateway_url}"]


def write_dotenv(world: World, discord: list[str], **extra: str) -> None:
    """Secrets and Discord's address in .env beside bots.yaml, so a reload re-reads them."""
    values = {f"TOKEN_{name.upper()}": token_for(name) for name in world.bot_ids} | {"OPENAI_API_KEY": API_KEY}
    values |= dict(line.split("=", 1) for line in discord) | extra
    (world.tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in values.items()))


@pytest.fixture
def no_discord_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISCORD_API_URL", "DISCORD_GATEWAY_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@contextlib.asynccontextmanager
async def started(world: World) -> AsyncIterator[App]:
    """Run the app from .env and bots.yaml, without waiting for any bot to come online."""
    app = App(load_config(world.path), options=FAST, handle_signals=False, watch=False, health_port=0)
    async with anyio.create_task_group() as tg:
        await tg.start(app.run)
        world.app = app
        yield app
        app.request_stop()


async def healthz(app: App) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{app.health_port_bound}/healthz") as response,
    ):
        return response.status, json.loads(await response.text())


async def wait_for_attempts(supervisor: Supervisor, name: str, attempts: int) -> None:
    with anyio.fail_after(20):
        await supervisor.wait_until(lambda s: s.children[name].connect_failures >= attempts)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.exc_info or record.exc_text]


async def test_a_bot_that_cannot_reach_discord_keeps_trying_and_comes_online_when_it_answers(
    world: World, no_discord_env: None, caplog: pytest.LogCaptureFixture, openai_server: OpenAISandbox
) -> None:
    reserved = refusing_socket()
    port = reserved.getsockname()[1]
    world = World(world.tmp_path, DiscordSandbox(port=port), openai_server)
    world.write([{"name": "sage"}])
    base = f"127.0.0.1:{port}"
    write_dotenv(world, discord_env(f"http://{base}/api/v10", f"ws://{base}/gateway"))
    caplog.set_level(logging.INFO)
    try:
        async with started(world) as app:
            supervisor = app.supervisor
            assert supervisor is not None
            await wait_for_attempts(supervisor, "sage", RETRIES)
            sage = supervisor.children["sage"]
            assert sage.state is BotState.UNREACHABLE and sage.restarts == 0
            status, report = await healthz(app)
            assert status == 503 and report["status"] == "unhealthy"
            assert "no bot is running" in report["reason"] and "sage unreachable" in report["reason"]
            assert report["bots"]["sage"]["state"] == "unreachable"
            assert base in report["bots"]["sage"]["last_error"]
            assert not tracebacks(caplog), "a connection failure is one line, not a traceback"
            lines = [r.getMessage() for r in caplog.records if "cannot reach Discord" in r.getMessage()]
            assert len(lines) >= RETRIES and all(line.startswith("bot sage cannot reach Discord") for line in lines)
            assert "trying again in" in lines[0] and base in lines[0]

            reserved.close()
            await world.discord.start()  # Discord answers there now
            with anyio.fail_after(20):
                await supervisor.wait_for_state("sage", BotState.RUNNING)
            [reply] = await world.chat("!chat are you there now?")
            status, report = await healthz(app)
        assert reply.author_id == world.bot_ids["sage"]
        assert status == 200 and report["status"] == "ok" and report["reason"] is None
    finally:
        reserved.close()
        await world.discord.stop()


async def test_a_reload_with_the_right_discord_address_brings_the_bots_online(
    world: World, no_discord_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    with refusing_socket() as reserved:
        base = f"127.0.0.1:{reserved.getsockname()[1]}"
        write_dotenv(world, discord_env(f"http://{base}/api/v10", f"ws://{base}/gateway"))
        async with started(world) as app:
            supervisor = app.supervisor
            assert supervisor is not None
            await wait_for_attempts(supervisor, "sage", 1)
            await wait_for_attempts(supervisor, "hafez", 1)
            write_dotenv(world, discord_env(world.discord.api_url, world.discord.gateway_url))
            assert await app.reload()
            with anyio.fail_after(20):
                for name in ("sage", "hafez"):
                    await supervisor.wait_for_state(name, BotState.RUNNING)
            [reply] = await world.chat("?chat found you")
    assert reply.author_id == world.bot_ids["hafez"]
    assert not tracebacks(caplog)


async def test_a_changed_discord_section_reconnects_running_bots_to_the_new_server(
    world: World, no_discord_env: None
) -> None:
    world.write([{"name": "sage"}])
    write_dotenv(world, discord_env(world.discord.api_url, world.discord.gateway_url))
    async with DiscordSandbox() as moved, started(world) as app:
        moved.add_bot(token_for("sage"), "sage")
        supervisor = app.supervisor
        assert supervisor is not None
        with anyio.fail_after(20):
            await supervisor.wait_for_state("sage", BotState.RUNNING)
        write_dotenv(world, discord_env(moved.api_url, moved.gateway_url))
        assert await app.reload()
        with anyio.fail_after(20):
            await supervisor.wait_for_state("sage", BotState.RUNNING)
            await moved.wait_for_ready(token_for("sage"))
    assert moved.identify_count[token_for("sage")] == 1


async def test_a_reload_revives_failed_bots_whose_settings_did_not_change(
    world: World, no_discord_env: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    world.write([{"name": "sage"}])
    write_dotenv(world, discord_env(world.discord.api_url, world.discord.gateway_url), TOKEN_SAGE="not-yet-known-token")
    async with started(world) as app:
        supervisor = app.supervisor
        assert supervisor is not None
        with anyio.fail_after(20):
            await supervisor.wait_for_state("sage", BotState.FAILED)
        status, report = await healthz(app)
        assert status == 503 and "sage failed" in report["reason"] and "refused the token" in report["reason"]
        assert "every bot has failed; /healthz reports unhealthy" in caplog.text
        args = cli.build_parser().parse_args(["status", "--health-port", str(app.health_port_bound)])
        assert await anyio.to_thread.run_sync(args.func, args) == 1
        assert "reason: no bot is running: sage failed (Discord refused the token" in capsys.readouterr().out
        world.discord.add_bot("not-yet-known-token", "sage-2")  # the token is valid now; bots.yaml is unchanged
        assert await app.reload()
        with anyio.fail_after(20):
            await supervisor.wait_for_state("sage", BotState.RUNNING)
        status, _ = await healthz(app)
    assert status == 200


async def test_an_unreachable_gateway_is_retried_in_one_line_per_attempt(
    world: World, no_discord_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    world.write([{"name": "sage"}])
    caplog.set_level(logging.INFO)
    with refusing_socket() as reserved:
        gateway = f"ws://127.0.0.1:{reserved.getsockname()[1]}/gateway"
        write_dotenv(world, discord_env(world.discord.api_url, gateway))  # REST answers, the gateway does not
        async with started(world) as app:
            supervisor = app.supervisor
            assert supervisor is not None
            await wait_for_attempts(supervisor, "sage", 2)
            assert supervisor.children["sage"].state is BotState.UNREACHABLE
            write_dotenv(world, discord_env(world.discord.api_url, world.discord.gateway_url))
            assert await app.reload()
            with anyio.fail_after(20):
                await supervisor.wait_for_state("sage", BotState.RUNNING)
    assert not tracebacks(caplog)
    assert "the gateway connection failed (ClientConnectorError: Cannot connect to host" in caplog.text
