"""Application commands and interactions, as Discord serves them to a bot.

- Registration: ``PUT``/``GET /applications/{app}/commands`` (global) and
  ``/applications/{app}/guilds/{guild}/commands`` (one guild; the bot must be a member). A ``PUT``
  is a bulk overwrite, validated as Discord validates names, descriptions and options (400, code
  50035); every one is recorded in :attr:`Interactions.registrations`. A command keeps its id across
  overwrites while its name stays. A bot's application id is its user id (READY says so).
- Use: :meth:`Interactions.fire` sends INTERACTION_CREATE (type 2, APPLICATION_COMMAND) to one bot's
  gateway session, for any command name and options, registered or not (bad input is
  representable). The sandbox does not hide commands by ``default_member_permissions``: a server's
  integration settings can override them on Discord too, so the bot's own check is what counts.
- Responses, with no bot token (the interaction token authenticates): ``POST
  /interactions/{id}/{token}/callback`` (type 4: a message, type 5: deferred, "<bot> is thinking…";
  ``flags`` 64: ephemeral) within 3 seconds of the dispatch, else 404 code 10062 (Unknown
  interaction), once only (400 code 40060); then, for 15 minutes (else 401 code 50027, Invalid
  Webhook Token), ``GET``/``PATCH``/``DELETE /webhooks/{app}/{token}/messages/@original`` (or the
  message's id, also of a follow-up) and follow-ups ``POST /webhooks/{app}/{token}``. As on
  Discord, the first follow-up after a deferral replaces the "thinking" message and keeps the
  deferral's ephemeral flag. Edits and follow-ups take files as Discord's message uploads do
  (multipart: ``payload_json`` plus ``files[n]``); an edit's ``attachments`` array lists what stays
  (the attachments kept by id and the new files), as in API v10; without it the new files are added.
  The files are stored and served like any attachment (``attachments.py``).

Time is :attr:`Interactions.clock` (settable): tests move it instead of sleeping. Everything the
user saw is in :class:`InteractionRecord` (:attr:`~InteractionRecord.messages`). Responses that
everyone sees are also messages of the channel (MESSAGE_CREATE, then MESSAGE_UPDATE per edit, to
the bots there; in its history); ephemeral ones reach no bot.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from .gateway import Gateway
from .rest import API_PREFIX, BOT_USER, MAX_CONTENT_LENGTH, ApiError, json_body, json_response, read_message_body
from .state import JSONDict, SandboxState, User

ACK_DEADLINE = 3.0  # seconds to acknowledge an interaction
TOKEN_LIFETIME = 15 * 60.0  # seconds an interaction token stays valid for webhooks

EPHEMERAL = 1 << 6
LOADING = 1 << 7
APPLICATION_COMMAND = 2
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE = 4, 5
_CHAT_INPUT = 1
_CHAT_INPUT_COMMAND_MESSAGE = 20
_ALL_PERMISSIONS = str((1 << 53) - 1)
_MAX_COMMANDS = 100
_MAX_OPTIONS = 25
_NAME = re.compile(r"^[-_\w]{1,32}$")
# option types: string, integer, boolean, user, channel, role, mentionable, number, attachment
_OPTION_TYPES = {3, 4, 5, 6, 7, 8, 9, 10, 11}


@dataclass
class Registration:
    """One bulk overwrite a bot made."""

    application_id: int
    guild_id: int | None  # None: global
    commands: list[JSONDict]  # as the bot sent them
    at: float


@dataclass
class ResponseMessage:
    """A message shown for an interaction: the original response or a follow-up."""

    id: int
    content: str
    flags: int
    edits: list[str] = field(default_factory=list)
    deleted: bool = False
    attachments: list[JSONDict] = field(default_factory=list)  # attachment objects, as messages carry them

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)


@dataclass
class InteractionRecord:
    """One interaction: what was fired, how the bot acknowledged it and what the user saw."""

    id: int
    token: str
    application_id: int
    bot_token: str
    payload: JSONDict  # the INTERACTION_CREATE data
    created: float
    callback_type: int | None = None
    acknowledged_at: float | None = None
    original: ResponseMessage | None = None
    followups: list[ResponseMessage] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)  # (request, Discord error code) per refusal

    @property
    def messages(self) -> list[ResponseMessage]:
        """What the user sees, in order: the original response and the follow-ups not deleted."""
        shown = [self.original] if self.original is not None else []
        return [message for message in shown + self.followups if not message.deleted]

    @property
    def answered(self) -> bool:
        """Acknowledged and showing something other than "thinking…"."""
        return any(not message.loading for message in self.messages)

    def text(self) -> str:
        return "".join(message.content for message in self.messages)


def _invalid(path: str, message: str) -> ApiError:
    detail = {"code": "BASE_TYPE_BAD_LENGTH", "message": message}
    return ApiError(400, 50035, "Invalid Form Body", {path: {"_errors": [detail]}})


def _check_text(value: object, path: str, low: int, high: int) -> None:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise _invalid(path, f"Must be between {low} and {high} in length.")


def validate_commands(commands: object) -> list[JSONDict]:
    """The commands of a bulk overwrite, checked as Discord checks chat-input commands."""
    if not isinstance(commands, list) or len(commands) > _MAX_COMMANDS:
        raise _invalid("_root", f"Must be a list of at most {_MAX_COMMANDS} commands.")
    names: set[str] = set()
    for index, command in enumerate(commands):
        if not isinstance(command, dict):
            raise _invalid(str(index), "Must be an object.")
        name = command.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name != name.lower():
            raise _invalid(f"{index}.name", "Command name is invalid (1-32 lowercase letters, digits, - or _).")
        if name in names:
            raise _invalid(f"{index}.name", "Application command names must be unique")
        names.add(name)
        if command.get("type", _CHAT_INPUT) == _CHAT_INPUT:
            _check_text(command.get("description"), f"{index}.description", 1, 100)
        options = command.get("options") or []
        if not isinstance(options, list) or len(options) > _MAX_OPTIONS:
            raise _invalid(f"{index}.options", f"Must be a list of at most {_MAX_OPTIONS} options.")
        optional_seen = False
        for number, option in enumerate(options):
            where = f"{index}.options.{number}"
            if not isinstance(option, dict) or option.get("type") not in _OPTION_TYPES:
                raise _invalid(f"{where}.type", "Value is not a valid option type.")
            if not isinstance(option.get("name"), str) or not _NAME.match(option["name"]):
                raise _invalid(f"{where}.name", "Option name is invalid.")
            _check_text(option.get("description"), f"{where}.description", 1, 100)
            if option.get("required"):
                if optional_seen:
                    raise _invalid(f"{where}.required", "Required options must be placed before non-required options")
            else:
                optional_seen = True
            if len(option.get("choices") or []) > _MAX_OPTIONS:
                raise _invalid(f"{where}.choices", f"Must be {_MAX_OPTIONS} or fewer in length.")
    return commands


def _option_type(value: object) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


class Interactions:
    """The application command and interaction routes, over the shared state."""

    def __init__(self, state: SandboxState, gateway: Gateway, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.gateway = gateway
        self.clock = clock
        self.commands: dict[tuple[int, int | None], list[JSONDict]] = {}  # (application, guild or None) -> set
        self.registrations: list[Registration] = []
        self.records: dict[int, InteractionRecord] = {}
        self._command_ids: dict[tuple[int, int | None, str], int] = {}

    def routes(self) -> list[web.RouteDef]:
        app = API_PREFIX + r"/applications/{application_id:\d+}"
        hook = API_PREFIX + r"/webhooks/{application_id:\d+}/{token}"
        return [
            web.put(app + "/commands", self._overwrite),
            web.get(app + "/commands", self._list),
            web.put(app + r"/guilds/{guild_id:\d+}/commands", self._overwrite),
            web.get(app + r"/guilds/{guild_id:\d+}/commands", self._list),
            web.post(API_PREFIX + r"/interactions/{interaction_id:\d+}/{token}/callback", self._callback),
            web.get(hook + r"/messages/{message_id:@original|\d+}", self._get_message),
            web.patch(hook + r"/messages/{message_id:@original|\d+}", self._edit_message),
            web.delete(hook + r"/messages/{message_id:@original|\d+}", self._delete_message),
            web.post(hook, self._follow_up),
        ]

    @staticmethod
    def token_authenticated(path: str) -> bool:
        """Requests that the interaction token authenticates, without a bot token."""
        return path.startswith((API_PREFIX + "/interactions/", API_PREFIX + "/webhooks/"))

    # ----------------------------------------------------------------- registration

    def _scope(self, request: web.Request) -> tuple[int, int | None]:
        bot: User = request[BOT_USER]
        application_id = int(request.match_info["application_id"])
        if application_id != bot.id:
            raise ApiError(403, 50001, "Missing Access")
        guild = request.match_info.get("guild_id")
        if guild is None:
            return application_id, None
        guild_id = int(guild)
        if guild_id not in self.state.guilds:
            raise ApiError(404, 10004, "Unknown Guild")
        if not bot.member_of(guild_id):
            raise ApiError(403, 50001, "Missing Access")
        return application_id, guild_id

    def _stored(self, application_id: int, guild_id: int | None, command: JSONDict) -> JSONDict:
        key = (application_id, guild_id, command["name"])
        command_id = self._command_ids.setdefault(key, self.state.next_id())
        stored = {
            "type": _CHAT_INPUT,
            "default_member_permissions": None,
            "nsfw": False,
            **command,
            "id": str(command_id),
            "application_id": str(application_id),
            "version": str(self.state.next_id()),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    async def _overwrite(self, request: web.Request) -> web.Response:
        application_id, guild_id = self._scope(request)
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        commands = validate_commands(body)
        self.registrations.append(Registration(application_id, guild_id, commands, self.clock()))
        stored = [self._stored(application_id, guild_id, command) for command in commands]
        self.commands[(application_id, guild_id)] = stored
        await self.state.notify()
        return json_response(stored)

    async def _list(self, request: web.Request) -> web.Response:
        return json_response(self.commands.get(self._scope(request), []))

    def registered(self, application_id: int, guild_id: int | None = None) -> list[str]:
        """The names of the commands registered for an application (globally, or in one guild)."""
        return [command["name"] for command in self.commands.get((application_id, guild_id), [])]

    # ----------------------------------------------------------------- firing

    def _permissions(self, user: User, guild_id: int) -> str:
        if user.id == self.state.guilds[guild_id].owner_id:
            return _ALL_PERMISSIONS
        bits = 0
        for role in self.state.roles.values():
            if role.guild_id == guild_id and (role.id == guild_id or role.id in user.roles):
                bits |= int(role.permissions)
        return str(bits)

    def _command_id(self, application_id: int, guild_id: int | None, name: str) -> tuple[int, bool]:
        """The id of the command called ``name`` and whether it is a guild command."""
        if guild_id is not None and (application_id, guild_id, name) in self._command_ids:
            return self._command_ids[(application_id, guild_id, name)], True
        known = self._command_ids.get((application_id, None, name))
        return (known if known is not None else self.state.next_id()), False

    async def fire(
        self,
        bot_token: str,
        name: str,
        options: Mapping[str, object] | Sequence[JSONDict] = (),
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
        dm: bool = False,
        delivered_after: float = 0.0,
    ) -> InteractionRecord:
        """Dispatch INTERACTION_CREATE for ``/name`` with ``options`` (name -> value, typed from the
        value, or option objects as Discord sends them) to the bot logged in with ``bot_token``, as
        ``user_id`` (default alice) in ``channel_id`` (default #general) or, with ``dm``, in their DM.
        ``delivered_after``: seconds the user ran it before the gateway delivers it (a slow gateway)."""
        state = self.state
        user = state.users[state.default_user_id if user_id is None else user_id]
        bot_id = state.bot_tokens[bot_token]
        if dm:
            channel = state.dm_channel(user.id, bot_id)
        else:
            channel = state.channels[state.channel_id if channel_id is None else channel_id]
        guild_id = channel.guild_id
        command_id, guild_command = self._command_id(bot_id, guild_id, name)
        if isinstance(options, Mapping):
            option_list = [{"name": key, "type": _option_type(value), "value": value} for key, value in options.items()]
        else:
            option_list = list(options)
        data: JSONDict = {"id": str(command_id), "name": name, "type": _CHAT_INPUT}
        if option_list:
            data["options"] = option_list
        if guild_command:
            data["guild_id"] = str(guild_id)
        interaction_id = state.next_id()
        token = f"aW50ZXJhY3Rpb246{interaction_id}:{secrets.token_urlsafe(24)}"
        payload: JSONDict = {
            "id": str(interaction_id),
            "application_id": str(bot_id),
            "type": APPLICATION_COMMAND,
            "token": token,
            "version": 1,
            "data": data,
            "channel_id": str(channel.id),
            "channel": state.channel_payload(channel, bot_id),
            "app_permissions": _ALL_PERMISSIONS,
            "locale": "en-US",
            "entitlements": [],
            "context": 1 if dm else 0,
            "attachment_size_limit": 8 * 1024 * 1024,
        }
        if guild_id is not None:
            member = state.member(user, guild_id, with_user=True)
            payload.update(
                guild_id=str(guild_id),
                guild_locale="en-US",
                member={**member, "permissions": self._permissions(user, guild_id)},
                authorizing_integration_owners={"0": str(guild_id)},
            )
        else:
            payload.update(user=user.payload(), authorizing_integration_owners={"0": str(guild_id or 0)})
        record = InteractionRecord(interaction_id, token, bot_id, bot_token, payload, self.clock() - delivered_after)
        self.records[interaction_id] = record
        await self.gateway.dispatch_to(bot_token, "INTERACTION_CREATE", payload)
        return record

    async def wait(
        self, record: InteractionRecord, check: Callable[[InteractionRecord], bool], timeout: float = 10.0
    ) -> InteractionRecord:
        """Wait until ``check(record)`` holds (re-checked on every request the sandbox answers)."""
        return await self.state.wait(lambda: record if check(record) else None, timeout, f"interaction {record.id}")

    # ----------------------------------------------------------------- responding

    def _record(self, request: web.Request) -> InteractionRecord:
        """The interaction a webhook request's token belongs to."""
        token = request.match_info["token"]
        application_id = int(request.match_info["application_id"])
        record = next((r for r in self.records.values() if r.token == token), None)
        if record is None or record.application_id != application_id:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return record

    def _check_lifetime(self, record: InteractionRecord, what: str) -> None:
        """Refuse ``what`` once the interaction's token has expired."""
        if self.clock() - record.created > TOKEN_LIFETIME:
            record.refused.append((what, 50027))
            raise ApiError(401, 50027, "Invalid Webhook Token")

    def _message(self, record: InteractionRecord, message: ResponseMessage) -> JSONDict:
        """``message`` as a message object in the interaction's channel, by the bot."""
        payload = record.payload
        author = self.state.users[record.application_id]
        return {
            "id": str(message.id),
            "type": _CHAT_INPUT_COMMAND_MESSAGE,
            "channel_id": payload["channel_id"],
            "author": author.payload(),
            "content": message.content,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": message.attachments,
            "embeds": [],
            "components": [],
            "pinned": False,
            "flags": message.flags,
            "webhook_id": str(record.application_id),
            "application_id": str(record.application_id),
        }

    @staticmethod
    def _content(body: JSONDict, required: bool, files: Sequence[JSONDict] = ()) -> str:
        content = body.get("content") or ""
        if not isinstance(content, str):
            raise _invalid("content", "Must be a string.")
        if len(content) > MAX_CONTENT_LENGTH:
            raise _invalid("content", f"Must be {MAX_CONTENT_LENGTH} or fewer in length.")
        if required and not content and not body.get("embeds") and not files:
            raise ApiError(400, 50006, "Cannot send an empty message")
        return content

    async def _callback(self, request: web.Request) -> web.Response:
        record = self.records.get(int(request.match_info["interaction_id"]))
        if record is None or record.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        if record.callback_type is not None:
            record.refused.append(("callback", 40060))
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock() - record.created > ACK_DEADLINE:
            record.refused.append(("callback", 10062))
            raise ApiError(404, 10062, "Unknown interaction")
        body = await json_body(request)
        kind = body.get("type")
        data = body.get("data") or {}
        flags = int(data.get("flags", 0)) & EPHEMERAL
        if kind == CHANNEL_MESSAGE:
            message = ResponseMessage(self.state.next_id(), self._content(data, required=True), flags)
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            message = ResponseMessage(self.state.next_id(), "", flags | LOADING)
        else:
            raise ApiError(400, 50035, "Invalid Form Body", {"type": {"_errors": [{"code": "BASE_TYPE_CHOICES"}]}})
        record.callback_type, record.acknowledged_at, record.original = kind, self.clock(), message
        await self._publish(record, message, "MESSAGE_CREATE")
        await self.state.notify()
        if "with_response" not in request.query:
            return web.Response(status=204)
        return json_response(
            {
                "interaction": {
                    "id": str(record.id),
                    "type": APPLICATION_COMMAND,
                    "response_message_id": str(message.id),
                    "response_message_loading": message.loading,
                    "response_message_ephemeral": message.ephemeral,
                },
                "resource": {"type": kind, "message": self._message(record, message)},
            }
        )

    async def _publish(self, record: InteractionRecord, message: ResponseMessage, event: str) -> None:
        """A response everyone sees is a message of the channel: kept (history lists it) and dispatched
        to the bots there, as Discord does; an ephemeral one reaches only its user, never a bot."""
        channel = self.state.channels.get(int(record.payload["channel_id"]))
        if message.ephemeral or channel is None:
            return
        payload = self._message(record, message)
        if channel.guild_id is not None:
            payload["guild_id"] = str(channel.guild_id)
        if event == "MESSAGE_DELETE":
            self.state.messages.pop(message.id, None)
            gone: JSONDict = {key: payload[key] for key in ("id", "channel_id", "guild_id") if key in payload}
            await self.gateway.broadcast(event, channel, lambda _user_id, _intents: gone)
            return
        self.state.messages[message.id] = payload
        await self.gateway.broadcast(event, channel, self.state.message_view(payload))

    def _target(self, request: web.Request, verb: str) -> tuple[InteractionRecord, ResponseMessage]:
        """The interaction and the message (``@original`` or an id) a webhook message request names."""
        record = self._record(request)
        wanted = request.match_info["message_id"]
        original = record.original
        is_original = wanted == "@original" or (original is not None and wanted == str(original.id))
        self._check_lifetime(record, f"{verb} {'original' if is_original else 'follow-up'}")
        followup = next((m for m in record.followups if str(m.id) == wanted), None)
        message = original if is_original else followup
        if message is None or message.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return record, message

    async def _get_message(self, request: web.Request) -> web.Response:
        record, message = self._target(request, "get")
        return json_response(self._message(record, message))

    def _store(self, record: InteractionRecord, files: list[JSONDict]) -> list[JSONDict]:
        """Keep uploaded ``files`` in the interaction's channel; their attachment objects."""
        return [self.state.attachment(int(record.payload["channel_id"]), spec) for spec in files]

    async def _edit_message(self, request: web.Request) -> web.Response:
        record, message = self._target(request, "edit")
        body, files = await read_message_body(request)
        if "content" in body:
            message.content = self._content(body, required=False)
        if "attachments" in body:
            kept = {str(entry.get("id")) for entry in body["attachments"] or []}
            message.attachments = [a for a in message.attachments if a["id"] in kept]
        message.attachments = message.attachments + self._store(record, files)
        message.flags &= ~LOADING
        message.edits.append(message.content)
        await self._publish(record, message, "MESSAGE_UPDATE")
        await self.state.notify()
        return json_response(self._message(record, message))

    async def _delete_message(self, request: web.Request) -> web.Response:
        record, message = self._target(request, "delete")
        message.deleted = True
        await self._publish(record, message, "MESSAGE_DELETE")
        await self.state.notify()
        return web.Response(status=204)

    async def _follow_up(self, request: web.Request) -> web.Response:
        record = self._record(request)
        self._check_lifetime(record, "follow-up")
        if record.callback_type is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        body, files = await read_message_body(request)
        content = self._content(body, required=True, files=files)
        original = record.original
        if original is not None and original.loading and not original.deleted:
            # the first follow-up after a deferral replaces "thinking…", keeping the deferral's flags
            original.content, original.flags = content, original.flags & ~LOADING
            original.attachments = self._store(record, files)
            original.edits.append(content)
            message, event = original, "MESSAGE_UPDATE"
        else:
            message = ResponseMessage(self.state.next_id(), content, int(body.get("flags", 0)) & EPHEMERAL)
            message.attachments = self._store(record, files)
            record.followups.append(message)
            event = "MESSAGE_CREATE"
        await self._publish(record, message, event)
        await self.state.notify()
        return json_response(self._message(record, message))
