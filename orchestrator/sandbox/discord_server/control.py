""":class:`DiscordSandbox`: the loopback Discord as tests and the demo drive it.

It composes the shared :class:`SandboxState`, the websocket :class:`Gateway` and the
:class:`RestApi` into one aiohttp application (REST under ``/api/v10``, the gateway at
``/gateway``, on one port), and adds the control surface: humans speak through :meth:`post`;
what bots send through REST is recorded in :attr:`sent`; faults and disconnections are injected
with :meth:`inject_rest` and :meth:`drop_gateway`; an application's privileged intent is set with
:meth:`set_message_content_intent`. Attachments are stored and served at their own URLs
(``attachments.py``); slash commands are run with :meth:`interact` (``interactions.py``).
``POST /_sandbox/messages``, ``POST /_sandbox/intents`` and
``GET /_sandbox/sent`` offer the same to another process (``python -m orchestrator.sandbox.discord_server``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from aiohttp import web

from .attachments import ROUTE as ATTACHMENT_ROUTE
from .gateway import Gateway, GatewaySession
from .interactions import InteractionRecord, Interactions
from .rest import API_PREFIX, ApiError, RestApi, RestFault, json_body, json_response
from .state import JSONDict, SandboxState, SentMessage


class DiscordSandbox:
    """A loopback Discord: REST and gateway for real discord.py clients, plus hooks for tests.

    ``async with DiscordSandbox() as sandbox:`` starts it on an ephemeral port. A default guild
    ``Sandbox`` (:attr:`guild_id`) with a text channel ``general`` (:attr:`channel_id`) and a
    default human ``alice`` (:attr:`default_user_id`, also guild and application owner) exist
    from the start. Point discord.py at it with::

        discord.http.Route.BASE = sandbox.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sandbox.gateway_url)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval_ms: int = 41250,
        heartbeat_ack_delay: float = 0.05,
        compress: bool = False,
        nonce_window: float = 300.0,
    ) -> None:
        """``heartbeat_ack_delay``: seconds before a heartbeat is acknowledged, a network round trip
        (see ``gateway.py`` for why it must not be zero)."""
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.state = SandboxState(nonce_window=nonce_window)
        self.gateway = Gateway(
            self.state,
            heartbeat_interval_ms=heartbeat_interval_ms,
            heartbeat_ack_delay=heartbeat_ack_delay,
            compress=compress,
        )
        self.rest = RestApi(self.state, self.gateway)
        self.interactions = Interactions(self.state, self.gateway)
        self.rest.token_authenticated = self.interactions.token_authenticated
        self.guild_id = self.state.guild_id
        self.channel_id = self.state.channel_id
        self.default_user_id = self.state.default_user_id

    # ----------------------------------------------------------------- what tests read

    @property
    def sent(self) -> list[SentMessage]:
        return self.state.sent

    @property
    def typing(self) -> list[tuple[int, int]]:
        """(bot user id, channel id) per typing POST."""
        return self.state.typing

    @property
    def sessions(self) -> dict[str, GatewaySession]:
        """token -> its current (possibly disconnected) gateway session."""
        return self.gateway.sessions

    @property
    def identify_count(self) -> defaultdict[str, int]:
        return self.gateway.identify_count

    @property
    def resume_count(self) -> defaultdict[str, int]:
        return self.gateway.resume_count

    @property
    def identified_intents(self) -> defaultdict[str, list[int]]:
        """token -> the intents bitfield of each IDENTIFY it sent, in order (also those refused)."""
        return self.gateway.identified_intents

    @property
    def peak_connections(self) -> defaultdict[str, int]:
        """token -> the most gateway connections open at one time as that bot (two: it ran twice)."""
        return self.gateway.peak_connections

    def open_connections(self, token: str) -> int:
        """Gateway connections open now as the bot of ``token`` (one while it runs, none once stopped)."""
        return self.gateway.open_connections(token)

    @property
    def reject_identify(self) -> dict[str, int]:
        """token -> close code sent instead of READY (crash loops)."""
        return self.gateway.reject_identify

    @property
    def faults(self) -> list[RestFault]:
        """Pending injected REST faults, first in first out."""
        return self.rest.faults

    @property
    def rest_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) per REST request."""
        return self.rest.rest_log

    @property
    def rest_times(self) -> list[float]:
        """``time.monotonic()`` of each :attr:`rest_log` entry."""
        return self.rest.rest_times

    @property
    def _deflaters(self) -> dict[web.WebSocketResponse, object]:
        """The compressed connections (tests count them)."""
        return self.gateway.deflaters

    @property
    def compress(self) -> bool:
        """Whether a client asking for ``compress=zlib-stream`` gets it (from its next connection)."""
        return self.gateway.compress

    @compress.setter
    def compress(self, value: bool) -> None:
        self.gateway.compress = value

    @property
    def nonce_window(self) -> float:
        """Seconds within which ``enforce_nonce`` returns the first message again."""
        return self.state.nonce_window

    @nonce_window.setter
    def nonce_window(self, value: float) -> None:
        self.state.nonce_window = value

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the port and start serving."""
        if self._runner is not None:
            raise RuntimeError("DiscordSandbox already started")
        app = web.Application(middlewares=[self.rest.middleware])
        app.add_routes(
            [
                web.get("/gateway", self.gateway.handle),
                web.get(ATTACHMENT_ROUTE, self.state.files.serve),
                *self.rest.routes(),
                *self.interactions.routes(),
                web.post("/_sandbox/messages", self._control_post),
                web.get("/_sandbox/sent", self._control_sent),
                web.post("/_sandbox/intents", self._control_intents),
            ]
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        self.state.base_url = f"http://{self._host}:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        """Close every gateway socket (code 1001) and stop serving; safe to call twice."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await self.gateway.close_all()
        await runner.cleanup()

    async def __aenter__(self) -> DiscordSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return self.state.base_url

    @property
    def api_url(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Value for ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (as a ``yarl.URL``)."""
        return self.gateway.url

    # ----------------------------------------------------------------- world building

    def add_bot(self, token: str, name: str, *, guilds: Sequence[int] | None = None) -> int:
        """Register a bot user that logs in with ``token``; returns its user id.

        With ``guilds=None`` the bot is a member of every guild, including guilds added later;
        with a list of guild ids it is a member of those guilds only (one persona per community):
        its READY and GUILD_CREATEs list only them, it receives no events from other guilds'
        channels, and its REST requests to those channels get 403.
        """
        return self.state.add_bot(token, name, guilds=guilds)

    def remove_bot(self, token: str) -> None:
        """Revoke ``token``: later logins get 401, later IDENTIFY/RESUME a 4004 close."""
        self.state.remove_bot(token)

    def add_user(self, name: str, *, bot: bool = False, roles: Sequence[int] = ()) -> int:
        """Add a member (of every guild) who can post through :meth:`post`; returns its id."""
        return self.state.add_user(name, bot=bot, roles=roles)

    def set_message_content_intent(self, token: str, enabled: bool) -> None:
        """Turn the Message Content intent of the bot's application on or off, as its developer portal's
        Bot page does (on by default). Off: an IDENTIFY asking for it is closed with 4014, and REST
        reads return blanked content (see ``state.py``). Applies from the next IDENTIFY and read."""
        user_id = self.state.bot_tokens[token]
        if enabled:
            self.state.message_content_disabled.discard(user_id)
        else:
            self.state.message_content_disabled.add(user_id)

    def add_guild(self, name: str) -> int:
        """Add a guild with its @everyone role; returns its id.

        Humans and unrestricted bots are members; sessions see it from their next IDENTIFY."""
        return self.state.add_guild(name)

    def add_role(self, guild_id: int, name: str) -> int:
        """Add a role (no permissions) to a guild; returns its id."""
        return self.state.add_role(guild_id, name)

    def add_channel(self, name: str, guild_id: int | None = None) -> int:
        """Add a text channel (to the default guild unless ``guild_id``); returns its id."""
        return self.state.add_channel(name, guild_id)

    # ----------------------------------------------------------------- control

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
        ``attachments`` are files: ``filename``, the bytes as ``data`` (or ``data_base64``), optional
        ``content_type`` (else from the image header or the name); they are stored and served at
        their ``url`` (:meth:`attachment_bytes`, :meth:`delete_attachment`). A dict without bytes
        (``filename``, ``size``, ...) only describes a file. Returns the stored message object.
        """
        state = self.state
        author = state.users[self.default_user_id if author_id is None else author_id]
        if guild:
            if dm_to is not None:
                raise ValueError("dm_to needs guild=False")
            channel = state.channels[self.channel_id if channel_id is None else channel_id]
        else:
            if dm_to is None:
                raise ValueError("a DM (guild=False) needs dm_to=<bot token>")
            channel = state.dm_channel(author.id, state.bot_tokens[dm_to])
        message = state.new_message(
            channel,
            author,
            content,
            mentions=[state.users[user_id] for user_id in mentions],
            mention_roles=[state.roles[role_id].id for role_id in mention_roles],
            mention_everyone="@everyone" in content or "@here" in content,
            reference=state.messages[reply_to] if reply_to is not None else None,
            attachments=[state.attachment(channel.id, spec) for spec in attachments],
            sticker_items=[{"id": str(state.next_id()), "name": "sandbox", "format_type": 1}] if sticker else [],
        )
        await self.gateway.broadcast("MESSAGE_CREATE", channel, state.message_view(message))
        return message

    def attachment_bytes(self, url_or_id: str | int) -> bytes:
        """The bytes stored for an attachment (posted or uploaded), by its URL or id."""
        return self.state.files.read(url_or_id)

    def delete_attachment(self, url_or_id: str | int) -> None:
        """Remove an attachment: its URL answers 404 from now on (an expired CDN link)."""
        self.state.files.delete(url_or_id)

    async def interact(
        self,
        bot_token: str,
        name: str,
        options: Mapping[str, object] | Sequence[JSONDict] = (),
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
        dm: bool = False,
        delivered_after: float = 0.0,
    ) -> InteractionRecord:
        """A user runs ``/name`` with ``options`` (name -> value, or option objects): INTERACTION_CREATE
        goes to that bot's session (see :meth:`Interactions.fire`); the record shows the bot's responses."""
        return await self.interactions.fire(
            bot_token, name, options, user_id=user_id, channel_id=channel_id, dm=dm, delivered_after=delivered_after
        )

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

        (matches,) = await self.state.wait(check, timeout, f"{n} sent message(s)")
        return matches

    async def wait_for_rest(self, method: str, path: str, timeout: float = 10.0) -> None:
        """Wait until a REST request ``method path`` has been answered."""

        def check() -> bool | None:
            return True if any((m, p) == (method, path) for m, p, _status in self.rest_log) else None

        await self.state.wait(check, timeout, f"a {method} {path} request")

    async def wait_for_ready(self, token: str, timeout: float = 10.0) -> GatewaySession:
        """Wait until ``token`` has a connected session that sent READY (or RESUMED after a resume)."""

        def check() -> GatewaySession | None:
            session = self.sessions.get(token)
            return session if session is not None and session.ready else None

        return await self.state.wait(check, timeout, "a ready gateway session")

    async def round_trip(self, token: str, timeout: float = 10.0) -> None:
        """Wait until the bot's client has handled every gateway event dispatched to it so far
        (e.g. the message just posted): a heartbeat it sends on request reports its sequence number."""
        await self.gateway.round_trip(token, timeout)

    def inject_rest(self, *faults: RestFault) -> None:
        """Queue REST faults; each is consumed by the first ``/channels/...`` request it matches."""
        self.rest.faults.extend(faults)

    async def drop_gateway(self, token: str, *, resumable: bool = True, code: int | None = None) -> None:
        """Disconnect a bot's gateway session.

        Resumable: close with 4000, the client RESUMEs the same session. Otherwise: forget the
        session, send INVALID_SESSION (``d=false``) and close, so the client IDENTIFYs again.
        With ``code`` (e.g. 4012, invalid API version): forget the session and close with that
        code; discord.py treats such codes as fatal and ``start()`` raises ``ConnectionClosed``.
        """
        await self.gateway.drop(token, resumable=resumable, code=code)

    # ----------------------------------------------------------------- control over HTTP

    async def _control_post(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/messages`` with :meth:`post`'s keyword arguments as JSON."""
        try:
            message = await self.post(**await json_body(request))
        except (ApiError, TypeError, ValueError, KeyError) as exc:
            return json_response({"message": f"bad sandbox post: {exc!r}"}, 400)
        return json_response(message)

    async def _control_intents(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/intents`` with ``{"token": ..., "message_content": true|false}``: see
        :meth:`set_message_content_intent`."""
        try:
            body = await json_body(request)
            self.set_message_content_intent(str(body["token"]), bool(body["message_content"]))
        except (ApiError, KeyError) as exc:
            return json_response({"message": f"bad sandbox intents request: {exc!r}"}, 400)
        return web.Response(status=204)

    async def _control_sent(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/sent``: every :class:`SentMessage` as JSON."""
        return json_response([dataclasses.asdict(sent) for sent in self.sent])
