"""``<prefix>imagine``: the persona's provider draws, the image is posted as a file in reply (real
discord.py and openai SDK over the loopback sandboxes)."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import anyio
import pytest

from orchestrator.errors import ConfigError
from orchestrator.sandbox.openai_server import Fault

from .conftest import FAST, World
from .fake_time import FakeTime
from .inprocess import run_cli
from .stores import StoreKind


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed pixel rows of an 8-bit RGB PNG; fails on anything else."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2)
    return width, height, zlib.decompress(chunks[b"IDAT"])


def sage(**settings: object) -> dict:
    return {"name": "sage", **settings}


async def posted_image(world: World, reply) -> bytes:  # type: ignore[no-untyped-def]
    [upload] = reply.uploads
    return world.discord.attachment_bytes(upload["url"])


async def test_imagine_posts_a_png_in_reply(world: World) -> None:
    world.write([sage(image_model="gpt-image-1", image_size="64x48")])
    async with world.running():
        [reply] = await world.chat("!imagine a red fox")  # the reply to the message, as world.chat waits for
    [request] = world.openai.image_requests
    assert request.body == {"model": "gpt-image-1", "prompt": "a red fox", "n": 1, "size": "64x48",
                            "user": str(world.discord.default_user_id)}  # fmt: skip
    assert request.api_key is not None and "response_format" not in request.body
    assert reply.content == "> a red fox"
    assert reply.attachments == ["a-red-fox.png"]
    width, height, rows = decode_png(await posted_image(world, reply))
    assert (width, height) == (64, 48) and len(rows) == (1 + 64 * 3) * 48


async def test_a_url_answer_is_downloaded_and_posted(world: World) -> None:
    world.write([sage(image_model="dall-e-3", image_size="32x32")])
    async with world.running():
        [reply] = await world.chat("!imagine a lighthouse at dusk")
    [request] = world.openai.image_requests
    assert request.body["model"] == "dall-e-3"
    [served] = world.openai.images.files.values()  # the sandbox answered with a URL to this file
    assert await posted_image(world, reply) == served
    [download] = [r for r in world.openai.requests if "/images/files/" in r.path]
    assert download.api_key is None and "authorization" not in download.headers, "the key stays with the API"
    assert decode_png(served)[:2] == (32, 32)


@pytest.mark.bad_input
async def test_a_bot_without_image_model_says_it_is_not_enabled(world: World) -> None:
    world.write([sage()])
    async with world.running():
        [reply] = await world.chat("!imagine a red fox")
    assert reply.content == "Image generation is not enabled for sage."
    assert world.openai.image_requests == [] and reply.attachments == []


@pytest.mark.bad_input
async def test_an_empty_prompt_gets_a_usage_line(world: World) -> None:
    world.write([sage(image_model="gpt-image-1")])
    async with world.running():
        [reply] = await world.chat("!imagine   ")
    assert reply.content == "Describe the image after `!imagine`, for example `!imagine a red fox in the snow`."
    assert world.openai.image_requests == []


@pytest.mark.fault
async def test_a_content_policy_refusal_is_one_clear_line(world: World) -> None:
    world.write([sage(image_model="gpt-image-1", image_size="16x16")])
    world.openai.inject_image(Fault.content_policy())
    async with world.running():
        [refused] = await world.chat("!imagine something forbidden")
        [drawn] = await world.chat("!imagine a kitten")  # the refusal did not count against anything
    assert refused.content == (
        "The model provider refused this request under its content policy. Try asking for something else."
    )
    assert refused.attachments == [] and drawn.attachments == ["a-kitten.png"]
    assert [r.status for r in world.openai.image_requests] == [400, 200]


@pytest.mark.fault
async def test_an_oversized_download_is_refused_clearly(world: World) -> None:
    world.write([sage(image_model="dall-e-3", image_size="256x256")])
    async with world.running(options=dataclasses.replace(FAST, image_max_bytes=100)):
        [reply] = await world.chat("!imagine a big picture")
    assert reply.content == "The image is larger than 100 bytes, too large to post here."
    assert reply.attachments == []


async def test_images_per_day_per_user_and_per_bot_survive_a_restart(world: World, store_kind: StoreKind) -> None:
    world.database = store_kind.database
    world.write([sage(image_model="gpt-image-1", image_size="16x16", quota={"images_per_day": 2},
                      user_quota={"images_per_day": 1})])  # fmt: skip
    bob = world.discord.add_user("bob")
    carol = world.discord.add_user("carol")
    async with world.running():
        [first] = await world.chat("!imagine one")
        [second] = await world.chat("!imagine two")
        [bobs] = await world.chat("!imagine three", author_id=bob)
        [carols] = await world.chat("!imagine four", author_id=carol)
    assert first.attachments and bobs.attachments
    assert second.content.startswith("You have reached the limit of images per day; it resets in")
    assert carols.content.startswith("This persona has reached the limit of images per day; it resets in")
    assert len(world.openai.image_requests) == 2

    async with world.running():  # a new process reads today's images from the store
        [again] = await world.chat("!imagine five", author_id=bob)
        [usage] = await world.chat("!usage")
    assert again.content.startswith("This persona has reached the limit of images per day")
    assert len(world.openai.image_requests) == 2
    assert "- images today: 1/1 · 2/2" in usage.content


async def test_help_names_imagine_only_where_it_is_enabled(world: World) -> None:
    world.write([sage(image_model="gpt-image-1", user_quota={"images_per_day": 3}), {"name": "hafez", "prefix": "?"}])
    async with world.running():
        [sages] = await world.chat("!help")
        [hafezs] = await world.chat("?help")
    assert "- `!imagine <description>`: I draw it" in sages.content and "3 images per day" in sages.content
    assert "`/usage`, `/panel`, `/imagine`." in sages.content
    assert "imagine" not in hafezs.content


async def test_orchestrator_usage_shows_images_beside_tokens(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.write([sage(image_model="gpt-image-1", image_size="16x16", quota={"images_per_day": 10})])
    async with world.running():
        await world.chat("!imagine one")
        await world.chat("!imagine two")
    for name, variable in world.env().items():
        monkeypatch.setenv(name, variable)
    assert await anyio.to_thread.run_sync(lambda: run_cli("usage", str(world.path), "--days", "1")) == 0
    lines = capsys.readouterr().out.splitlines()
    [sage_line] = [line for line in lines if line.strip().startswith("sage")]
    assert sage_line.split()[1:] == ["0", "tokens", "2", "images", "(of", "10)"]
    assert any(line.split() == ["user", str(world.discord.default_user_id), "0", "2", "images"] for line in lines)


@pytest.mark.bad_input
@pytest.mark.parametrize("size", ["big", "1024", "0x10", "1024x1024x3"])
async def test_a_bad_image_size_is_a_config_error_with_its_line(world: World, size: str) -> None:
    world.write([sage(image_model="gpt-image-1", image_size=size)])
    with pytest.raises(ConfigError) as raised:
        world.load()
    [issue] = raised.value.issues
    assert issue.line is not None and "image_size" in issue.where
    assert f"image_size {size!r} must be WIDTHxHEIGHT in pixels (e.g. 1024x1024, 1792x1024) or auto" in issue.message


async def test_a_data_export_counts_the_users_images(
    world: World, store_kind: StoreKind, capsys: pytest.CaptureFixture[str]
) -> None:
    world.database = store_kind.database
    world.write([sage(image_model="gpt-image-1", image_size="16x16")])
    async with world.running():
        await world.chat("!imagine one")
    user = str(world.discord.default_user_id)
    assert await anyio.to_thread.run_sync(lambda: run_cli("memory", "export", "--user", user, str(world.path))) == 0
    [usage] = json.loads(capsys.readouterr().out)["usage"]
    assert (usage["bot"], usage["tokens"], usage["images"]) == ("sage", 0, 1)


@pytest.mark.fault
async def test_image_requests_are_retried_like_chat_and_a_failure_counts_nothing(world: World) -> None:
    """The pool's retries serve the images endpoint too; an image that never came is not counted."""
    world.write([sage(image_model="gpt-image-1", image_size="16x16", user_quota={"images_per_day": 1})])
    world.openai.inject_image(Fault.server_error(503), *[Fault.server_error(500)] * 3)  # the first try and 3 retries
    async with world.running() as app:
        fake = FakeTime().install(app.pool)
        [busy] = await world.chat("!imagine first try")
        [drawn] = await world.chat("!imagine second try")
    assert busy.content == "The model provider is busy right now. Please try again in a moment."
    assert drawn.attachments == ["second-try.png"], "the failed image did not use up the day's one"
    assert [r.status for r in world.openai.image_requests] == [503, 500, 500, 500, 200]
    assert len(fake.slept) == 3  # max_retries: 3, waits taken from the pool's clock, not real time
