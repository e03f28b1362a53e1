"""Chat messages as sent to a provider, and a network-free estimate of their token cost.

A message's ``content`` is text, or (a user message with images) a list of parts: one ``text``
part, then one ``image_url`` part per image, whose URL is an address the provider fetches or a
base64 ``data:`` URL (:func:`with_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, Any]  # role, content (str, or a list of parts), and for a user turn its name

# Tokens reserved per image before the provider reports its usage (OpenAI bills 85 for a
# low-detail image and up to ~1,100 for a large one in high detail); settling corrects it.
IMAGE_TOKEN_ESTIMATE = 765


def estimate_tokens(text: str) -> int:
    """A cheap, network-free token estimate (about 4 bytes of UTF-8 per token, plus framing)."""
    return (len(text.encode("utf-8")) + 3) // 4 + 4


def with_images(message: Message, image_urls: Sequence[str]) -> Message:
    """``message`` with its text as the first part and one ``image_url`` part per URL."""
    if not image_urls:
        return message
    parts: list[dict[str, Any]] = [{"type": "text", "text": message["content"]}]
    parts.extend({"type": "image_url", "image_url": {"url": url}} for url in image_urls)
    return {**message, "content": parts}


def estimate_message_tokens(message: Message) -> int:
    """:func:`estimate_tokens` of a message's text, plus :data:`IMAGE_TOKEN_ESTIMATE` per image part."""
    content = message["content"]
    if isinstance(content, str):
        return estimate_tokens(content)
    text = "".join(str(part.get("text", "")) for part in content)
    images = sum(1 for part in content if part.get("type") == "image_url")
    return estimate_tokens(text) + images * IMAGE_TOKEN_ESTIMATE
