"""The command line, run as a real process: check, models, usage, run's graceful SIGTERM (demo: test_demo.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from orchestrator.memory import ConversationKey, SQLiteStore

from .conftest import API_KEY, World, token_for
from .processes import base_env

ROOT = Path(__file__).resolve().parent.parent


def orchestrator(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_accepts_the_example_and_names_the_bots() -> None:
    env = base_env() | {
        "OPENAI_API_KEY": "sk-check-000000",
        "DISCORD_TOKEN_SAGE": "t-sage-00000",
        "DISCORD_TOKEN_HAFEZ": "t-hafez-0000",
    }
    result = orchestrator("check", "bots.yaml", env=env)
    assert result.returncode == 0, result.stderr
    assert "OK, 2 bot(s): sage (!chat" in result.stdout and "hafez (?chat" in result.stdout
    commands = "/chat message, /reset [scope], /usage, /panel topic [rounds]"
    assert f"  sage: {commands}, /imagine prompt, registered globally\n" in result.stdout  # it has an image_model
    assert f"  hafez: {commands}, registered globally\n" in result.stdout
    assert not result.stderr


def test_check_lists_each_bots_slash_commands_or_says_it_has_none(tmp_path: Path) -> None:
    (tmp_path / "bots.yaml").write_text(
        "providers: {openai: {base_url: 'http://127.0.0.1:9/v1', api_key_env: OPENAI_API_KEY}}\n"
        "bots:\n"
        "  - {name: sage, token_env: TOKEN_SAGE, persona: You are Sage., commands: {guilds: [123, 456]}}\n"
        "  - {name: hafez, token_env: TOKEN_HAFEZ, persona: You are Hafez., prefix: '?', commands: {enabled: false}}\n"
    )
    env = base_env() | {"OPENAI_API_KEY": "sk-check-000000", "TOKEN_SAGE": "t-sage-0000", "TOKEN_HAFEZ": "t-hafez-00"}
    result = orchestrator("check", str(tmp_path / "bots.yaml"), env=env)
    assert result.returncode == 0, result.stderr
    commands = "/chat message, /reset [scope], /usage, /panel topic [rounds]"
    assert f"  sage: {commands}, registered in guild(s) 123, 456\n" in result.stdout
    assert "  hafez: no slash commands (commands.enabled is false)\n" in result.stdout


def test_check_fails_with_file_and_line_and_never_prints_secrets(tmp_path: Path) -> None:
    text = (
        (ROOT / "bots.yaml")
        .read_text(encoding="utf-8")
        .replace("params: {temperature: 0.3}", "params: {temprature: 0.3}")
    )
    (tmp_path / "bots.yaml").write_text(text, encoding="utf-8")
    env = base_env() | {"OPENAI_API_KEY": "sk-secret-value-123", "DISCORD_TOKEN_SAGE": "secret-sage-token"}
    result = orchestrator("check", str(tmp_path / "bots.yaml"), env=env)
    assert result.returncode == 2
    assert f"{tmp_path / 'bots.yaml'}:" in result.stderr and "did you mean 'temperature'" in result.stderr
    assert "DISCORD_TOKEN_HAFEZ is not set" in result.stderr
    assert "sk-secret-value-123" not in result.stderr + result.stdout
    assert "secret-sage-token" not in result.stderr + result.stdout


def test_check_reads_the_dotenv_beside_bots_yaml_from_any_directory_and_says_which(tmp_path: Path) -> None:
    config_dir, elsewhere = tmp_path / "config", tmp_path / "elsewhere"
    config_dir.mkdir()
    elsewhere.mkdir()
    (config_dir / "bots.yaml").write_text((ROOT / "bots.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (config_dir / ".env").write_text(
        "OPENAI_API_KEY=sk-beside-0000\nDISCORD_TOKEN_SAGE=t-sage-beside\nDISCORD_TOKEN_HAFEZ=t-hafez-beside\n"
    )
    # a different .env in the working directory: same token for both bots, which check would refuse
    (elsewhere / ".env").write_text(
        "OPENAI_API_KEY=sk-cwd-0000\nDISCORD_TOKEN_SAGE=t-same\nDISCORD_TOKEN_HAFEZ=t-same\n"
    )
    result = orchestrator("check", str(config_dir / "bots.yaml"), env=base_env(), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert f"read {config_dir / '.env'} (the environment wins over it)" in result.stdout
    (config_dir / ".env").unlink()
    result = orchestrator("check", str(config_dir / "bots.yaml"), env=base_env(), cwd=elsewhere)
    assert result.returncode == 2
    assert f"no .env in {config_dir}: secrets come from the environment only" in result.stdout
    assert (
        "DISCORD_TOKEN_SAGE is not set; put the Discord token of bot 'sage' in the environment"
        f" or in {config_dir / '.env'}" in result.stderr
    )
    assert "t-same" not in result.stdout + result.stderr


def test_check_warns_when_two_bots_answer_the_same_command(tmp_path: Path) -> None:
    text = (ROOT / "bots.yaml").read_text(encoding="utf-8").replace('prefix: "?"', 'prefix: "!"')
    (tmp_path / "bots.yaml").write_text(text, encoding="utf-8")
    env = base_env() | {
        "OPENAI_API_KEY": "sk-check-000000",
        "DISCORD_TOKEN_SAGE": "t-sage-00000",
        "DISCORD_TOKEN_HAFEZ": "t-hafez-0000",
    }
    result = orchestrator("check", str(tmp_path / "bots.yaml"), env=env)
    assert result.returncode == 0
    line = text.splitlines().index("  - name: hafez") + 1
    assert (
        f"warning: {tmp_path / 'bots.yaml'}:{line}: bots[1] (bot 'hafez'): bots 'sage' and 'hafez' both answer '!chat'"
        in result.stdout
    )


async def test_models_lists_the_providers_models(world: World) -> None:
    world.write([{"name": "sage"}])
    result = await anyio.to_thread.run_sync(
        lambda: orchestrator("models", str(world.path), env=base_env() | world.env())
    )
    assert result.returncode == 0, result.stderr
    assert "  gpt-4o-mini" in result.stdout and "  sandbox-small" in result.stdout


async def test_models_and_usage_need_no_discord_tokens(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    env = {k: v for k, v in (base_env() | world.env()).items() if not k.startswith("TOKEN_")}
    result = await anyio.to_thread.run_sync(lambda: orchestrator("models", str(world.path), env=env))
    assert result.returncode == 0, result.stderr
    assert "  gpt-4o-mini" in result.stdout
    del env["OPENAI_API_KEY"]  # usage reads the database only
    result = await anyio.to_thread.run_sync(lambda: orchestrator("usage", str(world.path), env=env))
    assert result.returncode == 0, result.stderr
    assert "no usage recorded yet" in result.stdout


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
    result = await anyio.to_thread.run_sync(
        lambda: orchestrator("usage", str(world.path), env=base_env() | world.env())
    )
    assert result.returncode == 0, result.stderr
    [sage_line] = [line for line in result.stdout.splitlines() if line.strip().startswith("sage")]
    used = int(sage_line.split()[1])
    assert used > 0 and "% of 100000" in sage_line
    assert any(
        line.split() == ["user", str(world.discord.default_user_id), str(used)] for line in result.stdout.splitlines()
    )
    assert any(line.strip().startswith("hafez") and line.split()[1] == "0" for line in result.stdout.splitlines())


def test_global_options_are_accepted_on_either_side_of_the_command() -> None:
    from orchestrator.cli import build_parser

    parser = build_parser()
    after = parser.parse_args(["run", "bots.yaml", "--log-format", "json", "--log-level", "DEBUG"])
    before = parser.parse_args(["--log-format", "json", "--log-level", "DEBUG", "run", "bots.yaml"])
    neither = parser.parse_args(["check"])
    assert (after.log_format, after.log_level, after.config) == ("json", "DEBUG", "bots.yaml")
    assert (before.log_format, before.log_level) == ("json", "DEBUG"), "the command's defaults do not clobber them"
    assert (neither.log_format, neither.log_level) == ("text", "INFO")


def test_a_global_option_after_the_command_is_accepted_by_the_real_cli(tmp_path: Path) -> None:
    result = orchestrator("check", str(tmp_path / "missing.yaml"), "--log-format", "json", env=base_env())
    assert "unrecognized arguments" not in result.stderr
    assert result.returncode == 2 and "missing.yaml" in result.stderr


def test_ctrl_c_before_the_signal_handler_is_installed_exits_130_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import cli

    (tmp_path / "bots.yaml").write_text(
        "providers: {local: {base_url: 'http://127.0.0.1:9/v1'}}\n"
        "defaults: {provider: local, model: m}\n"
        "bots: [{name: sage, token_env: TOKEN_SAGE, persona: You are Sage.}]\n"
    )
    monkeypatch.setenv("TOKEN_SAGE", token_for("sage"))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # what Python raises for SIGINT while no handler of ours is installed

    monkeypatch.setattr(cli.anyio, "run", interrupted)
    args = cli.build_parser().parse_args(["run", str(tmp_path / "bots.yaml"), "--no-watch"])
    assert cli.cmd_run(args) == 130
