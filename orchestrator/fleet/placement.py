"""Which node should run each bot: rendezvous (highest random weight) hashing over the live nodes.

Every node computes the same answer from the same set of node ids, without talking to the others.
A node joining takes over only the bots it now scores highest for (about 1/n of them), and a node
leaving hands on only its own bots: the rest stay where they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable


def weight(node: str, bot: str) -> int:
    """The node's score for the bot: a stable 64-bit hash of the pair (the same on every machine)."""
    digest = hashlib.blake2b(f"{node}\0{bot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(bot: str, nodes: Collection[str]) -> str:
    """The node that should run ``bot``: the highest score, ties (never seen in practice) by node id."""
    if not nodes:
        raise ValueError("no live node to place a bot on")
    return max(nodes, key=lambda node: (weight(node, bot), node))


def place(bots: Iterable[str], nodes: Collection[str]) -> dict[str, str]:
    """Each bot's desired node."""
    return {bot: owner(bot, nodes) for bot in bots}
