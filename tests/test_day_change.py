"""The UTC day change: the new day's persisted token usage is read in a worker thread (the store's
writer may hold the database for up to its 2 s busy timeout), and usage recorded while it loads is
neither lost nor counted twice. The clock is injected and crosses midnight."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from orchestrator.config import QuotaSettings
from orchestrator.llm.quota import QuotaBook
from orchestrator.memory import SQLiteStore

NONE = QuotaSettings()
BEFORE_MIDNIGHT = datetime(2025, 6, 15, 23, 59, 59, tzinfo=UTC).timestamp()
DAY1, DAY2 = "2025-06-15", "2025-06-16"


class HeldStore:
    """The real store, whose reads of a day's usage wait while :attr:`gate` is closed, as behind a
    writer holding the database. A read on the event loop's thread does not wait (it would hang the
    test on the old code); :attr:`readers` tells where each read ran."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.gate = threading.Event()
        self.gate.set()
        self.readers: list[tuple[str, bool]] = []  # (day, on the event loop's thread)
        self.recorded: dict[str, anyio.Event] = {}  # day → set when usage of that day is recorded
        self.fail_reads = False

    def load_daily_usage(self, day: str) -> dict[tuple[str, str], int]:
        on_loop = threading.current_thread() is threading.main_thread()
        self.readers.append((day, on_loop))
        if not on_loop:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_reads:
            raise sqlite3.OperationalError("database is locked")
        return self.store.load_daily_usage(day)

    def add_daily_usage(self, day: str, bot: str, user: str, tokens: int) -> None:
        self.store.add_daily_usage(day, bot, user, tokens)
        self.recorded.setdefault(day, anyio.Event()).set()

    async def wait_recorded(self, day: str) -> None:
        with anyio.fail_after(10):
            await self.recorded.setdefault(day, anyio.Event()).wait()


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "usage.sqlite3")
    yield store  # type: ignore[misc]
    store.close()


def spend(quotas: QuotaBook, tokens: int, user: str = "u") -> None:
    quotas.settle(quotas.reserve("p", "sage", user, tokens, NONE, NONE), tokens)


async def test_the_new_days_usage_loads_off_the_loop_and_usage_meanwhile_is_kept(store: SQLiteStore) -> None:
    store.add_daily_usage(DAY1, "sage", QuotaBook.ALL_USERS, 1000)
    store.add_daily_usage(DAY2, "sage", QuotaBook.ALL_USERS, 300)  # e.g. written by a run before a restart
    held = HeldStore(store)
    now = [BEFORE_MIDNIGHT]
    quotas = QuotaBook(held, wall_clock=lambda: now[0])  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(quotas.follow_days)
        assert held.readers == [(DAY1, False)], "today's usage too is read in a worker thread"
        assert quotas.report("sage").tokens_today == 1000

        held.gate.clear()  # the database is busy from now on
        now[0] += 2  # 00:00:01
        spend(quotas, 40)  # returns at once: the loop does not wait for the database
        assert quotas.report("sage").tokens_today == 40
        held.gate.set()
        await held.wait_recorded(DAY2)
        assert held.readers == [(DAY1, False), (DAY2, False)], "the day change read the database off the loop"
        assert quotas.report("sage").tokens_today == 300 + 40, "what was recorded meanwhile is kept, once"
        spend(quotas, 5)
        tg.cancel_scope.cancel()
    assert quotas.report("sage").tokens_today == 345
    assert store.load_daily_usage(DAY2)[("sage", QuotaBook.ALL_USERS)] == 345
    assert store.load_daily_usage(DAY1)[("sage", QuotaBook.ALL_USERS)] == 1000


async def test_usage_recorded_while_loading_is_kept_when_the_app_stops_first(store: SQLiteStore) -> None:
    held = HeldStore(store)
    now = [BEFORE_MIDNIGHT]
    quotas = QuotaBook(held, wall_clock=lambda: now[0])  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(quotas.follow_days)
        now[0] += 2
        spend(quotas, 70)
        tg.cancel_scope.cancel()  # before the new day's totals were read
    assert store.load_daily_usage(DAY2)[("sage", QuotaBook.ALL_USERS)] == 70


@pytest.mark.fault
async def test_a_failed_read_of_the_new_day_is_logged_and_usage_goes_on(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    held = HeldStore(store)
    now = [BEFORE_MIDNIGHT]
    quotas = QuotaBook(held, wall_clock=lambda: now[0])  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(quotas.follow_days)
        held.fail_reads = True
        with caplog.at_level(logging.ERROR):
            now[0] += 2
            spend(quotas, 25)
            await held.wait_recorded(DAY2)
        held.fail_reads = False
        now[0] += 86400  # the next day loads again
        spend(quotas, 1)
        await held.wait_recorded("2025-06-17")
        tg.cancel_scope.cancel()
    assert f"could not read the token usage of {DAY2}" in caplog.text
    assert store.load_daily_usage(DAY2)[("sage", QuotaBook.ALL_USERS)] == 25
    assert quotas.report("sage").tokens_today == 1
