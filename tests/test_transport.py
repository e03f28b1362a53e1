"""The pool's chat transport against the sandbox: the SDK's types and exception classes, over aiohttp."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion

from orchestrator.llm.transport import ChatTransport
from orchestrator.sandbox.openai_server import Fault, OpenAISandbox

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "hi"}],
}


@pytest.fixture
async def sandbox() -> AsyncIterator[OpenAISandbox]:
    async with OpenAISandbox(api_keys=["sk-good"], echo=True) as sb:
        yield sb


@pytest.fixture
async def transport(sandbox: OpenAISandbox) -> AsyncIterator[ChatTransport]:
    async with openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-good", max_retries=0) as client:
        chat = ChatTransport(client)
        yield chat
        await chat.aclose()


async def test_answer_is_the_sdks_type_and_sent_like_the_sdk(sandbox: OpenAISandbox, transport: ChatTransport) -> None:
    answer = await transport.create(BODY, timeout=5, retries_taken=2)
    assert isinstance(answer.completion, ChatCompletion)
    assert answer.completion.choices[0].message.content == "[gpt-4o-mini] You are Ada. | T=- | turns=1 | hi"
    assert answer.completion.usage is not None and answer.completion.usage.total_tokens > 0
    assert answer.headers["Content-Type"].startswith("application/json")  # headers read case-insensitively
    [request] = sandbox.chat_requests
    assert request.api_key == "sk-good" and request.body == BODY
    assert request.headers["user-agent"].startswith("AsyncOpenAI/Python")
    assert request.headers["x-stainless-retry-count"] == "2"


async def test_proxy_settings_from_the_environment_are_honoured_like_the_sdk(
    sandbox: OpenAISandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's httpx client follows HTTP(S)_PROXY; so must the transport that replaced its request path."""
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):  # the lower-case spelling wins where both are set
        monkeypatch.setenv(name, "")
    async with openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-good", max_retries=0) as client:
        chat = ChatTransport(client)
        with pytest.raises(openai.APIConnectionError):
            await chat.create(BODY, timeout=5)  # went to the (dead) proxy, not straight to the sandbox
        await chat.aclose()
    assert sandbox.chat_requests == []


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.rate_limited(retry_after=1.5), openai.RateLimitError),
        (Fault.server_error(503), openai.InternalServerError),
        (Fault.server_error(500), openai.InternalServerError),
    ],
)
async def test_http_errors_are_the_sdks_classes(
    sandbox: OpenAISandbox, transport: ChatTransport, fault: Fault, error: type[openai.APIStatusError]
) -> None:
    sandbox.inject(fault)
    with pytest.raises(error) as raised:
        await transport.create(BODY, timeout=5)
    assert raised.value.status_code == fault.status
    if fault.retry_after:
        assert raised.value.response.headers["retry-after-ms"] == "1500"
    assert "Error code:" in str(raised.value)


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422, 429, 500, 503, 418])
async def test_http_errors_are_made_as_the_sdk_makes_them(sandbox: OpenAISandbox, status: int) -> None:
    """Same class, message and body as the SDK's own request path raises for the same answer."""
    async with openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-good", max_retries=0) as client:
        chat = ChatTransport(client)
        sandbox.inject(Fault(status=status), Fault(status=status))
        with pytest.raises(openai.APIStatusError) as ours:
            await chat.create(BODY, timeout=5)
        with pytest.raises(openai.APIStatusError) as sdks:
            await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
        await chat.aclose()
    assert type(ours.value) is type(sdks.value)
    assert (str(ours.value), ours.value.body, ours.value.code) == (str(sdks.value), sdks.value.body, sdks.value.code)


async def test_a_streamed_request_is_sent_like_the_sdks_own(sandbox: OpenAISandbox, transport: ChatTransport) -> None:
    async with transport.stream(BODY, timeout=5, retries_taken=1) as answer:
        text = "".join([c.choices[0].delta.content or "" async for c in answer.chunks if c.choices])
        assert answer.headers["content-type"].startswith("text/event-stream")
    assert text == "[gpt-4o-mini] You are Ada. | T=- | turns=1 | hi"
    [request] = sandbox.chat_requests
    assert request.api_key == "sk-good" and request.body == {
        **BODY,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.headers["x-stainless-retry-count"] == "1"


async def test_refused_key_is_authentication_error(sandbox: OpenAISandbox) -> None:
    async with openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-bad", max_retries=0) as client:
        chat = ChatTransport(client)
        with pytest.raises(openai.AuthenticationError) as raised:
            await chat.create(BODY, timeout=5)
        await chat.aclose()
    assert "sk-bad" not in str(raised.value)


async def test_timeout_and_refused_connection(sandbox: OpenAISandbox, transport: ChatTransport) -> None:
    sandbox.inject(Fault.timeout(2))
    with pytest.raises(openai.APITimeoutError):
        await transport.create(BODY, timeout=0.2)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
        chat = ChatTransport(client)
        with pytest.raises(openai.APIConnectionError) as raised:
            await chat.create(BODY, timeout=2)
        await chat.aclose()
    assert not isinstance(raised.value, openai.APITimeoutError)


async def test_malformed_answer_is_a_validation_error(sandbox: OpenAISandbox, transport: ChatTransport) -> None:
    sandbox.inject(Fault.malformed_json())
    with pytest.raises(openai.APIResponseValidationError):
        await transport.create(BODY, timeout=5)


async def serve_chat(answer: object) -> tuple[web.AppRunner, int]:
    """A bare OpenAI-compatible server that answers every chat request with ``answer`` (JSON)."""

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def ask(port: int) -> Any:
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
        chat_transport = ChatTransport(client)
        try:
            return await chat_transport.create(BODY, timeout=5)
        finally:
            await chat_transport.aclose()


async def test_answer_bending_the_schema_is_still_read() -> None:
    """Some OpenAI-compatible servers omit fields the SDK's types require; the SDK reads them leniently, so do we."""
    runner, port = await serve_chat({"choices": [{"message": {"role": "assistant", "content": "lenient"}}]})
    try:
        answer = await ask(port)
    finally:
        await runner.cleanup()
    assert isinstance(answer.completion, ChatCompletion)
    assert answer.completion.choices[0].message.content == "lenient"


@pytest.mark.parametrize("answer", [[1, 2], "just a string", None])
async def test_json_that_is_not_an_answer_is_a_validation_error(answer: object) -> None:
    runner, port = await serve_chat(answer)
    try:
        with pytest.raises(openai.APIResponseValidationError):
            await ask(port)
    finally:
        await runner.cleanup()
