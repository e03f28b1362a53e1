"""Panels: several personas answer one topic in turn, round after round.

A panel is an actor-style workflow. :class:`Panels` runs in the orchestrator's task group and owns
every panel's conductor task; a conductor hands one :class:`PanelTurn` at a time to a persona's own
mailbox (through the ``deliver`` function the persona registered) and waits for that persona to
say it is done. No persona calls another's code: each answers with its own bot account, seeing the
topic and the earlier answers through its channel context. A persona that fails or does not answer
in time is skipped with a one-line note; ``stop`` ends a channel's panel after the turn in progress.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

log = logging.getLogger(__name__)

MAX_TOPIC_CHARS = 1000


@dataclass
class PanelTurn:
    """One persona's turn: the prompt it answers, and how it reports back."""

    prompt: str
    message: Any  # the message that started the panel: every answer replies to it
    done: anyio.Event = field(default_factory=anyio.Event)
    answered: bool = False

    def finish(self, answered: bool) -> None:
        self.answered = answered
        self.done.set()


Deliver = Callable[[PanelTurn], bool]  # queue the turn in a persona's mailbox; False when it cannot take it
Note = Callable[[str], Awaitable[object]]  # post a one-line note in the panel's channel (its result is unused)


@dataclass(frozen=True)
class Panelist:
    bot: str
    display: str
    deliver: Deliver


@dataclass
class _Panel:
    topic: str
    rounds: int
    panelists: Sequence[Panelist]
    note: Note
    message: Any
    stopped: bool = False
    ended: anyio.Event = field(default_factory=anyio.Event)


def turn_prompt(topic: str, round_number: int, rounds: int, panelists: Sequence[Panelist], me: str) -> str:
    others = ", ".join(p.display for p in panelists if p.bot != me) or "nobody else"
    return (
        f"Panel discussion. Topic: {topic}\n"
        f"Round {round_number} of {rounds}. The other panelists: {others}. Give your own view in a few "
        "sentences, and respond to what the earlier panelists said in this channel."
    )


class Panels:
    """The panels running in this process, at most one per channel."""

    def __init__(self, turn_timeout: float = 180.0) -> None:
        self.turn_timeout = turn_timeout
        self._running: dict[int, _Panel] = {}
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own every conductor until cancelled (the orchestrator stopping)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                for panel in self._running.values():
                    panel.stopped = True

    def running(self, channel_id: int) -> bool:
        return channel_id in self._running

    def start(
        self, message: Any, channel_id: int, topic: str, rounds: int, panelists: Sequence[Panelist], note: Note
    ) -> str | None:
        """Start a panel in ``channel_id``; None, or why it cannot start."""
        if self._tg is None:
            return "Panels are not available right now; try again in a moment."
        if channel_id in self._running:
            return "A panel is already running in this channel. Wait for it to end, or stop it first."
        if not panelists:
            return "No personas are here to hold a panel."
        panel = _Panel(topic, rounds, panelists, note, message)
        self._running[channel_id] = panel
        self._tg.start_soon(self._conduct, channel_id, panel)
        return None

    async def wait_ended(self, channel_id: int) -> None:
        """Return once no panel runs in ``channel_id``."""
        panel = self._running.get(channel_id)
        if panel is not None:
            await panel.ended.wait()

    def stop(self, channel_id: int) -> bool:
        """End the channel's panel after the turn in progress; False when none runs there."""
        panel = self._running.get(channel_id)
        if panel is None:
            return False
        panel.stopped = True
        return True

    async def _conduct(self, channel_id: int, panel: _Panel) -> None:
        try:
            for round_number in range(1, panel.rounds + 1):
                for panelist in panel.panelists:
                    if panel.stopped:
                        return
                    await self._turn(panel, panelist, round_number)
        except Exception:
            log.exception("the panel in channel %s failed", channel_id)
        finally:
            del self._running[channel_id]
            panel.ended.set()

    async def _turn(self, panel: _Panel, panelist: Panelist, round_number: int) -> None:
        prompt = turn_prompt(panel.topic, round_number, panel.rounds, panel.panelists, panelist.bot)
        turn = PanelTurn(prompt, panel.message)
        if not panelist.deliver(turn):
            await self._skip(panel, f"({panelist.display} cannot take a turn right now and is skipped.)")
            return
        with anyio.move_on_after(self.turn_timeout):
            await turn.done.wait()
        if not turn.done.is_set():
            await self._skip(panel, f"({panelist.display} did not answer in time and is skipped.)")

    @staticmethod
    async def _skip(panel: _Panel, text: str) -> None:
        log.info("panel on %r: %s", panel.topic[:80], text)
        try:
            await panel.note(text)
        except Exception as exc:  # noqa: BLE001 - a lost note must not end the panel
            log.warning("could not post a panel note (%s)", exc)
