"""What a store keeps in memory, whatever the database: the recent histories (a bounded LRU, so a
warm conversation costs no read), and the writes not committed yet."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from .store import ConversationKey, Turn

UsageKey = tuple[str, str, str]  # (day, bot, user)
Totals = tuple[int, float, int]  # (tokens, usd, images) of one day
_K = TypeVar("_K")


class PendingExchange(NamedTuple):
    key: ConversationKey
    question: Turn
    answer: Turn
    created: float  # Unix time

    @classmethod
    def of(
        cls,
        key: ConversationKey,
        question: str,
        answer: str,
        speaker: str,
        question_id: int,
        answer_ids: tuple[int, ...],
        created: float,
    ) -> PendingExchange:
        """An exchange as ``append_exchange`` receives it: who asked, and the Discord messages of both."""
        asked = Turn("user", question, speaker, (question_id,) if question_id else ())
        return cls(key, asked, Turn("assistant", answer, "", answer_ids), created)

    def turns(self) -> tuple[Turn, Turn]:
        return self.question, self.answer


class HistoryCache:
    """The newest ``max_turns`` turns of the ``size`` most recently used conversations."""

    def __init__(self, size: int, max_turns: int) -> None:
        self._turns: OrderedDict[ConversationKey, list[Turn]] = OrderedDict()
        self._size = size
        self.max_turns = max_turns

    def get(self, key: ConversationKey) -> list[Turn] | None:
        turns = self._turns.get(key)
        if turns is not None:
            self._turns.move_to_end(key)
        return turns

    def put(self, key: ConversationKey, turns: list[Turn]) -> None:
        self._turns[key] = turns
        self._turns.move_to_end(key)
        while len(self._turns) > self._size:
            self._turns.popitem(last=False)

    def extend(self, key: ConversationKey, exchange: PendingExchange) -> None:
        """Add an exchange to a cached conversation (one not cached is read whole when next asked for)."""
        turns = self._turns.get(key)
        if turns is not None:
            turns.extend(exchange.turns())
            del turns[: -self.max_turns]

    def drop(self, doomed: Callable[[ConversationKey], bool]) -> None:
        for key in [k for k in self._turns if doomed(k)]:
            del self._turns[key]


def add_usage(totals: dict[_K, Totals], key: _K, tokens: int, usd: float, images: int = 0) -> None:
    """Add (tokens, usd, images) to ``totals[key]``."""
    old_tokens, old_usd, old_images = totals.get(key, (0, 0.0, 0))
    totals[key] = (old_tokens + tokens, old_usd + usd, old_images + images)
