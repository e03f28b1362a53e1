"""The sandbox's world: users, guilds, roles, channels and messages, and the JSON payloads Discord
builds from them (members, channels, GUILD_CREATE, messages as each bot sees them).

Humans, and bots registered without ``guilds``, are members of every guild (also of guilds added
later); a bot registered with ``guilds=[...]`` is a member of those guilds only. Without the
MESSAGE_CONTENT intent a bot sees guild messages with empty content unless they mention it or are
its own, as on Discord.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from .attachments import AttachmentStore

JSONDict = dict[str, Any]
# A message as one session receives it: (the session's bot user id, its intents) -> payload.
MessageView = Callable[[int, int], JSONDict]

EVERYONE_PERMISSIONS = "104324673"
DISCORD_EPOCH_MS = 1_420_070_400_000

# Gateway intents the sandbox honours.
GUILD_MEMBERS = 1 << 1
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15

# Channel and message types.
GUILD_TEXT, DM = 0, 1
_DEFAULT_MESSAGE, _REPLY_MESSAGE = 0, 19

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")

_T = TypeVar("_T")


@dataclass
class SentMessage:
    """A message a bot created through REST, with what later happened to it."""

    id: int
    channel_id: int
    author_id: int
    content: str
    allowed_mentions: JSONDict | None
    reference_id: int | None
    edits: list[str] = field(default_factory=list)  # content after each PATCH, in order
    deleted: bool = False
    flags: int = 0
    attachments: list[str] = field(default_factory=list)  # uploaded file names
    uploads: list[JSONDict] = field(default_factory=list)  # their attachment objects (bytes: SandboxState.files)
    payload: JSONDict = field(default_factory=dict)  # the JSON payload as posted


@dataclass
class User:
    id: int
    name: str
    bot: bool
    roles: set[int]
    guilds: frozenset[int] | None = None  # the guilds it is a member of; None: every guild

    def member_of(self, guild_id: int) -> bool:
        return self.guilds is None or guild_id in self.guilds

    def payload(self) -> JSONDict:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    position: int
    permissions: str

    def payload(self) -> JSONDict:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": self.permissions,
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class Channel:
    id: int
    name: str
    type: int
    guild_id: int | None
    position: int = 0
    recipients: tuple[int, ...] = ()  # DM only: (human, bot)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@functools.lru_cache(maxsize=4096)
def _snowflake_iso(snowflake: int) -> str:
    """The creation time encoded in a snowflake, as ISO 8601."""
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, UTC).isoformat()


class SandboxState:
    """Everything the gateway and the REST API share: the world, what bots sent, and a condition
    that wakes whoever waits for a change (:meth:`wait`).

    A default guild ``Sandbox`` (:attr:`guild_id`) with a text channel ``general``
    (:attr:`channel_id`) and a default human ``alice`` (:attr:`default_user_id`, also guild and
    application owner) exist from the start.
    """

    def __init__(self, *, nonce_window: float = 300.0) -> None:
        self._base_url: str | None = None
        self._last_id = 0
        self.users: dict[int, User] = {}
        self.bot_tokens: dict[str, int] = {}
        self.guilds: dict[int, Guild] = {}
        self.roles: dict[int, Role] = {}
        self.channels: dict[int, Channel] = {}
        self._dm_channels: dict[tuple[int, int], int] = {}
        self.messages: dict[int, JSONDict] = {}
        # enforce_nonce: (author, nonce) -> (message id, when), oldest first. Discord checks "the past few minutes".
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}
        self.nonce_window = nonce_window
        self._changed = asyncio.Condition()
        self.sent: list[SentMessage] = []
        self.typing: list[tuple[int, int]] = []  # (bot user id, channel id) per typing POST
        self.files = AttachmentStore()

        self.default_user_id = self.new_user("alice", bot=False, roles=())
        self.guild_id = self.add_guild("Sandbox")
        self.channel_id = self.add_channel("general")

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("DiscordSandbox is not started")
        return self._base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        self._base_url = url

    # ----------------------------------------------------------------- world building

    def add_bot(self, token: str, name: str, *, guilds: Sequence[int] | None = None) -> int:
        """Register a bot user that logs in with ``token``; returns its user id.

        With ``guilds=None`` the bot is a member of every guild, including guilds added later;
        with a list of guild ids it is a member of those guilds only (one persona per community).
        """
        if token in self.bot_tokens:
            raise ValueError("token already registered")
        if guilds is not None:
            unknown = set(guilds) - self.guilds.keys()
            if unknown:
                raise KeyError(f"unknown guild ids {sorted(unknown)}")
        user_id = self.new_user(name, bot=True, roles=())
        if guilds is not None:
            self.users[user_id].guilds = frozenset(guilds)
        self.bot_tokens[token] = user_id
        return user_id

    def remove_bot(self, token: str) -> None:
        """Revoke ``token``: later logins get 401, later IDENTIFY/RESUME a 4004 close."""
        del self.bot_tokens[token]

    def add_user(self, name: str, *, bot: bool = False, roles: Sequence[int] = ()) -> int:
        """Add a member (of every guild) who can post; returns its id."""
        unknown = set(roles) - self.roles.keys()
        if unknown:
            raise KeyError(f"unknown role ids {sorted(unknown)}")
        return self.new_user(name, bot=bot, roles=roles)

    def add_guild(self, name: str) -> int:
        """Add a guild with its @everyone role; returns its id.

        Humans and unrestricted bots are members; sessions see it from their next IDENTIFY."""
        guild_id = self.next_id()
        self.guilds[guild_id] = Guild(guild_id, name, owner_id=self.default_user_id)
        self.roles[guild_id] = Role(guild_id, guild_id, "@everyone", 0, EVERYONE_PERMISSIONS)
        return guild_id

    def add_role(self, guild_id: int, name: str) -> int:
        """Add a role (no permissions) to a guild; returns its id."""
        position = sum(role.guild_id == guild_id for role in self.roles.values())
        role_id = self.next_id()
        self.roles[role_id] = Role(role_id, self.guilds[guild_id].id, name, position, "0")
        return role_id

    def add_channel(self, name: str, guild_id: int | None = None) -> int:
        """Add a text channel (to the default guild unless ``guild_id``); returns its id."""
        gid = self.guild_id if guild_id is None else self.guilds[guild_id].id
        position = sum(channel.guild_id == gid for channel in self.channels.values())
        channel_id = self.next_id()
        self.channels[channel_id] = Channel(channel_id, name, GUILD_TEXT, gid, position)
        return channel_id

    def new_user(self, name: str, *, bot: bool, roles: Sequence[int]) -> int:
        user_id = self.next_id()
        self.users[user_id] = User(user_id, name, bot, set(roles))
        return user_id

    def next_id(self) -> int:
        """A strictly increasing snowflake whose timestamp part is now."""
        self._last_id = max((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22, self._last_id + 1)
        return self._last_id

    def dm_channel(self, user_id: int, bot_user_id: int) -> Channel:
        """The DM channel between a user and a bot, created on first use."""
        key = (user_id, bot_user_id)
        if key not in self._dm_channels:
            channel_id = self.next_id()
            self.channels[channel_id] = Channel(channel_id, "", DM, None, recipients=key)
            self._dm_channels[key] = channel_id
        return self.channels[self._dm_channels[key]]

    def sent_record(self, message_id: int) -> SentMessage | None:
        return next((sent for sent in self.sent if sent.id == message_id), None)

    # ----------------------------------------------------------------- waiting for changes

    async def wait(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        """Wait until ``check()`` returns something other than None (re-checked on each :meth:`notify`)."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    while (result := check()) is None:
                        await self._changed.wait()
                    return result
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ----------------------------------------------------------------- payloads

    def member(self, user: User, guild_id: int, *, with_user: bool) -> JSONDict:
        member: JSONDict = {
            "roles": [str(role_id) for role_id in sorted(user.roles) if self.roles[role_id].guild_id == guild_id],
            "nick": None,
            "avatar": None,
            "joined_at": _snowflake_iso(guild_id),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
        }
        if with_user:
            member["user"] = user.payload()
        return member

    def channel_payload(self, channel: Channel, viewer_id: int) -> JSONDict:
        if channel.type == DM:
            others = [self.users[user_id].payload() for user_id in channel.recipients if user_id != viewer_id]
            return {"id": str(channel.id), "type": DM, "recipients": others, "last_message_id": None, "flags": 0}
        return {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }

    def guild_create(self, guild: Guild, viewer_id: int, intents: int) -> JSONDict:
        """GUILD_CREATE as ``viewer_id`` receives it. As on Discord, the member list is only complete
        with the privileged GUILD_MEMBERS intent; without it the bot gets its own member."""
        in_guild = [user for user in self.users.values() if user.member_of(guild.id)]
        listed = in_guild if intents & GUILD_MEMBERS else [user for user in in_guild if user.id == viewer_id]
        members = [self.member(user, guild.id, with_user=True) for user in listed]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "owner_id": str(guild.owner_id),
            "unavailable": False,
            "large": False,
            "member_count": len(in_guild),
            "joined_at": _snowflake_iso(guild.id),
            "roles": [role.payload() for role in self.roles.values() if role.guild_id == guild.id],
            "channels": [
                self.channel_payload(channel, viewer_id)
                for channel in self.channels.values()
                if channel.guild_id == guild.id
            ],
            "members": members,
            "presences": [],
            "voice_states": [],
            "threads": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "system_channel_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
        }

    def attachment(self, channel_id: int, spec: JSONDict) -> JSONDict:
        """Store a file and return its attachment object. ``spec``: ``filename``, the bytes as
        ``data`` (or ``data_base64``, for JSON callers), optional ``content_type``; other keys
        (``size``, ``description``...) go into the object as given. Without bytes the object
        describes a file whose URL answers 404."""
        extra = dict(spec)
        data: bytes | None = extra.pop("data", None)
        if "data_base64" in extra:
            data = base64.b64decode(extra.pop("data_base64"))
        filename = str(extra.pop("filename", "file.bin"))
        content_type = extra.pop("content_type", None)
        return self.files.add(self.base_url, channel_id, self.next_id(), filename, data, content_type, extra)

    def new_message(
        self,
        channel: Channel,
        author: User,
        content: str,
        *,
        mentions: list[User],
        mention_roles: list[int],
        mention_everyone: bool,
        reference: JSONDict | None,
        attachments: Sequence[JSONDict],
        sticker_items: Sequence[JSONDict] = (),
        embeds: Sequence[JSONDict] = (),
        flags: int = 0,
        nonce: str | int | None = None,
    ) -> JSONDict:
        """Build and store a message object (REST shape, plus ``guild_id`` for guild messages)."""
        message_id = self.next_id()
        message: JSONDict = {
            "id": str(message_id),
            "type": _DEFAULT_MESSAGE if reference is None else _REPLY_MESSAGE,
            "channel_id": str(channel.id),
            "author": author.payload(),
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [user.payload() for user in mentions],
            "mention_roles": [str(role_id) for role_id in mention_roles],
            "attachments": list(attachments),
            "embeds": list(embeds),
            "sticker_items": list(sticker_items),
            "components": [],
            "pinned": False,
            "flags": flags,
        }
        if channel.guild_id is not None:
            message["guild_id"] = str(channel.guild_id)
        if nonce is not None:
            message["nonce"] = nonce
        if reference is not None:
            message["message_reference"] = {
                "type": 0,
                "message_id": reference["id"],
                "channel_id": reference["channel_id"],
                **({"guild_id": reference["guild_id"]} if "guild_id" in reference else {}),
            }
            message["referenced_message"] = {k: v for k, v in reference.items() if k != "referenced_message"}
        self.messages[message_id] = message
        return message

    def message_view(self, message: JSONDict) -> MessageView:
        """A message as each session's MESSAGE_CREATE/UPDATE carries it (members, content intent).

        The members are looked up once; sessions without the content intent share one hidden copy."""
        event = dict(message)
        if "guild_id" in message:
            guild_id = int(message["guild_id"])
            author = self.users[int(message["author"]["id"])]
            event["member"] = self.member(author, guild_id, with_user=False)
            event["mentions"] = [
                {**user, "member": self.member(self.users[int(user["id"])], guild_id, with_user=False)}
                for user in message["mentions"]
            ]
        hidden = {**event, "content": "", "embeds": [], "attachments": [], "components": []}
        author_id = int(message["author"]["id"])
        mentioned = {int(user["id"]) for user in message["mentions"]}

        def for_session(user_id: int, intents: int) -> JSONDict:
            content_visible = (
                intents & MESSAGE_CONTENT
                or "guild_id" not in message
                or user_id == author_id
                or user_id in mentioned
            )
            return event if content_visible else hidden

        return for_session

    def message_with_nonce(self, once: tuple[int, str]) -> JSONDict | None:
        """The message created with this (author, nonce) within ``nonce_window`` s, forgetting older ones."""
        expired = time.monotonic() - self.nonce_window
        while self._nonces:
            oldest = next(iter(self._nonces))
            if self._nonces[oldest][1] > expired:
                break
            del self._nonces[oldest]
        entry = self._nonces.get(once)
        return self.messages.get(entry[0]) if entry is not None else None

    def remember_nonce(self, once: tuple[int, str], message_id: int) -> None:
        self._nonces[once] = (message_id, time.monotonic())

    def bot_mentions(
        self, content: str, allowed: JSONDict | None, reference: JSONDict | None
    ) -> tuple[list[User], list[int], bool]:
        """Mentions Discord derives from a bot's content, filtered by its ``allowed_mentions``."""
        parse = ["users", "roles", "everyone"] if allowed is None else allowed.get("parse", [])
        allowed_users = {int(user_id) for user_id in (allowed or {}).get("users", [])}
        allowed_roles = {int(role_id) for role_id in (allowed or {}).get("roles", [])}
        user_ids = [
            int(found)
            for found in dict.fromkeys(_USER_MENTION.findall(content))
            if int(found) in self.users and ("users" in parse or int(found) in allowed_users)
        ]
        if reference is not None and (allowed is None or allowed.get("replied_user", False)):
            replied = int(reference["author"]["id"])
            if replied not in user_ids:
                user_ids.append(replied)
        role_ids = [
            int(found)
            for found in dict.fromkeys(_ROLE_MENTION.findall(content))
            if int(found) in self.roles and ("roles" in parse or int(found) in allowed_roles)
        ]
        everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
        return [self.users[user_id] for user_id in user_ids], role_ids, everyone
