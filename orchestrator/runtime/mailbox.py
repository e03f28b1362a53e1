"""A bot's bounded mailbox of jobs, which outlives each incarnation of the bot.

It also remembers which messages were taken (so one that arrives twice is answered once), the
newest taken per channel (where a new session catches up on what it missed), and the messages not
answered yet (where another node that takes the bot over catches up from: fleet mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anyio
import discord

from ..community.panel import PanelTurn
from ..discord_io.interactions import InteractionReply

JobKind = Literal["chat", "reset", "reset_channel", "usage", "help", "panel", "stop", "panel_turn", "imagine"]


@dataclass(frozen=True)
class Job:
    kind: JobKind
    message: discord.Message
    text: str = ""
    received: float = 0.0
    turn: PanelTurn | None = None  # a panel's conductor waits for this job ("panel_turn")
    reply: InteractionReply | None = None  # a slash command's: answered through its interaction, not a reply


_REMEMBERED_IDS = 2000  # message ids a mailbox remembers as taken
_CATCH_UP_CHANNELS = 20  # channels read on a new session, the most recently active ones


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
        self._unfinished: dict[int, set[int]] = {}  # channel -> ids of accepted jobs not done yet
        self._positions_at_close: dict[int, int] | None = None

    def seed(self, positions: dict[int, int]) -> None:
        """Catch up from ``positions`` (channel -> message id) on the first session: where the node that
        ran the bot before left off."""
        for channel_id, message_id in positions.items():
            if message_id > self.last_taken.get(channel_id, 0):
                self.last_taken[channel_id] = message_id

    def catch_up_positions(self) -> dict[int, int]:
        """Per channel, a message id up to which every message taken was finished: where another node
        reads on from if it takes the bot over (skipping what was answered after it). Once the mailbox
        is closed, as it was when it closed: what comes later is left to the next node."""
        if self._positions_at_close is not None:
            return dict(self._positions_at_close)
        positions = dict(self.last_taken)
        for channel_id, ids in self._unfinished.items():
            positions[channel_id] = min(ids) - 1
        return positions

    def close_send(self) -> None:
        """Accept no more jobs; those accepted stay to be answered."""
        if self._positions_at_close is None:
            self._positions_at_close = self.catch_up_positions()
        self.send.close()

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

    def offer(self, job: Job) -> Literal["taken", "full", "closed"]:
        """Queue ``job`` unless the bot, or its user, has too many waiting ("full") or the bot is
        stopping ("closed")."""
        if not self.accepts(job.message.author.id):
            return "full"
        try:
            self.put(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return "closed"
        return "taken"

    def put(self, job: Job) -> None:
        """Queue a new job; raises ``anyio.ClosedResourceError`` once the bot is stopping."""
        self.send.send_nowait(job)
        self.in_flight += 1
        user = job.message.author.id
        self.per_user[user] = self.per_user.get(user, 0) + 1
        self._unfinished.setdefault(job.message.channel.id, set()).add(job.message.id)

    def requeue(self, job: Job) -> None:
        """Give a job that a crashing client could not finish to the next incarnation (still counted)."""
        self.send.send_nowait(job)

    def done(self, job: Job) -> None:
        ids = self._unfinished.get(job.message.channel.id)
        if ids is not None:
            ids.discard(job.message.id)
            if not ids:
                del self._unfinished[job.message.channel.id]
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
        self.close_send()
        self.receive.close()
