"""What a persona says on its own, rather than from the model."""

from __future__ import annotations

from ..config import BotSpec, QuotaSettings
from ..llm.quota import QuotaBook
from ..llm.spend import SpendBook, format_usd
from . import slash

BUSY = "I'm answering too many messages right now. Please try again in a moment."
RESTARTING = "I'm restarting. Please try again in a few seconds."
APOLOGY = "Sorry, something went wrong on my side while answering. The admins can find the details in the log."
EMPTY_ANSWER = "(The model returned an empty answer. Try rephrasing your message.)"


def empty_chat(prefix: str) -> str:
    return f"Write something after `{prefix}chat`, for example `{prefix}chat hello`."


def usage_text(spec: BotSpec, quotas: QuotaBook, spend: SpendBook, user_id: int) -> str:
    """A user's usage of a persona beside the whole persona's, against their limits (and the spend,
    when the persona's model has a price)."""
    lines = [f"Usage of {spec.name} (yours / the whole persona):"]
    mine = quotas.report(spec.name, str(user_id))
    total = quotas.report(spec.name)
    for label, field_name, used_mine, used_total in (
        ("requests this minute", "requests_per_minute", mine.requests_last_minute, total.requests_last_minute),
        ("tokens this minute", "tokens_per_minute", mine.tokens_last_minute, total.tokens_last_minute),
        ("tokens today", "tokens_per_day", mine.tokens_today, total.tokens_today),
    ):
        user_limit = getattr(spec.user_quota, field_name)
        bot_limit = getattr(spec.quota, field_name)
        lines.append(
            f"- {label}: {used_mine}/{user_limit if user_limit is not None else '∞'}"
            f" · {used_total}/{bot_limit if bot_limit is not None else '∞'}"
        )
    if spec.price is not None:
        mine_usd, total_usd = (format_usd(spend.today(spec.name, who)) for who in (str(user_id), SpendBook.ALL_USERS))
        user_cap, bot_cap = (
            format_usd(cap) if cap else "∞" for cap in (spec.user_quota.usd_per_day, spec.quota.usd_per_day)
        )
        lines.append(f"- spent today: {mine_usd}/{user_cap} · {total_usd}/{bot_cap}")
    return "\n".join(lines)


def help_text(spec: BotSpec) -> str:
    """What ``<prefix>help`` answers: who this persona is, how to address it, its commands and limits."""
    p = spec.prefix
    ways = [f"`{p}chat <your message>` (or `{p}ask`)", "@mention me", "reply to one of my messages"]
    if spec.access.dms:
        ways.append("send me a direct message")
    ours = (
        "this channel's conversation (shared by everyone here)"
        if spec.memory.scope == "channel"
        else "our conversation"
    )
    lines = [
        f"**{spec.name}**: {spec.description}",
        f"Talk to me: {', '.join(ways[:-1])} or {ways[-1]}.",
        "Commands:",
        f"- `{p}chat <text>`: talk to me; I remember {ours}",
        f"- `{p}reset`: I forget {ours}",
        f"- `{p}reset channel`: I forget every conversation in this channel (admins only)",
        f"- `{p}usage`: what you have used and what is left",
        f"- `{p}help`: this message",
    ]
    if spec.commands.enabled:
        lines.append(f"Slash commands (type / in Discord): {', '.join(f'`/{name}`' for name in slash.names())}.")
    lines.append(limits_text(spec.user_quota))
    return "\n".join(lines)


def limits_text(quota: QuotaSettings) -> str:
    """A user's limits in words."""
    limits = [
        f"{value} {label}"
        for value, label in (
            (quota.requests_per_minute, "requests per minute"),
            (quota.tokens_per_minute, "tokens per minute"),
            (quota.tokens_per_day, "tokens per day"),
        )
        if value is not None
    ]
    if quota.usd_per_day is not None:
        limits.append(f"{format_usd(quota.usd_per_day)} per day")
    return f"Your limits: {', '.join(limits)}." if limits else "You have no limits of your own here."
