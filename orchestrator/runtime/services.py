"""What a bot gets from the process: the shared services, runtime options, and its counters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..community import Community
from ..llm.images import MAX_IMAGE_BYTES
from ..llm.pool import LLMPool
from ..memory import ConversationStore
from ..ops.metrics import Metrics


@dataclass(frozen=True)
class RuntimeOptions:
    guild_ready_timeout: float = 0.5
    reidentify_delay: float = 5.0  # discord.py's pause before a fresh IDENTIFY (Discord's identify limit)
    drain_timeout: float = 10.0
    close_timeout: float = 5.0
    typing_refresh: float = 8.0  # Discord shows "typing…" for about 10 s after each POST
    typing_min_interval: float = 1.0  # at most one typing POST per channel this often
    catch_up_window: float = 300.0  # on a new session, answer what was missed if at most this old (s)
    image_max_bytes: int = MAX_IMAGE_BYTES  # a generated image larger than this is not downloaded or posted


class MessageClaims(Protocol):
    """Fleet-wide "taken once" (orchestrator/fleet/claims.py): the messages answered anywhere in the fleet."""

    def answered(self, bot: str, message_id: int) -> None: ...

    async def answered_already(self, bot: str, message_ids: Sequence[int]) -> set[int]: ...


@dataclass
class Services:
    """What every bot shares: the provider pool, the memory store, the community and runtime options.

        ``may_post(bot)`` (fleet mode) tells whether this node may post as ``bot`` now: a local check of
        its lease's deadline, without I/O (orchestrator/fleet/); a bot asks it before it answers a user's
    message too. ``claims`` (fleet mode) marks the messages answered, and tells a bot catching up which
    ones another node answered; None in one process, where the mailbox's own "taken once" is enough."""

    pool: LLMPool
    store: ConversationStore
    options: RuntimeOptions = RuntimeOptions()
    metrics: Metrics | None = None
    community: Community = field(default_factory=Community)
    may_post: Callable[[str], bool] | None = None
    claims: MessageClaims | None = None


@dataclass
class BotCounters:
    """A bot's counters; they belong to its supervised child and outlive each incarnation."""

    chats: int = 0
    answered: int = 0
    busy: int = 0
    errors: int = 0
    dropped: int = 0  # gateway MESSAGE_CREATEs for others, dropped undecoded (discord_io/gateway_filter.py)
    claimed_elsewhere: int = 0  # messages taken here but answered by another node (fleet/claims.py)
