"""Fitting a conversation into the model's context budget."""

from __future__ import annotations

from ..llm.messages import Message, estimate_tokens
from .store import Turn


def fit_context(persona: str, history: list[Turn], question: str, budget: int) -> list[Message]:
    """System prompt first, the question last, and as many of the newest exchanges as fit ``budget``.

    Whole exchanges are dropped oldest first; the system prompt and the question are always kept.
    """
    used = estimate_tokens(persona) + estimate_tokens(question)
    kept: list[Turn] = []
    index = len(history)
    while index >= 2:
        pair = history[index - 2 : index]
        cost = sum(estimate_tokens(turn.content) for turn in pair)
        if used + cost > budget:
            break
        used += cost
        kept[:0] = pair
        index -= 2
    return [
        {"role": "system", "content": persona},
        *({"role": turn.role, "content": turn.content} for turn in kept),
        {"role": "user", "content": question},
    ]
