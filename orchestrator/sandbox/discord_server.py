"""A Discord-compatible REST + gateway server on loopback, for testing real discord.py clients.

One aiohttp application serves the REST API under ``/api/v10`` and the websocket gateway at
``/gateway`` on the same port. Point discord.py at it with::

    discord.http.Route.BASE = sandbox.api_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sandbox.gateway_url)

The sandbox holds guilds, channels, roles and users (humans and bots). Humans, and bots registered
without ``guilds``, are members of every guild (also of guilds added later); a bot registered with
``add_bot(..., guilds=[...])`` is a member of those guilds only: its READY and GUILD_CREATEs list
only them, it receives no events from other guilds' channels, and its REST requests to those
channels get 403 (code 50001, "Missing Access"), as on Discord. Humans speak through
:meth:`DiscordSandbox.post`; what bots send through REST is recorded in :attr:`DiscordSandbox.sent`.
Gateway frames are plain JSON text, whatever compression the client asked for. Message events reach
a session only with the GUILD_MESSAGES (guild) or DIRECT_MESSAGES (DM) intent; without
MESSAGE_CONTENT, guild messages arrive with empty content unless they mention the bot or are its
own, as on Discord. Events dispatched while a session is disconnected (but resumable) are kept,
up to 1000, and replayed in order on RESUME before RESUMED, as Discord does; a new session (IDENTIFY)
gets none of them.

A small control API (``POST /_sandbox/messages``, ``GET /_sandbox/sent``) lets another process
drive a sandbox started with the command line: ``python -m orchestrator.sandbox.discord_server``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import re
import signal
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

__all__ = ["DiscordSandbox", "GatewaySession", "RestFault", "SentMessage", "main"]

API_PREFIX = "/api/v10"
MAX_CONTENT_LENGTH = 2000
EVERYONE_PERMISSIONS = "104324673"
_DISCORD_EPOCH_MS = 1_420_070_400_000
_RATE_LIMIT = 50

# Gateway intents the sandbox honours.
GUILD_MEMBERS = 1 << 1
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15

_MAX_MISSED = 1000  # events kept for a disconnected session, replayed on RESUME

# Gateway opcodes.
_DISPATCH, _HEARTBEAT, _IDENTIFY, _RESUME, _INVALID_SESSION, _HELLO, _HEARTBEAT_ACK = 0, 1, 2, 6, 9, 10, 11

# Channel and message types.
_GUILD_TEXT, _DM = 0, 1
_DEFAULT_MESSAGE, _REPLY_MESSAGE = 0, 19

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")

_T = TypeVar("_T")
JSONDict = dict[str, Any]


@dataclass
class SentMessage:
    """A message a bot created through REST, with what later happened to it."""

    id: int
    channel_id: int
    author_id: int
    content: str
    allowed_mentions: JSONDict | None
    reference_id: int | None
    edits: list[str] = field(default_factory=list)  # content after each PATCH, in order
    deleted: bool = False
    flags: int = 0
    attachments: list[str] = field(default_factory=list)  # uploaded file names
    payload: JSONDict = field(default_factory=dict)  # the JSON payload as posted


@dataclass
class RestFault:
    """One injected REST failure or slowness, consumed by the first channel request it matches."""

    status: int | None  # None: no error, only the delay
    method: str | None = None
    path_contains: str | None = None
    retry_after: float = 0.05
    global_: bool = False
    after_handling: bool = False  # carry the request out, then answer with the fault: a response lost on its way
    delay: float = 0.0  # seconds the request is held before anything else happens to it


@dataclass
class GatewaySession:
    """A bot's gateway session; ``ws`` is ``None`` while disconnected (it may still be resumed)."""

    token: str
    user_id: int
    session_id: str
    intents: int
    ws: web.WebSocketResponse | None = None
    seq: int = 0
    ready: bool = False  # READY or RESUMED was sent on the current socket
    missed: list[tuple[str, str]] = field(default_factory=list)  # (event, JSON) while disconnected, for RESUME
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


@dataclass
class _User:
    id: int
    name: str
    bot: bool
    roles: set[int]
    guilds: frozenset[int] | None = None  # the guilds it is a member of; None: every guild

    def member_of(self, guild_id: int) -> bool:
        return self.guilds is None or guild_id in self.guilds

    def payload(self) -> JSONDict:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class _Guild:
    id: int
    name: str
    owner_id: int


@dataclass
class _Role:
    id: int
    guild_id: int
    name: str
    position: int
    permissions: str

    def payload(self) -> JSONDict:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": self.permissions,
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class _Channel:
    id: int
    name: str
    type: int
    guild_id: int | None
    position: int = 0
    recipients: tuple[int, ...] = ()  # DM only: (human, bot)


class _ApiError(Exception):
    """A Discord-style JSON error response raised from a REST handler."""

    def __init__(self, status: int, code: int, message: str, errors: JSONDict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.errors = status, code, errors

    def response(self) -> web.Response:
        body: JSONDict = {"message": str(self), "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return _json(body, self.status)


_BOT_USER = web.RequestKey("bot_user", _User)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json``, as discord.py requires."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@functools.lru_cache(maxsize=4096)
def _snowflake_iso(snowflake: int) -> str:
    """The creation time encoded in a snowflake, as ISO 8601."""
    return datetime.fromtimestamp(((snowflake >> 22) + _DISCORD_EPOCH_MS) / 1000, timezone.utc).isoformat()


async def _json_body(request: web.Request) -> JSONDict:
    try:
        body = await request.json()
    except ValueError:
        raise _ApiError(400, 50109, "The request body contains invalid JSON.") from None
    if not isinstance(body, dict):
        raise _ApiError(400, 50109, "The request body contains invalid JSON.")
    return body


def _too_long(field_name: str) -> _ApiError:
    detail = {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {MAX_CONTENT_LENGTH} or fewer in length."}
    return _ApiError(400, 50035, "Invalid Form Body", {field_name: {"_errors": [detail]}})


class DiscordSandbox:
    """A loopback Discord: REST and gateway for real discord.py clients, plus hooks for tests.

    ``async with DiscordSandbox() as sandbox:`` starts it on an ephemeral port. A default guild
    ``Sandbox`` (:attr:`guild_id`) with a text channel ``general`` (:attr:`channel_id`) and a
    default human ``alice`` (:attr:`default_user_id`, also guild and application owner) exist
    from the start.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval_ms: int = 41250,
        compress: bool = False,
        nonce_window: float = 300.0,
    ) -> None:
        self._host, self._port = host, port
        # With ``compress``, a client that asks for ``compress=zlib-stream`` gets it, as from Discord: one
        # deflate stream per connection, each payload a binary frame ending in a sync flush. Otherwise
        # frames are plain JSON text (which discord.py accepts whatever it asked for).
        self.compress = compress
        self._deflaters: dict[web.WebSocketResponse, Any] = {}
        self.reject_identify: dict[str, int] = {}  # token -> close code sent instead of READY (crash loops)
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._last_id = 0
        self._users: dict[int, _User] = {}
        self._bot_tokens: dict[str, int] = {}
        self._guilds: dict[int, _Guild] = {}
        self._roles: dict[int, _Role] = {}
        self._channels: dict[int, _Channel] = {}
        self._dm_channels: dict[tuple[int, int], int] = {}
        self._messages: dict[int, JSONDict] = {}
        # enforce_nonce: (author, nonce) -> (message id, when), oldest first. Discord checks "the past few minutes".
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}
        self.nonce_window = nonce_window
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Condition()

        self.sent: list[SentMessage] = []
        self.typing: list[tuple[int, int]] = []
        self.identify_count: defaultdict[str, int] = defaultdict(int)  # IDENTIFYs received per token
        self.resume_count: defaultdict[str, int] = defaultdict(int)  # RESUMEs received per token
        self.sessions: dict[str, GatewaySession] = {}  # token -> current (possibly disconnected) session
        # token -> the most gateway connections identified as that bot open at one time (Discord allows
        # one per bot and shard: two mean two processes ran the bot at once)
        self.peak_connections: defaultdict[str, int] = defaultdict(int)
        self._identified: dict[web.WebSocketResponse, str] = {}  # open connection -> the token it identified
        self.faults: list[RestFault] = []  # pending injected faults, FIFO
        self.rest_log: list[tuple[str, str, int]] = []  # (method, path, status) per REST request
        self.rest_times: list[float] = []  # time.monotonic() of each rest_log entry

        self.default_user_id = self._add_user("alice", bot=False, roles=())
        self.guild_id = self.add_guild("Sandbox")
        self.channel_id = self.add_channel("general")

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the port and start serving."""
        if self._runner is not None:
            raise RuntimeError("DiscordSandbox already started")
        app = web.Application(middlewares=[self._rest_middleware])
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        self._bound_port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close every gateway socket (code 1001) and stop serving; safe to call twice."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await asyncio.gather(*(ws.close(code=1001) for ws in list(self._sockets)))
        await runner.cleanup()

    async def __aenter__(self) -> DiscordSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("DiscordSandbox is not started")
        return f"http://{self._host}:{self._bound_port}"

    @property
    def api_url(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Value for ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (as a ``yarl.URL``)."""
        return self.base_url.replace("http://", "ws://", 1) + "/gateway"

    # ----------------------------------------------------------------- world building

    def add_bot(self, token: str, name: str, *, guilds: Sequence[int] | None = None) -> int:
        """Register a bot user that logs in with ``token``; returns its user id.

        With ``guilds=None`` the bot is a member of every guild, including guilds added later;
        with a list of guild ids it is a member of those guilds only (one persona per community).
        """
        if token in self._bot_tokens:
            raise ValueError("token already registered")
        if guilds is not None:
            unknown = set(guilds) - self._guilds.keys()
            if unknown:
                raise KeyError(f"unknown guild ids {sorted(unknown)}")
        user_id = self._add_user(name, bot=True, roles=())
        if guilds is not None:
            self._users[user_id].guilds = frozenset(guilds)
        self._bot_tokens[token] = user_id
        return user_id

    def remove_bot(self, token: str) -> None:
        """Revoke ``token``: later logins get 401, later IDENTIFY/RESUME a 4004 close."""
        del self._bot_tokens[token]

    def add_user(self, name: str, *, bot: bool = False, roles: Sequence[int] = ()) -> int:
        """Add a member (of every guild) who can post through :meth:`post`; returns its id."""
        unknown = set(roles) - self._roles.keys()
        if unknown:
            raise KeyError(f"unknown role ids {sorted(unknown)}")
        return self._add_user(name, bot=bot, roles=roles)

    def add_guild(self, name: str) -> int:
        """Add a guild with its @everyone role; returns its id.

        Humans and unrestricted bots are members; sessions see it from their next IDENTIFY."""
        guild_id = self._next_id()
        self._guilds[guild_id] = _Guild(guild_id, name, owner_id=self.default_user_id)
        self._roles[guild_id] = _Role(guild_id, guild_id, "@everyone", 0, EVERYONE_PERMISSIONS)
        return guild_id

    def add_role(self, guild_id: int, name: str) -> int:
        """Add a role (no permissions) to a guild; returns its id."""
        position = sum(role.guild_id == guild_id for role in self._roles.values())
        role_id = self._next_id()
        self._roles[role_id] = _Role(role_id, self._guilds[guild_id].id, name, position, "0")
        return role_id

    def add_channel(self, name: str, guild_id: int | None = None) -> int:
        """Add a text channel (to the default guild unless ``guild_id``); returns its id."""
        gid = self.guild_id if guild_id is None else self._guilds[guild_id].id
        position = sum(channel.guild_id == gid for channel in self._channels.values())
        channel_id = self._next_id()
        self._channels[channel_id] = _Channel(channel_id, name, _GUILD_TEXT, gid, position)
        return channel_id

    def _add_user(self, name: str, *, bot: bool, roles: Sequence[int]) -> int:
        user_id = self._next_id()
        self._users[user_id] = _User(user_id, name, bot, set(roles))
        return user_id

    def _next_id(self) -> int:
        """A strictly increasing snowflake whose timestamp part is now."""
        self._last_id = max((int(time.time() * 1000) - _DISCORD_EPOCH_MS) << 22, self._last_id + 1)
        return self._last_id

    # ----------------------------------------------------------------- test hooks

    async def post(
        self,
        content: str,
        *,
        channel_id: int | None = None,
        author_id: int | None = None,
        reply_to: int | None = None,
        mentions: Sequence[int] = (),
        mention_roles: Sequence[int] = (),
        guild: bool = True,
        dm_to: str | None = None,
        attachments: Sequence[JSONDict] = (),
        sticker: bool = False,
    ) -> JSONDict:
        """Post a message as a user and dispatch MESSAGE_CREATE to the bots that can see it.

        ``author_id`` defaults to alice, ``channel_id`` to the default channel. A DM is
        ``guild=False, dm_to=<bot token>``: it goes to the DM channel between the author and that
        bot (created on first use, ``channel_id`` is ignored) and only that bot receives it.
        ``mentions`` are user ids and ``mention_roles`` role ids (not parsed from the content);
        ``attachments`` are partial attachment dicts (``filename``, ``size``, ...) completed with
        ids and URLs. Returns the stored message object.
        """
        author = self._users[self.default_user_id if author_id is None else author_id]
        if guild:
            if dm_to is not None:
                raise ValueError("dm_to needs guild=False")
            channel = self._channels[self.channel_id if channel_id is None else channel_id]
        else:
            if dm_to is None:
                raise ValueError("a DM (guild=False) needs dm_to=<bot token>")
            channel = self._dm_channel(author.id, self._bot_tokens[dm_to])
        message = self._new_message(
            channel,
            author,
            content,
            mentions=[self._users[user_id] for user_id in mentions],
            mention_roles=[self._roles[role_id].id for role_id in mention_roles],
            mention_everyone="@everyone" in content or "@here" in content,
            reference=self._messages[reply_to] if reply_to is not None else None,
            attachments=[self._attachment(channel.id, spec) for spec in attachments],
            sticker_items=[{"id": str(self._next_id()), "name": "sandbox", "format_type": 1}] if sticker else [],
        )
        await self._broadcast("MESSAGE_CREATE", channel, self._gateway_message(message))
        return message

    def sent_by(self, bot_user_id: int) -> list[SentMessage]:
        """Messages the given bot sent, in order."""
        return [message for message in self.sent if message.author_id == bot_user_id]

    async def wait_for_sent(
        self, n: int = 1, *, predicate: Callable[[SentMessage], bool] | None = None, timeout: float = 10.0
    ) -> list[SentMessage]:
        """Wait until at least ``n`` sent messages match ``predicate``; returns all that match."""

        def check() -> tuple[list[SentMessage]] | None:
            matches = [message for message in self.sent if predicate is None or predicate(message)]
            return (matches,) if len(matches) >= n else None

        (matches,) = await self._wait(check, timeout, f"{n} sent message(s)")
        return matches

    async def wait_for_ready(self, token: str, timeout: float = 10.0) -> GatewaySession:
        """Wait until ``token`` has a connected session that sent READY (or RESUMED after a resume)."""

        def check() -> GatewaySession | None:
            session = self.sessions.get(token)
            return session if session is not None and session.ready else None

        return await self._wait(check, timeout, "a ready gateway session")

    def inject_rest(self, *faults: RestFault) -> None:
        """Queue REST faults; each is consumed by the first ``/channels/...`` request it matches."""
        self.faults.extend(faults)

    async def drop_gateway(self, token: str, *, resumable: bool = True, code: int | None = None) -> None:
        """Disconnect a bot's gateway session.

        Resumable: close with 4000, the client RESUMEs the same session. Otherwise: forget the
        session, send INVALID_SESSION (``d=false``) and close, so the client IDENTIFYs again.
        With ``code`` (e.g. 4012, invalid API version): forget the session and close with that
        code; discord.py treats such codes as fatal and ``start()`` raises ``ConnectionClosed``.
        """
        session = self.sessions.get(token)
        if session is None or session.ws is None:
            raise LookupError("no connected gateway session for this token")
        ws, session.ws, session.ready = session.ws, None, False
        if code is not None:
            del self.sessions[token]
            await ws.close(code=code, message=b"Closed by the sandbox")
            return
        if resumable:
            await ws.close(code=4000, message=b"Unknown error")
            return
        del self.sessions[token]
        await self._send_frame(ws, json.dumps({"op": _INVALID_SESSION, "d": False}))
        await ws.close()

    async def _wait(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    return await self._changed.wait_for(check)  # type: ignore[return-value]
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ----------------------------------------------------------------- payloads

    def _member(self, user: _User, guild_id: int, *, with_user: bool) -> JSONDict:
        member: JSONDict = {
            "roles": [str(role_id) for role_id in sorted(user.roles) if self._roles[role_id].guild_id == guild_id],
            "nick": None,
            "avatar": None,
            "joined_at": _snowflake_iso(guild_id),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
        }
        if with_user:
            member["user"] = user.payload()
        return member

    def _channel_payload(self, channel: _Channel, viewer_id: int) -> JSONDict:
        if channel.type == _DM:
            others = [self._users[user_id].payload() for user_id in channel.recipients if user_id != viewer_id]
            return {"id": str(channel.id), "type": _DM, "recipients": others, "last_message_id": None, "flags": 0}
        return {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }

    def _guild_create(self, guild: _Guild, viewer_id: int, intents: int) -> JSONDict:
        """GUILD_CREATE as ``viewer_id`` receives it. As on Discord, the member list is only complete
        with the privileged GUILD_MEMBERS intent; without it the bot gets its own member."""
        in_guild = [user for user in self._users.values() if user.member_of(guild.id)]
        listed = in_guild if intents & GUILD_MEMBERS else [user for user in in_guild if user.id == viewer_id]
        members = [self._member(user, guild.id, with_user=True) for user in listed]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "owner_id": str(guild.owner_id),
            "unavailable": False,
            "large": False,
            "member_count": len(in_guild),
            "joined_at": _snowflake_iso(guild.id),
            "roles": [role.payload() for role in self._roles.values() if role.guild_id == guild.id],
            "channels": [
                self._channel_payload(channel, viewer_id)
                for channel in self._channels.values()
                if channel.guild_id == guild.id
            ],
            "members": members,
            "presences": [],
            "voice_states": [],
            "threads": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "system_channel_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
        }

    def _dm_channel(self, user_id: int, bot_user_id: int) -> _Channel:
        key = (user_id, bot_user_id)
        if key not in self._dm_channels:
            channel_id = self._next_id()
            self._channels[channel_id] = _Channel(channel_id, "", _DM, None, recipients=key)
            self._dm_channels[key] = channel_id
        return self._channels[self._dm_channels[key]]

    def _attachment(self, channel_id: int, spec: JSONDict) -> JSONDict:
        attachment_id = self._next_id()
        filename = spec.get("filename", "file.bin")
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{filename}"
        return {"id": str(attachment_id), "filename": filename, "size": 0, "url": url, "proxy_url": url, **spec}

    def _new_message(
        self,
        channel: _Channel,
        author: _User,
        content: str,
        *,
        mentions: list[_User],
        mention_roles: list[int],
        mention_everyone: bool,
        reference: JSONDict | None,
        attachments: Sequence[JSONDict],
        sticker_items: Sequence[JSONDict] = (),
        embeds: Sequence[JSONDict] = (),
        flags: int = 0,
        nonce: str | int | None = None,
    ) -> JSONDict:
        """Build and store a message object (REST shape, plus ``guild_id`` for guild messages)."""
        message_id = self._next_id()
        message: JSONDict = {
            "id": str(message_id),
            "type": _DEFAULT_MESSAGE if reference is None else _REPLY_MESSAGE,
            "channel_id": str(channel.id),
            "author": author.payload(),
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [user.payload() for user in mentions],
            "mention_roles": [str(role_id) for role_id in mention_roles],
            "attachments": list(attachments),
            "embeds": list(embeds),
            "sticker_items": list(sticker_items),
            "components": [],
            "pinned": False,
            "flags": flags,
        }
        if channel.guild_id is not None:
            message["guild_id"] = str(channel.guild_id)
        if nonce is not None:
            message["nonce"] = nonce
        if reference is not None:
            message["message_reference"] = {
                "type": 0,
                "message_id": reference["id"],
                "channel_id": reference["channel_id"],
                **({"guild_id": reference["guild_id"]} if "guild_id" in reference else {}),
            }
            message["referenced_message"] = {k: v for k, v in reference.items() if k != "referenced_message"}
        self._messages[message_id] = message
        return message

    def _gateway_message(self, message: JSONDict) -> Callable[[GatewaySession], JSONDict]:
        """A message as each session's MESSAGE_CREATE/UPDATE carries it (members, content intent).

        The members are looked up once; sessions without the content intent share one hidden copy."""
        event = dict(message)
        if "guild_id" in message:
            guild_id = int(message["guild_id"])
            author = self._users[int(message["author"]["id"])]
            event["member"] = self._member(author, guild_id, with_user=False)
            event["mentions"] = [
                {**user, "member": self._member(self._users[int(user["id"])], guild_id, with_user=False)}
                for user in message["mentions"]
            ]
        hidden = {**event, "content": "", "embeds": [], "attachments": [], "components": []}
        author_id = int(message["author"]["id"])
        mentioned = {int(user["id"]) for user in message["mentions"]}

        def for_session(session: GatewaySession) -> JSONDict:
            content_visible = (
                session.intents & MESSAGE_CONTENT
                or "guild_id" not in message
                or session.user_id == author_id
                or session.user_id in mentioned
            )
            return event if content_visible else hidden

        return for_session

    def _message_with_nonce(self, once: tuple[int, str]) -> JSONDict | None:
        """The message created with this (author, nonce) within ``nonce_window`` s, forgetting older ones."""
        expired = time.monotonic() - self.nonce_window
        while self._nonces:
            oldest = next(iter(self._nonces))
            if self._nonces[oldest][1] > expired:
                break
            del self._nonces[oldest]
        entry = self._nonces.get(once)
        return self._messages.get(entry[0]) if entry is not None else None

    def _bot_mentions(
        self, content: str, allowed: JSONDict | None, reference: JSONDict | None
    ) -> tuple[list[_User], list[int], bool]:
        """Mentions Discord derives from a bot's content, filtered by its ``allowed_mentions``."""
        parse = ["users", "roles", "everyone"] if allowed is None else allowed.get("parse", [])
        allowed_users = {int(user_id) for user_id in (allowed or {}).get("users", [])}
        allowed_roles = {int(role_id) for role_id in (allowed or {}).get("roles", [])}
        user_ids = [
            int(found)
            for found in dict.fromkeys(_USER_MENTION.findall(content))
            if int(found) in self._users and ("users" in parse or int(found) in allowed_users)
        ]
        if reference is not None and (allowed is None or allowed.get("replied_user", False)):
            replied = int(reference["author"]["id"])
            if replied not in user_ids:
                user_ids.append(replied)
        role_ids = [
            int(found)
            for found in dict.fromkeys(_ROLE_MENTION.findall(content))
            if int(found) in self._roles and ("roles" in parse or int(found) in allowed_roles)
        ]
        everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
        return [self._users[user_id] for user_id in user_ids], role_ids, everyone

    # ----------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0, timeout=5.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        if self.compress and request.query.get("compress") == "zlib-stream":
            self._deflaters[ws] = zlib.compressobj()
        session: GatewaySession | None = None
        try:
            await self._send_frame(ws, json.dumps({"op": _HELLO, "d": {"heartbeat_interval": self._heartbeat_interval_ms}}))
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                op, data = payload.get("op"), payload.get("d")
                if op == _HEARTBEAT:
                    await self._send_frame(ws, json.dumps({"op": _HEARTBEAT_ACK}))
                elif op == _IDENTIFY:
                    session = await self._identify(ws, data)
                elif op == _RESUME:
                    session = await self._resume(ws, data)
        except ConnectionResetError:
            pass  # the client went away mid-send
        finally:
            self._sockets.discard(ws)
            self._identified.pop(ws, None)
            self._deflaters.pop(ws, None)
            if session is not None and session.ws is ws:
                session.ws, session.ready = None, False
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        token = data.get("token", "")
        self.identify_count[token] += 1
        user_id = self._bot_tokens.get(token)
        if token in self.reject_identify:
            await ws.close(code=self.reject_identify[token], message=b"Rejected by the sandbox")
            return None
        if user_id is None:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        session = GatewaySession(token, user_id, uuid.uuid4().hex, int(data.get("intents", 0)), ws=ws)
        self.sessions[token] = session
        self._count_connection(ws, token)
        guilds = [guild for guild in self._guilds.values() if self._users[user_id].member_of(guild.id)]
        ready: JSONDict = {
            "v": 10,
            "user": {**self._users[user_id].payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(user_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        async with session.lock:
            await self._send_dispatch(session, "READY", ready)
            for guild in guilds:
                await self._send_dispatch(session, "GUILD_CREATE", self._guild_create(guild, user_id, session.intents))
            session.ready = True
        await self._notify()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        token = data.get("token", "")
        self.resume_count[token] += 1
        if token not in self._bot_tokens:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        session = self.sessions.get(token)
        if session is None or session.session_id != data.get("session_id"):
            await self._send_frame(ws, json.dumps({"op": _INVALID_SESSION, "d": False}))
            return None
        self._count_connection(ws, token)
        async with session.lock:
            session.ws = ws
            missed, session.missed = session.missed, []
            for event, encoded in missed:
                await self._send_dispatch(session, event, {}, encoded)
            await self._send_dispatch(session, "RESUMED", {})
            session.ready = True
        await self._notify()
        return session

    def _count_connection(self, ws: web.WebSocketResponse, token: str) -> None:
        self._identified[ws] = token
        open_now = sum(1 for other, known in self._identified.items() if known == token and not other.closed)
        self.peak_connections[token] = max(self.peak_connections[token], open_now)

    async def _send_dispatch(
        self, session: GatewaySession, event: str, data: JSONDict, encoded: str | None = None
    ) -> None:
        """Send one dispatch on the session's socket; the caller holds ``session.lock``.

        ``encoded`` is ``json.dumps(data)`` when the caller already has it (one encoding per broadcast)."""
        if session.ws is None:
            return
        session.seq += 1
        if encoded is None:
            encoded = json.dumps(data)
        await self._send_frame(session.ws, f'{{"op":{_DISPATCH},"t":"{event}","s":{session.seq},"d":{encoded}}}')

    async def _send_frame(self, ws: web.WebSocketResponse, text: str) -> None:
        deflater = self._deflaters.get(ws)
        if deflater is None:
            await ws.send_str(text)
        else:
            await ws.send_bytes(deflater.compress(text.encode()) + deflater.flush(zlib.Z_SYNC_FLUSH))

    async def _broadcast(self, event: str, channel: _Channel, build: Callable[[GatewaySession], JSONDict]) -> None:
        """Dispatch ``event`` to every ready session that can see ``channel`` (and has the intent):
        for a DM its bot recipient, for a guild channel every bot that is a member of the guild.

        Each distinct payload ``build`` returns is encoded once, as Discord fans one event out."""
        needed = DIRECT_MESSAGES if channel.type == _DM else GUILD_MESSAGES
        encoded: dict[int, tuple[JSONDict, str]] = {}  # id(payload) -> (payload, its JSON)
        for session in list(self.sessions.values()):
            if not (session.ready or session.ws is None) or not session.intents & needed:
                continue  # still identifying
            if channel.type == _DM and session.user_id not in channel.recipients:
                continue
            if channel.guild_id is not None and not self._users[session.user_id].member_of(channel.guild_id):
                continue
            data = build(session)
            if id(data) not in encoded:
                encoded[id(data)] = (data, json.dumps(data))
            if session.ws is None:  # disconnected, resumable: Discord replays it on RESUME
                if len(session.missed) < _MAX_MISSED:
                    session.missed.append((event, encoded[id(data)][1]))
                continue
            async with session.lock:
                try:
                    await self._send_dispatch(session, event, data, encoded[id(data)][1])
                except ConnectionResetError:
                    pass  # disconnected meanwhile: the event is lost (no replay)

    # ----------------------------------------------------------------- REST plumbing

    def _add_routes(self, app: web.Application) -> None:
        channel = API_PREFIX + r"/channels/{channel_id:\d+}"
        message = channel + r"/messages/{message_id:\d+}"
        app.add_routes(
            [
                web.get("/gateway", self._gateway),
                web.get(API_PREFIX + "/gateway", self._get_gateway),
                web.get(API_PREFIX + "/gateway/bot", self._get_gateway_bot),
                web.get(API_PREFIX + "/users/@me", self._get_me),
                web.post(API_PREFIX + "/users/@me/channels", self._create_dm),
                web.get(API_PREFIX + "/oauth2/applications/@me", self._get_application),
                web.get(channel, self._get_channel),
                web.get(channel + "/messages", self._list_messages),
                web.post(channel + "/messages", self._create_message),
                web.post(channel + "/typing", self._trigger_typing),
                web.get(message, self._get_message),
                web.patch(message, self._edit_message),
                web.delete(message, self._delete_message),
                web.post("/_sandbox/messages", self._control_post),
                web.get("/_sandbox/sent", self._control_sent),
            ]
        )

    @web.middleware
    async def _rest_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Auth, fault injection, Discord error bodies and rate-limit headers for ``/api/v10``."""
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        resource = request.match_info.route.resource
        route_key = f"{request.method} {resource.canonical if resource is not None else request.path}"
        bucket = f"{zlib.crc32(route_key.encode()):08x}"
        token = request.headers.get("Authorization", "").removeprefix("Bot ")
        response: web.StreamResponse
        authorized = request.path == API_PREFIX + "/gateway" or token in self._bot_tokens
        fault = self._take_fault(request) if authorized else None
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is None:
            fault = None
        if not authorized:
            response = _ApiError(401, 0, "401: Unauthorized").response()
        elif fault is not None and not fault.after_handling:
            response = self._fault_response(fault, bucket)
        else:
            if token in self._bot_tokens:
                request[_BOT_USER] = self._users[self._bot_tokens[token]]
            try:
                response = await handler(request)
            except _ApiError as exc:
                response = exc.response()
            except web.HTTPException as exc:
                response = _ApiError(exc.status, 0, f"{exc.status}: {exc.reason}").response()
            if fault is not None:
                response = self._fault_response(fault, bucket)
        if response.status != 429:
            response.headers.update(
                {
                    "X-RateLimit-Limit": str(_RATE_LIMIT),
                    "X-RateLimit-Remaining": str(_RATE_LIMIT - 1),
                    "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
                    "X-RateLimit-Reset-After": "1.000",
                    "X-RateLimit-Bucket": bucket,
                }
            )
        self.rest_log.append((request.method, request.path, response.status))
        self.rest_times.append(time.monotonic())
        return response

    def _take_fault(self, request: web.Request) -> RestFault | None:
        if not request.path.startswith(API_PREFIX + "/channels/"):
            return None
        for index, fault in enumerate(self.faults):
            if (fault.method is None or fault.method == request.method) and (
                fault.path_contains is None or fault.path_contains in request.path
            ):
                return self.faults.pop(index)
        return None

    @staticmethod
    def _fault_response(fault: RestFault, bucket: str) -> web.Response:
        assert fault.status is not None
        if fault.status != 429:
            return _ApiError(fault.status, 0, f"{fault.status}: Injected fault").response()
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(math.ceil(fault.retry_after)),
            "X-RateLimit-Limit": str(_RATE_LIMIT),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
            "X-RateLimit-Bucket": bucket,
            "X-RateLimit-Scope": "global" if fault.global_ else "user",
        }
        if fault.global_:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": fault.retry_after, "global": fault.global_}
        return _json(body, 429, headers)

    def _channel(self, request: web.Request) -> _Channel:
        """The route's channel, if the requesting bot can see it (a DM it is in, or its guild's channel)."""
        channel = self._channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise _ApiError(404, 10003, "Unknown Channel")
        bot = request[_BOT_USER]
        if channel.type == _DM and bot.id not in channel.recipients:
            raise _ApiError(403, 50001, "Missing Access")
        if channel.guild_id is not None and not bot.member_of(channel.guild_id):
            raise _ApiError(403, 50001, "Missing Access")
        return channel

    def _message_in(self, channel: _Channel, request: web.Request) -> JSONDict:
        message = self._messages.get(int(request.match_info["message_id"]))
        if message is None or message["channel_id"] != str(channel.id):
            raise _ApiError(404, 10008, "Unknown Message")
        return message

    def _sent_record(self, message_id: int) -> SentMessage | None:
        return next((sent for sent in self.sent if sent.id == message_id), None)

    @staticmethod
    async def _read_message_body(request: web.Request) -> tuple[JSONDict, list[JSONDict]]:
        """The JSON payload and uploaded files (name, size, type) of a JSON or multipart request."""
        if not request.content_type.startswith("multipart/"):
            return await _json_body(request), []
        payload: JSONDict = {}
        files: list[JSONDict] = []
        reader = await request.multipart()
        async for part in reader:
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.filename:
                data = await part.read()
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                files.append({"filename": part.filename, "size": len(data), "content_type": content_type})
        return payload, files

    # ----------------------------------------------------------------- REST handlers

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _get_me(self, request: web.Request) -> web.Response:
        bot = request[_BOT_USER]
        return _json({**bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0, "locale": "en-US"})

    async def _get_application(self, request: web.Request) -> web.Response:
        bot = request[_BOT_USER]
        return _json(
            {
                "id": str(bot.id),
                "name": bot.name,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self._users[self.default_user_id].payload(),
                "team": None,
                "flags": 0,
                "rpc_origins": [],
            }
        )

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient_id = int((await _json_body(request)).get("recipient_id", 0))
        if recipient_id not in self._users:
            raise _ApiError(400, 50033, "Invalid Recipient(s)")
        bot = request[_BOT_USER]
        return _json(self._channel_payload(self._dm_channel(recipient_id, bot.id), bot.id))

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json(self._channel_payload(self._channel(request), request[_BOT_USER].id))

    async def _trigger_typing(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self.typing.append((request[_BOT_USER].id, channel.id))
        await self._notify()
        return web.Response(status=204)

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        bot = request[_BOT_USER]
        payload, files = await self._read_message_body(request)
        content = payload.get("content") or ""
        if len(content) > MAX_CONTENT_LENGTH:
            raise _too_long("content")
        embeds = payload.get("embeds") or []
        if not (content or embeds or files or payload.get("sticker_ids") or payload.get("poll")):
            raise _ApiError(400, 50006, "Cannot send an empty message")
        reference = None
        if (ref := payload.get("message_reference")) is not None:
            reference = self._messages.get(int(ref["message_id"]))
            if reference is None and ref.get("fail_if_not_exists", True):
                detail = {"code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "message": "Unknown message"}
                raise _ApiError(400, 50035, "Invalid Form Body", {"message_reference": {"_errors": [detail]}})
        nonce = payload.get("nonce")
        once = (bot.id, str(nonce)) if nonce is not None and payload.get("enforce_nonce") else None
        if once is not None and (first := self._message_with_nonce(once)) is not None:
            return _json(first)  # the same message again: Discord returns the first
        allowed = payload.get("allowed_mentions")
        mentions, mention_roles, everyone = self._bot_mentions(content, allowed, reference)
        message = self._new_message(
            channel,
            bot,
            content,
            mentions=mentions,
            mention_roles=mention_roles,
            mention_everyone=everyone,
            reference=reference,
            attachments=[self._attachment(channel.id, spec) for spec in files],
            embeds=embeds,
            flags=int(payload.get("flags", 0)),
            nonce=nonce,
        )
        if once is not None:
            self._nonces[once] = (int(message["id"]), time.monotonic())
        self.sent.append(
            SentMessage(
                id=int(message["id"]),
                channel_id=channel.id,
                author_id=bot.id,
                content=content,
                allowed_mentions=allowed,
                reference_id=None if reference is None else int(reference["id"]),
                flags=message["flags"],
                attachments=[spec["filename"] for spec in files],
                payload=payload,
            )
        )
        await self._broadcast("MESSAGE_CREATE", channel, self._gateway_message(message))
        await self._notify()
        return _json(message)

    async def _list_messages(self, request: web.Request) -> web.Response:
        """The channel's messages, newest first, as Discord's ``GET /channels/{id}/messages``:
        ``limit`` (1-100, default 50) of them, the newest before ``before`` or, with ``after``, the
        oldest after it. REST message objects carry no ``guild_id`` and no ``member``, unlike gateway
        MESSAGE_CREATEs."""
        channel = self._channel(request)
        try:
            limit = int(request.query.get("limit", "50"))
            after = int(request.query.get("after", "0"))
            before = int(request.query.get("before", str(1 << 63)))
        except ValueError:
            raise _ApiError(400, 50035, "Invalid Form Body") from None
        if not 1 <= limit <= 100:
            raise _ApiError(400, 50035, "Invalid Form Body")
        found = [
            {k: v for k, v in message.items() if k not in ("guild_id", "member")}
            for message_id, message in self._messages.items()
            if message["channel_id"] == str(channel.id) and after < message_id < before
        ]
        found.sort(key=lambda m: int(m["id"]))
        page = found[:limit] if "after" in request.query else found[-limit:]
        return _json(page[::-1])

    async def _get_message(self, request: web.Request) -> web.Response:
        return _json(self._message_in(self._channel(request), request))

    async def _edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message_in(channel, request)
        if message["author"]["id"] != str(request[_BOT_USER].id):
            raise _ApiError(403, 50005, "Cannot edit a message authored by another user")
        payload = await _json_body(request)
        content = payload.get("content", message["content"]) or ""
        if len(content) > MAX_CONTENT_LENGTH:
            raise _too_long("content")
        message.update(content=content, edited_timestamp=_now_iso())
        for key in ("embeds", "flags", "components"):
            if key in payload:
                message[key] = payload[key]
        sent = self._sent_record(int(message["id"]))
        if sent is not None:
            sent.edits.append(content)
            sent.content = content
        await self._broadcast("MESSAGE_UPDATE", channel, self._gateway_message(message))
        await self._notify()
        return _json(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message_in(channel, request)
        del self._messages[int(message["id"])]
        sent = self._sent_record(int(message["id"]))
        if sent is not None:
            sent.deleted = True
        event = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            event["guild_id"] = message["guild_id"]
        await self._broadcast("MESSAGE_DELETE", channel, lambda _session: event)
        await self._notify()
        return web.Response(status=204)

    # ----------------------------------------------------------------- control API

    async def _control_post(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/messages`` with :meth:`post`'s keyword arguments as JSON."""
        try:
            message = await self.post(**await _json_body(request))
        except (_ApiError, TypeError, ValueError, KeyError) as exc:
            return _json({"message": f"bad sandbox post: {exc!r}"}, 400)
        return _json(message)

    async def _control_sent(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/sent``: every :class:`SentMessage` as JSON."""
        return _json([dataclasses.asdict(sent) for sent in self.sent])


# --------------------------------------------------------------------- command line


async def _serve(host: str, port: int, bots: list[tuple[str, str]], heartbeat_interval_ms: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with DiscordSandbox(host=host, port=port, heartbeat_interval_ms=heartbeat_interval_ms) as sandbox:
        for token, name in bots:
            sandbox.add_bot(token, name)
        print(f"api_url={sandbox.api_url}", flush=True)
        print(f"gateway_url={sandbox.gateway_url}", flush=True)
        ids = f"guild_id={sandbox.guild_id} channel_id={sandbox.channel_id} user_id={sandbox.default_user_id}"
        print(ids, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run a sandbox until SIGINT/SIGTERM, printing its URLs (``key=value`` lines)."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sandbox.discord_server", description="Run a loopback Discord sandbox."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--bot", action="append", default=[], metavar="TOKEN=NAME", help="register a bot (repeatable)")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=41250)
    args = parser.parse_args(argv)
    bots: list[tuple[str, str]] = []
    for spec in args.bot:
        token, sep, name = spec.partition("=")
        if not (sep and token and name):
            parser.error(f"--bot expects TOKEN=NAME, got {spec!r}")
        bots.append((token, name))
    asyncio.run(_serve(args.host, args.port, bots, args.heartbeat_interval_ms))


if __name__ == "__main__":
    main()
