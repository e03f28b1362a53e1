"""Files sent to a persona: images reach the model as image parts (vision), text files as text, and
anything the persona cannot read gets a reply naming the file (real discord.py and openai SDK over
the loopback sandboxes, which store, serve and look at the files themselves)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from orchestrator.sandbox.openai_server import said

from . import images
from .conftest import World

CAT = images.png(64, 48)


def image(name: str = "cat.png", data: bytes = CAT, content_type: str | None = None) -> dict[str, Any]:
    return {"filename": name, "data": data, **({"content_type": content_type} if content_type else {})}


def sage(world: World, vision: object = True, **settings: object) -> None:
    world.write([{"name": "sage", "vision": vision, **settings}])


def last_user_message(world: World, request: int = -1) -> dict[str, Any]:
    message: dict[str, Any] = world.openai.chat_requests[request].body["messages"][-1]
    return message


@pytest.mark.parametrize(
    ("inline", "stream"), [(False, False), (True, False), (False, True)], ids=["by-url", "inline", "streamed"]
)
async def test_an_image_reaches_the_model_as_an_image_part(world: World, inline: bool, stream: bool) -> None:
    sage(world, {"inline": inline}, stream=stream)
    async with world.running():
        [reply] = await world.chat("!chat what is this?", attachments=[image()])
    [request] = world.openai.chat_requests
    assert request.images == [f"image {'inline' if inline else 'cat.png'} 64x48 png"]  # what the sandbox saw
    assert reply.content.endswith(f"| saw image {'inline' if inline else 'cat.png'} 64x48 png")
    parts = last_user_message(world)["content"]
    assert [part["type"] for part in parts] == ["text", "image_url"]
    assert parts[0]["text"].endswith("what is this?\n[image: cat.png]")
    url = parts[1]["image_url"]["url"]
    posted = world.discord.state.messages[int(reply.reference_id or 0)]
    if inline:
        assert url == "data:image/png;base64," + base64.b64encode(CAT).decode()
    else:
        assert url == posted["attachments"][0]["url"]


async def test_an_image_alone_after_the_command_is_enough(world: World) -> None:
    sage(world)
    async with world.running():
        [reply] = await world.chat("!chat", attachments=[image("cat.gif", images.gif(20, 10))])
    assert reply.content.endswith("| saw image cat.gif 20x10 gif")
    assert last_user_message(world)["content"][0]["text"].endswith("[image: cat.gif]")


async def test_a_persona_without_vision_says_it_cannot_see_images(world: World) -> None:
    sage(world, False)
    async with world.running():
        [reply] = await world.chat("!chat look", attachments=[image()])
    assert reply.content == (
        "I can't see images, so I can't look at `cat.png`. Describe it in words, or ask an admin to turn on "
        "`vision` for sage."
    )
    assert world.openai.chat_requests == []


async def test_memory_and_the_next_request_keep_the_file_name_not_the_bytes(world: World) -> None:
    sage(world, {"inline": True})
    async with world.running():
        await world.chat("!chat what is this?", attachments=[image()])
        await world.chat("!chat and now?")
    earlier = world.openai.chat_requests[1].body["messages"]
    assert said(earlier[1]) == "what is this?\n[image: cat.png]"
    assert "base64" not in str(earlier) and isinstance(earlier[-1]["content"], str)


async def test_a_text_attachment_is_added_as_text(world: World) -> None:
    sage(world, False)  # text files need no vision
    notes = "first line\nsecond line"
    async with world.running():
        await world.chat("!chat summarise", attachments=[{"filename": "notes.md", "data": notes.encode()}])
        await world.chat("!chat again")
    assert said(last_user_message(world, 0)) == (
        "summarise\n[file notes.md]\nfirst line\nsecond line\n[end of notes.md]"
    )
    assert said(world.openai.chat_requests[1].body["messages"][1]) == "summarise\n[file: notes.md]"  # memory


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("files", "settings", "expected"),
    [
        pytest.param(
            [image("big.png", images.png(400, 400))], {"max_bytes": 1000},
            "`big.png` is {size}; I read images up to 1 KB.", id="oversized-image",
        ),
        pytest.param(
            [{"filename": "long.txt", "data": b"x" * 150_000}], {},
            "`long.txt` is 150 KB; I read text files up to 100 KB.", id="oversized-text",
        ),
        pytest.param(
            [{"filename": "report.pdf", "data": b"%PDF-1.7"}], {},
            "I can't read `report.pdf`: I read images (PNG, JPEG, WebP, GIF) and text files (.txt, .md, .py, .json, "
            ".csv) only.", id="unsupported",
        ),
        pytest.param(
            [image(f"cat{i}.png") for i in range(3)], {"max_images": 2},
            "You sent 3 images; I look at 2 per message at most. Send them in smaller groups.", id="too-many",
        ),
        pytest.param(
            [image("cat.png", b"\x89PNG\r\n\x1a\n but then nothing", "image/png")], {},
            "`cat.png` is not a PNG, JPEG, WebP or GIF image I can read: the file is damaged or of another kind.",
            id="corrupt-image",
        ),
        pytest.param(
            [image("cat.jpg", b"just words", "image/jpeg")], {},
            "`cat.jpg` is not a PNG, JPEG, WebP or GIF image I can read: the file is damaged or of another kind.",
            id="not-an-image",
        ),
        pytest.param(
            [{"filename": "data.json", "data": b"\xff\xfe{}"}], {},
            "`data.json` is not UTF-8 text; save it as UTF-8 and send it again.", id="not-utf8",
        ),
    ],
)  # fmt: skip
async def test_a_file_the_persona_cannot_read_gets_a_reply_naming_it(
    world: World, files: list[dict[str, Any]], settings: dict[str, Any], expected: str
) -> None:
    sage(world, settings or True)
    async with world.running():
        [reply] = await world.chat("!chat look", attachments=files)
    big = files[0]["data"]
    assert reply.content == expected.format(size=f"{len(big) / 1000:.3g} KB")
    assert world.openai.chat_requests == []


@pytest.mark.bad_input
async def test_an_attachment_whose_url_is_gone_gets_a_reply_naming_it(world: World) -> None:
    sage(world)
    gone = {"filename": "gone.png", "size": 2048, "content_type": "image/png"}  # no bytes: its URL answers 404
    async with world.running():
        [reply] = await world.chat("!chat look", attachments=[gone])
    assert reply.content == "I couldn't download `gone.png` (HTTP 404); it may have been deleted. Send it again."
    assert world.openai.chat_requests == []


async def test_channel_context_names_the_files_others_posted(world: World) -> None:
    world.write([{"name": "sage", "vision": True, "context": {"channel_messages": 5}}])
    bob = world.discord.add_user("bob")
    async with world.running():
        await world.discord.post("my cat", author_id=bob, attachments=[image(), {"filename": "a.pdf", "data": b"%PDF"}])
        await world.chat("!chat what did bob post?")
    heard = [said(m) for m in world.openai.chat_requests[0].body["messages"] if m["role"] == "user"]
    assert heard == ["my cat\n[image: cat.png] [file: a.pdf]", "what did bob post?"]


async def test_an_image_counts_against_quotas_by_the_providers_reported_usage(world: World) -> None:
    sage(world, {"inline": True})
    async with world.running() as app:
        [reply] = await world.chat("!chat what is this?", attachments=[image()])
        used = app.pool.quotas.report("sage").tokens_today
    [request] = world.openai.chat_requests
    contents = [m["content"] for m in request.body["messages"]]
    texts = [content if isinstance(content, str) else content[0]["text"] for content in contents]
    # The sandbox bills 85 tokens per image (module docstring); the reservation estimated 765 for it.
    reported = sum(len(text) // 4 + 4 for text in texts) + 85 + len(reply.content) // 4 + 1
    assert used == reported
