"""The sandbox's REST API under ``/api/v10``: the routes discord.py uses, bot authentication,
Discord's error bodies and rate-limit headers, and injected faults (:class:`RestFault`).

A bot's requests to a channel of a guild it is not a member of get 403 (code 50001, "Missing
Access"), as on Discord. REST message objects carry no ``guild_id`` and no ``member``, unlike
gateway MESSAGE_CREATEs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from .gateway import Gateway
from .state import DM, Channel, JSONDict, SandboxState, SentMessage, User, now_iso

API_PREFIX = "/api/v10"
MAX_CONTENT_LENGTH = 2000
_RATE_LIMIT = 50

BOT_USER = web.RequestKey("bot_user", User)


@dataclass
class RestFault:
    """One injected REST failure or slowness, consumed by the first channel request it matches (or
    another request, when ``path_contains`` names it)."""

    status: int | None  # None: no error, only the delay
    method: str | None = None
    path_contains: str | None = None
    retry_after: float = 0.05
    global_: bool = False
    after_handling: bool = False  # carry the request out, then answer with the fault: a response lost on its way
    delay: float = 0.0  # seconds the request is held before anything else happens to it
    hold: asyncio.Event | None = None  # then held until this is set: a request on its way while a test acts


class ApiError(Exception):
    """A Discord-style JSON error response raised from a REST handler."""

    def __init__(self, status: int, code: int, message: str, errors: JSONDict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.errors = status, code, errors

    def response(self) -> web.Response:
        body: JSONDict = {"message": str(self), "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return json_response(body, self.status)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json``, as discord.py requires."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


async def json_body(request: web.Request) -> JSONDict:
    """The request's JSON object, or a 400 (code 50109) as Discord answers."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, 50109, "The request body contains invalid JSON.")
    return body


async def read_message_body(request: web.Request) -> tuple[JSONDict, list[JSONDict]]:
    """The JSON payload and uploaded files of a JSON or multipart request, as Discord reads an
    upload: ``payload_json`` plus ``files[n]`` parts; the payload's ``attachments`` entry with
    ``id`` n may rename the file or describe it. Each file is a spec for
    :meth:`SandboxState.attachment` (``filename``, ``data``, ``content_type``...)."""
    if not request.content_type.startswith("multipart/"):
        return await json_body(request), []
    payload: JSONDict = {}
    uploaded: dict[str, JSONDict] = {}
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):  # a nested multipart: Discord's API has none
            continue
        if part.name == "payload_json":
            try:
                payload = json.loads(await part.text())
            except ValueError:
                raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        elif part.filename:
            index = (part.name or "").removeprefix("files[").removesuffix("]")
            data, content_type = bytes(await part.read()), part.headers.get("Content-Type")
            uploaded[index] = {"filename": part.filename, "data": data, "content_type": content_type}
    for entry in payload.get("attachments") or []:
        spec = uploaded.get(str(entry.get("id")))
        if spec is not None:
            spec.update({key: entry[key] for key in ("filename", "description") if entry.get(key)})
    return payload, list(uploaded.values())


def _too_long(field_name: str) -> ApiError:
    detail = {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {MAX_CONTENT_LENGTH} or fewer in length."}
    return ApiError(400, 50035, "Invalid Form Body", {field_name: {"_errors": [detail]}})


class RestApi:
    """The REST routes and their middleware, over the shared state; message events go out through
    the gateway.

    ``on_message_created(sent, arrived)``, when set, is called for each message a bot creates, with
    the ``time.monotonic()`` at which its request reached the handler (instrumentation).
    """

    def __init__(self, state: SandboxState, gateway: Gateway) -> None:
        self.state = state
        self.gateway = gateway
        self.faults: list[RestFault] = []  # pending injected faults, FIFO
        self.rest_log: list[tuple[str, str, int]] = []  # (method, path, status) per REST request
        self.rest_times: list[float] = []  # time.monotonic() of each rest_log entry
        self.on_message_created: Callable[[SentMessage, float], None] | None = None
        # paths authenticated by something other than a bot token (interaction webhooks)
        self.token_authenticated: Callable[[str], bool] = lambda _path: False

    def routes(self) -> list[web.RouteDef]:
        channel = API_PREFIX + r"/channels/{channel_id:\d+}"
        message = channel + r"/messages/{message_id:\d+}"
        return [
            web.get(API_PREFIX + "/gateway", self._get_gateway),
            web.get(API_PREFIX + "/gateway/bot", self._get_gateway_bot),
            web.get(API_PREFIX + "/users/@me", self._get_me),
            web.post(API_PREFIX + "/users/@me/channels", self._create_dm),
            web.get(API_PREFIX + "/oauth2/applications/@me", self._get_application),
            web.get(channel, self._get_channel),
            web.get(channel + "/messages", self._list_messages),
            web.post(channel + "/messages", self._create_message),
            web.post(channel + "/typing", self._trigger_typing),
            web.get(message, self._get_message),
            web.patch(message, self._edit_message),
            web.delete(message, self._delete_message),
        ]

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Auth, fault injection, Discord error bodies and rate-limit headers for ``/api/v10``."""
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        resource = request.match_info.route.resource
        route_key = f"{request.method} {resource.canonical if resource is not None else request.path}"
        bucket = f"{zlib.crc32(route_key.encode()):08x}"
        token = request.headers.get("Authorization", "").removeprefix("Bot ")
        response: web.StreamResponse
        bot_tokens = self.state.bot_tokens
        path = request.path
        authorized = path == API_PREFIX + "/gateway" or token in bot_tokens or self.token_authenticated(path)
        fault = self._take_fault(request) if authorized else None
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.hold is not None:
            await fault.hold.wait()  # goes on if the client gives up meanwhile, as Discord does
        if fault is not None and fault.status is None:
            fault = None
        if not authorized:
            response = ApiError(401, 0, "401: Unauthorized").response()
        elif fault is not None and not fault.after_handling:
            response = self._fault_response(fault, bucket)
        else:
            if token in bot_tokens:
                request[BOT_USER] = self.state.users[bot_tokens[token]]
            try:
                response = await handler(request)
            except ApiError as exc:
                response = exc.response()
            except web.HTTPException as exc:
                response = ApiError(exc.status, 0, f"{exc.status}: {exc.reason}").response()
            if fault is not None:
                response = self._fault_response(fault, bucket)
        if response.status != 429:
            response.headers.update(
                {
                    "X-RateLimit-Limit": str(_RATE_LIMIT),
                    "X-RateLimit-Remaining": str(_RATE_LIMIT - 1),
                    "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
                    "X-RateLimit-Reset-After": "1.000",
                    "X-RateLimit-Bucket": bucket,
                }
            )
        self.rest_log.append((request.method, request.path, response.status))
        self.rest_times.append(time.monotonic())
        await self.state.notify()
        return response

    def _take_fault(self, request: web.Request) -> RestFault | None:
        """The first pending fault for this request: a channel request, or another that the fault names
        by ``path_contains`` (e.g. ``/commands``)."""
        channel = request.path.startswith(API_PREFIX + "/channels/")
        for index, fault in enumerate(self.faults):
            if (fault.method is None or fault.method == request.method) and (
                (fault.path_contains is None and channel)
                or (fault.path_contains is not None and fault.path_contains in request.path)
            ):
                return self.faults.pop(index)
        return None

    @staticmethod
    def _fault_response(fault: RestFault, bucket: str) -> web.Response:
        assert fault.status is not None
        if fault.status != 429:
            return ApiError(fault.status, 0, f"{fault.status}: Injected fault").response()
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(math.ceil(fault.retry_after)),
            "X-RateLimit-Limit": str(_RATE_LIMIT),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
            "X-RateLimit-Bucket": bucket,
            "X-RateLimit-Scope": "global" if fault.global_ else "user",
        }
        if fault.global_:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": fault.retry_after, "global": fault.global_}
        return json_response(body, 429, headers)

    def _channel(self, request: web.Request) -> Channel:
        """The route's channel, if the requesting bot can see it (a DM it is in, or its guild's channel)."""
        channel = self.state.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        bot = request[BOT_USER]
        if channel.type == DM and bot.id not in channel.recipients:
            raise ApiError(403, 50001, "Missing Access")
        if channel.guild_id is not None and not bot.member_of(channel.guild_id):
            raise ApiError(403, 50001, "Missing Access")
        return channel

    def _message_in(self, channel: Channel, request: web.Request) -> JSONDict:
        message = self.state.messages.get(int(request.match_info["message_id"]))
        if message is None or message["channel_id"] != str(channel.id):
            raise ApiError(404, 10008, "Unknown Message")
        return message

    # ----------------------------------------------------------------- handlers

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway.url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return json_response({"url": self.gateway.url, "shards": 1, "session_start_limit": limit})

    async def _get_me(self, request: web.Request) -> web.Response:
        bot = request[BOT_USER]
        return json_response({**bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0, "locale": "en-US"})

    async def _get_application(self, request: web.Request) -> web.Response:
        bot = request[BOT_USER]
        return json_response(
            {
                "id": str(bot.id),
                "name": bot.name,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self.state.users[self.state.default_user_id].payload(),
                "team": None,
                "flags": 0,
                "rpc_origins": [],
            }
        )

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient_id = int((await json_body(request)).get("recipient_id", 0))
        if recipient_id not in self.state.users:
            raise ApiError(400, 50033, "Invalid Recipient(s)")
        bot = request[BOT_USER]
        return json_response(self.state.channel_payload(self.state.dm_channel(recipient_id, bot.id), bot.id))

    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self.state.channel_payload(self._channel(request), request[BOT_USER].id))

    async def _trigger_typing(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self.state.typing.append((request[BOT_USER].id, channel.id))
        await self.state.notify()
        return web.Response(status=204)

    async def _create_message(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        state = self.state
        channel = self._channel(request)
        bot = request[BOT_USER]
        payload, files = await read_message_body(request)
        content = payload.get("content") or ""
        if len(content) > MAX_CONTENT_LENGTH:
            raise _too_long("content")
        embeds = payload.get("embeds") or []
        if not (content or embeds or files or payload.get("sticker_ids") or payload.get("poll")):
            raise ApiError(400, 50006, "Cannot send an empty message")
        reference = None
        if (ref := payload.get("message_reference")) is not None:
            reference = state.messages.get(int(ref["message_id"]))
            if reference is None and ref.get("fail_if_not_exists", True):
                detail = {"code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "message": "Unknown message"}
                raise ApiError(400, 50035, "Invalid Form Body", {"message_reference": {"_errors": [detail]}})
        nonce = payload.get("nonce")
        once = (bot.id, str(nonce)) if nonce is not None and payload.get("enforce_nonce") else None
        if once is not None and (first := state.message_with_nonce(once)) is not None:
            return json_response(first)  # the same message again: Discord returns the first
        allowed = payload.get("allowed_mentions")
        mentions, mention_roles, everyone = state.bot_mentions(content, allowed, reference)
        attachments = [state.attachment(channel.id, spec) for spec in files]
        message = state.new_message(
            channel,
            bot,
            content,
            mentions=mentions,
            mention_roles=mention_roles,
            mention_everyone=everyone,
            reference=reference,
            attachments=attachments,
            embeds=embeds,
            flags=int(payload.get("flags", 0)),
            nonce=nonce,
        )
        if once is not None:
            state.remember_nonce(once, int(message["id"]))
        sent = SentMessage(
            id=int(message["id"]),
            channel_id=channel.id,
            author_id=bot.id,
            content=content,
            allowed_mentions=allowed,
            reference_id=None if reference is None else int(reference["id"]),
            flags=message["flags"],
            attachments=[attachment["filename"] for attachment in attachments],
            uploads=attachments,
            payload=payload,
        )
        state.sent.append(sent)
        if self.on_message_created is not None:
            self.on_message_created(sent, arrived)
        await self.gateway.broadcast("MESSAGE_CREATE", channel, state.message_view(message))
        await state.notify()
        return json_response(message)

    async def _list_messages(self, request: web.Request) -> web.Response:
        """The channel's messages, newest first, as Discord's ``GET /channels/{id}/messages``:
        ``limit`` (1-100, default 50) of them, the newest before ``before`` or, with ``after``, the
        oldest after it."""
        channel = self._channel(request)
        try:
            limit = int(request.query.get("limit", "50"))
            after = int(request.query.get("after", "0"))
            before = int(request.query.get("before", str(1 << 63)))
        except ValueError:
            raise ApiError(400, 50035, "Invalid Form Body") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, 50035, "Invalid Form Body")
        bot_id = request[BOT_USER].id
        found = [
            {k: v for k, v in self.state.rest_view(message, bot_id).items() if k not in ("guild_id", "member")}
            for message_id, message in self.state.messages.items()
            if message["channel_id"] == str(channel.id) and after < message_id < before
        ]
        found.sort(key=lambda m: int(m["id"]))
        page = found[:limit] if "after" in request.query else found[-limit:]
        return json_response(page[::-1])

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._message_in(self._channel(request), request)
        return json_response(self.state.rest_view(message, request[BOT_USER].id))

    async def _edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message_in(channel, request)
        if message["author"]["id"] != str(request[BOT_USER].id):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        payload = await json_body(request)
        content = payload.get("content", message["content"]) or ""
        if len(content) > MAX_CONTENT_LENGTH:
            raise _too_long("content")
        message.update(content=content, edited_timestamp=now_iso())
        for key in ("embeds", "flags", "components"):
            if key in payload:
                message[key] = payload[key]
        sent = self.state.sent_record(int(message["id"]))
        if sent is not None:
            sent.edits.append(content)
            sent.content = content
        await self.gateway.broadcast("MESSAGE_UPDATE", channel, self.state.message_view(message))
        await self.state.notify()
        return json_response(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message_in(channel, request)
        del self.state.messages[int(message["id"])]
        sent = self.state.sent_record(int(message["id"]))
        if sent is not None:
            sent.deleted = True
        event = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            event["guild_id"] = message["guild_id"]
        await self.gateway.broadcast("MESSAGE_DELETE", channel, lambda _user_id, _intents: event)
        await self.state.notify()
        return web.Response(status=204)
