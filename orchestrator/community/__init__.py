"""Personas in the community: what was said in each channel, which personas are where, and the
guard that keeps personas from talking among themselves for ever."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .guard import LoopGuard
from .panel import Panels
from .rooms import Rooms
from .roster import Roster


@dataclass
class Community:
    """Process-wide: shared by every persona of this orchestrator."""

    rooms: Rooms = field(default_factory=Rooms)
    roster: Roster = field(default_factory=Roster)
    guard: LoopGuard = field(default_factory=LoopGuard)
    panels: Panels = field(default_factory=Panels)

    def configure(self, channel_messages: Iterable[int]) -> None:
        """Keep as many messages per channel as the persona hearing the most needs."""
        self.rooms.per_channel = max(channel_messages, default=0)


__all__ = ["Community", "LoopGuard", "Panels", "Rooms", "Roster"]
