"""What a provider's answer headers say about waiting before the next request.

Explicit hints, in the order :func:`retry_after_from` trusts them: ``retry-after-ms``;
``retry-after`` (seconds or an HTTP date); the same two prefixed by a gateway or provider name
(LiteLLM passes its upstream's hint on as ``llm_provider-retry-after``); then the
``x-ratelimit-reset-requests|tokens`` durations of a limit that is used up (``1s``, ``6m0s``,
``12ms``). :func:`used_up` tells a limit that is spent (``x-ratelimit-remaining-* = 0``) even when
no reset time comes with it, as some gateways send.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
KINDS = ("requests", "tokens")


def parse_duration(value: str | None) -> float | None:
    """Parse OpenAI's reset durations (``1s``, ``6m0s``, ``12ms``) or plain seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


def _seconds(value: str, now: float) -> float | None:
    """``retry-after``'s two forms: seconds, or an HTTP date (RFC 9110) counted from ``now``."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _milliseconds(value: str) -> float | None:
    try:
        return max(0.0, float(value)) / 1000
    except ValueError:
        return None


def rate_count(headers: Mapping[str, str], name: str, kind: str) -> int | None:
    """``x-ratelimit-{name}-{kind}`` (``remaining`` or ``limit``, of ``requests`` or ``tokens``) as a
    number; None when absent or unreadable."""
    value = headers.get(f"x-ratelimit-{name}-{kind}")
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def used_up(headers: Mapping[str, str]) -> list[str]:
    """The limits (``requests``, ``tokens``) the provider says have nothing left."""
    return [kind for kind in KINDS if (left := rate_count(headers, "remaining", kind)) is not None and left <= 0]


def retry_after_from(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a provider asked for, in seconds, or None when it named none (see the module's order).

    A reset duration counts only for a limit that is used up (OpenAI sends them on every answer,
    where they say when a limit is full again, not when the next request may go); when no
    ``x-ratelimit-remaining-*`` says which limit that is, the longest reset given counts.
    ``now`` is the wall clock an HTTP date is measured from (default ``time.time()``).
    """
    wall = time.time() if now is None else now
    if (ms := headers.get("retry-after-ms")) is not None and (seconds := _milliseconds(ms)) is not None:
        return seconds
    if (value := headers.get("retry-after")) is not None and (seconds := _seconds(value, wall)) is not None:
        return seconds
    prefixed: list[float] = []
    for name, value in headers.items():
        name = name.lower()
        if name.endswith("-retry-after-ms"):
            seconds = _milliseconds(value)
        elif name.endswith("-retry-after"):
            seconds = _seconds(value, wall)
        else:
            continue
        if seconds is not None:
            prefixed.append(seconds)
    if prefixed:
        return max(prefixed)
    spent = used_up(headers)
    if not spent and all(rate_count(headers, "remaining", kind) is None for kind in KINDS):
        spent = list(KINDS)  # nothing says which limit: any reset given may be the one
    resets = [r for kind in spent if (r := parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))) is not None]
    return max(resets) if resets else None
