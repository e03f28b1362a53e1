"""The chat-completions request of one provider: plain answers on a pooled aiohttp session.

The provider's ``AsyncOpenAI`` client stays the source of truth: its base URL, API key and default
headers are copied from it (a header its defaults leave out with ``openai.omit``, such as a keyless
provider's ``Authorization``, is left out here too), answers are the SDK's ``ChatCompletion`` /
``ChatCompletionChunk`` types, and failures are the SDK's public exception classes. Only the HTTP
path is ours: the SDK's request building, httpx2 layers and lenient model construction cost 1.0-1.5 ms
of CPU per call, which was most of an answer's budget; this path costs about 0.25 ms
(``scripts/bench_pool``). Streamed answers go through the SDK's public API (see
:meth:`ChatTransport.stream`). The SDK's per-call parameter transform is skipped on the plain path:
it walks every message of the history and changes nothing in a body of plain strings.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import httpx2
import openai
import pydantic
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from openai.types.chat import ChatCompletion, ChatCompletionChunk

# The SDK's own status → class rule (400-429 by status, 5xx server errors, any other an APIStatusError).
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


@dataclass(frozen=True)
class Completion:
    completion: ChatCompletion
    headers: Mapping[str, str]
    requested_at: float = 0.0  # time.monotonic(): the request was handed to the connection ...
    answered_at: float = 0.0  # ... and its answer was read


@dataclass(frozen=True)
class CompletionStream:
    chunks: AsyncIterator[ChatCompletionChunk]
    headers: Mapping[str, str]


def parse_completion(data: bytes) -> ChatCompletion:
    """Validate fast; fall back to the SDK's lenient construction for servers that bend the schema."""
    try:
        return ChatCompletion.model_validate_json(data)
    except pydantic.ValidationError:
        return ChatCompletion.construct(**json.loads(data))  # ValueError: broken JSON; TypeError: not an object


def omitted_headers(client: openai.AsyncOpenAI) -> dict[str, openai.Omit]:
    """The headers ``client``'s defaults leave out. The SDK wants such an omission repeated on each
    call (``extra_headers``), or it refuses to send a request without ``Authorization``."""
    return {name: value for name, value in client.default_headers.items() if isinstance(value, openai.Omit)}


def status_error(response: httpx2.Response) -> openai.APIStatusError:
    """The SDK's exception for an HTTP error answer: its class, message and ``body`` as the SDK makes them."""
    message = f"Error code: {response.status_code}"
    text = response.text.strip()
    body: object = text
    with suppress(ValueError):  # not JSON: the body is the text
        body = json.loads(text)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
            message += f" - {body['message']}"
    status = response.status_code
    error = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return error(message, response=response, body=body)


class ChatTransport:
    """``POST {base_url}/chat/completions`` for one provider, plain or streamed."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client
        self._url = str(client.base_url).rstrip("/") + "/chat/completions"
        self._omitted = omitted_headers(client)
        headers = {**client.auth_headers, **client.default_headers}  # the SDK's order: defaults win
        # sent with every request: the SDK's own, with the API key unless the client omits it
        self._headers = {name: value for name, value in headers.items() if isinstance(value, str)}
        self._headers["X-Stainless-Async"] = "async:asyncio"  # the client may be built outside the event loop
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: aiohttp wants a running event loop
            # HTTP(S)_PROXY / NO_PROXY are honoured as the SDK's httpx client does, read once here:
            # aiohttp's trust_env reads them (and ~/.netrc) on every request, ~1 ms of CPU each.
            try:
                proxy, proxy_auth = get_env_proxy_for_url(yarl.URL(self._url))
            except LookupError:
                proxy, proxy_auth = None, None
            # No connection limit here: the pool's fair limiter bounds concurrency per provider.
            self._session = aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(limit=0), proxy=proxy, proxy_auth=proxy_auth
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def create(self, body: Mapping[str, Any], *, timeout: float, retries_taken: int = 0) -> Completion:
        """One plain (non-streamed) completion; ``retries_taken`` is reported as the SDK does."""
        requested_at = time.monotonic()
        async with self._post(body, aiohttp.ClientTimeout(total=timeout), retries_taken) as response:
            data = await self._read(response)
        answered_at = time.monotonic()
        try:
            return Completion(parse_completion(data), response.headers, requested_at, answered_at)
        except (ValueError, TypeError) as exc:
            raise openai.APIResponseValidationError(
                response=self._httpx_response(response, data), body=data, message=f"unreadable answer: {exc}"
            ) from exc

    @asynccontextmanager
    async def stream(
        self, body: Mapping[str, Any], *, timeout: float, retries_taken: int = 0
    ) -> AsyncIterator[CompletionStream]:
        """A streamed completion, through the SDK itself: its SSE decoder hands over every byte that
        arrived before a connection broke (aiohttp drops its buffered tail then), so a cut answer keeps
        all its text. Streaming costs a Discord edit per second anyway; the SDK's overhead is minor here.
        ``with_raw_response`` keeps the answer's headers, which carry the provider's rate-limit hints."""
        raw = await self._client.chat.completions.with_raw_response.create(
            **body,
            stream=True,
            stream_options={"include_usage": True},
            timeout=timeout,
            extra_headers={**self._omitted, "X-Stainless-Retry-Count": str(retries_taken)},
        )
        chunks = raw.parse()
        try:
            yield CompletionStream(chunks, raw.headers)
        finally:
            with anyio.CancelScope(shield=True):
                await chunks.close()

    @asynccontextmanager
    async def _post(
        self, body: Mapping[str, Any], timeout: aiohttp.ClientTimeout, retries_taken: int
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {"X-Stainless-Retry-Count": str(retries_taken)}
        try:
            async with self._open().post(self._url, json=body, headers=headers, timeout=timeout) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._connection_error(exc) from exc

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        data = await response.read()
        if response.status >= 400:
            raise status_error(self._httpx_response(response, data))
        return data

    def _connection_error(self, exc: BaseException) -> openai.APIConnectionError:
        if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutError subclasses
            return openai.APITimeoutError(request=self._request())
        return openai.APIConnectionError(message=f"Connection error: {exc}", request=self._request())

    def _request(self) -> httpx2.Request:
        return httpx2.Request("POST", self._url)

    def _httpx_response(self, response: aiohttp.ClientResponse, data: bytes) -> httpx2.Response:
        """The response as the SDK's error classes expect it (only built on the error path)."""
        return httpx2.Response(
            response.status, headers=list(response.headers.items()), content=data, request=self._request()
        )
