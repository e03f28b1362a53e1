"""The conversation store interface: what a persona asks of memory, what the quota and spend books
ask of it (daily totals), and what a server owner asks of it (a backup; one user's data, exported or
forgotten), whatever the database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SHARED = 0  # the "user" of a channel-wide conversation


@dataclass(frozen=True)
class ConversationKey:
    bot: str
    channel: int
    user: int = SHARED


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str
    speaker: str = ""  # who said a user turn (display name), when known
    message_ids: tuple[int, ...] = ()  # the Discord messages it was said in, when known


@dataclass(frozen=True)
class StoredTurn:
    """A turn with where and when it was said, as a data export shows it."""

    bot: str
    channel: int
    user: int
    role: str
    content: str
    created: float  # Unix time


@dataclass(frozen=True)
class DailyUsage:
    day: str  # UTC, YYYY-MM-DD
    bot: str
    tokens: int
    usd: float
    images: int = 0


@dataclass(frozen=True)
class UserData:
    """Everything stored under one Discord user id."""

    turns: list[StoredTurn]
    usage: list[DailyUsage]


@dataclass(frozen=True)
class Forgotten:
    turns: int
    usage_days: int  # (day, bot) usage records


class StoreUnavailable(Exception):
    """The database cannot be reached, or failed; the message names it (never with a password)."""


class NoDatabase(Exception):
    """A command that only reads found no database; the message says where it looked."""


class ConversationStore(Protocol):
    async def history(self, key: ConversationKey, limit: int) -> list[Turn]: ...

    async def append_exchange(
        self,
        key: ConversationKey,
        question: str,
        answer: str,
        *,
        speaker: str = "",
        question_id: int = 0,
        answer_ids: tuple[int, ...] = (),
    ) -> None: ...

    async def reset(self, key: ConversationKey) -> int: ...

    async def reset_channel(self, bot: str, channel: int) -> int: ...

    async def prune(self, bot: str, max_age_seconds: float | None, max_turns: int) -> int: ...

    async def command_sets(self, bot: str) -> dict[str, str]:
        """The digest of the slash command set ``bot`` last registered, per scope (persona/slash.py)."""
        ...

    async def save_command_set(self, bot: str, scope: str, digest: str) -> None: ...

    async def backup(self, target: Path) -> None:
        """Write a consistent copy of everything stored to ``target``, while the bots keep writing."""
        ...

    async def export_user(self, user: int) -> UserData: ...

    async def forget_user(self, user: int, bot: str | None = None) -> Forgotten:
        """Delete ``user``'s turns and usage (of every bot, or of ``bot``)."""
        ...

    def drop_cached(self, bot: str) -> None:
        """Forget the histories of ``bot`` cached in this process: another process may have answered
        as ``bot`` since (a fleet node taking the bot over)."""
        ...


class Store(ConversationStore, Protocol):
    """A whole store: conversations, and the daily token usage, spend and images the quota, spend and
    image books persist.

    The daily methods are synchronous and called on the event loop: ``add_*`` must not wait for the
    database, and ``load_*`` answers from memory there when it cannot read without blocking."""

    async def flush(self) -> None:
        """Write what is pending now."""
        ...

    def load_daily_usage(self, day: str) -> dict[tuple[str, str], int]: ...

    def load_daily_spend(self, day: str) -> dict[tuple[str, str], float]: ...

    def add_daily_usage(self, day: str, bot: str, user: str, tokens: int) -> None: ...

    def add_daily_spend(self, day: str, bot: str, user: str, usd: float) -> None: ...

    def load_daily_images(self, day: str) -> dict[tuple[str, str], int]: ...

    def add_daily_images(self, day: str, bot: str, user: str, images: int) -> None: ...
