"""A persona's slash commands: which there are, registering them with Discord, and what running one queues.

Each command becomes the job its prefix command would (``/chat message:hi`` is ``!chat hi``): the
same mailbox, access rules, quotas, memory and channel context; only the answer goes to the
interaction (``discord_io/interactions.py``) instead of a reply. To add a command, add a callback in
:func:`build_tree` that calls ``take(interaction, <JobKind>, <text>)``, and the kind to
:data:`PRIVATE` if only the user should see its answer. A command only admins may use at all would
carry ``@app_commands.default_permissions(...)`` (Discord then hides it from others) and still be
checked by the bot; ``/reset`` is for everyone (Discord's permission is per command, not per option
value), so its ``scope:channel`` is checked by the bot alone, as ``<prefix>reset channel`` is.
``/imagine`` is registered only by a bot with an ``image_model`` (:func:`offers`): Discord users do not
see a command that could only say it is not enabled. The tree still runs it (a command Discord still
shows from before a reload), and then the job says so.

Registration is a bulk overwrite, globally or, with ``commands: {guilds: [...]}``, in each of those
guilds; scopes this bot registered before and no longer wants are emptied. A digest of each scope's
set is kept in the store, so a start or reload with the same set registers nothing. A failure is
logged in one line and leaves the prefix commands working.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
import discord
from discord import app_commands

from ..config import BotSpec
from ..discord_io import internals
from ..discord_io.client import describe_error
from ..discord_io.interactions import command_name, refuse
from ..memory.store import ConversationStore
from ..runtime.mailbox import JobKind

log = logging.getLogger(__name__)

# What a command asks: (the interaction, the job it becomes, that job's text).
Take = Callable[[discord.Interaction, JobKind, str], Awaitable[None]]

PRIVATE: frozenset[JobKind] = frozenset({"reset", "reset_channel", "usage"})  # answers only the user sees
MAX_PANEL_ROUNDS = 20  # the most group.max_panel_rounds allows; each bot checks its own


def offers(spec: BotSpec, command: str) -> bool:
    """Whether ``spec`` registers ``command``: ``/imagine`` only where image generation is enabled."""
    return command != "imagine" or spec.image_model is not None


def build_tree(
    client: discord.Client, take: Take, spec: Callable[[], BotSpec]
) -> app_commands.CommandTree[discord.Client]:
    """The commands of one persona's client (``spec()``: its settings now), each queuing its job
    through ``take``."""
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)

    @tree.command(description="Talk to this persona; it remembers your conversation")
    @app_commands.describe(message="What you say")
    async def chat(interaction: discord.Interaction, message: str) -> None:
        await take(interaction, "chat", message)

    @tree.command(description="Make this persona forget a conversation (only you see the answer)")
    @app_commands.describe(scope="me: our conversation (the default); channel: everyone's here (admins only)")
    async def reset(interaction: discord.Interaction, scope: Literal["me", "channel"] = "me") -> None:
        await take(interaction, "reset_channel" if scope == "channel" else "reset", "")

    @tree.command(description="What you have used of this persona today, and what is left")
    async def usage(interaction: discord.Interaction) -> None:
        await take(interaction, "usage", "")

    @tree.command(description="The personas in this channel discuss a topic, in turn")
    @app_commands.describe(topic="What they discuss", rounds="How many times each one speaks (default 1)")
    @app_commands.guild_only()
    async def panel(
        interaction: discord.Interaction, topic: str, rounds: app_commands.Range[int, 1, MAX_PANEL_ROUNDS] = 1
    ) -> None:
        await take(interaction, "panel", f"{rounds} {topic}")

    @tree.command(description="This persona draws what you describe")
    @app_commands.describe(prompt="What to draw")
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        await take(interaction, "imagine", prompt)

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        name, bot = command_name(interaction), spec().name
        if isinstance(error, app_commands.CommandNotFound):
            names = ", ".join(f"/{command}" for command in offered(spec()))
            await refuse(interaction, f"{bot} has no command /{name}; its commands are {names}.")
        elif isinstance(error, app_commands.CommandSignatureMismatch | app_commands.TransformerError):
            log.warning("bot %s: /%s arrived with options it does not take (%s)", bot, name, error)
            await refuse(
                interaction,
                f"/{name} arrived without an option it needs (Discord may still show an older version of the "
                "command). Try again in a minute.",
            )
        else:
            log.error("bot %s: /%s failed", bot, name, exc_info=error)
            await refuse(interaction, "Sorry, something went wrong on my side with that command.")

    return tree


@functools.cache
def _reference() -> tuple[app_commands.Command[Any, ..., Any], ...]:
    """The commands as every bot registers them, built without a bot (for ``check`` and the demo)."""

    async def unused(interaction: discord.Interaction, kind: JobKind, text: str) -> None: ...

    def no_bot() -> BotSpec:
        raise AssertionError("the reference commands run for no bot")

    tree = build_tree(discord.Client(intents=discord.Intents(guilds=True)), unused, no_bot)
    return tuple(command for command in tree.get_commands() if isinstance(command, app_commands.Command))


def offered(spec: BotSpec) -> list[str]:
    """The names of the slash commands ``spec`` registers (when its commands are enabled), in order."""
    return [command.name for command in _reference() if offers(spec, command.name)]


def text_option(command: str) -> str | None:
    """The option of ``command`` that takes its free text (its first), if it has any."""
    found = next((c for c in _reference() if c.name == command), None)
    return found.parameters[0].name if found is not None and found.parameters else None


def describe(spec: BotSpec) -> str:
    """The slash commands ``spec`` registers and where, in one line (``orchestrator check``)."""
    if not spec.commands.enabled:
        return "no slash commands (commands.enabled is false)"
    commands = [
        " ".join([f"/{command.name}", *(p.name if p.required else f"[{p.name}]" for p in command.parameters)])
        for command in _reference()
        if offers(spec, command.name)
    ]
    guilds = spec.commands.guilds
    where = f"in guild(s) {', '.join(map(str, guilds))}" if guilds else "globally"
    return f"{', '.join(commands)}, registered {where}"


def _scope(application_id: int, guild_id: int | None) -> str:
    return f"{application_id}/global" if guild_id is None else f"{application_id}/guild/{guild_id}"


def _guild_of(scope: str) -> int | None:
    _, kind, *guild = scope.split("/")
    return int(guild[0]) if kind == "guild" else None


def digest(payload: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


async def register(
    client: discord.Client, tree: app_commands.CommandTree[discord.Client], spec: BotSpec, store: ConversationStore
) -> None:
    """Make Discord hold ``spec``'s command set where bots.yaml says, overwriting only what changed.
    A store that cannot be read or written costs registrations, never the bot: without the digests
    every scope is registered again."""
    application_id = client.application_id
    if application_id is None:  # READY names it; only a client that never connected lacks it
        log.error("bot %s: Discord named no application for it; its slash commands are not registered", spec.name)
        return
    payload = [command.to_dict(tree) for command in tree.get_commands() if offers(spec, command.name)]
    try:
        stored = await store.command_sets(spec.name)
    except Exception as exc:  # noqa: BLE001 - any store's failure (SQLite's and PostgreSQL's differ)
        log.warning(
            "bot %s: cannot read which slash commands it registered before (%s); registering them again",
            spec.name, describe_error(exc),
        )  # fmt: skip
        stored = {}
    wanted: dict[str, list[dict[str, Any]]] = {}
    if spec.commands.enabled:
        for guild_id in spec.commands.guilds or (None,):
            wanted[_scope(application_id, guild_id)] = payload
    for scope in stored:
        if scope.startswith(f"{application_id}/") and scope not in wanted:
            wanted[scope] = []  # registered before, no longer wanted here
    for scope, commands in wanted.items():
        wanted_digest = digest(commands)
        if stored.get(scope, digest([])) == wanted_digest:
            continue
        guild_id = _guild_of(scope)
        try:
            await internals.overwrite_commands(client, application_id, guild_id, commands)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.error(
                "bot %s: could not register its slash commands (%s); its prefix commands keep working. "
                "Check that the bot was invited with the applications.commands scope and is in the guilds "
                "listed under commands.guilds",
                spec.name, describe_error(exc),
            )  # fmt: skip
            return
        where = "globally" if guild_id is None else f"in guild {guild_id}"
        log.info("bot %s: registered %d slash command(s) %s", spec.name, len(commands), where)
        try:
            await store.save_command_set(spec.name, scope, wanted_digest)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning(
                "bot %s: registered its slash commands but could not remember them (%s); its next start "
                "registers them again", spec.name, describe_error(exc),
            )  # fmt: skip
