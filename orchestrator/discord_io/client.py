"""The discord.py client each persona runs: only the intents and caches a chat bot needs, and
messages handed straight to the bot instead of through a task per ``on_message``; what counts as
Discord being unreachable rather than the bot crashing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import discord
import yarl

from ..config import DiscordSettings

NO_MENTIONS = discord.AllowedMentions.none()


def configure_discord(settings: DiscordSettings) -> None:
    """Point discord.py at a Discord-compatible server. Process-wide: every client shares it, and a
    change applies to clients that connect afterwards."""
    discord.http.Route.BASE = settings.api_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


NETWORK_ERRORS = (OSError, aiohttp.ClientConnectionError, discord.DiscordServerError, discord.GatewayNotFound)


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class DiscordUnreachable(Exception):
    """Discord could not be reached (no network, DNS, refused connection, a Discord outage): not a
    crash of the bot, so the supervisor keeps trying without counting it against the restart limit."""

    def __init__(self, cause: BaseException) -> None:
        self.reason = describe_error(cause)
        super().__init__(self.reason)


def network_failure(exc: BaseException) -> BaseException | None:
    """The network error behind ``exc``, if any. discord.py sometimes raises another error while
    handling one (an AttributeError when its first gateway connection fails), hence the chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, NETWORK_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class OneLineReconnects(logging.Filter):
    """discord.py logs every gateway reconnect attempt with the traceback of what is usually a mere
    network error; this keeps it to one warning naming the error."""

    MESSAGE = "Attempting a reconnect in %.2fs"  # discord.Client.connect's

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE and record.exc_info and record.exc_info[1] is not None:
            record.msg = "the gateway connection failed (%s); reconnecting in %.2fs"
            record.args = (describe_error(record.exc_info[1]), *(record.args or ()))
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_reconnect_log_filter() -> None:
    logger = logging.getLogger("discord.client")
    if not any(isinstance(existing, OneLineReconnects) for existing in logger.filters):
        logger.addFilter(OneLineReconnects())


class PersonaClient(discord.Client):
    """``discord.Client`` with a configurable pause before re-identifying, and messages handed to
    ``take_message`` as soon as they are built. ``dispatch`` is the extension point discord.py's own
    ``ext.commands.Bot`` overrides; without it discord.py starts a task per message for ``on_message``."""

    def __init__(
        self, *, take_message: Callable[[discord.Message], None], reidentify_delay: float, **options: Any
    ) -> None:
        super().__init__(**options)
        self._take_message = take_message
        self._reidentify_delay = reidentify_delay

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if event == "message":
            self._take_message(*args)
            return
        super().dispatch(event, *args, **kwargs)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await anyio.sleep(self._reidentify_delay)


def build_client(
    take_message: Callable[[discord.Message], None],
    *,
    guild_ready_timeout: float,
    reidentify_delay: float,
    message_content: bool = True,
) -> PersonaClient:
    """A client with no member or message cache and no chunking, that pings nobody by default. It asks
    for the privileged Message Content intent only with ``message_content``."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = message_content
    return PersonaClient(
        take_message=take_message,
        reidentify_delay=reidentify_delay,
        intents=intents,
        max_messages=None,
        chunk_guilds_at_startup=False,
        member_cache_flags=discord.MemberCacheFlags.none(),
        allowed_mentions=NO_MENTIONS,
        guild_ready_timeout=guild_ready_timeout,
    )


def typing_sender(client: discord.Client) -> Callable[[int], Awaitable[None]]:
    """``send(channel_id)``: one "typing…" POST to that channel (``await channel.typing()``)."""

    async def send(channel_id: int) -> None:
        await client.get_partial_messageable(channel_id).typing()

    return send
