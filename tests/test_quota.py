"""The quota book's memory stays flat: windows hold one minute of events, idle users are forgotten."""

from __future__ import annotations

from orchestrator.config import QuotaSettings
from orchestrator.llm.quota import WINDOW

from .test_pool import NONE, Clock, book

WINDOWS_PER_REQUEST = 4  # requests and tokens, for the bot and for its user


def test_ten_thousand_requests_leave_one_window_of_events_whatever_is_configured() -> None:
    clock = Clock()
    quotas = book(clock)
    per_user = QuotaSettings(requests_per_minute=1000)  # a user limit only: the bot's own windows are never checked
    for n in range(10_000):
        clock.now += 0.125  # exact in binary, so the window's edge is exact too
        quotas.settle(quotas.reserve("p", "sage", f"u{n % 50}", 10, NONE, per_user if n % 2 else NONE), 5)
    in_a_window = int(WINDOW / 0.125)
    size = quotas.size()
    # A window keeps at most the minute before its last event, and a window idle for a minute is forgotten.
    assert size.events <= 2 * WINDOWS_PER_REQUEST * in_a_window, size
    assert quotas.report("sage").requests_last_minute == in_a_window


def test_idle_users_are_forgotten() -> None:
    clock = Clock()
    quotas = book(clock)
    for n in range(1000):
        quotas.reserve("p", "sage", f"u{n}", 10, QuotaSettings(requests_per_minute=10_000), NONE)
    assert quotas.size().windows == WINDOWS_PER_REQUEST // 2 * 1001
    clock.now += 2 * WINDOW
    quotas.reserve("p", "sage", "newcomer", 10, NONE, NONE)
    assert quotas.size().windows == WINDOWS_PER_REQUEST, "the bot's and the newcomer's windows are left"
    assert quotas.report("sage", "u1").requests_last_minute == 0


def test_settling_a_request_older_than_the_window_leaves_the_window_as_it_is() -> None:
    clock = Clock()
    quotas = book(clock)
    limit = QuotaSettings(tokens_per_minute=1000)
    slow = quotas.reserve("p", "sage", "u", 100, limit, NONE)
    clock.now += WINDOW + 1  # a long answer: its reservation left the window before it was settled
    quotas.reserve("p", "sage", "u", 70, limit, NONE)
    quotas.settle(slow, 40)
    assert quotas.report("sage").tokens_last_minute == 70
    assert quotas.report("sage").tokens_today == 110
