"""What a provider's answer headers say about waiting before the next request."""

from __future__ import annotations

import re
from collections.abc import Mapping

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """The wait a provider asked for: ``retry-after-ms``, ``retry-after``, then ``x-ratelimit-reset-*``."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        seconds = parse_duration(headers.get(name))
        if seconds is not None:
            return seconds
    return None
