"""The conversation store interface: what a persona asks of memory, whatever the database."""

from __future__ import annotations

from dataclasses import dataclass
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
