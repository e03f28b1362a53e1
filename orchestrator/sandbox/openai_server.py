"""OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

Serves ``POST /v1/chat/completions`` (JSON and ``stream: true`` SSE), ``GET /v1/models`` and
``GET /v1/models/{id}`` well enough for the real ``openai`` SDK, and ``POST /v1/images/generations``
with real PNGs (:mod:`~orchestrator.sandbox.openai_images`); it records every request, and can
inject faults (HTTP errors, delays, cut streams, malformed bodies, a content-policy refusal) and
enforce a rate limit.

User messages may carry image parts (an ``http(s)`` URL, fetched, or a base64 ``data:`` URL):
the sandbox reads each image's header (:mod:`.vision`), refuses the request with a 400 as OpenAI
does when one cannot be read, bills 85 prompt tokens per image, records what it saw
(:attr:`RecordedRequest.images`) and says so in its answer (``saw image cat.png 64x48 png``).

Answers are a deterministic function of the request, so tests and the demo can see what
reached the server. By default they are short and say they come from the sandbox (one line, here two)::

    (sandbox model, not a real LLM) Sage here — you said "hello".
    [persona: Sage, a calm philosophy tutor · gpt-4o-mini · T=0.3 · no earlier turns]

(the persona is the first sentence of the first ``system`` or ``developer`` message, the name comes
from its ``You are <Name>``; the sampling parameters sent, the number of earlier user turns and
the last of them, clipped, show what the model received). With ``echo=True`` (what the tests use)
the answer is instead::

    [{model}] {persona} | T={temperature} | turns={user_messages} | {last_user_message}[ | saw {images}]

``persona`` is the first line of the first ``system`` (or ``developer``) message, the last user
message is shown without the ``Name: `` its speaker is written with, ``temperature``
is the value as sent (Python ``str`` of the JSON number); ``persona``, ``temperature`` and
``last_user_message`` are ``-`` when absent. Usage is deterministic too: ``prompt_tokens`` sums
``len(content) // 4 + 4`` over the messages, ``completion_tokens`` is ``len(answer) // 4 + 1``.

Run standalone: ``python -m orchestrator.sandbox.openai_server --port 8001 --latency 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from .openai_images import CONTENT_POLICY, IMAGE_MODELS, ImageGenerations
from .vision import IMAGE_TOKENS, ImageRefused, describe_parts, image_urls, look

_WINDOW = 60.0
_MODEL_CREATED = 1_700_000_000
_MALFORMED = b'{"id": "chatcmpl-broken", "choices": [{'
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request body.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


@dataclass
class Fault:
    """One injected failure, consumed by the next admitted chat-completions request.

    ``status`` answers with OpenAI's error JSON; ``retry_after`` adds ``retry-after`` (whole seconds,
    rounded up) plus ``retry-after-ms`` when fractional; ``headers`` are added to the answer;
    ``delay`` sleeps before answering; ``cut_stream_after`` sends that many content chunks of a
    stream and then closes the connection without ``[DONE]`` (a non-stream request gets its
    connection closed before any answer); ``malformed`` answers 200 with a body that is not JSON.
    ``message`` replaces the message of OpenAI's error JSON (with ``status``), ``code`` its code;
    ``text`` replaces the whole answer's body (sent as ``text/html``, as a proxy's error page is).
    """

    status: int | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut_stream_after: int | None = None
    malformed: bool = False
    message: str | None = None
    code: str | None = None
    text: str | None = None

    @classmethod
    def rate_limited(cls, retry_after: float | None = 0.05) -> Fault:
        """A 429 ``rate_limit_exceeded`` with a ``retry-after`` hint."""
        return cls(status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx ``server_error``."""
        return cls(status=status)

    @classmethod
    def timeout(cls, delay: float) -> Fault:
        """A normal answer sent only after ``delay`` seconds (pair with a shorter client timeout)."""
        return cls(delay=delay)

    @classmethod
    def cut(cls, after: int = 1) -> Fault:
        """A stream dropped after ``after`` content chunks."""
        return cls(cut_stream_after=after)

    @classmethod
    def model_not_found(cls) -> Fault:
        """A 404 ``model_not_found`` naming the requested model, as OpenAI sends it."""
        return cls(status=404)

    @classmethod
    def bad_request(cls, message: str, status: int = 400) -> Fault:
        """An error in OpenAI's JSON shape with the provider's own ``message``."""
        return cls(status=status, message=message)

    @classmethod
    def error_page(cls, text: str, status: int = 400) -> Fault:
        """An error whose body is not JSON (a proxy's HTML page, a plain-text message)."""
        return cls(status=status, text=text)

    @classmethod
    def content_policy(cls) -> Fault:
        """OpenAI's refusal of a prompt by its safety system (400 ``content_policy_violation``)."""
        return cls(status=400, message=CONTENT_POLICY, code="content_policy_violation")

    @classmethod
    def malformed_json(cls) -> Fault:
        """A 200 answer whose body (or first SSE event) is not valid JSON."""
        return cls(malformed=True)


@dataclass
class RecordedRequest:
    """One request as received; ``headers`` names are lower-cased, ``status`` is what was answered
    (0 when the connection was dropped before any answer)."""

    path: str
    api_key: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    status: int
    images: list[str] = field(default_factory=list)  # what the sandbox saw, e.g. "image cat.png 64x48 png"


class OpenAISandbox:
    """OpenAI-compatible server on ``host:port`` (0 = ephemeral); use as ``async with`` or start/stop.

    ``latency`` (settable any time) is slept before every chat answer, before the first stream
    event; ``first_token_delay`` before the first content chunk of a stream; ``tokens_per_second``
    paces later content chunks; ``sleep`` (settable) does these waits, so a test may record them.
    ``rate_limit_per_minute`` (settable) enforces a sliding 60 s limit
    on admitted chat requests: over it, 429 with ``retry-after`` (until a slot frees); every chat
    answer then carries ``x-ratelimit-limit|remaining|reset-requests`` (reset: until the window is
    empty, e.g. ``59.98s``). Chat requests are checked in this order:
    API key (401), body (400), model (404), rate limit (429), then the next injected fault.
    ``api_keys=None`` serves without keys, as local model servers do (any ``Authorization`` or none).
    ``echo`` selects :func:`echo_reply` over :func:`sandbox_reply` as the answer text.
    Image requests (``image_models``) are checked for the key, then consume the next fault queued
    with :meth:`inject_image` (only its ``status``, ``message``, ``code`` and ``delay``).
    """

    def __init__(
        self,
        *,
        echo: bool = False,
        api_keys: Iterable[str] | None = ("sk-sandbox",),
        models: Iterable[str] = ("gpt-4o-mini", "sandbox-small"),
        image_models: Iterable[str] = IMAGE_MODELS,
        latency: float = 0.0,
        first_token_delay: float = 0.0,
        tokens_per_second: float | None = None,
        rate_limit_per_minute: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.echo = echo
        self.api_keys = None if api_keys is None else set(api_keys)
        self.models = list(models)
        self.latency = latency
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.rate_limit_per_minute = rate_limit_per_minute
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._host = host
        self._port = port
        self._in_flight = 0
        self._faults: deque[Fault] = deque()
        self.images = ImageGenerations(tuple(image_models))
        self._image_faults: deque[Fault] = deque()
        self._replies: deque[str] = deque()
        self._reply_fn: Callable[[dict[str, Any]], str] | None = None
        self._window: deque[float] = deque()
        self._ids = itertools.count(1)
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._fetcher: aiohttp.ClientSession | None = None  # downloads image URLs

    @property
    def in_flight(self) -> int:
        """Chat requests being handled right now."""
        return self._in_flight

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded ``/chat/completions`` requests, in arrival order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def image_requests(self) -> list[RecordedRequest]:
        """Recorded ``/images/generations`` requests, in arrival order."""
        return [r for r in self.requests if r.path.endswith("/images/generations")]

    def inject_image(self, *faults: Fault) -> None:
        """Queue faults for image requests; each one whose key is accepted consumes one."""
        self._image_faults.extend(faults)

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each admitted chat request consumes one, first in first out."""
        self._faults.extend(faults)

    def set_reply(self, fn: Callable[[dict[str, Any]], str] | None) -> None:
        """Answer with ``fn(request_body)`` instead of the usual text; ``None`` restores it."""
        self._reply_fn = fn

    def queue_replies(self, *texts: str) -> None:
        """Answer the next chat requests with these texts verbatim (before ``set_reply``/default)."""
        self._replies.extend(texts)

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until at least ``n`` chat requests have arrived and return them all.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.chat_requests) >= n)
        return self.chat_requests

    async def start(self) -> None:
        """Bind the socket and start serving; sets ``base_url``."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{id:.+}", self._models)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_get("/v1/images/files/{name}", self._image_file)
        self._fetcher = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"

    async def stop(self) -> None:
        """Close the server; requests still running are cancelled."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._fetcher is not None:
            fetcher, self._fetcher = self._fetcher, None
            await fetcher.close()

    async def __aenter__(self) -> OpenAISandbox:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _record(self, request: web.Request, body: dict[str, Any], status: int, images: list[str]) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.path, _bearer(request), body, headers, status, images))
        async with self._arrived:
            self._arrived.notify_all()

    def _key_accepted(self, request: web.Request) -> bool:
        return self.api_keys is None or _bearer(request) in self.api_keys

    async def _models(self, request: web.Request) -> web.Response:
        model_id = request.match_info.get("id")
        if not self._key_accepted(request):
            response = _error(401)
        elif model_id is None:
            response = _json({"object": "list", "data": [_model(m) for m in self.models]})
        elif model_id in self.models:
            response = _json(_model(model_id))
        else:
            response = _error(404, model=model_id)
        await self._record(request, {}, response.status, [])
        return response

    async def _images(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        fault = Fault()
        if not self._key_accepted(request):
            response = _error(401)
        else:
            if self._image_faults:
                fault = self._image_faults.popleft()
            if fault.status:
                response = _error(fault.status, model=body.get("model"), message=fault.message, code=fault.code)
            else:
                answer = self.images.answer(body, f"{self.base_url}/images/files")
                response = (
                    _json(answer.payload) if answer.payload is not None
                    else _error(answer.status, message=answer.message, code=answer.code)
                )  # fmt: skip
        await self._record(request, body, response.status, [])
        await self.sleep(self.latency + fault.delay)
        return response

    async def _image_file(self, request: web.Request) -> web.Response:
        image = self.images.files.get(request.match_info["name"])
        await self._record(request, {}, 200 if image is not None else 404, [])
        if image is None:
            return web.Response(status=404, text="no such image")
        return web.Response(body=image, content_type="image/png")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._answer_chat(request)
        finally:
            self._in_flight -= 1

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        fault = Fault()
        headers: dict[str, str] = {}
        status = 200
        seen: list[str] = []
        refused: ImageRefused | None = None
        if not self._key_accepted(request):
            status = 401
        elif not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            status = 400
        elif body.get("model") not in self.models:
            status = 404
        elif (refused := await self._look_at_images(body["messages"], seen)) is not None:
            status = 400
            fault = Fault(message=str(refused))
        else:
            status, headers = self._take_rate_slot()
            if status == 200 and self._faults:
                fault = self._faults.popleft()
                dropped = fault.cut_stream_after is not None and not body.get("stream")
                status = fault.status or (0 if dropped else 200)
        body = body if isinstance(body, dict) else {}
        text = self._next_reply(body, seen) if status == 200 else ""
        await self._record(request, body, status, seen)
        headers = {**headers, **fault.headers, **_retry_after(fault.retry_after)}
        await self.sleep(self.latency + fault.delay)
        if status == 0:
            _drop(request)
            return web.Response()
        if fault.text is not None:
            return web.Response(status=status, text=fault.text, content_type="text/html", headers=headers)
        if status != 200:
            code = fault.code if refused is None else refused.code
            return _error(status, headers, model=body.get("model"), message=fault.message, code=code)
        if body.get("stream"):
            return await self._stream(request, body, text, fault, headers)
        if fault.malformed:
            return web.Response(body=_MALFORMED, headers={"Content-Type": "application/json", **headers})
        return _json(self._completion(body, text), headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], text: str, fault: Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        await response.prepare(request)
        if fault.malformed:
            await response.write(b"data: " + _MALFORMED + b"\n\n")
            return response
        base = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n")

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        await send(choice({"role": "assistant", "content": ""}))
        await self.sleep(self.first_token_delay)
        pieces = [p for p in re.split(r"(?<= )", text) if p]
        for i, piece in enumerate(pieces[: fault.cut_stream_after]):
            if i and self.tokens_per_second:
                await self.sleep(1 / self.tokens_per_second)
            await send(choice({"content": piece}))
        if fault.cut_stream_after is not None:
            _drop(request)
            return response
        await send(choice({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=_usage(body, text))
        await response.write(b"data: [DONE]\n\n")
        return response

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(body, text),
        }

    async def _look_at_images(self, messages: list[Any], seen: list[str]) -> ImageRefused | None:
        """Read every image part into ``seen``; the refusal OpenAI would answer, if any."""
        assert self._fetcher is not None
        try:
            for url in image_urls(messages):
                seen.append(str(await look(self._fetcher, url)))
        except ImageRefused as refused:
            return refused
        return None

    def _next_reply(self, body: dict[str, Any], seen: list[str]) -> str:
        if self._replies:
            return self._replies.popleft()
        if self._reply_fn is not None:
            return self._reply_fn(body)
        return (echo_reply if self.echo else sandbox_reply)(body, seen)

    def _take_rate_slot(self) -> tuple[int, dict[str, str]]:
        """Admit one request into the sliding window; returns (200 or 429, x-ratelimit headers)."""
        limit = self.rate_limit_per_minute
        if limit is None:
            return 200, {}
        now = time.monotonic()
        while self._window and now - self._window[0] >= _WINDOW:
            self._window.popleft()
        admitted = len(self._window) < limit
        if admitted:
            self._window.append(now)
        headers = {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(limit - len(self._window)),
            "x-ratelimit-reset-requests": _duration(self._window[-1] + _WINDOW - now if self._window else 0.0),
        }
        if admitted:
            return 200, headers
        oldest = self._window[0] if self._window else now
        return 429, {**headers, **_retry_after(oldest + _WINDOW - now)}


def echo_reply(body: Mapping[str, Any], seen: Sequence[str] = ()) -> str:
    """The ``echo=True`` answer text for a chat request body (format in the module docstring)."""
    messages = body.get("messages") or []
    system = _system_message(messages)
    persona = _text(system.get("content")).split("\n", 1)[0] if system else "-"
    users = [said(m) for m in messages if m.get("role") == "user"]
    temperature = body.get("temperature")
    t = "-" if temperature is None else temperature
    saw = f" | saw {'; '.join(seen)}" if seen else ""
    return f"[{body.get('model')}] {persona} | T={t} | turns={len(users)} | {users[-1] if users else '-'}{saw}"


def said(message: Mapping[str, Any]) -> str:
    """What a user message says, without the ``Name: `` its speaker is written with (when it has a
    ``name``), then its image parts (``<image URL>``, ``<image data:image/png, 149 bytes>``)."""
    text = _said_text(message)
    images = describe_parts(message.get("content"))
    return f"{text} {images}" if images else text


_SAMPLING = (
    ("temperature", "T"),
    ("top_p", "top_p"),
    ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"),
)
_YOU_ARE = re.compile(r"you are\s+", re.IGNORECASE)
_NAME = re.compile(r"[^\W\d_][\w'-]*")


def sandbox_reply(body: Mapping[str, Any], seen: Sequence[str] = ()) -> str:
    """The default answer text: short, labelled as the sandbox's, showing the persona, the model and
    sampling parameters, and how many earlier user turns (memory, channel context) reached the server,
    quoting the last of them."""
    messages = body.get("messages") or []
    system = _system_message(messages)
    first_line = " ".join(_text(system.get("content")).split("\n", 1)[0].split()) if system else ""
    persona = _clip(re.split(r"(?<=[.!?])\s", first_line, maxsplit=1)[0].rstrip("."), 80)
    name = None
    if (you_are := _YOU_ARE.match(persona)) is not None:
        persona = persona[you_are.end() :]
        name = found.group() if (found := _NAME.match(persona)) else None
    users = [" ".join(_said_text(m).split()) for m in messages if m.get("role") == "user"]
    heard = f'you said "{_clip(users[-1], 200)}".' if users else "you said nothing."
    greeting = f"{name} here — {heard}" if name else heard[0].upper() + heard[1:]
    if seen:
        greeting += f" I saw {'; '.join(seen)}."
    params = " ".join(f"{label}={body[key]}" for key, label in _SAMPLING if body.get(key) is not None)
    earlier = len(users) - 1 if users else 0
    memory = {0: "no earlier turns", 1: "1 earlier turn"}.get(earlier, f"{earlier} earlier turns")
    if earlier:
        memory += f', the last: "{_clip(users[-2], 60)}"'
    parts = (f"persona: {persona or 'none'}", str(body.get("model")), params, memory)
    facts = " · ".join(part for part in parts if part)
    return f"(sandbox model, not a real LLM) {greeting} [{facts}]"


def _system_message(messages: list[Any]) -> Mapping[str, Any] | None:
    return next((m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")), None)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(content: object) -> str:
    """Message content as text (string content, or the text parts of a content list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _said_text(message: Mapping[str, Any]) -> str:
    """:func:`said` without the image parts (the answer says what it saw instead)."""
    text = _text(message.get("content"))
    return text.split(": ", 1)[1] if message.get("name") and ": " in text else text


def _usage(body: Mapping[str, Any], text: str) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = sum(len(_text(m.get("content"))) // 4 + 4 for m in messages)
    prompt += IMAGE_TOKENS * len(image_urls(messages))
    completion = len(text) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": "sandbox"}


def _json(payload: object, headers: Mapping[str, str] | None = None, status: int = 200) -> web.Response:
    """A JSON response with exactly ``Content-Type: application/json``."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=json.dumps(payload).encode(), headers=headers)


def _error(
    status: int,
    headers: Mapping[str, str] | None = None,
    *,
    model: object = None,
    message: str | None = None,
    code: str | None = None,
) -> web.Response:
    """OpenAI's error JSON shape for ``status`` (``message`` and ``code`` replace the usual ones)."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    usual, kind, usual_code = _ERRORS.get(status, (f"Sandbox error {status}.", kind, None))
    code = usual_code if code is None else code
    text = usual.format(model=model) if message is None else message
    error = {"message": text, "type": kind, "param": None, "code": code}
    return _json({"error": error}, headers, status)


def _retry_after(seconds: float | None) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up), plus ``retry-after-ms`` when fractional."""
    if seconds is None:
        return {}
    headers = {"retry-after": str(math.ceil(seconds))}
    if seconds != int(seconds):
        headers["retry-after-ms"] = str(round(seconds * 1000))
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's reset duration format: ``12ms`` under a second, else ``1.5s``."""
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{round(seconds, 3):g}s"


def _drop(request: web.Request) -> None:
    """Close the client connection without finishing the response."""
    if request.transport is not None:
        request.transport.close()


def main(argv: list[str] | None = None) -> None:
    """Run a sandbox until SIGINT/SIGTERM, printing its base URL on stdout."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.sandbox.openai_server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each chat answer")
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--rate-limit-per-minute", type=int, default=None)
    parser.add_argument("--api-key", action="append", dest="api_keys", help="accepted key, repeatable")
    parser.add_argument("--model", action="append", dest="models", help="served model (repeatable)")
    parser.add_argument("--echo", action="store_true", help="answer in the tests' echo format")
    args = parser.parse_args(argv)
    sandbox = OpenAISandbox(
        echo=args.echo,
        api_keys=args.api_keys or ("sk-sandbox",),
        models=args.models or ("gpt-4o-mini", "sandbox-small"),
        latency=args.latency,
        first_token_delay=args.first_token_delay,
        tokens_per_second=args.tokens_per_second,
        rate_limit_per_minute=args.rate_limit_per_minute,
        host=args.host,
        port=args.port,
    )
    asyncio.run(_serve(sandbox))


async def _serve(sandbox: OpenAISandbox) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    async with sandbox:
        print(sandbox.base_url, flush=True)
        await stopped.wait()


if __name__ == "__main__":
    main()
