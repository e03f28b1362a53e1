"""What a persona says on its own, rather than from the model."""

from __future__ import annotations

from ..config import BotSpec, QuotaSettings
from ..llm.quota import UsageReport
from ..llm.spend import format_usd
from . import slash

BUSY = "I'm answering too many messages right now. Please try again in a moment."
RESTARTING = "I'm restarting. Please try again in a few seconds."
APOLOGY = "Sorry, something went wrong on my side while answering. The admins can find the details in the log."
EMPTY_ANSWER = "(The model returned an empty answer. Try rephrasing your message.)"


def empty_chat(prefix: str) -> str:
    return f"Write something after `{prefix}chat`, for example `{prefix}chat hello`."


def usage_text(spec: BotSpec, mine: UsageReport, total: UsageReport, images: tuple[int, int] | None = None) -> str:
    """A user's usage of a persona beside the whole persona's, against their limits (and the spend,
    when the persona's model has a price; ``images`` today, the user's and the persona's, when it draws)."""
    lines = [f"Usage of {spec.name} (yours / the whole persona):"]
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
        mine_usd, total_usd = format_usd(mine.usd_today), format_usd(total.usd_today)
        user_cap, bot_cap = (
            format_usd(cap) if cap else "∞" for cap in (spec.user_quota.usd_per_day, spec.quota.usd_per_day)
        )
        lines.append(f"- spent today: {mine_usd}/{user_cap} · {total_usd}/{bot_cap}")
    if images is not None and spec.image_model is not None:
        caps = (spec.user_quota.images_per_day, spec.quota.images_per_day)
        user_cap, bot_cap = ("∞" if limit is None else str(limit) for limit in caps)
        lines.append(f"- images today: {images[0]}/{user_cap} · {images[1]}/{bot_cap}")
    return "\n".join(lines)


def help_text(spec: BotSpec) -> str:
    """What ``<prefix>help`` answers: who this persona is, how to address it, its commands and limits."""
    p = spec.prefix
    ways = [f"`{p}chat <your message>` (or `{p}ask`)", "@mention me", "reply to one of my messages"]
    if not spec.message_content:  # Discord shows it no other text in channels
        ways.pop(0)
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
        *(
            []
            if spec.message_content
            else [f"In channels I see only messages that mention me: add an @mention of me to a command (`{p}usage`)."]
        ),
        "Commands:",
        f"- `{p}chat <text>`: talk to me; I remember {ours}",
        f"- `{p}reset`: I forget {ours}",
        f"- `{p}reset channel`: I forget every conversation in this channel (admins only)",
        f"- `{p}usage`: what you have used and what is left",
        *([f"- `{p}imagine <description>`: I draw it"] if spec.image_model is not None else []),
        f"- `{p}help`: this message",
    ]
    if spec.commands.enabled:
        lines.append(f"Slash commands (type / in Discord): {', '.join(f'`/{name}`' for name in slash.offered(spec))}.")
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
            (quota.images_per_day, "images per day"),
        )
        if value is not None
    ]
    if quota.usd_per_day is not None:
        limits.append(f"{format_usd(quota.usd_per_day)} per day")
    return f"Your limits: {', '.join(limits)}." if limits else "You have no limits of your own here."
