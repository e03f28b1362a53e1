"""One persona bot as an actor: a discord.py client, a bounded mailbox and the workers behind it.

discord.py runs event handlers as bare asyncio tasks, so the handlers here do one thing: turn a
Discord event into a :class:`Job` on the bot's mailbox (or answer "busy" when it is full). The
bot's own task group owns the dispatcher and every job, so stopping or restarting the bot reaches
answers in flight. Jobs of one conversation run in arrival order; different conversations run
concurrently up to ``concurrency``.

How a user addresses a persona: ``<prefix>chat <text>`` (each bot has its own prefix), an
@mention of the bot, or a reply to one of the bot's messages.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Literal, TypeVar

import aiohttp
import anyio
import discord
import yarl
from anyio.abc import TaskGroup, TaskStatus
from discord.http import handle_message_parameters
from discord.utils import MISSING

from . import gateway_filter
from .commands import parse_command
from .config import BotSpec, DiscordSettings
from .discord_text import clean_user_text, neutralize_mentions, split_message
from .errors import BotFatalError, ProviderBadResponse, ProviderError
from .llm.pool import ChatCall, LLMPool
from .memory import SHARED, ConversationKey, ConversationStore, fit_context
from .metrics import Metrics
from .observability import report_exception
from .streaming import EditBudgets, StreamingReply
from .typing_indicator import TypingIndicator, Work

log = logging.getLogger(__name__)
_T = TypeVar("_T")

NO_MENTIONS = discord.AllowedMentions.none()
MAX_INPUT_CHARS = 8000
# Message nonces need only be unique per bot for a few minutes. A generator of our own: discord.py
# reads the OS's entropy for each one, and tests that seed the global generator must not repeat them.
_nonces = random.Random()

BUSY = "I'm answering too many messages right now. Please try again in a moment."
RESTARTING = "I'm restarting. Please try again in a few seconds."
APOLOGY = "Sorry, something went wrong on my side while answering. The admins can find the details in the log."
EMPTY_ANSWER = "(The model returned an empty answer. Try rephrasing your message.)"


def configure_discord(settings: DiscordSettings) -> None:
    """Point discord.py at a Discord-compatible server. Process-wide: every client shares it."""
    discord.http.Route.BASE = settings.api_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


@dataclass(frozen=True)
class RuntimeOptions:
    guild_ready_timeout: float = 0.5
    reidentify_delay: float = 5.0  # discord.py's pause before a fresh IDENTIFY (Discord's identify limit)
    drain_timeout: float = 10.0
    close_timeout: float = 5.0
    typing_refresh: float = 8.0  # Discord shows "typing…" for about 10 s after each POST
    typing_min_interval: float = 1.0  # at most one typing POST per channel this often
    catch_up_window: float = 300.0  # on a new session, answer what was missed if at most this old (s)


@dataclass
class Services:
    """What every bot shares: the provider pool, the memory store and runtime options."""

    pool: LLMPool
    store: ConversationStore
    options: RuntimeOptions = RuntimeOptions()
    metrics: Metrics | None = None


JobKind = Literal["chat", "reset", "reset_channel", "usage"]


@dataclass(frozen=True)
class Job:
    kind: JobKind
    message: discord.Message
    text: str = ""
    received: float = 0.0


@dataclass
class BotCounters:
    chats: int = 0
    answered: int = 0
    busy: int = 0
    errors: int = 0
    dropped: int = 0  # gateway MESSAGE_CREATEs for others, dropped undecoded (gateway_filter.py)


_REMEMBERED_IDS = 2000  # message ids a mailbox remembers as taken
_CATCH_UP_CHANNELS = 20  # channels read on a new session, the most recently active ones
_CATCH_UP_LIMIT = 50  # messages read per channel


class Mailbox:
    """A bot's bounded mailbox. It belongs to the supervised child, not to one actor, so the jobs
    waiting when a client crashes are answered by the next incarnation."""

    def __init__(self, size: int, concurrency: int) -> None:
        self.capacity = size + concurrency  # accepted jobs not finished yet: queued, waiting or running
        self.per_user_limit = max(2, self.capacity // 4)  # one user cannot fill the whole mailbox
        self.send, self.receive = anyio.create_memory_object_stream[Job](self.capacity)
        self.in_flight = 0
        self.per_user: dict[int, int] = {}
        self._idle = anyio.Event()
        # The newest message taken per channel, most recent channel last: where the bot catches up,
        # on a new session, on what arrived while it had none. And recently taken ids, so that a
        # message both caught up and delivered by the gateway is taken once.
        self.last_taken: dict[int, int] = {}
        self._taken: dict[int, None] = {}  # an ordered set, oldest first

    def take_once(self, channel_id: int, message_id: int) -> bool:
        """Record ``message_id`` as taken; False if it was taken before."""
        if message_id in self._taken:
            return False
        self._taken[message_id] = None
        if len(self._taken) > _REMEMBERED_IDS:
            del self._taken[next(iter(self._taken))]
        if message_id > self.last_taken.get(channel_id, 0):
            self.last_taken.pop(channel_id, None)
            self.last_taken[channel_id] = message_id
            if len(self.last_taken) > _CATCH_UP_CHANNELS:
                del self.last_taken[next(iter(self.last_taken))]
        return True

    def accepts(self, user: int) -> bool:
        return self.in_flight < self.capacity and self.per_user.get(user, 0) < self.per_user_limit

    def put(self, job: Job) -> None:
        """Queue a new job; raises ``anyio.ClosedResourceError`` once the bot is stopping."""
        self.send.send_nowait(job)
        self.in_flight += 1
        user = job.message.author.id
        self.per_user[user] = self.per_user.get(user, 0) + 1

    def requeue(self, job: Job) -> None:
        """Give a job that a crashing client could not finish to the next incarnation (still counted)."""
        self.send.send_nowait(job)

    def done(self, job: Job) -> None:
        user = job.message.author.id
        self.per_user[user] -= 1
        if not self.per_user[user]:
            del self.per_user[user]
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()
            self._idle = anyio.Event()

    async def wait_idle(self) -> None:
        while self.in_flight:
            await self._idle.wait()

    def close(self) -> None:
        self.send.close()
        self.receive.close()


class _Client(discord.Client):
    """``discord.Client`` with a configurable pause before re-identifying, and messages handed to
    ``take_message`` as soon as they are built (discord.py would start a task per message for
    ``on_message``)."""

    reidentify_delay = 5.0
    take_message: Callable[[discord.Message], None] | None = None

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if event == "message" and self.take_message is not None:
            self.take_message(*args)
            return
        super().dispatch(event, *args, **kwargs)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await anyio.sleep(self.reidentify_delay)


class ConnectionLost(Exception):
    """The Discord client stopped although nobody asked it to."""


class PersonaBot:
    """Runs one persona until stopped; raises when its client crashes (the supervisor restarts it)."""

    def __init__(
        self,
        spec: BotSpec,
        services: Services,
        mailbox: Mailbox,
        counters: BotCounters,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """``mailbox`` and ``counters`` belong to the supervised child and outlive this incarnation."""
        self.spec = spec
        self.services = services
        self.mailbox = mailbox
        self.counters = counters
        self._on_ready_callback = on_ready
        self._ready = anyio.Event()
        self._failure: BaseException | None = None
        self._stopping = False
        self._tails: dict[ConversationKey, anyio.Event] = {}
        self._stop_requested = False
        self._scope: anyio.CancelScope | None = None
        self._notices: TaskGroup | None = None  # "busy" / "restarting" replies, sent while the bot runs
        self._decoded_at = 0.0  # when the message being handed to _take_message was decoded
        self._catch_up_from = dict(mailbox.last_taken)  # where the last session stopped taking messages, if any
        self._edit_budgets = EditBudgets()
        self.client = self._build_client()
        self._typing = TypingIndicator(
            self.client.http.send_typing,
            refresh=services.options.typing_refresh,
            min_interval=services.options.typing_min_interval,
        )

    # ------------------------------------------------------------------ lifecycle

    def update(self, spec: BotSpec) -> None:
        """Apply settings that need no reconnect (persona, model, parameters, quotas, prefix, access)."""
        self.spec = spec

    def stop(self) -> None:
        """Stop taking new messages; queued and in-flight answers finish, then the client closes."""
        self._stopping = self._stop_requested = True
        self.mailbox.send.close()
        if not self._ready.is_set() and self._scope is not None:
            self._scope.cancel()  # still connecting: nothing to drain

    async def wait_idle(self) -> None:
        """Wait until the mailbox is empty and no job is running."""
        await self.mailbox.wait_idle()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve until :meth:`stop`, then drain. Raises on crash or fatal configuration errors."""
        async with anyio.create_task_group() as tg:
            self._scope, self._notices = tg.cancel_scope, tg
            connect_scope = anyio.CancelScope(shield=True)
            tg.start_soon(self._connect, tg, connect_scope)
            tg.start_soon(self._typing.run)
            try:
                await self._ready.wait()
                task_status.started()
                async with anyio.create_task_group() as jobs:
                    await self._dispatch(jobs)
                    jobs.cancel_scope.deadline = anyio.current_time() + self.services.options.drain_timeout
            finally:
                self._stopping = True
                with anyio.move_on_after(self.services.options.close_timeout, shield=True):
                    await self.client.close()
                ready_task = getattr(self.client._connection, "_ready_task", None)
                if ready_task is not None:  # discord.py leaves it; it would dispatch 'ready' on the closed client
                    ready_task.cancel()
                connect_scope.shield = False
                connect_scope.cancel()
        if self._failure is not None:
            raise self._failure

    async def _connect(self, tg: TaskGroup, scope: anyio.CancelScope) -> None:
        # client.start() must end through client.close(), never by cancellation (which can hang it).
        with scope:
            try:
                await self.client.start(self.spec.token.get_secret_value())
                if not self._stopping:
                    self._failure = ConnectionLost("the Discord connection closed unexpectedly")
            except discord.LoginFailure:
                self._failure = BotFatalError(
                    self.spec.name, "Discord refused the token (401). Put a valid bot token in the environment "
                    "variable named by token_env and save bots.yaml or restart."
                )
            except discord.PrivilegedIntentsRequired:
                self._failure = BotFatalError(
                    self.spec.name, "the Message Content intent is not enabled. Enable it in the Discord developer "
                    "portal (Bot → Privileged Gateway Intents), then restart."
                )
            except Exception as exc:  # noqa: BLE001 - any crash is the supervisor's to handle
                self._failure = exc
        tg.cancel_scope.cancel()

    def _build_client(self) -> _Client:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True
        client = _Client(
            intents=intents,
            max_messages=None,
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            allowed_mentions=NO_MENTIONS,
            guild_ready_timeout=self.services.options.guild_ready_timeout,
        )
        client.reidentify_delay = self.services.options.reidentify_delay
        parse_message = client._connection.parsers["MESSAGE_CREATE"]

        def parse_if_addressed(data: dict[str, Any]) -> None:
            if self._addressed(data):
                self._decoded_at = time.monotonic()  # "received", for the added-latency metric
                parse_message(data)  # builds the Message and hands it to _take_message, in this call

        # discord.py would build a full Message for every message in every channel the bot sees.
        client._connection.parsers["MESSAGE_CREATE"] = self._parse_message = parse_if_addressed
        gateway_filter.install(client, lambda: self.spec.prefix, self._count_dropped)  # ... and decode it
        client.take_message = self._take_message
        client.on_ready = self._on_ready  # type: ignore[method-assign]
        client.on_disconnect = self._on_disconnect  # type: ignore[attr-defined]
        client.on_resumed = self._on_resumed  # type: ignore[attr-defined]
        client.on_error = self._on_error  # type: ignore[method-assign]
        return client

    # ------------------------------------------------------------------ discord.py handlers

    async def _on_ready(self) -> None:
        if not self._ready.is_set():
            log.info("bot %s is online as %s", self.spec.name, self.client.user)
            self._ready.set()
            if self._on_ready_callback:
                self._on_ready_callback()
        if self._catch_up_from and self._notices is not None:  # a new session, to which Discord replays nothing
            self._notices.start_soon(self._catch_up, self._catch_up_from)
        self._catch_up_from = {}

    async def _on_disconnect(self) -> None:
        """Remember where to catch up from, should the next session be a new one (``on_ready``); a
        resumed session gets Discord's own replay (``on_resumed``)."""
        if self._ready.is_set() and not self._catch_up_from:
            self._catch_up_from = dict(self.mailbox.last_taken)

    async def _on_resumed(self) -> None:
        self._catch_up_from = {}

    async def _on_error(self, event: str, *args: Any, **kwargs: Any) -> None:
        log.exception("bot %s: unhandled error in discord.py event %s", self.spec.name, event)
        report_exception(bot=self.spec.name, provider=self.spec.provider, model=self.spec.model)

    def _count_dropped(self) -> None:
        self.counters.dropped += 1

    def _addressed(self, data: dict[str, Any]) -> bool:
        """Cheap test on the raw gateway payload: could this message be for this bot at all?"""
        if data.get("author", {}).get("bot") and not self.spec.access.allow_bots:
            return False
        if "guild_id" not in data:
            return True  # a DM
        if data.get("content", "").startswith(self.spec.prefix):
            return True
        me = str(self.client._connection.self_id)
        if any(user.get("id") == me for user in data.get("mentions") or ()):
            return True
        referenced = data.get("referenced_message") or {}
        return referenced.get("author", {}).get("id") == me

    def _allowed(self, message: discord.Message) -> bool:
        access = self.spec.access
        author = message.author
        if self.client.user is not None and author.id == self.client.user.id:
            return False
        if author.bot and not access.allow_bots:
            return False
        if message.guild is None:
            return access.dms
        if access.guilds and message.guild.id not in access.guilds:
            return False
        if access.channels and message.channel.id not in access.channels:
            return False
        if access.roles:
            roles = {role.id for role in getattr(author, "roles", ())}
            if not roles & set(access.roles):
                return False
        return True

    def _take_message(self, message: discord.Message) -> None:
        """Called by discord.py, inside its gateway parser, as soon as a message addressed to this bot is
        built: queue its job without waiting. An error here is logged, never raised into the gateway loop."""
        try:
            if not self.mailbox.take_once(message.channel.id, message.id):
                return
            job = self._job_for(message, received=self._decoded_at)
            if job is not None:
                self._enqueue(job)
        except Exception:  # noqa: BLE001 - one message must not take the bot's connection down
            log.exception("bot %s: could not take message %s", self.spec.name, message.id)
            report_exception(bot=self.spec.name, provider=self.spec.provider, model=self.spec.model)

    def _job_for(self, message: discord.Message, *, received: float) -> Job | None:
        """What ``message`` asks of this bot, if anything: a command, a mention or a reply to the bot."""
        if not self._allowed(message):
            return None
        command = parse_command(message.content, self.spec.prefix)
        if command is not None:
            kind: JobKind = command.name
            if command.name == "reset" and command.argument.lower() == "channel":
                kind = "reset_channel"
            return Job(kind, message, command.argument, received)
        if message.content.startswith(self.spec.prefix):
            return None  # someone else's command, or a typo: stay quiet
        me = self.client.user
        if me is None:
            return None
        mentioned = any(user.id == me.id for user in message.mentions)
        resolved = message.reference.resolved if message.reference else None
        replied = isinstance(resolved, discord.Message) and resolved.author.id == me.id
        if mentioned or replied:
            return Job("chat", message, re.sub(rf"<@!?{me.id}>", "", message.content), received)
        return None

    def _enqueue(self, job: Job) -> None:
        """Accept a job, or answer "busy" when the bot, or this user, already has too many waiting."""
        if not self.mailbox.accepts(job.message.author.id):
            self.counters.busy += 1
            log.warning("bot %s: too many messages waiting (%d), answering busy", self.spec.name, self.mailbox.in_flight)
            self._notify(job.message, BUSY)
            return
        try:
            self.mailbox.put(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._notify(job.message, RESTARTING)

    def _notify(self, message: discord.Message, text: str) -> None:
        if self._notices is not None:  # None only before run(), when no message can arrive
            self._notices.start_soon(self._reply, message, text)

    async def _catch_up(self, taken: dict[int, int]) -> None:
        """Take what arrived while the bot had no session (a restart, or a session Discord
        invalidated): Discord replays nothing to a new session. Reads each channel where the bot took
        a message before, after the newest one it took, and skips messages older than
        ``catch_up_window``. REST messages carry no member data, so a bot restricted to roles cannot
        check them and leaves them."""
        window = self.services.options.catch_up_window
        oldest = discord.utils.time_snowflake(discord.utils.utcnow() - timedelta(seconds=window))
        caught = 0
        for channel_id, after in taken.items():
            try:
                found = await self.client.http.logs_from(channel_id, _CATCH_UP_LIMIT, after=max(after, oldest))
            except (discord.HTTPException, aiohttp.ClientError) as exc:
                log.warning("bot %s: could not read channel %s for messages missed without a session (%s)",
                            self.spec.name, channel_id, exc)  # fmt: skip
                continue
            guild = getattr(self.client.get_channel(channel_id), "guild", None)
            for data in sorted(found, key=lambda message: int(message["id"])):
                if guild is not None:
                    data["guild_id"] = str(guild.id)  # REST messages lack it; the gateway's carry it
                before = self.mailbox.in_flight
                self._parse_message(data)
                caught += self.mailbox.in_flight - before
        if caught:
            log.info("bot %s: answering %d message(s) sent while it had no session", self.spec.name, caught)

    # ------------------------------------------------------------------ the actor's own tasks

    def conversation_key(self, message: discord.Message) -> ConversationKey:
        user = SHARED if self.spec.memory.scope == "channel" else message.author.id
        return ConversationKey(self.spec.name, message.channel.id, user)

    async def _dispatch(self, jobs: TaskGroup) -> None:
        """Read the mailbox until it is closed; each job runs after the previous one of its conversation."""
        slots = anyio.Semaphore(self.spec.concurrency)
        with contextlib.suppress(anyio.ClosedResourceError):  # closed: the child is gone
            async for job in self.mailbox.receive:
                key = self.conversation_key(job.message)
                previous = self._tails.get(key)
                done = anyio.Event()
                self._tails[key] = done
                jobs.start_soon(self._run_job, job, key, previous, done, slots)

    async def _run_job(
        self, job: Job, key: ConversationKey, previous: anyio.Event | None, done: anyio.Event, slots: anyio.Semaphore
    ) -> None:
        """Run after the previous job of the same conversation; a slot is held only while working.

        A job that a crashing client could not finish goes back to the mailbox for the next
        incarnation of this bot (a crash closes discord.py's HTTP session, so nothing can be sent).
        """
        handed_over = False
        try:
            if previous is not None:
                await previous.wait()
            async with slots:
                await self._handle(job, key)
        except anyio.get_cancelled_exc_class():
            handed_over = self._hand_over(job)
            raise
        except Exception:  # noqa: BLE001 - one bad message must not stop the bot
            handed_over = self._hand_over(job)
            if not handed_over:
                self.counters.errors += 1
                log.exception("bot %s: unexpected error while handling %s", self.spec.name, job.kind)
                report_exception(bot=self.spec.name, provider=self.spec.provider, model=self.spec.model)
                await self._reply(job.message, APOLOGY)
        finally:
            done.set()
            if self._tails.get(key) is done:
                del self._tails[key]
            if not handed_over:
                self.mailbox.done(job)

    def _channel(self, message: discord.Message) -> discord.PartialMessageable:
        """Where to answer ``message`` through this incarnation's client (a job handed over after a
        crash carries a message whose own channel object belongs to the closed client)."""
        guild_id = message.guild.id if message.guild is not None else None
        return self.client.get_partial_messageable(message.channel.id, guild_id=guild_id)

    def _hand_over(self, job: Job) -> bool:
        """Requeue ``job`` if this incarnation is dying rather than stopping; True when requeued."""
        if self._stop_requested or not (self._failure is not None or self.client.is_closed()):
            return False
        try:
            self.mailbox.requeue(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
            return False
        log.info("bot %s: the client died mid-answer; the next start answers this message", self.spec.name)
        return True

    async def _handle(self, job: Job, key: ConversationKey) -> None:
        if job.kind == "chat":
            await self._chat(job, key)
        elif job.kind == "reset":
            removed = await self.services.store.reset(key)
            await self._reply(job.message, f"Our conversation is cleared ({removed // 2} exchanges forgotten).")
        elif job.kind == "reset_channel":
            if not self._is_admin(job.message):
                await self._reply(job.message, "Only an admin of this bot can clear the whole channel's memory.")
                return
            removed = await self.services.store.reset_channel(self.spec.name, job.message.channel.id)
            await self._reply(job.message, f"This channel's conversations with me are cleared ({removed} messages).")
        elif job.kind == "usage":
            await self._reply(job.message, self._usage_text(job.message.author.id))

    def _is_admin(self, message: discord.Message) -> bool:
        access = self.spec.access
        if message.author.id in access.admins:
            return True
        roles = {role.id for role in getattr(message.author, "roles", ())}
        return bool(roles & set(access.admin_roles))

    def _usage_text(self, user_id: int) -> str:
        quotas = self.services.pool.quotas
        spec = self.spec
        lines = [f"Usage of {spec.name} (yours / the whole persona):"]
        mine = quotas.report(spec.name, str(user_id))
        total = quotas.report(spec.name)
        for label, field_name, used_mine, used_total in (
            ("requests this minute", "requests_per_minute", mine.requests_last_minute, total.requests_last_minute),
            ("tokens this minute", "tokens_per_minute", mine.tokens_last_minute, total.tokens_last_minute),
            ("tokens today", "tokens_per_day", mine.tokens_today, total.tokens_today),
        ):
            user_limit = getattr(spec.user_quota, field_name)
            bot_limit = getattr(spec.quota, field_name)
            lines.append(
                f"- {label}: {used_mine}/{user_limit if user_limit is not None else '∞'}"
                f" · {used_total}/{bot_limit if bot_limit is not None else '∞'}"
            )
        return "\n".join(lines)

    async def _chat(self, job: Job, key: ConversationKey) -> None:
        spec = self.spec  # a hot reload may replace self.spec; this answer keeps one consistent view
        self.counters.chats += 1
        text = clean_user_text(job.text)[:MAX_INPUT_CHARS]
        if not text:
            await self._reply(job.message, f"Write something after `{spec.prefix}chat`, for example `{spec.prefix}chat hello`.")
            return
        store = self.services.store
        with self._typing.working(job.message.channel.id) as work:
            try:
                history = await store.history(key, spec.memory.max_turns)
            except Exception:  # noqa: BLE001 - answer without memory rather than not at all
                log.exception("bot %s: could not read conversation memory; answering without it", spec.name)
                history = []
            call = ChatCall(
                bot=spec.name,
                user=str(job.message.author.id),
                provider=spec.provider,
                model=spec.model,
                messages=fit_context(spec.persona, history, text, spec.memory.context_tokens),
                params=spec.params,
                weight=spec.weight,
                quota=spec.quota,
                user_quota=spec.user_quota,
            )
            try:
                if spec.stream:
                    answer = await self._answer_streaming(job.message, call, work)
                else:
                    answer = await self._answer_plain(job, call, work)
            except ProviderError as exc:
                log.warning("bot %s: %s", spec.name, exc)
                work.finish()
                await self._reply(job.message, exc.user_message)
                return
            except discord.HTTPException as exc:
                log.error("bot %s: Discord refused the answer (HTTP %s: %s)", spec.name, exc.status, exc.text)
                return
        if answer is not None:
            if self.services.metrics is not None:
                self.services.metrics.observe_answer(spec.name, time.monotonic() - job.received)
            try:
                await store.append_exchange(key, text, answer)
            except Exception:  # noqa: BLE001 - the user has the answer; only the memory of it is lost
                log.exception("bot %s: the answer was delivered but could not be saved to memory", spec.name)
            self.counters.answered += 1

    async def _answer_plain(self, job: Job, call: ChatCall, work: Work) -> str | None:
        """Ask, then send the whole answer; returns what was delivered (None: nothing to remember)."""
        message = job.message
        result = await self.services.pool.complete(call)
        work.finish()
        answer = result.text.strip()
        chunks = split_message(neutralize_mentions(answer))
        if self.services.metrics is not None:
            self.services.metrics.observe_added(
                self.spec.name, result.requested_at - job.received, time.monotonic() - result.answered_at
            )
        if not chunks:
            await self._reply(message, EMPTY_ANSWER)
            return None
        await self._reply(message, chunks[0], raise_errors=True)
        for chunk in chunks[1:]:
            await self._follow_up(message, chunk)
        return answer

    async def _answer_streaming(self, message: discord.Message, call: ChatCall, work: Work) -> str | None:
        """Show the answer while the model writes it; a cut stream keeps its partial text, marked."""

        async def send(text: str, first: bool) -> discord.Message:
            """An editable message: the reply first, then follow-ups."""
            reference = message.to_reference(fail_if_not_exists=False) if first else None
            channel = self._channel(message)
            work.finish()  # the text itself shows progress from here on
            return await self._deliver(message.channel.id, partial(
                channel.send, text, reference=reference, allowed_mentions=NO_MENTIONS, nonce=_nonces.getrandbits(64)
            ))  # one nonce for every try: see _post

        reply = StreamingReply(send, self._edit_budgets.for_channel(message.channel.id))
        cut = False
        try:
            async with aclosing(self.services.pool.stream(call)) as pieces:
                async for piece in pieces:
                    await reply.feed(piece)
        except ProviderBadResponse as exc:
            if not reply.started:
                raise
            log.warning("bot %s: %s", self.spec.name, exc)
            cut = True
        if not reply.text.strip():
            await self._reply(message, EMPTY_ANSWER)
            return None
        await _retry_5xx(partial(reply.finish, cut=cut))  # finish only rewrites what Discord does not show yet
        return None if cut else reply.text.strip()

    async def _follow_up(self, message: discord.Message, text: str) -> None:
        """Send ``text`` after the reply to ``message``, in its channel, as a plain message."""
        await self._post(message, text, reply=False)

    async def _post(self, message: discord.Message, text: str, *, reply: bool) -> None:
        """Send ``text`` to the channel of ``message``, as a reply to it if ``reply``.

        Unlike ``channel.send`` this builds no discord.Message from Discord's answer (nothing reads it:
        ~5% of an answer), and every retry carries the same nonce, so Discord does not create the
        message twice when a retry follows a response lost on the way back (``enforce_nonce``)."""
        reference = message.to_reference(fail_if_not_exists=False).to_message_reference_dict() if reply else MISSING
        nonce = _nonces.getrandbits(64)

        async def send() -> None:
            with handle_message_parameters(
                content=text,
                nonce=nonce,
                allowed_mentions=NO_MENTIONS,
                previous_allowed_mentions=self.client.allowed_mentions,
                message_reference=reference,
                mention_author=False if reply else None,
            ) as params:
                await self.client.http.send_message(message.channel.id, params=params)

        await self._deliver(message.channel.id, send)

    async def _deliver(self, channel_id: int, send: Callable[[], Awaitable[_T]]) -> _T:
        """Post one message with ``send()``: after any typing POST in flight there (so none lands after
        it), retried after a server error, and reported to the typing keeper."""
        await self._typing.settle(channel_id)
        sent = await _retry_5xx(send)
        self._typing.sent(channel_id)
        return sent

    async def _reply(self, message: discord.Message, text: str, *, raise_errors: bool = False) -> None:
        """Reply to ``message``; a failure is logged, or raised with ``raise_errors``."""
        try:
            await self._post(message, text, reply=True)
        except discord.HTTPException as exc:
            if raise_errors:
                raise
            log.warning("bot %s: could not send a reply (HTTP %s)", self.spec.name, exc.status)
        except Exception as exc:  # noqa: BLE001 - e.g. no connection, or the client is closing
            if raise_errors:
                raise
            log.warning("bot %s: could not send a reply (%s: %s)", self.spec.name, type(exc).__name__, exc)


async def _retry_5xx(action: Callable[[], Awaitable[_T]], pauses: tuple[float, ...] = (0.5, 1.0, 2.0)) -> _T:
    """Await ``action()``; after a Discord server error (a 5xx discord.py does not retry, e.g. 503) or a
    dropped connection, try again."""
    for pause in pauses:
        try:
            return await action()
        except (discord.DiscordServerError, aiohttp.ClientConnectionError) as exc:
            log.warning("Discord send failed (%s); sending again in %.1fs", getattr(exc, "status", None) or exc, pause)
            await anyio.sleep(pause)
    return await action()

