"""The sandbox's websocket gateway: HELLO, IDENTIFY and RESUME, heartbeats, dispatches to the
sessions that may see an event, and zlib-stream compression.

An IDENTIFY asking for the Message Content intent (1 << 15) by a bot whose application does not have
it enabled in the developer portal is closed with 4014 "Disallowed intent(s).", as on Discord; the
intents of every IDENTIFY are recorded per token (:attr:`Gateway.identified_intents`).

Gateway frames are plain JSON text unless the sandbox was made with ``compress`` and the client
asked for ``compress=zlib-stream``: then, as from Discord, one deflate stream per connection,
each payload a binary frame ending in a sync flush. Message events reach a session only with the
GUILD_MESSAGES (guild) or DIRECT_MESSAGES (DM) intent. Events dispatched while a session is
disconnected (but resumable) are kept, up to 1000, and replayed in order on RESUME before
RESUMED, as Discord does; a new session (IDENTIFY) gets none of them.

A heartbeat is acknowledged ``heartbeat_ack_delay`` seconds after it arrived, as over a network.
discord.py's keep-alive thread records when it sent a heartbeat only once the event loop has sent
it and the thread has the GIL again; an ACK sent at once by a sandbox in the same process and loop
(the demo, the tests) was often read before that, so discord.py measured it against the previous
heartbeat: a latency of one whole interval ("Can't keep up, ... websocket is 41.3s behind").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .state import DIRECT_MESSAGES, DM, GUILD_MESSAGES, MESSAGE_CONTENT, Channel, JSONDict, MessageView, SandboxState

_MAX_MISSED = 1000  # events kept for a disconnected session, replayed on RESUME

# Gateway opcodes.
_DISPATCH, _HEARTBEAT, _IDENTIFY, _RESUME, _INVALID_SESSION, _HELLO, _HEARTBEAT_ACK = 0, 1, 2, 6, 9, 10, 11


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
    heartbeats: int = 0  # heartbeats received from this session's client
    heartbeat_seq: int | None = None  # the last sequence number its client reported having handled


class Gateway:
    """The ``/gateway`` websocket endpoint and every session on it.

    ``on_ready(session)`` and ``on_dispatch(session, event, data)``, when set, are called after a
    session became ready and after each dispatch frame was written (instrumentation, e.g. for
    benchmarks); ``data`` is ``{}`` for events replayed on RESUME.
    """

    def __init__(
        self, state: SandboxState, *, heartbeat_interval_ms: int, heartbeat_ack_delay: float, compress: bool
    ) -> None:
        self.state = state
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_ack_delay = heartbeat_ack_delay
        self.compress = compress
        self.deflaters: dict[web.WebSocketResponse, Any] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.reject_identify: dict[str, int] = {}  # token -> close code sent instead of READY (crash loops)
        self.identify_count: defaultdict[str, int] = defaultdict(int)  # IDENTIFYs received per token
        self.resume_count: defaultdict[str, int] = defaultdict(int)  # RESUMEs received per token
        self.identified_intents: defaultdict[str, list[int]] = defaultdict(list)  # token -> intents of each IDENTIFY
        self.sessions: dict[str, GatewaySession] = {}  # token -> current (possibly disconnected) session
        # token -> the most gateway connections identified as that bot open at one time (Discord allows
        # one per bot and shard: two mean two processes ran the bot at once)
        self.peak_connections: defaultdict[str, int] = defaultdict(int)
        self._identified: dict[web.WebSocketResponse, str] = {}  # open connection -> the token it identified
        self.on_ready: Callable[[GatewaySession], None] | None = None
        self.on_dispatch: Callable[[GatewaySession, str, JSONDict], None] | None = None

    @property
    def url(self) -> str:
        return self.state.base_url.replace("http://", "ws://", 1) + "/gateway"

    async def close_all(self) -> None:
        """Close every socket with 1001 (going away)."""
        await asyncio.gather(*(ws.close(code=1001) for ws in list(self.sockets)))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """``GET /gateway``: one websocket connection, from HELLO until it closes."""
        ws = web.WebSocketResponse(compress=False, max_msg_size=0, timeout=5.0)
        await ws.prepare(request)
        self.sockets.add(ws)
        if self.compress and request.query.get("compress") == "zlib-stream":
            self.deflaters[ws] = zlib.compressobj()
        session: GatewaySession | None = None
        try:
            await self.send_frame(
                ws, json.dumps({"op": _HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            async with asyncio.TaskGroup() as acks:  # delayed ACKs, while later frames are handled
                async for frame in ws:
                    if frame.type is not WSMsgType.TEXT:
                        continue
                    payload = json.loads(frame.data)
                    op, data = payload.get("op"), payload.get("d")
                    if op == _HEARTBEAT:
                        acks.create_task(self._acknowledge(ws))
                        if session is not None and session.ws is ws:
                            session.heartbeats += 1
                            session.heartbeat_seq = data if isinstance(data, int) else None
                            await self.state.notify()
                    elif op == _IDENTIFY:
                        session = await self._identify(ws, data)
                    elif op == _RESUME:
                        session = await self._resume(ws, data)
        except* ConnectionResetError:
            pass  # the client went away mid-send
        finally:
            self.sockets.discard(ws)
            self._identified.pop(ws, None)
            self.deflaters.pop(ws, None)
            if session is not None and session.ws is ws:
                session.ws, session.ready = None, False
        return ws

    async def _acknowledge(self, ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(self.heartbeat_ack_delay)
        if ws.closed:
            return
        with contextlib.suppress(ConnectionResetError):  # closed meanwhile
            await self.send_frame(ws, json.dumps({"op": _HEARTBEAT_ACK}))

    async def round_trip(self, token: str, timeout: float) -> None:
        """Ask the bot's client for a heartbeat now (op 1, as Discord may) and wait for it.

        A heartbeat carries the last sequence number the client has handled and the gateway is
        ordered, so on return the client has handled every event dispatched to it before the call.
        Raises ``LookupError`` without a ready session, ``TimeoutError`` after ``timeout`` seconds.
        """
        session = self.sessions.get(token)
        if session is None or session.ws is None or not session.ready:
            raise LookupError("no ready gateway session for this token")
        target = session.seq
        await self.send_frame(session.ws, json.dumps({"op": _HEARTBEAT, "d": None}))

        def handled() -> bool | None:
            return True if session.heartbeat_seq is not None and session.heartbeat_seq >= target else None

        await self.state.wait(handled, timeout, f"a heartbeat reporting sequence {target}")

    async def _identify(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        state = self.state
        token = data.get("token", "")
        self.identify_count[token] += 1
        intents = int(data.get("intents", 0))
        self.identified_intents[token].append(intents)
        user_id = state.bot_tokens.get(token)
        if token in self.reject_identify:
            await ws.close(code=self.reject_identify[token], message=b"Rejected by the sandbox")
            return None
        if user_id is None:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if intents & MESSAGE_CONTENT and user_id in state.message_content_disabled:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = GatewaySession(token, user_id, uuid.uuid4().hex, intents, ws=ws)
        self.sessions[token] = session
        self._count_connection(ws, token)
        guilds = [guild for guild in state.guilds.values() if state.users[user_id].member_of(guild.id)]
        ready: JSONDict = {
            "v": 10,
            "user": {**state.users[user_id].payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "application": {"id": str(user_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        async with session.lock:
            await self.send_dispatch(session, "READY", ready)
            for guild in guilds:
                await self.send_dispatch(session, "GUILD_CREATE", state.guild_create(guild, user_id, session.intents))
            session.ready = True
        if self.on_ready is not None:
            self.on_ready(session)
        await state.notify()
        return session

    def open_connections(self, token: str) -> int:
        """Gateway connections identified (or resumed) as ``token`` that are open now."""
        return sum(1 for ws, known in self._identified.items() if known == token and not ws.closed)

    def _count_connection(self, ws: web.WebSocketResponse, token: str) -> None:
        self._identified[ws] = token
        self.peak_connections[token] = max(self.peak_connections[token], self.open_connections(token))

    async def _resume(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        token = data.get("token", "")
        self.resume_count[token] += 1
        if token not in self.state.bot_tokens:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        session = self.sessions.get(token)
        if session is None or session.session_id != data.get("session_id"):
            await self.send_frame(ws, json.dumps({"op": _INVALID_SESSION, "d": False}))
            return None
        self._count_connection(ws, token)
        async with session.lock:
            session.ws = ws
            missed, session.missed = session.missed, []
            for event, encoded in missed:
                await self.send_dispatch(session, event, {}, encoded)
            await self.send_dispatch(session, "RESUMED", {})
            session.ready = True
        if self.on_ready is not None:
            self.on_ready(session)
        await self.state.notify()
        return session

    async def drop(self, token: str, *, resumable: bool = True, code: int | None = None) -> None:
        """Disconnect a bot's session (see :meth:`DiscordSandbox.drop_gateway`)."""
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
        await self.send_frame(ws, json.dumps({"op": _INVALID_SESSION, "d": False}))
        await ws.close()

    async def dispatch_to(self, token: str, event: str, data: JSONDict) -> None:
        """Dispatch ``event`` to the ready session of one bot (interactions go to their application only).
        Raises ``LookupError`` when that bot has no ready session."""
        session = self.sessions.get(token)
        if session is None or session.ws is None or not session.ready:
            raise LookupError("no ready gateway session for this token")
        async with session.lock:
            await self.send_dispatch(session, event, data)

    async def send_dispatch(
        self, session: GatewaySession, event: str, data: JSONDict, encoded: str | None = None
    ) -> None:
        """Send one dispatch on the session's socket; the caller holds ``session.lock``.

        ``encoded`` is ``json.dumps(data)`` when the caller already has it (one encoding per broadcast)."""
        if session.ws is None:
            return
        session.seq += 1
        if encoded is None:
            encoded = json.dumps(data)
        await self.send_frame(session.ws, f'{{"op":{_DISPATCH},"t":"{event}","s":{session.seq},"d":{encoded}}}')
        if self.on_dispatch is not None:
            self.on_dispatch(session, event, data)

    async def send_frame(self, ws: web.WebSocketResponse, text: str) -> None:
        deflater = self.deflaters.get(ws)
        if deflater is None:
            await ws.send_str(text)
        else:
            await ws.send_bytes(deflater.compress(text.encode()) + deflater.flush(zlib.Z_SYNC_FLUSH))

    async def broadcast(self, event: str, channel: Channel, view: MessageView) -> None:
        """Dispatch ``event`` to every ready session that can see ``channel`` (and has the intent):
        for a DM its bot recipient, for a guild channel every bot that is a member of the guild.

        Each distinct payload ``view`` returns is encoded once, as Discord fans one event out."""
        needed = DIRECT_MESSAGES if channel.type == DM else GUILD_MESSAGES
        encoded: dict[int, tuple[JSONDict, str]] = {}  # id(payload) -> (payload, its JSON)
        for session in list(self.sessions.values()):
            if not (session.ready or session.ws is None) or not session.intents & needed:
                continue  # still identifying
            if channel.type == DM and session.user_id not in channel.recipients:
                continue
            if channel.guild_id is not None and not self.state.users[session.user_id].member_of(channel.guild_id):
                continue
            data = view(session.user_id, session.intents)
            if id(data) not in encoded:
                encoded[id(data)] = (data, json.dumps(data))
            if session.ws is None:  # disconnected, resumable: Discord replays it on RESUME
                if len(session.missed) < _MAX_MISSED:
                    session.missed.append((event, encoded[id(data)][1]))
                continue
            async with session.lock:
                with contextlib.suppress(ConnectionResetError):  # disconnected meanwhile: lost (no replay)
                    await self.send_dispatch(session, event, data, encoded[id(data)][1])
