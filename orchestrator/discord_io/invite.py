"""Invite links: the OAuth2 URL that adds a persona's bot to a server with the permissions it uses.

A bot token's first dot-separated part is the bot user's id in base64, and for a bot created in
the developer portal that id is also its application id (the invite's ``client_id``).
:func:`fetch_application_id` asks Discord instead, which also proves the token works.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote, urlencode

import discord

AUTHORIZE_URL = "https://discord.com/oauth2/authorize"
SCOPES = ("bot", "applications.commands")

# What each permission is for; the names are discord.Permissions flags, the labels the portal's.
PERMISSIONS: dict[str, tuple[str, str]] = {
    "view_channel": ("View Channels", "see the channels it answers in"),
    "send_messages": ("Send Messages", 'answer, and show "typing…"'),
    "send_messages_in_threads": ("Send Messages in Threads", "answer in threads"),
    "read_message_history": ("Read Message History", "reply to a message; read what it missed while restarting"),
    "attach_files": ("Attach Files", "post the images `!imagine` and `/imagine` draw"),
}


def required_permissions() -> discord.Permissions:
    """The permissions a persona bot uses, and no others (no embeds, reactions or moderation)."""
    return discord.Permissions(**dict.fromkeys(PERMISSIONS, True))


def application_id_from_token(token: str) -> int | None:
    """The id encoded in a bot token, or None when ``token`` does not have that shape."""
    head = token.strip().split(".", 1)[0]
    try:
        decoded = base64.b64decode(head + "=" * (-len(head) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return int(decoded) if decoded.isdigit() and len(decoded) <= 20 else None


def invite_url(application_id: int, permissions: discord.Permissions | None = None) -> str:
    """The authorize URL that adds application ``application_id`` as a bot with ``permissions``."""
    query = {
        "client_id": str(application_id),
        "permissions": str((permissions or required_permissions()).value),
        "scope": " ".join(SCOPES),
    }
    return f"{AUTHORIZE_URL}?{urlencode(query, quote_via=quote)}"


async def fetch_application_id(token: str) -> int:
    """Log in with ``token`` (``GET /users/@me``, then ``/oauth2/applications/@me``) and return the
    application's id. Raises ``discord.LoginFailure`` for a refused token, ``discord.HTTPException``
    or ``OSError`` when Discord cannot be asked. Uses the API URL set by ``configure_discord``."""
    client = discord.Client(intents=discord.Intents.none())
    try:
        await client.login(token)  # GET /users/@me (a refused token raises here), then /oauth2/applications/@me
        assert client.application is not None  # login() has read it
        return client.application.id
    finally:
        await client.close()
