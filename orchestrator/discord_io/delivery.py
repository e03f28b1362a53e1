"""Posting a bot's messages: after any typing POST in flight in that channel, retried once more
than discord.py would after a server error, and with one nonce per message so a retry never posts
it twice. In fleet mode, only while this node's lease on the bot is valid.

The parts of an answer to a question carry a nonce made from the question's id
(:func:`answer_nonce`), the same on every node and every incarnation of the bot: Discord keeps one
message per author and nonce for a few minutes (``enforce_nonce``), so when two nodes answer one
question (the one whose post was on its way when its lease ran out, and the one that took the bot
over and caught up on it), the later post returns the first message instead of adding another."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import aiohttp
import anyio
import discord

from ..errors import LeaseExpired
from . import internals
from .client import NO_MENTIONS
from .typing_indicator import TypingIndicator

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Message nonces need only be unique per bot for a few minutes. A generator of our own: discord.py
# reads the OS's entropy for each one, and tests that seed the global generator must not repeat them.
_nonces = random.Random()

# discord.py itself retries 500, 502, 504 and 524 (five tries, growing sleeps); these are the rest.
_RETRY_PAUSES = (0.5, 1.0, 2.0)
RETRY_BUDGET = 10.0  # seconds: no retry starts later than this after the first try


def new_nonce() -> int:
    return _nonces.getrandbits(64)


def answer_nonce(question_id: int, part: int) -> str:
    """The nonce of part ``part`` (0: the reply) of a bot's answer to message ``question_id``; at most
    25 characters, as Discord requires."""
    return f"{question_id}:{part}"


def _nonce(message: discord.Message, part: int | None) -> int | str:
    """Part ``part`` of the answer to ``message`` has the nonce any node would give it; None: a new one."""
    return new_nonce() if part is None else answer_nonce(message.id, part)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, discord.DiscordServerError):
        return exc.status not in (500, 502, 504, 524)
    return isinstance(exc, aiohttp.ClientConnectionError)


async def retry_server_errors(
    action: Callable[[], Awaitable[_T]],
    pauses: tuple[float, ...] = _RETRY_PAUSES,
    budget: float = RETRY_BUDGET,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """Await ``action()``; after a server error discord.py does not retry (e.g. 503) or a dropped
    connection, try again after each of ``pauses``, while within ``budget`` seconds of the first try."""
    deadline = clock() + budget
    for pause in pauses:
        try:
            return await action()
        except (discord.DiscordServerError, aiohttp.ClientConnectionError) as exc:
            if not _retryable(exc) or clock() + pause > deadline:
                raise
            log.warning("Discord send failed (%s); sending again in %.1fs", getattr(exc, "status", None) or exc, pause)
            await anyio.sleep(pause)
    return await action()


class Delivery:
    """How one incarnation of a bot posts: through its own client, in step with its typing keeper."""

    def __init__(
        self, client: discord.Client, typing: TypingIndicator, bot: str, may_post: Callable[[], bool] | None = None
    ) -> None:
        """``may_post`` (fleet mode) tells, without any I/O, whether this node may still post as the bot."""
        self._client = client
        self._typing = typing
        self._bot = bot
        self._may_post = may_post

    @property
    def client(self) -> discord.Client:
        return self._client

    def channel(self, message: discord.Message) -> discord.PartialMessageable:
        """Where to answer ``message`` through this client (a job handed over after a crash carries a
        message whose own channel object belongs to the closed client)."""
        guild_id = message.guild.id if message.guild is not None else None
        return self._client.get_partial_messageable(message.channel.id, guild_id=guild_id)

    async def deliver(self, channel_id: int, send: Callable[[], Awaitable[_T]]) -> _T:
        """Post one message with ``send()``: after any typing POST in flight there (so none lands after
        it), retried after a server error, and reported to the typing keeper. Raises
        :class:`LeaseExpired` instead when this node may no longer post as the bot (fleet mode), looked
        at before every try: a retry comes seconds later, when another node may hold the bot."""
        await self._typing.settle(channel_id)

        async def attempt() -> _T:
            if self._may_post is not None and not self._may_post():
                raise LeaseExpired(self._bot)
            return await send()

        sent = await retry_server_errors(attempt)
        self._typing.sent(channel_id)
        return sent

    async def post(
        self,
        message: discord.Message,
        text: str,
        *,
        reply: bool,
        mention: Sequence[int] = (),
        part: int | None = None,
        attachment: tuple[str, bytes] | None = None,
    ) -> int:
        """Send ``text`` to the channel of ``message``, as a reply to it if ``reply``, pinging only the
        users in ``mention``, with ``attachment`` (file name, bytes) as its file; returns the new
        message's id. Every retry carries the same nonce, so Discord does not create the message twice
        when a retry follows a response lost on the way back (``enforce_nonce``); ``part`` of an answer
        to ``message``: the nonce any node would use for it."""
        reference = message.to_reference(fail_if_not_exists=False) if reply else None
        nonce = _nonce(message, part)
        send = partial(internals.post_message, self._client, message.channel.id, text,
                       nonce=nonce, reply_to=reference, mention=mention, attachment=attachment)  # fmt: skip
        return await self.deliver(message.channel.id, send)

    async def send_editable(
        self, message: discord.Message, text: str, *, first: bool, part: int | None = None
    ) -> discord.Message:
        """Post a message that can be edited later (a streamed answer): the reply first, then follow-ups;
        ``part`` as for :meth:`post`."""
        reference = message.to_reference(fail_if_not_exists=False) if first else None
        channel = self.channel(message)
        nonce = _nonce(message, part)
        return await self.deliver(message.channel.id, partial(
            channel.send, text, reference=reference, allowed_mentions=NO_MENTIONS, nonce=nonce
        ))  # fmt: skip

    async def reply(
        self,
        message: discord.Message,
        text: str,
        *,
        raise_errors: bool = False,
        mention: Sequence[int] = (),
        part: int | None = None,
        attachment: tuple[str, bytes] | None = None,
    ) -> int | None:
        """Reply to ``message`` (with ``attachment``, a file); returns the reply's id. A failure is
        logged (None), or raised with ``raise_errors``. ``part`` as for :meth:`post`."""
        try:
            return await self.post(message, text, reply=True, mention=mention, part=part, attachment=attachment)
        except LeaseExpired as exc:
            if raise_errors:
                raise
            log.warning("%s", exc)
            return None
        except discord.HTTPException as exc:
            if raise_errors:
                raise
            log.warning("bot %s: could not send a reply (HTTP %s)", self._bot, exc.status)
            return None
        except Exception as exc:
            if raise_errors:
                raise
            log.warning("bot %s: could not send a reply (%s: %s)", self._bot, type(exc).__name__, exc)
        return None
