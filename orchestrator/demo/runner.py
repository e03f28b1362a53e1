"""``orchestrator demo``: the bots of a bots.yaml on the loopback Discord and OpenAI servers.

No accounts needed: every bot gets a sandbox token, every provider points at the loopback OpenAI
server (or at ``--provider-url``, a real OpenAI-compatible server, keyed by ``DEMO_API_KEY``).
Messages come from ``-m`` options, from stdin (a terminal, a pipe or a file), or from a short
built-in script when stdin is empty; each is posted as user "you" (syntax in ``syntax.py``) and
every answer is printed. Files given with ``--attach`` go with the first message; files the bots
post (``!imagine``'s images) are saved under ``files_dir`` (by default ``orchestrator-demo`` in the
system's temporary directory) and the demo prints where. Memory lives in a temporary database, so
it starts empty on each run.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio
import yaml

from ..app import App
from ..config import Config, parse_config
from ..errors import ConfigError
from ..runtime.services import RuntimeOptions
from ..runtime.supervisor import BotState
from ..sandbox.discord_server import DiscordSandbox
from ..sandbox.openai_server import OpenAISandbox
from .console import LineReader
from .conversation import Conversation, Persona
from .syntax import USAGE

SANDBOX_KEY = "sk-sandbox"
ANSWER_TIMEOUT = 120.0  # an answer in progress, from a real provider, may be slow
FILES_DIR = Path(tempfile.gettempdir()) / "orchestrator-demo"  # what the bots post, kept after the demo
INTERRUPTED = 130  # the exit status of a program ended by SIGINT


def sandbox_environment(raw: object, base: dict[str, str]) -> dict[str, str]:
    """Invent a token for every bot and a key for every provider named in the raw YAML."""
    env = dict(base)
    if not isinstance(raw, dict):
        return env
    for bot in raw.get("bots") or []:
        if isinstance(bot, dict) and isinstance(bot.get("token_env"), str):
            env[bot["token_env"]] = f"sandbox-token-{bot.get('name', 'bot')}"
    for provider in (raw.get("providers") or {}).values():
        if isinstance(provider, dict) and isinstance(provider.get("api_key_env"), str):
            env.setdefault(provider["api_key_env"], SANDBOX_KEY)
    return env


async def run_until_interrupted(
    config_path: str, messages: Sequence[str] | None, provider_url: str | None, attach: Sequence[str] = ()
) -> int:
    """:func:`run_demo`, ended at once and quietly by the first Ctrl-C (SIGINT): status 130."""
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def cancel_on_signal(scope: anyio.CancelScope) -> None:
                async for _ in signals:
                    print(flush=True)  # past the "^C" the terminal echoed
                    scope.cancel()
                    return

            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            status = await run_demo(config_path, messages, provider_url, attach=attach)
            tg.cancel_scope.cancel()
            return status
    return INTERRUPTED


async def run_demo(
    config_path: str,
    messages: Sequence[str] | None,
    provider_url: str | None,
    *,
    answer_timeout: float = ANSWER_TIMEOUT,
    input_fd: int = 0,
    files_dir: Path = FILES_DIR,
    attach: Sequence[str] = (),
) -> int:
    """Run the demo; returns the exit status (2: the file, or a file to attach, cannot be read or is
    not valid)."""
    files = []
    for name in attach:
        try:
            files.append({"filename": Path(name).name, "data": await anyio.Path(name).read_bytes()})
        except OSError as exc:
            print(f"cannot attach {name}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    path = Path(config_path)
    try:
        text = await anyio.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {config_path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None  # parse_config reports it, with the line
    async with DiscordSandbox() as discord_server, OpenAISandbox(api_keys=[SANDBOX_KEY]) as openai_server:
        env = sandbox_environment(raw, {})
        env |= {"DISCORD_API_URL": discord_server.api_url, "DISCORD_GATEWAY_URL": discord_server.gateway_url}
        with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as tmp:
            env["ORCHESTRATOR_DATABASE"] = str(Path(tmp) / "demo.sqlite3")
            try:
                config = parse_config(text, config_path, env, base_dir=path.parent)
            except ConfigError as exc:
                print(exc, file=sys.stderr)
                return 2
            config = _point_providers(config, openai_server.base_url, provider_url)
            personas: dict[str, Persona] = {}
            for bot in config.bots.values():
                token = bot.token.get_secret_value()
                personas[bot.name] = Persona(bot, token, discord_server.add_bot(token, bot.name))
            user_id = discord_server.add_user("you")
            app = App(config, options=RuntimeOptions(guild_ready_timeout=0.05), handle_signals=False, watch=False)
            async with anyio.create_task_group() as tg:
                supervisor = await tg.start(app.run)
                for name in config.bots:
                    await supervisor.wait_for_state(name, BotState.RUNNING, BotState.FAILED)
                conversation = Conversation(
                    discord_server,
                    supervisor,
                    personas,
                    user_id,
                    config_name=config_path,
                    answer_timeout=answer_timeout,
                    files_dir=files_dir,
                    attachments=files,
                )
                await _talk(conversation, config, messages, input_fd, provider_url)
                app.request_stop()
    return 0


async def _talk(
    conversation: Conversation, config: Config, messages: Sequence[str] | None, input_fd: int, provider_url: str | None
) -> None:
    """Print the banner, then exchange every line of the input."""
    reader = None
    if not messages:
        try:
            reader = LineReader(input_fd)
        except OSError:
            messages = _sample_messages(config)  # no stdin at all
    interactive = reader is not None and reader.interactive
    _print_banner(config, provider_url, interactive)
    if reader is None:
        for message in messages or ():
            await _exchange(conversation, message, echo=True)
        return
    got_any = False
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = await reader.readline()
        if line is None:
            break
        if line.strip():
            got_any = True
            await _exchange(conversation, line, echo=not interactive)  # a terminal shows what was typed
    if interactive:
        print(flush=True)  # past the prompt Ctrl-D left
    elif not got_any:
        for message in _sample_messages(config):
            await _exchange(conversation, message, echo=True)


async def _exchange(conversation: Conversation, line: str, *, echo: bool) -> None:
    if echo:
        print(f"\nyou: {line.strip()}", flush=True)
    for shown in await conversation.exchange(line):
        print(shown, flush=True)


def _print_banner(config: Config, provider_url: str | None, interactive: bool) -> None:
    model = f"the model server at {provider_url}" if provider_url else "the sandbox model (not a real LLM)"
    print(f"Personas online in #general of a loopback Discord; answers come from {model}.")
    print("Memory starts empty on each run (a temporary database).")
    for bot in config.bots.values():
        draws = f", {bot.prefix}imagine <description> (image model {bot.image_model})" if bot.image_model else ""
        print(f"  {bot.name:12} {bot.prefix}chat <text>   (model {bot.model}){draws}")
    first = next(iter(config.bots.values()))
    print(f"Also: {USAGE} (e.g. /dm {first.name} {first.prefix}chat hi).")
    if interactive:
        print("Type a message; Ctrl-D or Ctrl-C to quit.")


def _sample_messages(config: Config) -> list[str]:
    """Greet each persona, say something to nobody in particular, ask a persona about it (it heard the
    room), then hold a panel of every persona present."""
    samples = {0: "hello! who are you?", 1: "سلام! حالت چطوره؟"}
    prefix = next(iter(config.bots.values())).prefix
    return [
        *(f"{bot.prefix}chat {samples[i % 2]}" for i, bot in enumerate(config.bots.values())),
        "I think the owl is the wisest of birds.",
        f"{prefix}chat what did I just say?",
        f"{prefix}panel is wisdom learned or given?",
    ]


def _point_providers(config: Config, sandbox_url: str, provider_url: str | None) -> Config:
    key = os.environ.get("DEMO_API_KEY", "") if provider_url else SANDBOX_KEY
    providers = {
        name: dataclasses.replace(spec, base_url=provider_url or sandbox_url, api_key=type(spec.api_key)(key))
        for name, spec in config.providers.items()
    }
    return dataclasses.replace(config, providers=providers)
