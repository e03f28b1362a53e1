"""What the pool asks before and after each provider call: may this request go (the quotas and
spend caps of the bot and of the user), and what did it really cost; and before each image, may it
be drawn (``images_per_day``).

    LocalQuotas   one process: the in-memory :class:`~orchestrator.llm.quota.QuotaBook`,
                  :class:`~orchestrator.llm.spend.SpendBook` and :class:`~orchestrator.llm.images.ImageBook`,
                  checked and counted right here
    FleetQuotas   fleet mode: the same limits kept in Redis for every node (fleet/quotas.py)

Both keep the semantics of the books: ``reserve`` takes the estimate (prompt + max_tokens) against
every limit or raises :class:`~orchestrator.errors.QuotaExceeded` with nothing taken; ``settle``
replaces the estimate by the real usage, 0 tokens being the refund of a call that failed. Settling
twice counts once, so the pool may settle the real usage and then, on the way out, 0.
``take_image`` counts one image of the UTC day or raises ``QuotaExceeded`` with nothing counted;
``give_back_image`` uncounts it when no image came (not once its day is over).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ..config import ModelPrice, QuotaSettings
from .images import ImageBook, ImageTicket
from .quota import QuotaBook, Reservation, UsageReport
from .spend import SpendBook


class Quotas(Protocol):
    async def reserve(
        self, provider: str, bot: str, user: str, estimate: int, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> Reservation: ...

    async def settle(
        self, reservation: Reservation, price: ModelPrice | None, prompt_tokens: int, completion_tokens: int
    ) -> None: ...

    async def usage(self, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings) -> UsageReport:
        """What ``user`` (``*``: everyone) used of ``bot`` this minute and today, and spent today."""
        ...

    async def take_image(
        self, provider: str, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> ImageTicket: ...

    async def give_back_image(self, ticket: ImageTicket) -> None: ...

    async def images_today(
        self, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> tuple[int, int]:
        """Images made today (UTC) for ``user`` with ``bot``, and by ``bot`` for everyone."""
        ...


class LocalQuotas:
    """The quotas of one process. Nothing here waits: the ``async`` is the interface's."""

    def __init__(self, book: QuotaBook, spend: SpendBook, images: ImageBook) -> None:
        self.book = book
        self.spend = spend
        self.images = images

    async def reserve(
        self, provider: str, bot: str, user: str, estimate: int, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> Reservation:
        return self.take(provider, bot, user, estimate, bot_quota, user_quota)

    def take(
        self, provider: str, bot: str, user: str, estimate: int, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> Reservation:
        self.spend.check(provider, bot, user, bot_quota, user_quota)
        return self.book.reserve(provider, bot, user, estimate, bot_quota, user_quota)

    async def settle(
        self, reservation: Reservation, price: ModelPrice | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.count(reservation, price, prompt_tokens, completion_tokens)

    async def usage(self, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings) -> UsageReport:
        return self.report(bot, user)

    def report(self, bot: str, user: str) -> UsageReport:
        return dataclasses.replace(self.book.report(bot, user), usd_today=self.spend.today(bot, user))

    def count(
        self, reservation: Reservation, price: ModelPrice | None, prompt_tokens: int, completion_tokens: int
    ) -> float:
        """Count the real usage and its cost; returns the cost (0 without a price, or when settled before)."""
        if reservation.settled:
            return 0.0
        self.book.settle(reservation, prompt_tokens + completion_tokens)
        return self.spend.record(reservation.bot, reservation.user, price, prompt_tokens, completion_tokens)

    async def take_image(
        self, provider: str, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> ImageTicket:
        return self.images.take(provider, bot, user, bot_quota, user_quota)

    async def give_back_image(self, ticket: ImageTicket) -> None:
        self.images.give_back(ticket)

    async def images_today(
        self, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> tuple[int, int]:
        return self.images.today(bot, user), self.images.today(bot)
