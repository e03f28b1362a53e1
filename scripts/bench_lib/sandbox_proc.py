"""The benchmark's sandbox process: the loopback Discord and OpenAI servers, with timestamps.

It runs in its own process so the servers' CPU time is never counted as the orchestrator's. The
driver talks to it with one JSON object per line on stdin and gets one JSON line back on stdout
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``); it exits on EOF.

Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process on the
machine), taken at these points:

* ``dispatch``: a human message's MESSAGE_CREATE frame was written to a bot's gateway socket;
* ``provider in / out``: a chat-completions request reached the OpenAI handler / its answer was ready;
* ``reply``: a bot's POST /channels/{id}/messages reached the REST handler;
* ``ready``: READY and every GUILD_CREATE were written to a session (first IDENTIFY per token).

``stats`` also counts the MESSAGE_CREATE frames written to bots (``message_events``): the gateway
fan-out, which depends on how many bots share a channel.

Commands: ``setup``, ``set``, ``wait_ready``, ``load``, ``stats``, ``quit`` (see ``Helper``).

``setup`` takes a ``topology``: ``"shared"`` (every bot a member of the one default guild, users post
to its channel, so every bot receives every message and reply) or ``"separate"`` (each bot alone in
a guild of its own with its own channel, and users post each message to its target bot's channel).
In the shared topology ``channels`` > 1 adds channels to the default guild; a message spec's
``channel`` (an index) picks one.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import traceback
from typing import Any

from aiohttp import web

from orchestrator.sandbox.discord_server import DiscordSandbox, GatewaySession, SentMessage
from orchestrator.sandbox.openai_server import OpenAISandbox

TAG = re.compile(r"#m(\d+)\b")
PERSONA = re.compile(r"You are ([A-Za-z0-9_-]+)")


class BenchDiscord(DiscordSandbox):
    """DiscordSandbox that timestamps dispatches, READYs and bot replies (through its hooks)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ready_at: dict[str, float] = {}
        self.dispatched: dict[tuple[str, int], float] = {}  # (bot token, message id) -> time
        self.replies: dict[int, list[tuple[float, str]]] = {}  # referenced message id -> (time, content)
        self.awaiting: set[int] = set()
        self.progress = asyncio.Event()
        self.message_events = 0  # MESSAGE_CREATE frames written to any bot (humans' and bots' messages)
        self.gateway.on_ready = self._on_ready
        self.gateway.on_dispatch = self._on_dispatch
        self.rest.on_message_created = self._on_message_created

    def _on_ready(self, session: GatewaySession) -> None:
        self.ready_at.setdefault(session.token, time.monotonic())

    def _on_dispatch(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        if event == "MESSAGE_CREATE":
            self.message_events += 1
            if data and not data.get("author", {}).get("bot"):
                self.dispatched[(session.token, int(data["id"]))] = time.monotonic()

    def _on_message_created(self, sent: SentMessage, arrived: float) -> None:
        if sent.reference_id is None:
            return
        self.replies.setdefault(sent.reference_id, []).append((arrived, sent.content[:300]))
        if sent.reference_id in self.awaiting:
            self.awaiting.discard(sent.reference_id)
            self.progress.set()


class BenchOpenAI(OpenAISandbox):
    """OpenAISandbox that logs (tag, bot, status, arrival, answer) per chat request, without bodies."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log: list[tuple[int | None, str | None, int, float, float]] = []
        self._seen: dict[int, tuple[dict[str, Any], int]] = {}

    async def _record(self, request: web.Request, body: dict[str, Any], status: int, images: list[str]) -> None:
        # Not the base class's: it keeps every body and wakes waiters, which a long run does not need.
        self._seen[id(request)] = (body, status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        response = await super()._chat(request)
        answered = time.monotonic()
        body, status = self._seen.pop(id(request), ({}, 0))
        messages = body.get("messages") or []
        tag = bot = None
        if messages and isinstance(messages[-1], dict):
            found = TAG.search(str(messages[-1].get("content", "")))
            tag = int(found.group(1)) if found else None
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
            found = PERSONA.search(str(messages[0].get("content", "")))
            bot = found.group(1) if found else None
        self.log.append((tag, bot, status, arrived, answered))
        return response


class Helper:
    def __init__(self) -> None:
        self.discord: BenchDiscord | None = None
        self.openai: BenchOpenAI | None = None
        self.user_ids: list[int] = []
        self.bot_ids: dict[str, int] = {}
        self.bot_channels: dict[str, int] = {}  # token -> the channel its messages are posted to (separate)
        self.channels: list[int] = []  # the default guild's channels (shared), for a spec's "channel" index

    async def setup(
        self,
        bots: list[list[str]],
        users: int = 20,
        latency: float = 0.0,
        rate_limit_per_minute: int | None = None,
        api_key: str = "sk-bench",
        topology: str = "shared",
        channels: int = 1,
        heartbeat_interval_ms: int = 41250,
    ) -> dict[str, Any]:
        """Start both servers, register ``bots`` ([token, name]) and ``users`` humans.

        ``topology="shared"``: every bot is in the default guild, which has the default channel and
        ``channels`` - 1 more. ``"separate"``: each bot gets a guild of its own (``<name>-community``)
        with one channel, and is a member of it only.
        """
        if topology not in ("shared", "separate"):
            raise ValueError(f"unknown topology {topology!r}")
        if channels < 1 or (channels > 1 and topology != "shared"):
            raise ValueError(f"channels={channels}: at least 1, and more only in the shared topology")
        self.discord = BenchDiscord(heartbeat_interval_ms=heartbeat_interval_ms)
        await self.discord.start()
        self.channels = [self.discord.channel_id] + [self.discord.add_channel(f"c{i}") for i in range(1, channels)]
        self.openai = BenchOpenAI(
            api_keys=[api_key],
            latency=latency,
            rate_limit_per_minute=rate_limit_per_minute,
            echo=True,
        )
        await self.openai.start()
        if topology == "shared":
            self.bot_ids = {token: self.discord.add_bot(token, name) for token, name in bots}
        else:
            for token, name in bots:
                guild_id = self.discord.add_guild(f"{name}-community")
                self.bot_channels[token] = self.discord.add_channel("general", guild_id)
                self.bot_ids[token] = self.discord.add_bot(token, name, guilds=[guild_id])
        self.user_ids = [self.discord.add_user(f"user{i}") for i in range(users)]
        return {
            "api_url": self.discord.api_url,
            "gateway_url": self.discord.gateway_url,
            "openai_url": self.openai.base_url,
            "guild_id": self.discord.guild_id,
            "channel_id": self.discord.channel_id,
            "bot_ids": self.bot_ids,
            "user_ids": self.user_ids,
            "topology": topology,
            "bot_channels": self.bot_channels,
            "channel_ids": self.channels,
        }

    async def set(self, latency: float | None = None, rate_limit_per_minute: int | None = None) -> dict[str, Any]:
        assert self.openai is not None
        if latency is not None:
            self.openai.latency = latency
        if rate_limit_per_minute is not None:
            self.openai.rate_limit_per_minute = rate_limit_per_minute
        return {}

    async def wait_ready(self, tokens: list[str], timeout: float = 60.0) -> dict[str, float]:
        """Wait until every token had a READY session; returns when each first was."""
        assert self.discord is not None
        deadline = time.monotonic() + timeout
        while not all(token in self.discord.ready_at for token in tokens):
            if time.monotonic() > deadline:
                missing = [t for t in tokens if t not in self.discord.ready_at]
                raise TimeoutError(f"{len(missing)} of {len(tokens)} bots never sent IDENTIFY/READY")
            await asyncio.sleep(0.005)
        return {token: self.discord.ready_at[token] for token in tokens}

    async def load(
        self,
        messages: list[dict[str, Any]],
        rate: float | None = None,
        timeout: float = 60.0,
        linger: float = 0.0,
        after_reply: float | None = None,
    ) -> dict[str, Any]:
        """Post ``messages`` ({content, user, target, optional channel}) open-loop at ``rate`` per
        second (None: at once), then wait (at most ``timeout`` s in all) until each got a reply, plus
        ``linger`` s for late follow-ups. ``target`` is the token of the bot the message is for (for
        its dispatch time, and in the separate topology for the channel: its bot's own).

        With ``after_reply`` (seconds) the load is closed-loop instead: each message is posted that
        long after the previous one got its reply, so the bot works on one message at a time."""
        discord, openai = self.discord, self.openai
        assert discord is not None and openai is not None
        first_log = len(openai.log)
        cpu0 = time.process_time()
        start = time.monotonic()
        deadline = start + timeout
        posted: list[tuple[int, float, float]] = []
        for i, spec in enumerate(messages):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            before = time.monotonic()
            channel_id = self.bot_channels.get(spec["target"])  # None: the default channel
            if "channel" in spec:
                channel_id = self.channels[spec["channel"]]
            message = await discord.post(spec["content"], author_id=self.user_ids[spec["user"]], channel_id=channel_id)
            after = time.monotonic()
            message_id = int(message["id"])
            posted.append((message_id, before, after))
            if message_id not in discord.replies:
                discord.awaiting.add(message_id)
            if after_reply is not None:
                if not await self._replied(deadline):
                    break
                await asyncio.sleep(after_reply)
        posting_done = time.monotonic()
        await self._replied(deadline)
        unanswered = len(discord.awaiting)
        discord.awaiting.clear()
        if linger:
            await asyncio.sleep(linger)
        records = []
        for (message_id, before, after), spec in zip(posted, messages, strict=True):
            replies = discord.replies.get(message_id, [])
            records.append(
                {
                    "id": message_id,
                    "post": before,
                    "posted": after,
                    "dispatch": discord.dispatched.get((spec["target"], message_id)),
                    "reply": replies[0][0] if replies else None,
                    "text": replies[0][1] if replies else None,
                    "replies": len(replies),
                }
            )
        return {
            "start": start,
            "posting_done": posting_done,
            "end": time.monotonic(),
            "unanswered": unanswered,
            "messages": records,
            "provider": openai.log[first_log:],
            "sandbox_cpu": time.process_time() - cpu0,
        }

    async def _replied(self, deadline: float) -> bool:
        """Wait until every posted message got a reply (False: the deadline came first)."""
        discord = self.discord
        assert discord is not None
        while discord.awaiting and time.monotonic() < deadline:
            discord.progress.clear()
            try:
                await asyncio.wait_for(discord.progress.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        return not discord.awaiting

    async def stats(self) -> dict[str, Any]:
        assert self.discord is not None and self.openai is not None
        statuses: dict[str, int] = {}
        for _tag, _bot, status, _a, _b in self.openai.log:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {
            "cpu": time.process_time(),
            "provider_statuses": statuses,
            "provider_max_in_flight": self.openai.max_in_flight,
            "typing": len(self.discord.typing),
            "sent": len(self.discord.sent),
            "identify": dict(self.discord.identify_count),
            "message_events": self.discord.message_events,
        }

    async def close(self) -> None:
        for server in (self.discord, self.openai):
            if server is not None:
                await server.stop()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    helper = Helper()
    try:
        while line := await reader.readline():
            request = json.loads(line)
            command = request.pop("cmd")
            if command == "quit":
                break
            try:
                result = await getattr(helper, command)(**request)
                reply = {"ok": True, "result": result}
            except Exception as exc:  # noqa: BLE001 - reported to the driver
                traceback.print_exc()
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await helper.close()


if __name__ == "__main__":
    asyncio.run(serve())
