"""The Discord sandbox against the real discord.py client, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import discord
import discord.gateway
import discord.http
import pytest
import yarl
from anyio.streams.text import TextReceiveStream
from discord.ext import commands

from orchestrator.imagesize import ImageInfo, image_info
from orchestrator.sandbox.discord_server import DiscordSandbox, GatewaySession, RestFault

from . import images

TOKEN_A = "token-alpha"
TOKEN_B = "token-beta"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def sandbox(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DiscordSandbox]:
    async with DiscordSandbox() as sandbox:
        monkeypatch.setattr(discord.http.Route, "BASE", sandbox.api_url)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(sandbox.gateway_url))
        yield sandbox


class FastBot(commands.Bot):
    """discord.py sleeps 5 s before every non-initial IDENTIFY; tests need not wait."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass


def make_bot(*, message_content: bool = True, members: bool = False, debug_events: bool = False) -> commands.Bot:
    """A bot with a few commands that exercise the REST routes."""
    intents = discord.Intents.default()
    intents.message_content = message_content
    intents.members = members
    bot = FastBot(
        command_prefix="!",
        intents=intents,
        guild_ready_timeout=0.05,
        chunk_guilds_at_startup=False,
        enable_debug_events=debug_events,
    )

    @bot.command()
    async def ping(ctx: commands.Context[commands.Bot]) -> None:
        async with ctx.typing():
            await ctx.reply("pong", allowed_mentions=discord.AllowedMentions.none())

    @bot.command()
    async def draft(ctx: commands.Context[commands.Bot]) -> None:
        message = await ctx.send("first")
        await message.edit(content="second")
        await message.delete()

    @bot.command()
    async def upload(ctx: commands.Context[commands.Bot]) -> None:
        await ctx.send("see attached", file=discord.File(io.BytesIO(b"hello"), filename="note.txt"))

    return bot


class Inbox:
    """Collects the messages a bot receives; ``next`` waits for one that matches."""

    def __init__(self, bot: commands.Bot) -> None:
        self.messages: list[discord.Message] = []
        self._changed = asyncio.Condition()
        bot.add_listener(self._on_message, "on_message")

    async def _on_message(self, message: discord.Message) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def next(self, predicate: Callable[[discord.Message], bool], timeout: float = 5.0) -> discord.Message:
        with anyio.fail_after(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: any(map(predicate, self.messages)))
        return next(message for message in self.messages if predicate(message))


@asynccontextmanager
async def running(sandbox: DiscordSandbox, *bots: tuple[commands.Bot, str]) -> AsyncIterator[None]:
    """Run bots with ``bot.start`` in a task group until the block ends, then close them."""
    async with anyio.create_task_group() as tg:
        for bot, token in bots:
            tg.start_soon(bot.start, token)
        try:
            with anyio.fail_after(5):
                for bot, token in bots:
                    await sandbox.wait_for_ready(token)
                    await bot.wait_until_ready()
            yield
        finally:
            with anyio.move_on_after(5, shield=True):
                for bot, _ in bots:
                    await bot.close()


async def test_guild_create_lists_every_member_only_with_the_members_intent(sandbox: DiscordSandbox) -> None:
    bots = {"plain": make_bot(debug_events=True), "members": make_bot(members=True, debug_events=True)}
    ids = {"plain": sandbox.add_bot(TOKEN_A, "plain"), "members": sandbox.add_bot(TOKEN_B, "members")}
    listed: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for name, bot in bots.items():

        async def on_socket_raw_receive(raw: str, name: str = name) -> None:
            payload = json.loads(raw)
            if payload.get("t") == "GUILD_CREATE":
                listed[name] = [int(member["user"]["id"]) for member in payload["d"]["members"]]
                counts[name] = payload["d"]["member_count"]

        bot.add_listener(on_socket_raw_receive, "on_socket_raw_receive")
    async with running(sandbox, (bots["plain"], TOKEN_A), (bots["members"], TOKEN_B)):
        pass
    assert listed["plain"] == [ids["plain"]]  # as on Discord without the privileged intent: only itself
    assert set(ids.values()) < set(listed["members"])
    assert counts["plain"] == counts["members"] == len(listed["members"])  # the count is the guild's either way


def statuses(sandbox: DiscordSandbox, method: str, suffix: str) -> list[int]:
    return [status for m, path, status in sandbox.rest_log if m == method and path.endswith(suffix)]


async def test_two_bots_reach_ready_and_see_the_guild_and_each_other(sandbox: DiscordSandbox) -> None:
    alpha, beta = make_bot(), make_bot()
    alpha_id, beta_id = sandbox.add_bot(TOKEN_A, "alpha"), sandbox.add_bot(TOKEN_B, "beta")
    beta_inbox = Inbox(beta)
    async with running(sandbox, (alpha, TOKEN_A), (beta, TOKEN_B)):
        for bot, user_id in ((alpha, alpha_id), (beta, beta_id)):
            assert bot.user is not None and bot.user.id == user_id
            guild = bot.get_guild(sandbox.guild_id)
            assert guild is not None and guild.name == "Sandbox"
            channel = guild.get_channel(sandbox.channel_id)
            assert isinstance(channel, discord.TextChannel) and channel.name == "general"
            assert guild.me.id == user_id
        channel = alpha.get_channel(sandbox.channel_id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("hello from alpha")
        seen = await beta_inbox.next(lambda m: m.author.id == alpha_id)
    assert seen.content == "hello from alpha" and seen.author.bot
    assert sandbox.identify_count == {TOKEN_A: 1, TOKEN_B: 1}


async def test_bot_restricted_to_one_guild_does_not_see_another(sandbox: DiscordSandbox) -> None:
    alpha, beta = make_bot(), make_bot()
    guild_a, channel_a = sandbox.guild_id, sandbox.channel_id
    alpha_id = sandbox.add_bot(TOKEN_A, "alpha", guilds=[guild_a])
    beta_id = sandbox.add_bot(TOKEN_B, "beta")  # unrestricted: also a member of guilds added later
    guild_b = sandbox.add_guild("Other")
    channel_b = sandbox.add_channel("elsewhere", guild_b)
    alpha_inbox, beta_inbox = Inbox(alpha), Inbox(beta)
    async with running(sandbox, (alpha, TOKEN_A), (beta, TOKEN_B)):
        assert [guild.id for guild in alpha.guilds] == [guild_a]
        assert alpha.get_guild(guild_b) is None and alpha.get_channel(channel_b) is None
        assert sorted(guild.id for guild in beta.guilds) == sorted([guild_a, guild_b])
        seen_by_beta = beta.get_guild(guild_b)
        assert seen_by_beta is not None and seen_by_beta.member_count == 2  # alice and beta, not alpha
        assert isinstance(beta.get_channel(channel_b), discord.TextChannel)

        await sandbox.post("in guild B", channel_id=channel_b)
        await sandbox.post("in guild A", channel_id=channel_a)
        # Alpha's events arrive in order on one socket: once it has A's message, B's would have come.
        await alpha_inbox.next(lambda m: m.content == "in guild A")
        from_b = await beta_inbox.next(lambda m: m.content == "in guild B")
        await beta_inbox.next(lambda m: m.content == "in guild A")
        assert from_b.guild is not None and from_b.guild.id == guild_b
        assert [m.content for m in alpha_inbox.messages] == ["in guild A"]

        with pytest.raises(discord.Forbidden) as forbidden:
            await alpha.get_partial_messageable(channel_b).send("not my guild")
        sent_by_beta = await beta.get_partial_messageable(channel_b).send("my guild too")
    assert (forbidden.value.status, forbidden.value.code) == (403, 50001)
    assert forbidden.value.text == "Missing Access"
    assert sandbox.sent_by(alpha_id) == []
    assert [m.id for m in sandbox.sent_by(beta_id)] == [sent_by_beta.id]
    assert statuses(sandbox, "POST", f"/channels/{channel_b}/messages") == [403, 200]


def test_add_bot_rejects_unknown_guilds() -> None:
    sandbox = DiscordSandbox()
    with pytest.raises(KeyError):
        sandbox.add_bot(TOKEN_A, "alpha", guilds=[12345])
    assert sandbox.add_bot(TOKEN_A, "alpha", guilds=[]) > 0  # a member of no guild at all


async def test_ping_command_is_answered_with_a_reply_while_typing(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    bot_id = sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        posted = await sandbox.post("!ping")
        (reply,) = await sandbox.wait_for_sent()
    assert reply.content == "pong" and reply.author_id == bot_id
    assert reply.reference_id == int(posted["id"])
    assert reply.allowed_mentions == {"parse": []}
    assert (bot_id, sandbox.channel_id) in sandbox.typing
    assert sandbox.sent_by(bot_id) == [reply]


async def test_edit_and_delete_are_recorded(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.post("!draft")
        (record,) = await sandbox.wait_for_sent(predicate=lambda m: m.deleted)
    assert record.edits == ["second"] and record.content == "second"


async def test_multipart_upload_is_recorded(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.post("!upload")
        (record,) = await sandbox.wait_for_sent()
    assert record.content == "see attached" and record.attachments == ["note.txt"]


async def test_a_bot_upload_is_stored_and_served_at_its_url(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    picture = images.png(64, 48)
    async with running(sandbox, (bot, TOKEN_A)):
        channel = bot.get_channel(sandbox.channel_id)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send(
            "a picture", file=discord.File(io.BytesIO(picture), filename="red.png", description="all red")
        )
        (record,) = await sandbox.wait_for_sent()
        [upload] = record.uploads
        async with aiohttp.ClientSession() as http, http.get(upload["url"]) as served:
            assert served.status == 200 and served.content_type == "image/png"
            assert await served.read() == picture
        fetched = await channel.fetch_message(sent.id)
    [attachment] = sent.attachments
    assert (attachment.filename, attachment.size) == ("red.png", len(picture))
    assert (attachment.width, attachment.height) == (64, 48)
    assert attachment.content_type == "image/png" and attachment.description == "all red"
    assert fetched.attachments[0].url == attachment.url == upload["url"]
    assert sandbox.attachment_bytes(attachment.url) == picture and record.attachments == ["red.png"]


@pytest.mark.parametrize(
    ("filename", "data", "content_type", "size"),
    [
        ("cat.png", images.png(64, 48), "image/png", (64, 48)),
        ("cat.gif", images.gif(20, 10), "image/gif", (20, 10)),
        ("cat.jpg", images.jpeg(300, 200), "image/jpeg", (300, 200)),
        ("cat.webp", images.webp(640, 480), "image/webp", (640, 480)),
        ("notes.txt", b"plain words", "text/plain", None),
    ],
)
async def test_a_posted_attachment_reaches_the_bot_and_its_bytes_are_served(
    sandbox: DiscordSandbox, filename: str, data: bytes, content_type: str, size: tuple[int, int] | None
) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    inbox = Inbox(bot)
    async with running(sandbox, (bot, TOKEN_A)):
        posted = await sandbox.post("look", attachments=[{"filename": filename, "data": data}])
        message = await inbox.next(lambda m: m.id == int(posted["id"]))
        [attachment] = message.attachments
        read = await attachment.read()  # discord.py downloads it from the sandbox's URL
        sandbox.delete_attachment(attachment.url)
        with pytest.raises(discord.NotFound):
            await attachment.read()
    assert read == data
    assert (attachment.filename, attachment.size, attachment.content_type) == (filename, len(data), content_type)
    assert (None if attachment.width is None else (attachment.width, attachment.height)) == size


async def test_a_file_posted_through_the_http_control_surface_is_served(sandbox: DiscordSandbox) -> None:
    body = {"content": "look", "attachments": [{"filename": "cat.gif", "data_base64": "R0lGODlhAgADAAAAADs="}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(sandbox.base_url + "/_sandbox/messages", json=body) as posted:
            [attachment] = (await posted.json())["attachments"]
        async with http.get(attachment["url"]) as served:
            data = await served.read()
    assert (attachment["width"], attachment["height"], attachment["content_type"]) == (2, 3, "image/gif")
    assert data == images.gif(2, 3)


def test_image_headers_are_read_and_anything_else_is_refused() -> None:
    assert image_info(images.png(3, 2)) == ImageInfo("png", 3, 2)
    assert str(image_info(images.jpeg(300, 200))) == "300x200 jpeg"
    assert image_info(images.png(3, 2)[:20]) is None  # truncated
    assert image_info(b"\x89PNG\r\n\x1a\n not really") is None
    assert image_info(b"%PDF-1.7") is None


async def test_too_long_and_empty_messages_are_rejected_like_discord(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        channel = bot.get_channel(sandbox.channel_id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        with pytest.raises(discord.HTTPException) as empty:
            await channel.send("")
    assert (too_long.value.status, too_long.value.code) == (400, 50035)
    assert (empty.value.status, empty.value.code) == (400, 50006)
    assert sandbox.sent == []


async def test_unknown_or_removed_token_fails_login(sandbox: DiscordSandbox) -> None:
    sandbox.add_bot(TOKEN_A, "alpha")
    sandbox.remove_bot(TOKEN_A)
    for token in ("no-such-token", TOKEN_A):
        bot = make_bot()
        with pytest.raises(discord.LoginFailure):
            await bot.start(token)
        await bot.close()
    assert statuses(sandbox, "GET", "/users/@me") == [401, 401]


async def test_token_revoked_while_connected_gets_close_4004_on_identify(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    close_codes: list[int | None] = []

    async def run() -> None:
        try:
            await bot.start(TOKEN_A)
        except discord.ConnectionClosed as exc:
            close_codes.append(exc.code)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await sandbox.wait_for_ready(TOKEN_A)
            sandbox.remove_bot(TOKEN_A)
            await sandbox.drop_gateway(TOKEN_A, resumable=False)
    await bot.close()
    assert close_codes == [4004]
    assert sandbox.identify_count[TOKEN_A] == 2


@pytest.mark.parametrize("global_", [False, True], ids=["per-route", "global"])
async def test_injected_429_is_retried_by_discord_py(sandbox: DiscordSandbox, global_: bool) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    sandbox.inject_rest(RestFault(429, method="POST", path_contains="/messages", global_=global_))
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.post("!ping")
        (reply,) = await sandbox.wait_for_sent()
    assert reply.content == "pong"
    assert sandbox.faults == []
    assert statuses(sandbox, "POST", "/messages") == [429, 200]


async def test_injected_500_is_retried_by_discord_py(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        channel = bot.get_channel(sandbox.channel_id)
        assert isinstance(channel, discord.TextChannel)
        sandbox.inject_rest(RestFault(500, method="POST"))
        message = await channel.send("after the outage")
    assert message.content == "after the outage"
    assert statuses(sandbox, "POST", "/messages") == [500, 200]


async def test_resumable_drop_resumes_the_session(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        session_id = sandbox.sessions[TOKEN_A].session_id
        await sandbox.drop_gateway(TOKEN_A, resumable=True)
        session = await sandbox.wait_for_ready(TOKEN_A)
        await sandbox.post("!ping")
        await sandbox.wait_for_sent()
    assert session.session_id == session_id
    assert (sandbox.identify_count[TOKEN_A], sandbox.resume_count[TOKEN_A]) == (1, 1)


async def test_events_missed_while_disconnected_are_replayed_on_resume_only(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.drop_gateway(TOKEN_A, resumable=True)
        await sandbox.post("!ping")  # while alpha is away
        await sandbox.wait_for_sent()  # replayed on RESUME, answered
        await sandbox.drop_gateway(TOKEN_A, resumable=False)
        await sandbox.post("!ping")  # a new session gets no replay
        await sandbox.wait_for_ready(TOKEN_A)
        await sandbox.post("!ping")
        await sandbox.wait_for_sent(2)
    assert (sandbox.identify_count[TOKEN_A], sandbox.resume_count[TOKEN_A]) == (2, 1)
    assert len(sandbox.sent) == 2


async def test_invalid_session_makes_the_client_identify_again(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.drop_gateway(TOKEN_A, resumable=False)
        await sandbox.wait_for_ready(TOKEN_A)
        await sandbox.post("!ping")
        await sandbox.wait_for_sent()
    assert (sandbox.identify_count[TOKEN_A], sandbox.resume_count[TOKEN_A]) == (2, 0)


async def test_reply_to_a_bot_message_resolves_the_bot_as_author(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    bot_id = sandbox.add_bot(TOKEN_A, "alpha")
    inbox = Inbox(bot)
    async with running(sandbox, (bot, TOKEN_A)):
        channel = bot.get_channel(sandbox.channel_id)
        assert isinstance(channel, discord.TextChannel)
        own = await channel.send("I am a bot")
        await sandbox.post("replying to you", reply_to=own.id)
        reply = await inbox.next(lambda m: m.author.id == sandbox.default_user_id)
    assert reply.type is discord.MessageType.reply
    assert reply.reference is not None and reply.reference.message_id == own.id
    resolved = reply.reference.resolved
    assert isinstance(resolved, discord.Message) and resolved.author.id == bot_id


async def test_missing_message_content_intent_blanks_content_unless_mentioned(sandbox: DiscordSandbox) -> None:
    bot = make_bot(message_content=False)
    bot_id = sandbox.add_bot(TOKEN_A, "alpha")
    inbox = Inbox(bot)
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.post("!ping")
        await sandbox.post(f"<@{bot_id}> hi", mentions=[bot_id])
        plain = await inbox.next(lambda m: not m.mentions)
        mentioned = await inbox.next(lambda m: bool(m.mentions))
    assert plain.content == ""
    assert mentioned.content == f"<@{bot_id}> hi"
    assert sandbox.sent == []


async def test_without_the_intent_a_reply_to_the_bot_is_readable_and_a_reply_to_another_is_not(
    sandbox: DiscordSandbox,
) -> None:
    bot = make_bot(message_content=False)
    bot_id = sandbox.add_bot(TOKEN_A, "alpha")
    inbox = Inbox(bot)
    async with running(sandbox, (bot, TOKEN_A)):
        own = await sandbox.post("!ping", mentions=[bot_id])  # mentioned, so readable: the bot replies "pong"
        (pong,) = await sandbox.wait_for_sent()
        await sandbox.post("thanks", reply_to=pong.id)
        await sandbox.post("me too", reply_to=int(own["id"]))  # a reply to alice, not to the bot
        to_bot = await inbox.next(lambda m: m.reference is not None and m.reference.message_id == pong.id)
        to_alice = await inbox.next(
            lambda m: m.reference is not None and m.reference.message_id == int(own["id"]) and not m.author.bot
        )
    assert (to_bot.content, to_alice.content) == ("thanks", "")
    assert sandbox.identified_intents[TOKEN_A] == [bot.intents.value]


async def test_an_application_without_the_intent_enabled_is_refused_it_and_reads_blank_text(
    sandbox: DiscordSandbox,
) -> None:
    bot_id = sandbox.add_bot(TOKEN_A, "alpha")
    sandbox.set_message_content_intent(TOKEN_A, False)
    asking = make_bot(message_content=True)
    with pytest.raises(discord.PrivilegedIntentsRequired):
        with anyio.fail_after(5):
            await asking.start(TOKEN_A)
    await asking.close()
    assert sandbox.identified_intents[TOKEN_A] == [asking.intents.value]

    plain = await sandbox.post("hello all")
    mention = await sandbox.post(f"<@{bot_id}> hi", mentions=[bot_id])
    dm = await sandbox.post("in private", guild=False, dm_to=TOKEN_A)
    auth = {"Authorization": f"Bot {TOKEN_A}"}
    async with aiohttp.ClientSession() as http:

        async def read(message: dict[str, object]) -> str:
            url = f"{sandbox.api_url}/channels/{message['channel_id']}/messages"
            async with http.get(f"{url}/{message['id']}", headers=auth) as one, http.get(url, headers=auth) as page:
                listed = {m["id"]: m["content"] for m in await page.json()}
                text: str = (await one.json())["content"]
                assert listed[message["id"]] == text
                return text

        assert [await read(m) for m in (plain, mention, dm)] == ["", f"<@{bot_id}> hi", "in private"]
        sandbox.set_message_content_intent(TOKEN_A, True)
        assert await read(plain) == "hello all"


async def test_dm_reaches_only_its_bot_and_the_reply_stays_in_the_dm(sandbox: DiscordSandbox) -> None:
    alpha, beta = make_bot(), make_bot()
    alpha_id = sandbox.add_bot(TOKEN_A, "alpha")
    sandbox.add_bot(TOKEN_B, "beta")
    alpha_inbox, beta_inbox = Inbox(alpha), Inbox(beta)
    async with running(sandbox, (alpha, TOKEN_A), (beta, TOKEN_B)):
        posted = await sandbox.post("!ping", guild=False, dm_to=TOKEN_A)
        (reply,) = await sandbox.wait_for_sent()
        received = await alpha_inbox.next(lambda m: m.author.id == sandbox.default_user_id)
    assert received.guild is None and isinstance(received.channel, discord.DMChannel)
    assert reply.author_id == alpha_id and reply.channel_id == int(posted["channel_id"]) != sandbox.channel_id
    assert beta_inbox.messages == []


async def test_rest_responses_carry_discord_headers(sandbox: DiscordSandbox) -> None:
    sandbox.add_bot(TOKEN_A, "alpha")
    auth = {"Authorization": f"Bot {TOKEN_A}"}
    messages_url = f"{sandbox.api_url}/channels/{sandbox.channel_id}/messages"
    sandbox.inject_rest(RestFault(429, path_contains="/messages", retry_after=0.25, global_=True))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.api_url}/users/@me", headers=auth) as me:
            assert me.headers["Content-Type"] == "application/json"
            assert int(me.headers["X-RateLimit-Remaining"]) > 0 and "X-RateLimit-Bucket" in me.headers
        async with http.get(f"{sandbox.api_url}/users/@me", headers={"Authorization": "Bot wrong"}) as denied:
            assert denied.status == 401 and await denied.json() == {"message": "401: Unauthorized", "code": 0}
        async with http.post(messages_url, json={"content": "hi"}, headers=auth) as limited:
            assert limited.status == 429
            assert limited.headers["Via"] == "1.1 google"
            assert limited.headers["X-RateLimit-Global"] == "true"
            assert limited.headers["X-RateLimit-Scope"] == "global"
            assert limited.headers["Retry-After"] == "1"
            body = await limited.json()
            assert body == {"message": "You are being rate limited.", "retry_after": 0.25, "global": True}


async def test_enforce_nonce_returns_the_first_message_within_the_window_only(sandbox: DiscordSandbox) -> None:
    sandbox.add_bot(TOKEN_A, "alpha")
    auth = {"Authorization": f"Bot {TOKEN_A}"}
    messages_url = f"{sandbox.api_url}/channels/{sandbox.channel_id}/messages"

    async def post(content: str, nonce: str, **extra: object) -> int:
        async with aiohttp.ClientSession() as http:
            payload = {"content": content, "nonce": nonce, **extra}
            async with http.post(messages_url, json=payload, headers=auth) as response:
                assert response.status == 200
                return int((await response.json())["id"])

    first = await post("one", "n1", enforce_nonce=True)
    assert await post("one again", "n1", enforce_nonce=True) == first
    assert await post("without enforce_nonce", "n1") != first
    assert await post("another nonce", "n2", enforce_nonce=True) != first
    sandbox.nonce_window = 0.0  # "the past few minutes" are over
    assert await post("one, much later", "n1", enforce_nonce=True) != first
    assert [m.content for m in sandbox.sent] == ["one", "without enforce_nonce", "another nonce", "one, much later"]


async def test_channel_history_is_listed_newest_first_without_gateway_only_fields(sandbox: DiscordSandbox) -> None:
    sandbox.add_bot(TOKEN_A, "alpha")
    ids = [int((await sandbox.post(f"m{i}"))["id"]) for i in range(5)]
    other = sandbox.add_channel("other")
    await sandbox.post("elsewhere", channel_id=other)
    url = f"{sandbox.api_url}/channels/{sandbox.channel_id}/messages"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {TOKEN_A}"}) as http:

        async def listed(**query: int) -> list[dict[str, object]]:
            async with http.get(url, params=query) as response:
                assert response.status == 200
                return await response.json()

        assert [m["content"] for m in await listed()] == ["m4", "m3", "m2", "m1", "m0"]
        assert [m["content"] for m in await listed(after=ids[2])] == ["m4", "m3"]
        assert [m["content"] for m in await listed(after=ids[0], limit=2)] == ["m2", "m1"], "the oldest after"
        assert [m["content"] for m in await listed(before=ids[2], limit=1)] == ["m1"]
        assert not any("guild_id" in m or "member" in m for m in await listed())
        async with http.get(url, params={"limit": 101}) as refused:
            assert refused.status == 400


async def test_control_api_posts_as_a_user_and_lists_sent_messages(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    async with running(sandbox, (bot, TOKEN_A)), aiohttp.ClientSession() as http:
        async with http.post(f"{sandbox.base_url}/_sandbox/messages", json={"content": "!ping"}) as posted:
            assert posted.status == 200
        await sandbox.wait_for_sent()
        async with http.get(f"{sandbox.base_url}/_sandbox/sent") as sent:
            assert [message["content"] for message in await sent.json()] == ["pong"]


async def test_cli_prints_urls_and_exits_cleanly_on_sigterm() -> None:
    command = [sys.executable, "-m", "orchestrator.sandbox.discord_server", "--bot", "tok=cli-bot"]
    async with await anyio.open_process(command, cwd=PROJECT_ROOT) as process:
        assert process.stdout is not None
        output = ""
        with anyio.fail_after(10):
            async for chunk in TextReceiveStream(process.stdout):
                output += chunk
                if "gateway_url=" in output:
                    break
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0
    assert "api_url=http://127.0.0.1:" in output and "/api/v10" in output
    assert "gateway_url=ws://127.0.0.1:" in output


async def test_heartbeat_latency_is_a_round_trip_not_an_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """discord.py's keep-alive thread records a heartbeat as sent only once it has the GIL again. An
    ACK read before that (sent at once by a sandbox in the same process) was measured against the
    previous heartbeat: a latency of a whole interval, and "Can't keep up, ... 41.3s behind" with
    Discord's 41.25 s interval. That warning needs a latency over 10 s; with short intervals the
    latency itself shows it."""
    caplog.set_level(logging.WARNING, logger="discord.gateway")
    interval = 0.3
    latencies = await heartbeat_latencies(monkeypatch, interval)
    assert max(latencies) < interval / 2, latencies
    assert not [r.getMessage() for r in caplog.records if "Can't keep up" in r.getMessage()]


async def heartbeat_latencies(monkeypatch: pytest.MonkeyPatch, interval: float) -> list[float]:
    """``client.latency`` of eight clients after each of their keep-alive threads' first heartbeats
    (they beat together, so the threads wait for the GIL while the loop handles the others)."""
    async with DiscordSandbox(heartbeat_interval_ms=int(interval * 1000)) as sandbox:
        monkeypatch.setattr(discord.http.Route, "BASE", sandbox.api_url)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(sandbox.gateway_url))
        bots = [(make_bot(), f"token-{i}") for i in range(8)]
        for i, (_, token) in enumerate(bots):
            sandbox.add_bot(token, f"bot{i}")
        latencies: list[float] = []
        async with running(sandbox, *bots):
            for beat in range(2, 6):  # the keep-alive thread's heartbeats (the first follows IDENTIFY)
                for bot, token in bots:
                    session = sandbox.sessions[token]

                    def beaten(session: GatewaySession = session, beat: int = beat) -> bool | None:
                        return session.heartbeats >= beat or None

                    await sandbox.state.wait(beaten, 5, "a heartbeat")
                    latencies.append(bot.latency)  # the previous heartbeat's ACK has been read by now
    return latencies


async def test_round_trip_returns_once_the_client_has_read_what_was_dispatched(sandbox: DiscordSandbox) -> None:
    bot = make_bot()
    sandbox.add_bot(TOKEN_A, "alpha")
    inbox = Inbox(bot)
    with pytest.raises(LookupError):
        await sandbox.round_trip(TOKEN_A)
    async with running(sandbox, (bot, TOKEN_A)):
        await sandbox.post("one")
        await sandbox.post("two")
        await sandbox.round_trip(TOKEN_A)
        assert bot.ws.sequence == sandbox.sessions[TOKEN_A].seq
        assert [message.content for message in inbox.messages] == ["one", "two"]
