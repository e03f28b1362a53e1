"""Per-bot and per-user quotas: requests and tokens per minute, tokens per day.

A request first *reserves* its estimated cost (prompt estimate + max_tokens) against every limit
that applies; the reservation is *settled* to the provider's real ``usage`` afterwards, or
released when the call failed. Per-minute limits are sliding 60 s windows; the daily budget is a
UTC calendar day whose totals are persisted through :class:`UsageSink` so a restart does not reset it.

Reading a day's persisted totals is a database read, which may wait for the store's writer: with
:meth:`QuotaBook.follow_days` running it happens in a worker thread, never on the event loop. While
a new day's totals load, usage counts from zero and what is recorded meanwhile waits in memory,
then both are added up: nothing is lost or counted twice.

Memory stays flat under any traffic: a window drops what is older than 60 s on every append, whether
or not a limit is configured for it, and windows left empty (idle users) are forgotten once a minute.
What grows is one daily total per user seen today, cleared at midnight UTC.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from ..config import QuotaSettings
from ..errors import QuotaExceeded

log = logging.getLogger(__name__)

WINDOW = 60.0


class UsageSink(Protocol):
    """Where daily token totals are persisted (the SQLite store implements it)."""

    def load_daily_usage(self, day: str) -> dict[tuple[str, str], int]: ...

    def add_daily_usage(self, day: str, bot: str, user: str, tokens: int) -> None: ...


@dataclass
class _Window:
    """Sliding 60 s window of (time, amount) events."""

    events: deque[list[float]] = field(default_factory=deque)
    total: float = 0.0

    def prune(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: float) -> list[float]:
        self.prune(now)
        event = [now, amount]
        self.events.append(event)
        self.total += amount
        return event

    def correct(self, event: list[float], delta: float, now: float) -> None:
        """Change ``event``'s amount; one already past the window was counted out at its old amount."""
        self.prune(now)
        if event[0] > now - WINDOW:
            self.total += delta
        event[1] += delta

    def idle(self, now: float) -> bool:
        self.prune(now)
        return not self.events

    def retry_after(self, now: float, needed: float, limit: float) -> float:
        """Seconds until ``needed`` more fits under ``limit``."""
        excess = self.total + needed - limit
        for at, amount in self.events:
            excess -= amount
            if excess <= 0:
                return max(0.0, at + WINDOW - now)
        return WINDOW


@dataclass
class Reservation:
    bot: str
    user: str
    estimate: int
    token_events: list[tuple[_Window, list[float]]]  # for the bot and for the user
    settled: bool = False
    provider: str = ""
    ticket: str = ""  # its id in the fleet's Redis (fleet/quotas.py); '' when it is counted in this process only


@dataclass(frozen=True)
class BookSize:
    """What a :class:`QuotaBook` holds in memory."""

    windows: int  # per-minute windows, one per (bot, user) and per bot, for requests and for tokens
    events: int  # the events in them
    daily: int  # today's token totals, one per (bot, user) and per bot


@dataclass(frozen=True)
class UsageReport:
    bot: str
    user: str
    requests_last_minute: int
    tokens_last_minute: int
    tokens_today: int
    limits: QuotaSettings
    usd_today: float = 0.0  # filled in where the spend is known (llm/admission.py)


def utc_day(now: float | None = None) -> str:
    """The UTC calendar day daily budgets count in, as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


def _seconds_to_midnight(now: float) -> float:
    current = datetime.fromtimestamp(now, UTC)
    midnight = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - current).total_seconds()


class QuotaBook:
    """Tracks usage for every (bot) and (bot, user) pair and enforces their limits."""

    ALL_USERS = "*"

    def __init__(
        self,
        sink: UsageSink | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._wall = wall_clock
        self._requests: dict[tuple[str, str], _Window] = {}
        self._tokens: dict[tuple[str, str], _Window] = {}
        self._day = ""
        self._day_span = (0.0, 0.0)  # wall-clock seconds [start, end) of self._day
        self._daily: dict[tuple[str, str], int] = {}
        self._day_begun: anyio.Event | None = None  # set when a new day's totals need loading; None: no follower
        self._deferred: dict[tuple[str, str, str], int] | None = None  # (day, bot, user) → tokens, while loading
        self._swept = clock()
        self.rejections: dict[tuple[str, str, str], int] = {}  # (bot, scope, limit) → refused requests
        self.tokens_used: dict[tuple[str, str], int] = {}  # (bot, provider) → tokens the providers counted

    def _roll_day(self) -> None:
        now = self._wall()
        start, end = self._day_span
        if start <= now < end:
            return  # the common case: no date formatting per request
        day = utc_day(now)
        until_midnight = _seconds_to_midnight(now)
        self._day_span = (now + until_midnight - 86400, now + until_midnight)
        if day != self._day:
            self._day = day
            self._daily = {}
            if self._sink is None:
                return
            if self._day_begun is None:  # nobody follows the days (tools, tests): read here
                self._daily = dict(self._sink.load_daily_usage(day))
            else:
                if self._deferred is None:
                    self._deferred = {}
                self._day_begun.set()

    async def follow_days(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load today's persisted totals, then each new day's when it begins, in a worker thread.
        Reports started once today's are counted; runs until cancelled."""
        if self._sink is None:
            task_status.started()
            return
        self._day_begun = anyio.Event()
        started = False
        try:
            self._roll_day()  # today's totals need loading, unless they were read before
            while True:
                if self._day_begun.is_set():
                    self._day_begun = anyio.Event()
                    await self._load_day(self._day)
                if not started:
                    task_status.started()
                    started = True
                await self._day_begun.wait()
        finally:
            self._day_begun = None
            self._record_deferred()

    async def _load_day(self, day: str) -> None:
        assert self._sink is not None
        try:
            persisted = await anyio.to_thread.run_sync(self._sink.load_daily_usage, day)
        except Exception:
            log.exception("could not read the token usage of %s; daily budgets count from zero until the next day", day)
            persisted = {}
        if day != self._day:
            return  # another day began meanwhile; its own load follows
        for key, tokens in persisted.items():
            self._daily[key] = self._daily.get(key, 0) + tokens
        self._record_deferred()

    def _record_deferred(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred and self._sink is not None:
            for (day, bot, user), tokens in deferred.items():
                self._sink.add_daily_usage(day, bot, user, tokens)

    def _record(self, bot: str, user: str, tokens: int) -> None:
        """Persist ``tokens`` used today; held back while today's totals load (they would count twice)."""
        if self._deferred is not None:
            key = (self._day, bot, user)
            self._deferred[key] = self._deferred.get(key, 0) + tokens
        elif self._sink is not None:
            self._sink.add_daily_usage(self._day, bot, user, tokens)

    def reserve(
        self, provider: str, bot: str, user: str, estimate: int, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> Reservation:
        """Reserve one request of ``estimate`` tokens, or raise :class:`QuotaExceeded` (nothing reserved)."""
        now = self._clock()
        self._roll_day()
        self._forget_idle(now)
        scopes = (("bot", (bot, self.ALL_USERS), bot_quota), ("user", (bot, user), user_quota))
        try:
            for scope, key, quota in scopes:
                self._check(provider, scope, key, quota, estimate, now)
        except QuotaExceeded as exc:
            self.refused(bot, exc)
            raise
        events = []
        for _, key, _quota in scopes:
            self._requests.setdefault(key, _Window()).add(now, 1)
            tokens = self._tokens.setdefault(key, _Window())
            events.append((tokens, tokens.add(now, estimate)))
            self._daily[key] = self._daily.get(key, 0) + estimate
        return Reservation(bot, user, estimate, events, provider=provider)

    def refused(self, bot: str, refusal: QuotaExceeded) -> QuotaExceeded:
        """Count ``refusal`` (a Prometheus counter) and return it."""
        counted = (bot, refusal.scope, refusal.limit)
        self.rejections[counted] = self.rejections.get(counted, 0) + 1
        return refusal

    def _forget_idle(self, now: float) -> None:
        """Drop the windows that hold nothing (users who went quiet), at most once a minute."""
        if now - self._swept < WINDOW:
            return
        self._swept = now
        for windows in (self._requests, self._tokens):
            for key in [key for key, window in windows.items() if window.idle(now)]:
                del windows[key]

    def _check(
        self, provider: str, scope: str, key: tuple[str, str], quota: QuotaSettings, estimate: int, now: float
    ) -> None:
        if quota.requests_per_minute is not None:
            window = self._requests.setdefault(key, _Window())
            window.prune(now)
            if window.total + 1 > quota.requests_per_minute:
                wait = window.retry_after(now, 1, quota.requests_per_minute)
                raise QuotaExceeded(provider, scope, "requests_per_minute", wait)
        if quota.tokens_per_minute is not None:
            window = self._tokens.setdefault(key, _Window())
            window.prune(now)
            if window.total + estimate > quota.tokens_per_minute:
                wait = window.retry_after(now, estimate, quota.tokens_per_minute)
                raise QuotaExceeded(provider, scope, "tokens_per_minute", wait)
        if quota.tokens_per_day is not None and self._daily.get(key, 0) + estimate > quota.tokens_per_day:
            raise QuotaExceeded(provider, scope, "tokens_per_day", _seconds_to_midnight(self._wall()))

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the estimate by the real usage (0 when the call failed before the provider counted it)."""
        if reservation.settled:
            return
        reservation.settled = True
        delta = actual_tokens - reservation.estimate
        now = self._clock()
        self._roll_day()
        keys = ((reservation.bot, self.ALL_USERS), (reservation.bot, reservation.user))
        for (window, event), key in zip(reservation.token_events, keys, strict=True):
            window.correct(event, delta, now)  # a window forgotten meanwhile was empty, so this changes nothing
            self._daily[key] = max(0, self._daily.get(key, 0) + delta)
        if actual_tokens:
            used = (reservation.bot, reservation.provider)
            self.tokens_used[used] = self.tokens_used.get(used, 0) + actual_tokens
        if actual_tokens:
            for bot, user in ((reservation.bot, self.ALL_USERS), (reservation.bot, reservation.user)):
                self._record(bot, user, actual_tokens)

    def size(self) -> BookSize:
        """What the book holds right now (for the soak's memory figures)."""
        windows = (*self._requests.values(), *self._tokens.values())
        return BookSize(len(windows), sum(len(window.events) for window in windows), len(self._daily))

    def report(self, bot: str, user: str = ALL_USERS, limits: QuotaSettings | None = None) -> UsageReport:
        now = self._clock()
        self._roll_day()
        key = (bot, user)
        requests = self._requests.get(key, _Window())
        tokens = self._tokens.get(key, _Window())
        requests.prune(now)
        tokens.prune(now)
        return UsageReport(
            bot, user, int(requests.total), int(tokens.total), self._daily.get(key, 0), limits or QuotaSettings()
        )
