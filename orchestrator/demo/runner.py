"""``orchestrator demo``: the bots of bots.yaml on the loopback Discord and OpenAI servers.

No accounts needed: every bot gets a sandbox token, every provider points at the loopback OpenAI
server (or at ``--provider-url``, a real OpenAI-compatible server, keyed by ``DEMO_API_KEY``).
Messages come from ``-m`` options, from stdin, or from a short built-in script; each is posted
in #general as user "you" and every answer is printed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio
import yaml

from ..app import App
from ..config import Config, parse_config
from ..persona_bot import RuntimeOptions
from ..supervisor import BotState
from ..sandbox.discord_server import DiscordSandbox
from ..sandbox.openai_server import OpenAISandbox

SANDBOX_KEY = "sk-sandbox"
ANSWER_TIMEOUT = 120.0


def sandbox_environment(raw: dict[str, object], base: dict[str, str]) -> dict[str, str]:
    """Invent a token for every bot and a key for every provider named in the raw YAML."""
    env = dict(base)
    for bot in raw.get("bots") or []:  # type: ignore[union-attr]
        if isinstance(bot, dict) and isinstance(bot.get("token_env"), str):
            env[bot["token_env"]] = f"sandbox-token-{bot.get('name', 'bot')}"
    for provider in (raw.get("providers") or {}).values():  # type: ignore[union-attr]
        if isinstance(provider, dict) and isinstance(provider.get("api_key_env"), str):
            env.setdefault(provider["api_key_env"], SANDBOX_KEY)
    return env


def _sample_messages(config: Config) -> list[str]:
    samples = {0: "hello! who are you?", 1: "سلام! حالت چطوره؟"}
    return [f"{bot.prefix}chat {samples.get(i % 2)}" for i, bot in enumerate(config.bots.values())]


async def run_demo(config_path: str, messages: Sequence[str] | None, provider_url: str | None) -> int:
    path = Path(config_path)
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    async with DiscordSandbox() as discord_server, OpenAISandbox(api_keys=[SANDBOX_KEY]) as openai_server:
        env = sandbox_environment(raw, {})
        env |= {"DISCORD_API_URL": discord_server.api_url, "DISCORD_GATEWAY_URL": discord_server.gateway_url}
        with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as tmp:
            env["ORCHESTRATOR_DATABASE"] = str(Path(tmp) / "demo.sqlite3")
            config = parse_config(text, str(path), env, base_dir=path.parent)
            config = _point_providers(config, openai_server.base_url, provider_url)
            names = {discord_server.add_bot(bot.token.get_secret_value(), bot.name): bot.name for bot in config.bots.values()}
            user = discord_server.add_user("you")
            app = App(config, options=RuntimeOptions(guild_ready_timeout=0.05), handle_signals=False, watch=False)
            async with anyio.create_task_group() as tg:
                supervisor = await tg.start(app.run)
                for name in config.bots:
                    await supervisor.wait_for_state(name, BotState.RUNNING, BotState.FAILED)
                print("Personas online in #general:")
                for bot in config.bots.values():
                    print(f"  {bot.name:12} {bot.prefix}chat <text>   (model {bot.model})")
                async for line in _inputs(messages, config):
                    await _exchange(discord_server, supervisor, names, user, line)
                app.request_stop()
    return 0


def _point_providers(config: Config, sandbox_url: str, provider_url: str | None) -> Config:
    key = os.environ.get("DEMO_API_KEY", "") if provider_url else SANDBOX_KEY
    providers = {
        name: dataclasses.replace(
            spec, base_url=provider_url or sandbox_url, api_key=type(spec.api_key)(key or "unused")
        )
        for name, spec in config.providers.items()
    }
    return dataclasses.replace(config, providers=providers)


async def _inputs(messages: Sequence[str] | None, config: Config):  # type: ignore[no-untyped-def]
    if messages:
        for message in messages:
            yield message
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message (e.g. '!chat hi'); Ctrl-D to quit.")
    stdin = anyio.wrap_file(sys.stdin)
    got_any = False
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = await stdin.readline()
        if not line:
            break
        if line.strip():
            got_any = True
            yield line.strip()
    if not got_any and not interactive:
        for message in _sample_messages(config):
            yield message


async def _exchange(server: DiscordSandbox, supervisor, names: dict[int, str], user: int, text: str) -> None:  # type: ignore[no-untyped-def]
    print(f"\nyou: {text}")
    before = len(server.sent)
    posted = await server.post(text, author_id=user)
    posted_id = int(posted["id"])
    try:
        replies = await server.wait_for_sent(predicate=lambda m: m.reference_id == posted_id, timeout=ANSWER_TIMEOUT)
    except TimeoutError:
        print("  (no persona answered; start with a bot's prefix, e.g. '!chat hello')")
        return
    name = names.get(replies[0].author_id, "?")
    child = supervisor.children.get(name)
    if child is not None and child.actor is not None:
        await child.actor.wait_idle()
    for message in server.sent[before:]:
        print(f"{names.get(message.author_id, '?')}: {message.content}")
