"""A provider's refusals reach users and admins as what they are: an unknown model, a refused
request in the provider's words, a refused key, or (only then) an answer that cannot be read."""

from __future__ import annotations

import logging

import httpx2
import openai
import pytest
from pydantic import SecretStr

from orchestrator.config import ProviderSettings, ProviderSpec
from orchestrator.errors import ProviderModelNotFound, ProviderRefused
from orchestrator.llm.failures import REASON_LIMIT, map_error
from orchestrator.ops.metrics import error_kind
from orchestrator.sandbox.openai_server import Fault

from .conftest import API_KEY, World

NGINX_400 = (
    "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def sage(world: World, *, stream: bool = False, model: str = "gpt-4o-mini") -> None:
    world.write(
        [{"name": "sage", "stream": stream, "model": model}],
        providers={"openai": {"base_url": world.openai.base_url, "api_key_env": "OPENAI_API_KEY", "max_retries": 2}},
    )


def error_counts(world: World) -> dict[str, int]:
    assert world.app is not None and world.app.supervisor is not None
    stats = world.app.supervisor.services.pool.stats
    return {error_kind(name): count for (_provider, name), count in stats.provider_errors.items()}


@pytest.mark.fault
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("fault", "says", "kind", "logged"),
    [
        pytest.param(
            Fault.model_not_found(),
            "The model `gpt-4o-mini` is not available from the provider `openai`.",
            "model_not_found",
            "unknown model 'gpt-4o-mini' (HTTP 404: The model `gpt-4o-mini` does not exist",
            id="404-model-not-found",
        ),
        pytest.param(
            Fault.bad_request("No connected db."),
            "The model provider refused the request: No connected db.",
            "refused",
            "request refused (HTTP 400: No connected db.)",
            id="400-gateway-message",
        ),
        pytest.param(
            Fault.error_page(NGINX_400),
            "The model provider refused the request: 400 Bad Request.",
            "refused",
            "request refused (HTTP 400: 400 Bad Request)",
            id="400-not-json",
        ),
        pytest.param(Fault(status=403), "API key was refused", "auth", "refused the API key (HTTP 403)", id="403-key"),
        pytest.param(
            Fault.malformed_json(), "could not read", "bad_response", "Expecting property name", id="unparseable"
        ),
    ],
)
async def test_each_refusal_is_told_as_what_it_is_and_not_retried(
    world: World, fault: Fault, says: str, kind: str, logged: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sage(world, stream=stream)
    world.openai.inject(fault)
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        async with world.running():
            [reply] = await world.chat("!chat hi")
            counts = error_counts(world)
    assert says in reply.content
    assert "could not read" not in reply.content or kind == "bad_response"
    assert len(world.openai.chat_requests) == 1, "a refusal is not retried"
    assert counts == {kind: 1}
    assert any(logged in m for m in caplog.messages), "admins read the real reason in the log"


async def test_a_model_the_provider_does_not_serve_is_named(world: World) -> None:
    sage(world, model="gpt-9")
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert reply.content.startswith("The model `gpt-9` is not available from the provider `openai`.")
    assert [r.status for r in world.openai.chat_requests] == [404]


async def test_the_providers_words_lose_their_secrets_and_length(world: World) -> None:
    sage(world)
    world.openai.inject(Fault.bad_request(f"key {API_KEY} may not use this route. " + "Details follow. " * 40))
    async with world.running():
        [reply] = await world.chat("!chat hi")
    assert API_KEY not in reply.content
    reason = reply.content.removeprefix("The model provider refused the request: ").split(" Please tell")[0]
    assert reason.startswith("key *** may not use this route.")
    assert len(reason) <= REASON_LIMIT + 1 and reason.endswith("…")


SPEC = ProviderSpec("local", "http://127.0.0.1:9/v1", SecretStr(""), ProviderSettings(base_url="http://127.0.0.1:9/v1"))


def status_error(status: int, body: object) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    error = {400: openai.BadRequestError, 404: openai.NotFoundError}[status]
    return error(f"Error code: {status}", response=httpx2.Response(status, request=request), body=body)


@pytest.mark.parametrize(
    ("status", "body", "missing"),
    [
        (404, {"message": 'model "llama9" not found, try pulling it first'}, True),  # Ollama
        (404, {"message": "The model `llama9` does not exist.", "code": 404}, True),  # vLLM
        (
            400,
            {"message": "Invalid model name passed in model=llama9. Call `/v1/models` to view available models"},
            True,
        ),
        (400, {"message": "llama9 is not a valid model ID", "code": 400}, True),  # OpenRouter
        (400, {"message": "'messages' must contain the word 'json'", "type": "invalid_request_error"}, False),
        (400, {"message": "max_tokens is too large for llama9: 99999 > 8192"}, False),
        (404, "404 page not found", False),  # a wrong base_url
    ],
    ids=["ollama", "vllm", "litellm", "openrouter", "other-400", "400-naming-the-model", "wrong-base-url"],
)
def test_unknown_models_as_other_servers_say_it(status: int, body: object, missing: bool) -> None:
    error = map_error(SPEC, status_error(status, body), "llama9")
    assert isinstance(error, ProviderModelNotFound if missing else ProviderRefused)
    if status == 404 and not missing:
        assert "404 page not found" in error.user_message and "check its base_url" in error.detail
