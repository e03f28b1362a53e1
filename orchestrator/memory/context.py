"""Fitting a conversation into the model's context budget: the system prompt first, the question
last, and between them as much of the newest history (remembered exchanges, and the channel's
recent messages when the persona hears the room) as fits."""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence

from ..llm.messages import Message, estimate_tokens
from .store import Turn

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def speaker_name(display: str) -> str:
    """``display`` as an OpenAI ``name`` (``^[A-Za-z0-9_-]{1,64}$``): accents dropped, anything else
    replaced by ``_``; a name with no such letter at all (emoji, Persian) becomes a stable
    ``speaker_<hash>`` so that different speakers stay different."""
    ascii_form = unicodedata.normalize("NFKD", display).encode("ascii", "ignore").decode()
    name = _NAME_UNSAFE.sub("_", ascii_form).strip("_")[:64]
    return name or f"speaker_{zlib.crc32(display.encode('utf-8')):08x}"


def turn_message(turn: Turn) -> Message:
    """A turn as the model sees it: a user turn carries its speaker as ``name`` and in the text, for
    servers that ignore ``name``."""
    if turn.role != "user" or not turn.speaker:
        return {"role": turn.role, "content": turn.content}
    return {"role": "user", "name": speaker_name(turn.speaker), "content": f"{turn.speaker}: {turn.content}"}


def _cost(message: Message) -> int:
    return sum(estimate_tokens(value) for value in message.values())


def _blocks(history: Sequence[Turn], room: Sequence[Turn]) -> list[list[Turn]]:
    """Remembered exchanges (whole) and room messages not already remembered, in the order they were
    said; remembered turns without message ids (older databases) come first."""
    remembered = {message_id for turn in history for message_id in turn.message_ids}
    blocks: list[tuple[int, list[Turn]]] = []
    for i in range(0, len(history) - 1, 2):
        pair = list(history[i : i + 2])
        blocks.append((pair[0].message_ids[0] if pair[0].message_ids else 0, pair))
    if len(history) % 2:
        blocks.append((0, [history[-1]]))
    for turn in room:
        if turn.message_ids and not remembered.intersection(turn.message_ids):
            blocks.append((turn.message_ids[0], [turn]))
    blocks.sort(key=lambda block: block[0])  # stable: equal keys keep their order
    return [block for _, block in blocks]


def fit_context(
    persona: str, history: Sequence[Turn], question: str | Turn, budget: int, room: Sequence[Turn] = ()
) -> list[Message]:
    """System prompt first, the question last, and as many of the newest blocks as fit ``budget``:
    a remembered exchange is one block, a message heard in the room another. Blocks are dropped oldest
    first; the system prompt and the question are always kept."""
    asked = turn_message(question if isinstance(question, Turn) else Turn("user", question))
    system: Message = {"role": "system", "content": persona}
    used = _cost(system) + _cost(asked)
    kept: list[Message] = []
    for block in reversed(_blocks(history, room)):
        messages = [turn_message(turn) for turn in block]
        cost = sum(_cost(message) for message in messages)
        if used + cost > budget:
            break
        used += cost
        kept[:0] = messages
    return [system, *kept, asked]
