"""A provider without a key (Ollama, vLLM, llama.cpp): no Authorization header, and no made-up secret."""

from __future__ import annotations

import logging

import openai
import pytest

from orchestrator.llm.transport import ChatTransport
from orchestrator.ops.logs import redactor
from orchestrator.sandbox.openai_server import OpenAISandbox

from .conftest import World


def keyless(world: World) -> None:
    world.openai.api_keys = None  # a local model server: it asks for no key
    world.write(
        [{"name": "sage"}, {"name": "hafez", "prefix": "?", "stream": True}],
        providers={"openai": {"base_url": world.openai.base_url}},
    )


async def test_a_keyless_provider_gets_no_authorization_header_plain_streamed_or_listing(world: World) -> None:
    keyless(world)
    async with world.running() as app:
        [plain] = await world.chat("!chat plain")
        [streamed] = await world.chat("?chat streamed")
        assert app.supervisor is not None
        models = await app.supervisor.services.pool.list_models("openai")
    assert plain.content.endswith("| plain") and streamed.content.endswith("| streamed")
    assert "gpt-4o-mini" in models
    assert [r.body.get("stream", False) for r in world.openai.chat_requests] == [False, True]
    assert len(world.openai.requests) == 3
    for request in world.openai.requests:
        assert "authorization" not in request.headers, f"{request.path} carried {request.headers['authorization']!r}"


async def test_a_keyless_provider_adds_nothing_to_redact(world: World, caplog: pytest.LogCaptureFixture) -> None:
    keyless(world)
    async with world.running():
        with caplog.at_level(logging.INFO, logger="some.library"):
            logging.getLogger("some.library").info("3 unused connections, %d idle", 2)
    assert "3 unused connections, 2 idle" in caplog.messages
    assert redactor.redact("no key unused here") == "no key unused here"


async def test_the_transport_sends_what_the_clients_defaults_leave_out_neither() -> None:
    async with OpenAISandbox(api_keys=None) as sandbox:
        client = openai.AsyncOpenAI(
            base_url=sandbox.base_url,
            api_key="never-sent",
            default_headers={"Authorization": openai.omit},
            max_retries=0,
        )
        transport = ChatTransport(client)
        try:
            await transport.create({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
            async with transport.stream(
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=5
            ) as answer:
                assert [c async for c in answer.chunks]
        finally:
            await transport.aclose()
            await client.close()
    assert [("authorization" in r.headers) for r in sandbox.chat_requests] == [False, False]
