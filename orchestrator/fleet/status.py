"""``orchestrator status --fleet``: the fleet as Redis sees it, as text (nodes, then each bot's holder)."""

from __future__ import annotations

from ..config import FleetSpec
from ..errors import format_duration
from .connection import open_redis, shown
from .leases import FleetView, LeaseStore

READ_TIMEOUT = 5.0


async def read_fleet(spec: FleetSpec, bots: list[str]) -> FleetView:
    """Read the fleet of ``spec`` from Redis (raises the client's errors when it cannot)."""
    redis = open_redis(spec.redis_url.get_secret_value(), timeout=READ_TIMEOUT)
    try:
        return await LeaseStore(redis, spec.key_prefix, spec.node_id, spec.lease_ttl).view(bots)
    finally:
        await redis.aclose()


def format_fleet(spec: FleetSpec, view: FleetView) -> list[str]:
    """A header, the nodes (id, last heartbeat, bots held) and every bot (holder, lease age, token)."""
    live = [node for node in view.nodes if view.now_ms - node.last_heartbeat_ms <= spec.lease_ttl * 1000]
    lines = [f"fleet {spec.key_prefix!r} at {shown(spec.redis_url.get_secret_value())}: {len(live)} live node(s)"]
    nodes: list[tuple[str, ...]] = [("NODE", "LAST HEARTBEAT", "BOTS")]
    for node in view.nodes:
        ago = max(0, view.now_ms - node.last_heartbeat_ms) / 1000
        nodes.append((node.node, f"{ago:.1f}s ago", ", ".join(node.bots) or "-"))
    bots: list[tuple[str, ...]] = [("BOT", "HOLDER", "LEASE AGE", "EXPIRES IN", "TOKEN")]
    for bot in view.bots:
        if bot.holder is None:
            bots.append((bot.bot, "-", "-", "-", "-"))
            continue
        age = format_duration((view.now_ms - bot.since_ms) / 1000) if bot.since_ms is not None else "?"
        expires = f"{bot.expires_in_ms / 1000:.1f}s" if bot.expires_in_ms is not None else "?"
        bots.append((bot.bot, bot.holder, age, expires, str(bot.token)))
    return lines + _table(nodes) + _table(bots)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
