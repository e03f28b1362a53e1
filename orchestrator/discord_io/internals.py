"""Every use of discord.py's undocumented internals, in one place.

Each one is kept for a measured gain that discord.py's public API cannot give (docs/benchmarks.md);
each was checked against discord.py 2.7.0 and 2.7.1, the ends of the pinned range, which the
compatibility job (scripts/compat) runs the end-to-end tests against:

- the gateway filter (``gateway_filter.py``) reads each raw gateway frame before discord.py decodes
  it: ``ConnectionState._update_references`` (called with every new gateway connection),
  ``DiscordWebSocket.received_message``, ``_decompressor``, ``_keep_alive`` and ``sequence``;
  it saved ~15% CPU per ``!chat`` in a channel shared by several bots;
- ``ConnectionState.parsers["MESSAGE_CREATE"]``: a message not addressed to the bot is dropped
  before discord.py builds a ``discord.Message`` for it (a message heard for channel context is
  kept from its raw payload); ``parsers["MESSAGE_UPDATE"]`` is observed the same way;
- ``HTTPClient.send_message`` with ``handle_message_parameters``: a reply is posted without
  building a ``discord.Message`` from Discord's answer, which nothing reads (~5% of an answer);
- ``ConnectionState._ready_task``: discord.py leaves it running after ``close()``; it would
  dispatch ``ready`` on a closed client.
- slash commands (``persona/slash.py``): a ``discord.Message`` built from an interaction with the
  client's ``ConnectionState``, so that a slash command becomes the same job as a prefix command
  (access rules, mailbox, memory and channel context read a message); and the bulk-overwrite calls
  of ``HTTPClient`` that ``CommandTree.sync`` makes, for the set of commands and the scope we choose
  (``sync`` registers only what the tree holds for one scope, and cannot clear a scope we left);
  and an interaction's webhook built as ``Interaction.followup`` builds it (``Webhook.from_state``:
  an application webhook, which may post ephemeral messages), on the client of the incarnation
  that answers, which after a crash is not the one that received the interaction.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord
from discord.http import handle_message_parameters
from discord.utils import MISSING

NO_PINGS = discord.AllowedMentions.none()


def wrap_gateway_frames(
    client: discord.Client, wrap: Callable[[Any, Callable[[Any], Awaitable[None]]], Callable[[Any], Awaitable[None]]]
) -> None:
    """On every gateway connection of ``client``, replace the websocket's frame handler with
    ``wrap(ws, original)``."""
    state = client._connection
    update_references = state._update_references

    def _update_references(ws: Any) -> None:
        update_references(ws)
        ws.received_message = wrap(ws, ws.received_message)

    state._update_references = _update_references  # type: ignore[method-assign]


def inflate(ws: Any, frame: bytes) -> str | None:
    """The text of a compressed frame (None while a payload is partial); call once per frame, in order."""
    text: str | None = ws._decompressor.decompress(frame)
    return text


def skip_dispatch(ws: Any, sequence: int) -> None:
    """Account for a dispatch that is dropped undecoded, as discord.py's own handling would: the
    sequence number (used to resume) and the heartbeat's last-receive time advance."""
    ws.sequence = sequence
    if ws._keep_alive:
        ws._keep_alive.tick()


def observe_parser(client: discord.Client, event: str, observe: Callable[[dict[str, Any]], None]) -> None:
    """Show ``observe`` every raw payload of gateway ``event`` before discord.py parses it."""
    parsers = client._connection.parsers
    parse: Callable[[dict[str, Any]], None] = parsers[event]

    def observed(data: dict[str, Any]) -> None:
        observe(data)
        parse(data)

    parsers[event] = observed


def filter_message_creates(
    client: discord.Client, keep: Callable[[dict[str, Any]], bool]
) -> Callable[[dict[str, Any]], None]:
    """Build a ``discord.Message`` only for MESSAGE_CREATE payloads that ``keep`` accepts; returns
    discord.py's own parser (it dispatches the message within the call)."""
    parsers = client._connection.parsers
    parse_message: Callable[[dict[str, Any]], None] = parsers["MESSAGE_CREATE"]

    def parse_if_kept(data: dict[str, Any]) -> None:
        if keep(data):
            parse_message(data)

    parsers["MESSAGE_CREATE"] = parse_if_kept
    return parse_message


async def post_message(
    client: discord.Client,
    channel_id: int,
    content: str,
    *,
    nonce: int | str,
    reply_to: discord.MessageReference | None,
    mention: Sequence[int] = (),
    attachment: tuple[str, bytes] | None = None,
) -> int:
    """Post ``content`` through discord.py's HTTP client (its rate limiter applies) without building
    a ``discord.Message`` from Discord's answer; only the users in ``mention`` are pinged; with
    ``attachment`` (file name, bytes) as a file of the message. Returns the new message's id."""
    reference = reply_to.to_message_reference_dict() if reply_to is not None else MISSING
    allowed = NO_PINGS
    if mention:
        users = [discord.Object(user) for user in mention]
        allowed = discord.AllowedMentions(everyone=False, roles=False, replied_user=False, users=users)
    with handle_message_parameters(
        content=content,
        nonce=nonce,
        allowed_mentions=allowed,
        previous_allowed_mentions=client.allowed_mentions,
        message_reference=reference,
        mention_author=False if reply_to is not None else None,
        # a new File per call: a retry must read the bytes from their start again
        file=discord.File(io.BytesIO(attachment[1]), attachment[0]) if attachment is not None else MISSING,
    ) as params:
        data = await client.http.send_message(channel_id, params=params)
    return int(data["id"])


def message_from_interaction(client: discord.Client, interaction: discord.Interaction, content: str) -> discord.Message:
    """A message standing for a slash command: its id is the interaction's, its author the user who
    ran it (a member with roles in a guild), its channel and guild the interaction's, its text ``content``."""
    user = interaction.user
    data: dict[str, Any] = {
        "id": str(interaction.id),
        "channel_id": str(interaction.channel_id),
        "author": {"id": str(user.id), "username": user.name, "discriminator": "0", "avatar": None},
        "content": content,
        "timestamp": interaction.created_at.isoformat(),
        "edited_timestamp": None,
        "type": 0,
        "flags": 0,
    }
    if interaction.guild_id is not None:
        data["guild_id"] = str(interaction.guild_id)
    channel: Any = interaction.channel
    if channel is None or not isinstance(channel, discord.abc.Messageable):
        channel = client.get_partial_messageable(interaction.channel_id or 0, guild_id=interaction.guild_id)
    message = discord.Message(state=client._connection, channel=channel, data=data)  # type: ignore[arg-type]  # a partial payload
    message.author = user
    return message


def interaction_webhook(client: discord.Client, application_id: int, token: str) -> discord.Webhook:
    """The webhook of an interaction (its original response and follow-ups), posting through ``client``."""
    return discord.Webhook.from_state(data={"id": application_id, "type": 3, "token": token}, state=client._connection)


async def overwrite_commands(
    client: discord.Client, application_id: int, guild_id: int | None, payload: list[dict[str, Any]]
) -> None:
    """Replace the application's commands, globally (``guild_id`` None) or in one guild, by ``payload``."""
    if guild_id is None:
        await client.http.bulk_upsert_global_commands(application_id, payload=payload)
    else:
        await client.http.bulk_upsert_guild_commands(application_id, guild_id, payload=payload)


def cancel_ready_task(client: discord.Client) -> None:
    """Cancel the task discord.py leaves waiting for guilds after ``close()``."""
    ready_task = getattr(client._connection, "_ready_task", None)
    if ready_task is not None:
        ready_task.cancel()
