"""Chat messages as sent to a provider, and a network-free estimate of their token cost."""

from __future__ import annotations

Message = dict[str, str]


def estimate_tokens(text: str) -> int:
    """A cheap, network-free token estimate (about 4 bytes of UTF-8 per token, plus framing)."""
    return (len(text.encode("utf-8")) + 3) // 4 + 4
