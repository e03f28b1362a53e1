"""Spend in money: each answer's cost from the provider's reported usage and the model's price
(``prices:`` in bots.yaml), per bot and per user and UTC day, and the daily caps
``quota.usd_per_day`` (the whole persona) and ``user_quota.usd_per_day`` (each user).

The day's totals are persisted through :class:`SpendSink` (the SQLite store) so a restart does not
reset a cap. A cap is checked before each request and refuses requests once the day's spend has
reached it; requests already in flight then still finish, so a day can end slightly above it.
A bot without a price costs nothing here: no date is formatted and nothing is stored for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from ..config import ModelPrice, QuotaSettings
from ..errors import QuotaExceeded, format_duration
from .quota import QuotaBook, utc_day

DAY = 86400.0


class SpendSink(Protocol):
    """Where the day's spend is persisted (the SQLite store implements it)."""

    def load_daily_spend(self, day: str) -> dict[tuple[str, str], float]: ...

    def add_daily_spend(self, day: str, bot: str, user: str, usd: float) -> None: ...


class SpendCapReached(QuotaExceeded):
    """A daily spend cap was reached; no provider call was made."""

    def __init__(self, provider: str, scope: str, cap: float, retry_after: float) -> None:
        self.cap = cap
        super().__init__(provider, scope, "usd_per_day", retry_after)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        who = "You have" if self.scope == "user" else "This persona has"
        return (
            f"{who} reached today's spending limit ({format_usd(self.cap)}). It resets at midnight UTC, "
            f"in {format_duration(self.retry_after or 0)}."
        )


def format_usd(usd: float) -> str:
    """``$2.00``, or four decimals below a dollar (``$0.0123``), where cents would round to nothing."""
    return f"${usd:.2f}" if usd >= 1 or usd == 0 else f"${usd:.4f}"


class SpendBook:
    """The day's spend of every (bot) and (bot, user) pair, and what each bot spent since start."""

    ALL_USERS = QuotaBook.ALL_USERS

    def __init__(self, sink: SpendSink | None = None, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self._wall = wall_clock
        self._day = ""
        self._daily: dict[tuple[str, str], float] = {}
        self.spent: dict[str, float] = {}  # bot → USD since the process started (a Prometheus counter)
        self.rejections: dict[tuple[str, str], int] = {}  # (bot, scope) → requests refused by a cap

    def _roll_day(self) -> str:
        day = utc_day(self._wall())
        if day != self._day:
            self._day = day
            self._daily = dict(self._sink.load_daily_spend(day)) if self._sink else {}
        return day

    def check(self, provider: str, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings) -> None:
        """Raise :class:`SpendCapReached` when ``bot`` or this ``user`` has reached a daily cap."""
        if bot_quota.usd_per_day is None and user_quota.usd_per_day is None:
            return
        self._roll_day()
        for scope, key, cap in (
            ("bot", (bot, self.ALL_USERS), bot_quota.usd_per_day),
            ("user", (bot, user), user_quota.usd_per_day),
        ):
            if cap is not None and self._daily.get(key, 0.0) >= cap:
                raise self.refused(bot, SpendCapReached(provider, scope, cap, DAY - self._wall() % DAY))

    def refused(self, bot: str, refusal: SpendCapReached) -> SpendCapReached:
        """Count ``refusal`` (a Prometheus counter) and return it."""
        self.rejections[(bot, refusal.scope)] = self.rejections.get((bot, refusal.scope), 0) + 1
        return refusal

    def record(
        self, bot: str, user: str, price: ModelPrice | None, prompt_tokens: int, completion_tokens: int
    ) -> float:
        """Add one answer's cost (0 without a price) and return it."""
        if price is None:
            return 0.0
        usd = price.cost(prompt_tokens, completion_tokens)
        if not usd:
            return 0.0
        day = self._roll_day()
        self.spent[bot] = self.spent.get(bot, 0.0) + usd
        for key in ((bot, self.ALL_USERS), (bot, user)):
            self._daily[key] = self._daily.get(key, 0.0) + usd
            if self._sink is not None:
                self._sink.add_daily_spend(day, *key, usd)
        return usd

    def today(self, bot: str, user: str = ALL_USERS) -> float:
        """USD spent today (UTC) by ``bot``, or by ``user`` with it."""
        self._roll_day()
        return self._daily.get((bot, user), 0.0)
