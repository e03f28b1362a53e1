"""One persona bot as an actor: a discord.py client, a bounded mailbox and the workers behind it.

discord.py runs event handlers as bare asyncio tasks, so the handlers here do one thing: turn a
Discord event into a :class:`Job` on the bot's mailbox (or answer "busy" when it is full). The
bot's own task group owns the dispatcher and every job, so stopping or restarting the bot reaches
answers in flight. Jobs of one conversation run in arrival order; different conversations run
concurrently up to ``concurrency``.

How a user addresses a persona: ``<prefix>chat <text>`` (each bot has its own prefix), an
@mention of the bot, a reply to one of the bot's messages, a DM when ``access.dms`` allows, or a
slash command (``slash.py``: the same jobs, answered through the interaction). A bot with
``message_content: false`` does not ask for the privileged intent; in guild channels it then answers
mentions, replies and slash commands only (persona/access.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from contextlib import aclosing
from functools import partial
from typing import Any, NamedTuple

import anyio
import discord
from anyio.abc import TaskGroup, TaskStatus

from ..community.panel import PanelTurn
from ..config import BotSpec, VisionSettings
from ..discord_io import gateway_filter, internals
from ..discord_io.client import DiscordUnreachable, build_client, describe_error, network_failure, typing_sender
from ..discord_io.delivery import Delivery, retry_server_errors
from ..discord_io.interactions import InteractionReply, refuse
from ..discord_io.streaming import EditBudgets, StreamingReply
from ..discord_io.text import clean_user_text, neutralize_mentions, split_message
from ..discord_io.typing_indicator import TypingIndicator, Work
from ..errors import BotFatalError, LeaseExpired, ProviderBadResponse, ProviderError
from ..llm.messages import with_images
from ..llm.pool import ChatCall
from ..llm.quota import QuotaBook
from ..memory import SHARED, ConversationKey, Turn, fit_context
from ..ops.sentry import report_exception
from ..runtime.mailbox import Job, JobKind, Mailbox
from ..runtime.services import BotCounters, Services
from . import access, slash
from .attachments import AttachmentReader, AttachmentRefused, ReadAttachments
from .catch_up import catch_up
from .commands import parse_command
from .imagine import imagine
from .presence import Presence
from .replies import APOLOGY, BUSY, EMPTY_ANSWER, RESTARTING, empty_chat, help_text, usage_text

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 8000
REGISTER_WAIT = 10.0  # seconds a start waits for the registration of the bot's slash commands


class Answer(NamedTuple):
    text: str
    message_ids: tuple[int, ...]  # the Discord messages it was posted in


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
            typing_sender(self.client),
            refresh=services.options.typing_refresh,
            min_interval=services.options.typing_min_interval,
        )
        gate = services.may_post
        may_post = None if gate is None else partial(gate, spec.name)
        self._delivery = Delivery(self.client, self._typing, spec.name, may_post=may_post)
        self._attachments = AttachmentReader(spec.name)
        self._handing_over = False
        self._commands = slash.build_tree(self.client, self._take_interaction, lambda: self.spec)

    # ------------------------------------------------------------------ lifecycle

    def update(self, spec: BotSpec) -> None:
        """Apply settings that need no reconnect (persona, model, parameters, quotas, prefix, access,
        slash commands, which follow ``image_model`` too: ``/imagine`` is registered only with one)."""
        commands_changed = spec.commands != self.spec.commands or slash.offered(spec) != slash.offered(self.spec)
        self.spec = spec
        if commands_changed and self._ready.is_set() and self._notices is not None:
            self._notices.start_soon(self._register_commands)

    def stop(self, *, hand_over: bool = False) -> None:
        """Stop taking new messages; queued and in-flight answers finish, then the client closes.
        With ``hand_over`` (fleet mode: another node runs the bot next) new messages are left to that
        node's catch-up instead of being told "restarting"."""
        self._stopping = self._stop_requested = True
        self._handing_over = hand_over
        self.mailbox.close_send()
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
                # running means its slash commands are the current ones, unless Discord does not answer
                with anyio.move_on_after(REGISTER_WAIT) as waited:
                    await self._register_commands()
                if waited.cancelled_caught:
                    log.warning(
                        "bot %s: Discord did not answer the registration of its slash commands within %g s; it "
                        "runs with its prefix commands and registers them on its next start or reload",
                        self.spec.name, REGISTER_WAIT,
                    )  # fmt: skip
                if self._on_ready_callback:
                    self._on_ready_callback()
                task_status.started()
                async with anyio.create_task_group() as jobs:
                    await self._dispatch(jobs)
                    jobs.cancel_scope.deadline = anyio.current_time() + self.services.options.drain_timeout
            finally:
                self._stopping = True
                self._presence.left()
                with anyio.move_on_after(self.services.options.close_timeout, shield=True):
                    await self.client.close()
                with anyio.CancelScope(shield=True):
                    await self._attachments.aclose()
                internals.cancel_ready_task(self.client)
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
                    self.spec.name,
                    "Discord refused the token (401). Put a valid bot token in the environment "
                    "variable named by token_env and save bots.yaml or restart.",
                )
            except discord.PrivilegedIntentsRequired:  # gateway close 4014, "Disallowed intent(s)"
                self._failure = BotFatalError(
                    self.spec.name,
                    "Discord refused the Message Content intent (close code 4014): it is not enabled "
                    "for this application. Enable it in the Discord developer portal (Bot page → Privileged Gateway "
                    "Intents → Message Content Intent), or set 'message_content: false' for this bot in bots.yaml "
                    "(it then answers @mentions, replies and DMs only); then save bots.yaml or restart.",
                )
            except Exception as exc:  # noqa: BLE001 - any crash is the supervisor's to handle
                cause = network_failure(exc)
                self._failure = exc if cause is None else DiscordUnreachable(cause)
        tg.cancel_scope.cancel()

    def _build_client(self) -> discord.Client:
        options = self.services.options
        client = build_client(
            self._take_message,
            guild_ready_timeout=options.guild_ready_timeout,
            reidentify_delay=options.reidentify_delay,
            message_content=self.spec.message_content,
        )
        # discord.py would build a full Message for every message in every channel the bot sees ...
        internals.filter_message_creates(client, self._addressed)
        self._presence = Presence(self.services.community, client, lambda: self.spec, self._take_turn, self._may_speak)
        gateway_filter.install(  # ... and decode it
            client, self._readable_prefix, self._count_dropped, self._stamp_received, self._presence.listened
        )
        internals.observe_parser(client, "MESSAGE_UPDATE", self._presence.edited)
        client.on_guild_join = client.on_guild_available = self._on_guild  # type: ignore[attr-defined]
        # discord.py finds event handlers as client attributes; its stubs declare only some of them
        client.on_ready = self._on_ready  # type: ignore[attr-defined]
        client.on_disconnect = self._on_disconnect  # type: ignore[attr-defined]
        client.on_resumed = self._on_resumed  # type: ignore[attr-defined]
        client.on_error = self._on_error  # type: ignore[method-assign]
        return client

    # ------------------------------------------------------------------ discord.py handlers

    async def _on_ready(self) -> None:
        self._presence.arrived()
        if not self._ready.is_set():
            log.info("bot %s is online as %s", self.spec.name, self.client.user)
            self._ready.set()
        if self._catch_up_from and self._notices is not None:  # a new session, to which Discord replays nothing
            self._notices.start_soon(self._catch_up, self._catch_up_from)
        self._catch_up_from = {}

    async def _on_disconnect(self) -> None:
        """Remember where to catch up from, should the next session be a new one (``on_ready``); a
        resumed session gets Discord's own replay (``on_resumed``)."""
        if self._ready.is_set() and not self._catch_up_from:
            self._catch_up_from = dict(self.mailbox.last_taken)

    async def _on_guild(self, guild: discord.Guild) -> None:
        self._presence.joined_guild(guild.id)

    async def _on_resumed(self) -> None:
        self._catch_up_from = {}

    async def _on_error(self, event: str, *args: Any, **kwargs: Any) -> None:
        log.exception("bot %s: unhandled error in discord.py event %s", self.spec.name, event)
        report_exception(bot=self.spec.name, provider=self.spec.provider, model=self.spec.model)

    def _readable_prefix(self) -> str | None:
        """The prefix the gateway filter looks for; None without message content (guild text is blank)."""
        return self.spec.prefix if self.spec.message_content else None

    def _count_dropped(self) -> None:
        self.counters.dropped += 1

    def _stamp_received(self) -> None:
        self._decoded_at = time.monotonic()  # "received", for the added-latency metric

    def _addressed(self, data: dict[str, Any]) -> bool:
        """Cheap test on the raw gateway payload, before discord.py builds a Message; the room hears it first."""
        self._presence.hear(data)
        me = self.client.user
        if me is None:
            return False
        author = int((data.get("author") or {}).get("id", 0))
        return access.payload_addressed(
            data, me.id, self.spec.prefix, allow_bots=self._allows_bot(author), read_all=self.spec.message_content
        )

    def _allows_bot(self, user_id: int) -> bool:
        """Whether a bot's message may be answered: any bot with ``access.allow_bots``, a fellow persona
        with ``group.talk_to_personas``."""
        spec = self.spec
        return spec.access.allow_bots or (spec.group.talk_to_personas and self._presence.is_persona(user_id))

    def _take_message(self, message: discord.Message) -> None:
        """Called by discord.py, inside its gateway parser, as soon as a message addressed to this bot is
        built: queue its job without waiting. An error here is logged, never raised into the gateway loop."""
        try:
            if not self.mailbox.take_once(message.channel.id, message.id):
                return
            job = self._job_for(message, received=self._decoded_at)
            if job is not None:
                self._enqueue(job)
        except Exception:
            log.exception("bot %s: could not take message %s", self.spec.name, message.id)
            report_exception(bot=self.spec.name, provider=self.spec.provider, model=self.spec.model)

    def _job_for(self, message: discord.Message, *, received: float) -> Job | None:
        """What ``message`` asks of this bot, if anything: a command, or a chat when it is a DM, a
        mention of the bot or a reply to it."""
        me = self.client.user
        if me is None or not access.allowed(self.spec.access, message, me.id, self._allows_bot(message.author.id)):
            return None
        spec = self.spec
        if not spec.message_content and not access.message_addressed(message, me.id, spec.prefix, read_all=False):
            return None  # a catch-up read may show a channel's text that the gateway would have blanked
        command = parse_command(message.content, self.spec.prefix)
        if command is not None:
            kind: JobKind = command.name
            if command.name == "reset" and command.argument.lower() == "channel":
                kind = "reset_channel"
            if kind == "chat" and not self._presence.may_answer(message):
                return None
            if kind == "stop" and message.author.bot:
                return None  # only a human ends a panel
            return Job(kind, message, command.argument, received)
        if message.content.startswith(self.spec.prefix) or self._presence.commands_another(message.content):
            return None  # someone else's command, or a typo: stay quiet
        if access.message_addressed(message, me.id, self.spec.prefix) and self._presence.may_answer(message):
            return Job("chat", message, re.sub(rf"<@!?{me.id}>", "", message.content), received)
        return None

    def _may_speak(self, message: discord.Message) -> bool:
        me = self.client.user
        return me is not None and access.allowed(self.spec.access, message, me.id, True)

    def _take_turn(self, turn: PanelTurn) -> bool:
        """A panel's conductor hands this persona a turn: queue it like any message."""
        return self.mailbox.offer(Job("panel_turn", turn.message, turn.prompt, time.monotonic(), turn)) == "taken"

    def _enqueue(self, job: Job) -> None:
        """Accept a job, or answer "busy" when the bot, or this user, already has too many waiting."""
        outcome = self.mailbox.offer(job)
        if outcome == "full":
            self.counters.busy += 1
            log.warning(
                "bot %s: too many messages waiting (%d), answering busy", self.spec.name, self.mailbox.in_flight
            )
            self._notify(job, BUSY)
        elif outcome == "closed":
            if self._handing_over:
                log.debug("bot %s: message %s is left to the node that runs it next", self.spec.name, job.message.id)
                return
            self._notify(job, RESTARTING)

    def _notify(self, job: Job, text: str) -> None:
        if self._notices is not None:  # None only before run(), when no message can arrive
            self._notices.start_soon(partial(self._say, job, text, private=True))

    async def _say(self, job: Job, text: str, *, private: bool = False) -> None:
        """Tell the user a line of the bot's own (not the model's): a reply to their message or, for a
        slash command, its response (``private``: only they see it). A failure is logged."""
        if job.reply is None:
            await self._delivery.reply(job.message, text)
        else:
            await job.reply.tell(self._delivery, text, private=private)

    async def _register_commands(self) -> None:
        await slash.register(self.client, self._commands, self.spec, self.services.store)

    async def _take_interaction(self, interaction: discord.Interaction, kind: JobKind, text: str) -> None:
        """A slash command (run by discord.py's command tree): acknowledged at once with "thinking…",
        then queued as the job its prefix command would be, answered through the interaction."""
        me = self.client.user
        message = internals.message_from_interaction(self.client, interaction, text)
        if me is None or not access.allowed(self.spec.access, message, me.id, self._allows_bot(message.author.id)):
            await refuse(interaction, f"{self.spec.name} does not take commands here.")
            return
        if kind == "chat" and not self._presence.may_answer(message):
            await refuse(interaction, "Too many persona messages in this channel right now; try again shortly.")
            return
        reply = await InteractionReply.defer(interaction, self.spec.name, private=kind in slash.PRIVATE)
        if reply is not None:
            self._enqueue(Job(kind, message, text, time.monotonic(), reply=reply))

    async def _catch_up(self, taken: dict[int, int]) -> None:
        """Take what arrived while the bot had no session (a restart, or a session Discord invalidated)."""
        before = self.mailbox.in_flight

        def take(message: discord.Message) -> None:
            self._decoded_at = time.monotonic()
            self._take_message(message)

        claims = self.services.claims
        answered_elsewhere = None if claims is None else partial(claims.answered_already, self.spec.name)
        await catch_up(
            self.client, taken, self.services.options.catch_up_window, take, self.spec.name, answered_elsewhere
        )
        if caught := self.mailbox.in_flight - before:
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
        claimed = _claimed(job)
        may_post, claims = self.services.may_post, self.services.claims
        try:
            if claimed and may_post is not None and not may_post(self.spec.name):
                self.counters.claimed_elsewhere += 1
                log.debug("bot %s: message %s is answered by another node", self.spec.name, job.message.id)
                return
            if previous is not None:
                await previous.wait()
            async with slots:
                await self._handle(job, key)
            if claimed and claims is not None:
                claims.answered(self.spec.name, job.message.id)
        except anyio.get_cancelled_exc_class():
            handed_over = self._hand_over(job)
            raise
        except LeaseExpired as exc:  # the node that takes the bot over answers it (catch-up)
            log.warning("%s: message %s is left to the node that takes the bot over", exc, job.message.id)
        except Exception:
            handed_over = self._hand_over(job)
            if not handed_over:
                self.counters.errors += 1
                log.exception("bot %s: unexpected error while handling %s", self.spec.name, job.kind)
                report_exception(bot=self.spec.name, provider=self.spec.provider, model=self.spec.model)
                await self._say(job, APOLOGY, private=True)
        finally:
            done.set()
            if self._tails.get(key) is done:
                del self._tails[key]
            if not handed_over:
                self.mailbox.done(job)

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
        elif job.kind == "panel_turn":
            answered = False
            try:
                answered = await self._chat(job, key, remember=False)
            finally:
                if job.turn is not None:
                    job.turn.finish(answered)
        elif job.kind == "panel":
            note = partial(self._delivery.post, job.message, reply=False)
            await self._say(job, self._presence.start_panel(job.message, job.text, note))
        elif job.kind == "stop":
            await self._say(job, self._presence.stop_panel(job.message))
        elif job.kind == "reset":
            removed = await self.services.store.reset(key)
            await self._say(job, f"Our conversation is cleared ({removed // 2} exchanges forgotten).")
        elif job.kind == "reset_channel":
            if not access.is_admin(self.spec.access, job.message):
                await self._say(job, "Only an admin of this bot can clear the whole channel's memory.")
                return
            removed = await self.services.store.reset_channel(self.spec.name, job.message.channel.id)
            await self._say(job, f"This channel's conversations with me are cleared ({removed} messages).")
        elif job.kind == "usage":
            spec, pool = self.spec, self.services.pool
            user = str(job.message.author.id)
            mine = await pool.admission.usage(spec.name, user, spec.quota, spec.user_quota)
            total = await pool.admission.usage(spec.name, QuotaBook.ALL_USERS, spec.quota, spec.user_quota)
            images = await pool.admission.images_today(spec.name, user, spec.quota, spec.user_quota)
            await self._say(job, usage_text(spec, mine, total, images))
        elif job.kind == "help":
            await self._say(job, help_text(self.spec))
        elif job.kind == "imagine":
            await self._imagine(job)

    async def _imagine(self, job: Job) -> None:
        """Draw what ``job`` asks for and post it as a file: in reply, or for ``/imagine`` in place of
        "thinking…". Why not, instead, is a line only the user sees where Discord allows that."""
        with self._typing.working(job.message.channel.id) as work:
            drawn = await imagine(self, job.message.author.id, job.text)
            work.finish()
        if isinstance(drawn, str):
            await self._say(job, drawn, private=True)
            return
        attachment = (drawn.file_name, drawn.data)
        try:
            if job.reply is not None:
                await job.reply.answer(self._delivery, drawn.caption, attachment=attachment)
            else:
                await self._delivery.reply(job.message, drawn.caption, raise_errors=True, attachment=attachment)
        except discord.HTTPException as exc:
            self.counters.errors += 1
            log.error("bot %s: Discord refused the image (HTTP %s: %s)", self.spec.name, exc.status, exc.text)
            await self._say(job, f"Discord refused to post the image (HTTP {exc.status}).", private=True)

    async def _chat(self, job: Job, key: ConversationKey, *, remember: bool = True) -> bool:
        """Answer ``job``; True when an answer was delivered. A panel turn (``remember=False``) leaves
        the conversation's memory alone: the channel context carries the panel."""
        spec = self.spec  # a hot reload may replace self.spec; this answer keeps one consistent view
        self.counters.chats += 1
        text = clean_user_text(job.text)[:MAX_INPUT_CHARS]
        files = job.message.attachments if job.kind == "chat" else []
        if not text and not files:
            await self._say(job, empty_chat(spec.prefix), private=True)
            return False
        store = self.services.store
        with self._typing.working(job.message.channel.id) as work:
            read = await self._read_attachments(job, files, spec.vision, work)
            if read is None:
                return False
            history = await self._history(key) if remember else []
            message = job.message
            speaker = message.author.display_name
            room = await self._presence.room(
                message, self._delivery.channel(message), spec.context.channel_messages, until_now=not remember
            )
            question = Turn("user", "\n".join(filter(None, (text, read.text))), speaker, (message.id,))
            messages = fit_context(
                self._presence.system_prompt(spec.persona, message), history, question, spec.memory.context_tokens, room
            )
            messages[-1] = with_images(messages[-1], read.image_urls)
            call = ChatCall(
                bot=spec.name,
                user=str(message.author.id),
                provider=spec.provider,
                model=spec.model,
                messages=messages,
                params=spec.params,
                weight=spec.weight,
                quota=spec.quota,
                user_quota=spec.user_quota,
                price=spec.price,
            )
            try:
                if spec.stream:
                    answer = await self._answer_streaming(job, call, work)
                else:
                    answer = await self._answer_plain(job, call, work)
            except ProviderError as exc:
                log.warning("bot %s: %s", spec.name, exc)
                work.finish()
                await self._say(job, exc.user_message, private=True)
                return False
            except discord.HTTPException as exc:
                self.counters.errors += 1
                log.error("bot %s: Discord refused the answer (HTTP %s: %s)", spec.name, exc.status, exc.text)
                return False
        if answer is None:
            return False
        self._presence.posted(message, answer.message_ids, answer.text)
        if self.services.metrics is not None:
            self.services.metrics.observe_answer(spec.name, time.monotonic() - job.received)
        if remember:
            try:
                remembered = "\n".join(filter(None, (text, read.notes)))  # file names, never their bytes
                await store.append_exchange(
                    key, remembered, answer.text, speaker=speaker, question_id=message.id, answer_ids=answer.message_ids
                )
            except Exception:
                log.exception("bot %s: the answer was delivered but could not be saved to memory", spec.name)
        self.counters.answered += 1
        return True

    async def _read_attachments(
        self, job: Job, files: list[discord.Attachment], vision: VisionSettings, work: Work
    ) -> ReadAttachments | None:
        """What the message's files add for the model; None when one was refused (the user is told why)."""
        try:
            return await self._attachments.read(files, vision)
        except AttachmentRefused as refused:
            log.info("bot %s: refused an attachment of message %s: %s", self.spec.name, job.message.id, refused)
            work.finish()
            await self._say(job, str(refused))
            return None

    async def _history(self, key: ConversationKey) -> list[Turn]:
        try:
            return await self.services.store.history(key, self.spec.memory.max_turns)
        except Exception:
            log.exception("bot %s: could not read conversation memory; answering without it", self.spec.name)
            return []

    async def _answer_plain(self, job: Job, call: ChatCall, work: Work) -> Answer | None:
        """Ask, then send the whole answer; returns what was delivered (None: nothing to remember)."""
        message = job.message
        result = await self.services.pool.complete(call)
        work.finish()
        answer = result.text.strip()
        text, mention = self._presence.address(neutralize_mentions(answer), message)
        chunks = split_message(text)
        if self.services.metrics is not None:
            self.services.metrics.observe_added(
                self.spec.name, result.requested_at - job.received, time.monotonic() - result.answered_at
            )
        if not chunks:
            await self._say(job, EMPTY_ANSWER)
            return None
        if job.reply is not None:  # a slash command: no pings (an edit would not notify anyway)
            sent = [await job.reply.answer(self._delivery, chunks[0])]
            for chunk in chunks[1:]:
                sent.append(await job.reply.follow_up(self._delivery, chunk))
            return Answer(answer, tuple(message.id for message in sent))
        part = _parts(job)
        ids = [await self._delivery.reply(message, chunks[0], raise_errors=True, mention=mention, part=part(0))]
        for index, chunk in enumerate(chunks[1:], 1):
            ids.append(await self._delivery.post(message, chunk, reply=False, mention=mention, part=part(index)))
        return Answer(answer, tuple(i for i in ids if i is not None))

    def _failed_update(self, exc: Exception) -> None:
        self.counters.errors += 1
        log.warning(
            "bot %s: could not update a streamed answer (%s); the next update shows the text",
            self.spec.name,
            describe_error(exc),
        )

    async def _answer_streaming(self, job: Job, call: ChatCall, work: Work) -> Answer | None:
        """Show the answer while the model writes it; a cut stream keeps its partial text, marked."""
        message, part = job.message, _parts(job)

        async def send(text: str, first: bool) -> discord.Message:
            work.finish()  # the text itself shows progress from here on
            if job.reply is not None:
                return await job.reply.send_editable(self._delivery, text, first)
            return await self._delivery.send_editable(message, text, first=first, part=part(0) if first else None)

        reply = StreamingReply(
            send, self._edit_budgets.for_channel(message.channel.id), on_failed_update=self._failed_update
        )
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
            await self._say(job, EMPTY_ANSWER)
            return None
        await retry_server_errors(partial(reply.finish, cut=cut))  # finish only rewrites what Discord does not show yet
        return None if cut else Answer(reply.text.strip(), reply.message_ids)


def _claimed(job: Job) -> bool:
    """Whether ``job`` is "taken once" fleet-wide (fleet/claims.py): a user's message, which another
    node may take too (catching up, or over a stray second connection of the bot), so it is answered
    only under the bot's lease and marked answered. A slash command is not: Discord delivers its
    interaction to one connection, and only that node can answer it. Nor is a panel turn: the node
    running the panel hands it out, replying to the same message turn after turn."""
    return job.reply is None and job.kind != "panel_turn"


def _parts(job: Job) -> Callable[[int], int | None]:
    """How the parts of the answer to ``job`` are numbered for their nonces (``delivery.answer_nonce``):
    a chat's are, so two nodes answering one question make one answer; a panel's are not (None: a
    nonce of its own), since its turns reply to the same message again and again."""
    if job.kind == "chat":
        return lambda index: index
    return lambda index: None
