"""The OpenAI sandbox server driven by the real openai SDK over loopback."""

from __future__ import annotations

import base64
import json
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator

import anyio
import httpx2
import openai
import pytest

from orchestrator.sandbox.discord_server import DiscordSandbox
from orchestrator.sandbox.openai_server import Fault, OpenAISandbox, said

from . import images

MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are Ada.\nSpeak briefly."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "how are you?"},
]
ANSWER = "[gpt-4o-mini] You are Ada. | T=0.7 | turns=2 | how are you?"


@pytest.fixture
async def sandbox() -> AsyncIterator[OpenAISandbox]:
    async with OpenAISandbox(echo=True) as sb:
        yield sb


@pytest.fixture
async def client(sandbox: OpenAISandbox) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-sandbox", max_retries=0) as c:
        yield c


async def ask(client: openai.AsyncOpenAI, content: str = "hi", **kwargs: object) -> str | None:
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)
    return reply.choices[0].message.content


async def test_plain_completion(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.7)

    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    prompt = sum(len(m["content"]) // 4 + 4 for m in MESSAGES)
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt, len(ANSWER) // 4 + 1)
    assert reply.usage.total_tokens == prompt + len(ANSWER) // 4 + 1
    [recorded] = sandbox.chat_requests
    assert (recorded.path, recorded.api_key, recorded.status) == ("/v1/chat/completions", "sk-sandbox", 200)
    assert recorded.body["model"] == MODEL and recorded.body["temperature"] == 0.7
    assert recorded.body["messages"] == MESSAGES
    assert recorded.headers["x-stainless-retry-count"] == "0"


async def test_echo_reply_without_persona_or_temperature(client: openai.AsyncOpenAI) -> None:
    assert await ask(client, "yo") == "[gpt-4o-mini] - | T=- | turns=1 | yo"


async def test_echo_reply_is_short_labelled_and_shows_what_reached_the_model() -> None:
    async with (
        OpenAISandbox() as sb,
        openai.AsyncOpenAI(base_url=sb.base_url, api_key="sk-sandbox", max_retries=0) as client,
    ):
        reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.7, top_p=0.9)
        bare = await ask(client, "  line one\n  line two ")
    assert reply.choices[0].message.content == (
        '(sandbox model, not a real LLM) Ada here — you said "how are you?". '
        '[persona: Ada · gpt-4o-mini · T=0.7 top_p=0.9 · 1 earlier turn, the last: "hello"]'
    )
    assert (
        bare == '(sandbox model, not a real LLM) You said "line one line two". '
        "[persona: none · gpt-4o-mini · no earlier turns]"
    )


async def test_echo_reply_keeps_a_long_or_unnamed_persona_short() -> None:
    persona = "تو «حافظ» هستی، یک همراه مهربان که همیشه به زبان فارسی پاسخ می‌دهد و شعر می‌خواند و قصه می‌گوید."
    messages = [
        {"role": "system", "content": persona + "\nSecond line."},
        {"role": "user", "content": "y" * 100},
        {"role": "user", "content": "x" * 500},
    ]
    async with (
        OpenAISandbox() as sb,
        openai.AsyncOpenAI(base_url=sb.base_url, api_key="sk-sandbox", max_retries=0) as client,
    ):
        reply = await client.chat.completions.create(model=MODEL, messages=messages)
    content = reply.choices[0].message.content or ""
    assert content.startswith('(sandbox model, not a real LLM) You said "' + "x" * 199 + '…".')
    assert f'[persona: {persona[:79]}… · gpt-4o-mini · 1 earlier turn, the last: "{"y" * 59}…"]' in content
    assert "Second line" not in content and len(content) < 500


async def test_streaming_matches_plain_answer_and_reports_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0.7, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == len(ANSWER.split(" "))
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(ANSWER) // 4 + 1


async def test_stream_pacing() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with (
        OpenAISandbox(echo=True, first_token_delay=0.05, tokens_per_second=100) as sb,
        openai.AsyncOpenAI(base_url=sb.base_url, api_key="sk-sandbox", max_retries=0) as client,
    ):
        sb.sleep = sleep
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.7, stream=True)
        chunks = [chunk async for chunk in stream]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == len(ANSWER.split(" "))
    assert slept == [0.0, 0.05] + [0.01] * (len(ANSWER.split(" ")) - 1), "no latency, the first token, then 100/s"


async def test_models(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    assert [(m.id, m.object, m.owned_by) for m in models] == [
        ("gpt-4o-mini", "model", "sandbox"),
        ("sandbox-small", "model", "sandbox"),
    ]
    assert (await client.models.retrieve("sandbox-small")).id == "sandbox-small"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-9")
    assert [r.status for r in sandbox.requests] == [200, 200, 404]
    assert sandbox.chat_requests == []


async def test_wrong_key_and_unknown_model(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-wrong", max_retries=2) as bad:
        with pytest.raises(openai.AuthenticationError) as auth:
            await ask(bad)
    assert auth.value.code == "invalid_api_key" and auth.value.type == "invalid_request_error"
    assert auth.value.response.headers["content-type"] == "application/json"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    assert [(r.api_key, r.status) for r in sandbox.chat_requests] == [("sk-wrong", 401), ("sk-sandbox", 404)]


async def test_rate_limited_fault_and_sdk_retry(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    sandbox.inject(Fault.rate_limited(retry_after=0.05))
    with pytest.raises(openai.RateLimitError) as err:
        await ask(client)
    assert err.value.code == "rate_limit_exceeded"
    assert (err.value.response.headers["retry-after"], err.value.response.headers["retry-after-ms"]) == ("1", "50")

    sandbox.inject(Fault.rate_limited(retry_after=0.05))
    assert await ask(client.with_options(max_retries=1), "again") == "[gpt-4o-mini] - | T=- | turns=1 | again"
    retried = sandbox.chat_requests[-2:]
    assert [r.status for r in retried] == [429, 200]
    assert [r.headers["x-stainless-retry-count"] for r in retried] == ["0", "1"]


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error(sandbox: OpenAISandbox, client: openai.AsyncOpenAI, status: int) -> None:
    sandbox.inject(Fault.server_error(status))
    with pytest.raises(openai.InternalServerError) as err:
        await ask(client)
    assert err.value.status_code == status and err.value.type == "server_error"
    assert await ask(client, "ok") is not None


async def test_malformed_json_raises_json_decode_error(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    """openai 3.57 does not wrap an unparsable body: ``json.JSONDecodeError`` escapes, plain or streamed."""
    sandbox.inject(Fault.malformed_json(), Fault.malformed_json())
    with pytest.raises(json.JSONDecodeError):
        await ask(client)
    with pytest.raises(json.JSONDecodeError):
        async for _ in await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            pass


async def test_delay_beyond_client_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """The handler of a timed-out request is cancelled quietly and does not hold up ``stop()``."""
    with anyio.fail_after(30):  # stop() must not wait for the 60 s handler
        async with (
            OpenAISandbox(echo=True) as sb,
            openai.AsyncOpenAI(base_url=sb.base_url, api_key="sk-sandbox", max_retries=0, timeout=0.1) as client,
        ):
            sb.inject(Fault.timeout(60.0))
            with pytest.raises(openai.APITimeoutError):
                await ask(client)
            patient = client.with_options(timeout=30)  # a loaded machine may need more than 0.1 s
            assert await ask(patient, "after") == "[gpt-4o-mini] - | T=- | turns=1 | after"
    assert sb.in_flight == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_cut_stream_raises_connection_error(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    """A dropped stream surfaces as ``openai.APIConnectionError`` caused by ``httpx2.RemoteProtocolError``."""
    sandbox.inject(Fault.cut(2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError) as err:
        async for chunk in await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert isinstance(err.value.__cause__, httpx2.RemoteProtocolError)
    assert received == ["", "[gpt-4o-mini] ", "You "]

    sandbox.inject(Fault.cut())  # a non-stream request loses its connection before any answer
    with pytest.raises(openai.APIConnectionError):
        await ask(client)
    assert await ask(client, "still up") == "[gpt-4o-mini] - | T=- | turns=1 | still up"
    assert [r.status for r in sandbox.chat_requests] == [200, 0, 200]


async def test_queue_replies_and_set_reply(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    sandbox.queue_replies("one", "two")
    sandbox.set_reply(lambda body: f"custom {body['model']}")
    assert [await ask(client) for _ in range(3)] == ["one", "two", "custom gpt-4o-mini"]
    sandbox.set_reply(None)
    assert await ask(client, "x") == "[gpt-4o-mini] - | T=- | turns=1 | x"


async def test_wait_for_requests(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    sandbox.latency = 0.3
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(ask, client, f"q{i}")
        recorded = await sandbox.wait_for_requests(3)
        assert sandbox.in_flight == 3  # requests are recorded on arrival, before the answer
    assert sorted(r.body["messages"][0]["content"] for r in recorded) == ["q0", "q1", "q2"]
    with pytest.raises(TimeoutError):
        await sandbox.wait_for_requests(4, timeout=0.05)


async def test_rate_limit_per_minute() -> None:
    async with (
        OpenAISandbox(rate_limit_per_minute=2) as sb,
        openai.AsyncOpenAI(base_url=sb.base_url, api_key="sk-sandbox", max_retries=0) as client,
    ):
        remaining = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["1", "0"]
        with pytest.raises(openai.RateLimitError) as err:
            await ask(client)
        headers = err.value.response.headers
        assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("2", "0")
        assert re.fullmatch(r"\d+(\.\d+)?s", headers["x-ratelimit-reset-requests"])
        assert 59 <= int(headers["retry-after"]) <= 60
    assert [r.status for r in sb.chat_requests] == [200, 200, 429]


async def test_max_in_flight() -> None:
    arrived, all_in = 0, anyio.Event()

    async def hold(_seconds: float) -> None:  # each answer waits until all five are in flight
        nonlocal arrived
        arrived += 1
        if arrived == 5:
            all_in.set()
        await all_in.wait()

    async with (
        OpenAISandbox() as sb,
        openai.AsyncOpenAI(base_url=sb.base_url, api_key="sk-sandbox", max_retries=0) as client,
    ):
        sb.sleep = hold
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(ask, client, f"q{i}")
    assert (sb.max_in_flight, sb.in_flight) == (5, 0)


@pytest.mark.parametrize(("flags", "answer"), [((), 'You said "hi"'), (("--echo",), "| hi")], ids=["default", "echo"])
async def test_cli_serves_until_signal(flags: tuple[str, ...], answer: str) -> None:
    command = [
        sys.executable,
        "-m",
        "orchestrator.sandbox.openai_server",
        "--api-key",
        "k1",
        "--latency",
        "0.01",
        *flags,
    ]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        base_url = (await process.stdout.receive()).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        async with openai.AsyncOpenAI(base_url=base_url, api_key="k1", max_retries=0) as client:
            assert answer in (await ask(client) or "")
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def image_message(client: openai.AsyncOpenAI, *urls: str) -> str | None:
    parts = [{"type": "text", "text": "what is this?"}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}])
    return reply.choices[0].message.content


async def test_image_parts_by_url_and_inline_are_seen(sandbox: OpenAISandbox, client: openai.AsyncOpenAI) -> None:
    async with DiscordSandbox() as discord_sandbox:
        posted = await discord_sandbox.post("", attachments=[{"filename": "cat.png", "data": images.png(64, 48)}])
        url = posted["attachments"][0]["url"]
        inline = "data:image/gif;base64," + base64.b64encode(images.gif(20, 10)).decode()
        answer = await image_message(client, url, inline)
    assert answer is not None and answer.endswith(" | saw image cat.png 64x48 png; image inline 20x10 gif")
    [recorded] = sandbox.chat_requests
    assert recorded.images == ["image cat.png 64x48 png", "image inline 20x10 gif"]
    inline_part = f"<image data:image/gif, {len(images.gif(20, 10))} bytes>"  # never the data itself
    assert said(recorded.body["messages"][0]) == f"what is this? <image {url}> {inline_part}"


async def test_sandbox_reply_says_what_it_saw() -> None:
    async with OpenAISandbox() as sandbox, openai.AsyncOpenAI(base_url=sandbox.base_url, api_key="sk-sandbox") as c:
        answer = await image_message(c, "data:image/png;base64," + base64.b64encode(images.png(3, 2)).decode())
    assert answer is not None and 'said "what is this?". I saw image inline 3x2 png.' in answer


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "invalid_image_format"),
        ("data:image/png;base64,%%%", "invalid_image_url"),
        ("ftp://example.invalid/cat.png", "invalid_image_url"),
        ("missing", "invalid_image_url"),
    ],
    ids=["corrupt", "bad-base64", "bad-scheme", "404"],
)
async def test_an_unreadable_image_is_refused_as_openai_does(
    sandbox: OpenAISandbox, client: openai.AsyncOpenAI, url: str, code: str
) -> None:
    async with DiscordSandbox() as discord_sandbox:
        if url == "missing":
            posted = await discord_sandbox.post("", attachments=[{"filename": "cat.png", "data": images.png(4, 4)}])
            url = posted["attachments"][0]["url"]
            discord_sandbox.delete_attachment(url)
        with pytest.raises(openai.BadRequestError) as refused:
            await image_message(client, url)
    assert refused.value.code == code
    assert sandbox.chat_requests[-1].status == 400
