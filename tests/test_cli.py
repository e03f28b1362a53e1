"""The command line, run as a real process: check, models, usage, run's graceful SIGTERM (demo: test_demo.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio

from orchestrator.memory import ConversationKey, SQLiteStore

from .conftest import API_KEY, World, token_for

ROOT = Path(__file__).resolve().parent.parent


def orchestrator(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=env, input=input, capture_output=True,
        text=True, timeout=120,
    )


def base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_"))}


def test_check_accepts_the_example_and_names_the_bots() -> None:
    env = base_env() | {"OPENAI_API_KEY": "sk-check-000000", "DISCORD_TOKEN_SAGE": "t-sage-00000", "DISCORD_TOKEN_HAFEZ": "t-hafez-0000"}
    result = orchestrator("check", "bots.yaml", env=env)
    assert result.returncode == 0, result.stderr
    assert "OK, 2 bot(s): sage (!chat" in result.stdout and "hafez (?chat" in result.stdout


def test_check_fails_with_file_and_line_and_never_prints_secrets(tmp_path: Path) -> None:
    text = (ROOT / "bots.yaml").read_text(encoding="utf-8").replace("params: {temperature: 0.3}", "params: {temprature: 0.3}")
    (tmp_path / "bots.yaml").write_text(text, encoding="utf-8")
    env = base_env() | {"OPENAI_API_KEY": "sk-secret-value-123", "DISCORD_TOKEN_SAGE": "secret-sage-token"}
    result = orchestrator("check", str(tmp_path / "bots.yaml"), env=env)
    assert result.returncode == 2
    assert f"{tmp_path / 'bots.yaml'}:" in result.stderr and "did you mean 'temperature'" in result.stderr
    assert "DISCORD_TOKEN_HAFEZ is not set" in result.stderr
    assert "sk-secret-value-123" not in result.stderr + result.stdout
    assert "secret-sage-token" not in result.stderr + result.stdout


def test_check_warns_when_two_bots_answer_the_same_command(tmp_path: Path) -> None:
    text = (ROOT / "bots.yaml").read_text(encoding="utf-8").replace('prefix: "?"', 'prefix: "!"')
    (tmp_path / "bots.yaml").write_text(text, encoding="utf-8")
    env = base_env() | {"OPENAI_API_KEY": "sk-check-000000", "DISCORD_TOKEN_SAGE": "t-sage-00000", "DISCORD_TOKEN_HAFEZ": "t-hafez-0000"}
    result = orchestrator("check", str(tmp_path / "bots.yaml"), env=env)
    assert result.returncode == 0
    assert "warning: bots 'sage' and 'hafez' both answer '!chat'" in result.stdout


async def test_models_lists_the_providers_models(world: World) -> None:
    world.write([{"name": "sage"}])
    result = await anyio.to_thread.run_sync(lambda: orchestrator("models", str(world.path), env=base_env() | world.env()))
    assert result.returncode == 0, result.stderr
    assert "  gpt-4o-mini" in result.stdout and "  sandbox-small" in result.stdout


async def test_sigterm_mid_answer_delivers_the_answer_and_exits_zero(world: World) -> None:
    world.write([{"name": "sage"}])
    world.openai.latency = 1.0
    env = base_env() | world.env()
    async with await anyio.open_process(
        [sys.executable, "-m", "orchestrator", "run", str(world.path), "--no-watch"], cwd=ROOT, env=env
    ) as process:
        await world.discord.wait_for_ready(token_for("sage"), timeout=20)
        message = await world.discord.post("!chat are you still there?")
        await world.openai.wait_for_requests(1)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await process.wait()
        stderr = (await process.stderr.receive()).decode() if process.stderr else ""
    assert code == 0, stderr
    [reply] = [m for m in world.discord.sent if m.reference_id == int(message["id"])]
    assert "are you still there?" in reply.content
    assert world.openai.chat_requests[0].api_key == API_KEY
    store = SQLiteStore(world.tmp_path / "memory.sqlite3")
    key = ConversationKey("sage", world.discord.channel_id, world.discord.default_user_id)
    assert [turn.content for turn in await store.history(key, 10)] == ["are you still there?", reply.content]
    store.close()


async def test_usage_command_shows_todays_tokens_per_bot_and_user(world: World) -> None:
    world.write([{"name": "sage", "quota": {"tokens_per_day": 100000}}, {"name": "hafez", "prefix": "?"}])
    async with world.running():
        await world.chat("!chat count these tokens")
    result = await anyio.to_thread.run_sync(lambda: orchestrator("usage", str(world.path), env=base_env() | world.env()))
    assert result.returncode == 0, result.stderr
    [sage_line] = [line for line in result.stdout.splitlines() if line.strip().startswith("sage")]
    used = int(sage_line.split()[1])
    assert used > 0 and "% of 100000" in sage_line
    assert any(line.split() == ["user", str(world.discord.default_user_id), str(used)] for line in result.stdout.splitlines())
    assert any(line.strip().startswith("hafez") and line.split()[1] == "0" for line in result.stdout.splitlines())
