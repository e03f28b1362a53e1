"""Drop gateway MESSAGE_CREATEs that cannot concern a bot before discord.py decodes them.

Bots that share a channel each receive every message and every reply posted there: with B bots a
``!chat`` costs 2 x B gateway events, of which all but two concern nobody. discord.py decodes the
JSON of each one (8-15 us for a message) and dispatches it before our MESSAGE_CREATE parser can
ignore it. Here the raw text is tested first. An event is dropped only when it is certainly a guild
MESSAGE_CREATE that carries neither the bot's user id (a mention, a reply to the bot, the bot's own
message) nor its command prefix; anything else, including any envelope in an unexpected shape, goes
to discord.py unchanged. A dropped event still advances the session's sequence number (used to
resume) and the heartbeat's last-receive time, as discord.py's own handling would.

The hooks into discord.py it needs are in :mod:`orchestrator.discord_io.internals`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import discord

from . import internals

# The envelope's three scalar keys, in any order, before the payload: how Discord (t, s, op, d) and the
# sandbox (op, t, s, d) both write a dispatch.
_ENVELOPE = re.compile(
    r'\{\s*(?:(?:"t"\s*:\s*"(?P<t>[A-Z_]+)"|"s"\s*:\s*(?P<s>\d+)|"op"\s*:\s*(?P<op>\d+))\s*,\s*){3}"d"\s*:'
)


@functools.lru_cache(maxsize=256)
def _json_forms(text: str) -> tuple[str, ...]:
    """How ``text`` can appear inside a JSON string: raw UTF-8 and with non-ASCII escaped."""
    return tuple(dict.fromkeys((json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1])))


def may_concern(body: str, user_id: int | None, prefix: str | None) -> bool:
    """False only if the raw payload of a MESSAGE_CREATE is certainly a guild message that neither
    mentions, replies to nor comes from user ``user_id`` and does not contain ``prefix``. ``prefix``
    is None for a bot without the Message Content intent: Discord blanks the text of every guild
    message that concerns it in no other way, so no prefix can show."""
    if user_id is None or '"guild_id"' not in body or "\\/" in body:
        return True  # not ready yet, a DM, or an encoder that escapes more than JSON requires
    if str(user_id) in body:
        return True
    return prefix is not None and any(form in body for form in _json_forms(prefix))


_GUILD_ID = re.compile(r'"guild_id"\s*:\s*"(\d+)"')


def install(
    client: discord.Client,
    prefix: Callable[[], str | None],
    dropped: Callable[[], None],
    received: Callable[[], None],
    listened: Callable[[], Collection[int]] = frozenset,
) -> None:
    """Filter every gateway connection of ``client``. ``prefix`` gives the bot's current prefix
    (None: not looked for);
    ``dropped`` is called for each event dropped, ``received`` for each MESSAGE_CREATE let through
    (before discord.py decodes it: where the added-latency metric starts). The guilds in ``listened()``
    get every message through (the bot keeps their channel context); while it is empty, no message
    costs more than without channel context."""

    def wrap(ws: Any, received_message: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def filtered(msg: Any, /) -> None:
            if type(msg) is bytes:  # zlib-/zstd-stream: inflate here, in order, exactly once
                msg = internals.inflate(ws, msg)
                if msg is None:
                    return  # a partial payload
            envelope = _ENVELOPE.match(msg)
            if envelope is None or envelope["t"] != "MESSAGE_CREATE" or envelope["op"] != "0" or envelope["s"] is None:
                await received_message(msg)
                return
            user = client.user
            body = msg[envelope.end() :]
            guilds = listened()
            if may_concern(body, user.id if user is not None else None, prefix()) or (
                guilds and (guild := _GUILD_ID.search(body)) is not None and int(guild[1]) in guilds
            ):
                received()
                await received_message(msg)
                return
            internals.skip_dispatch(ws, int(envelope["s"]))
            dropped()

        return filtered

    internals.wrap_gateway_frames(client, wrap)
