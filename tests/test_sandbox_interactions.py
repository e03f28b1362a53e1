"""The sandbox's application commands and interactions against discord.py's own ``app_commands``."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import anyio
import discord
import pytest
from discord import app_commands

from orchestrator.sandbox.discord_server import DiscordSandbox
from orchestrator.sandbox.discord_server.interactions import ACK_DEADLINE, TOKEN_LIFETIME

from . import images
from .fake_time import FakeTime
from .test_sandbox_discord import TOKEN_A, running, sandbox  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio


class TreeBot(discord.Client):
    """A client with a command tree: ``/echo text``, answered at once, and ``/slow``, deferred then
    answered by an edit and an ephemeral follow-up; ``gate`` holds ``/slow`` until a test lets it go."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents(guilds=True, guild_messages=True), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.gate = anyio.Event()
        self.errors: list[BaseException] = []
        self.errored = anyio.Event()  # replaced after each error
        self.events: list[tuple[str, str]] = []  # (token, gateway event) dispatched to this bot

        @self.tree.command(description="Say it back")
        async def echo(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message(f"echo: {text}", ephemeral=text == "secret")

        @self.tree.command(description="Think first")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await self.gate.wait()
            try:
                await interaction.edit_original_response(content="done thinking")
                await interaction.followup.send("just for you", ephemeral=True)
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @self.tree.error
        async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.errors.append(error)
            self.errored.set()
            self.errored = anyio.Event()


@pytest.fixture
async def bot(sandbox: DiscordSandbox) -> AsyncIterator[TreeBot]:  # noqa: F811
    sandbox.add_bot(TOKEN_A, "alpha")
    client = TreeBot()
    sandbox.gateway.on_dispatch = lambda session, event, data: client.events.append((session.token, event))
    async with running(sandbox, (client, TOKEN_A)):
        yield client


async def test_bulk_overwrite_registers_and_lists_commands(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    assert bot.application_id is not None
    synced = await bot.tree.sync()
    assert sorted(command.name for command in synced) == ["echo", "slow"]
    again = await bot.tree.sync()
    assert [c.id for c in again] == [c.id for c in synced]  # a command keeps its id across overwrites
    assert len(sandbox.interactions.registrations) == 2
    assert sandbox.interactions.registered(bot.application_id) == ["echo", "slow"]
    fetched = await bot.tree.fetch_commands()
    assert sorted(c.name for c in fetched) == ["echo", "slow"]
    guild = discord.Object(sandbox.guild_id)
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    assert sandbox.interactions.registered(bot.application_id, sandbox.guild_id) == ["echo", "slow"]


@pytest.mark.bad_input
async def test_invalid_command_names_are_refused_like_discord(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    assert bot.application_id is not None
    with pytest.raises(discord.HTTPException) as refused:
        await bot.http.bulk_upsert_global_commands(bot.application_id, [{"name": "Bad Name", "description": "x"}])
    assert refused.value.status == 400 and refused.value.code == 50035
    assert not sandbox.interactions.registrations


async def test_a_command_is_answered_and_an_ephemeral_one_is_marked(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    await bot.tree.sync()
    record = await sandbox.interact(TOKEN_A, "echo", {"text": "hi"})
    await sandbox.interactions.wait(record, lambda r: r.answered)
    assert record.callback_type == 4 and record.text() == "echo: hi" and not record.messages[0].ephemeral
    secret = await sandbox.interact(TOKEN_A, "echo", {"text": "secret"})
    await sandbox.interactions.wait(secret, lambda r: r.answered)
    assert secret.messages[0].ephemeral


async def test_deferred_then_edited_then_followed_up(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    await bot.tree.sync()
    record = await sandbox.interact(TOKEN_A, "slow")
    await sandbox.interactions.wait(record, lambda r: r.original is not None)
    assert record.callback_type == 5 and record.messages[0].loading  # "alpha is thinking…"
    bot.gate.set()
    await sandbox.interactions.wait(record, lambda r: len(r.messages) == 2)
    original, follow_up = record.messages
    assert (original.content, original.ephemeral, original.loading) == ("done thinking", False, False)
    assert (follow_up.content, follow_up.ephemeral) == ("just for you", True)
    assert sandbox.state.messages[original.id]["content"] == "done thinking"  # in the channel, for everyone
    assert follow_up.id not in sandbox.state.messages
    events = [event for _session, event in bot.events if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE")]
    assert events == ["MESSAGE_CREATE", "MESSAGE_UPDATE"]  # "thinking…", then the answer; nothing ephemeral


async def test_edits_and_follow_ups_carry_files_and_an_edit_keeps_only_the_attachments_it_lists(
    sandbox: DiscordSandbox,  # noqa: F811
    bot: TreeBot,
) -> None:
    edits: list[discord.InteractionMessage] = []

    @bot.tree.command(description="Files")
    async def files(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        both = [discord.File(io.BytesIO(images.png(8, 4)), "one.png"), discord.File(io.BytesIO(b"hi"), "two.txt")]
        edits.append(await interaction.edit_original_response(content="two files", attachments=both))
        edits.append(await interaction.edit_original_response(attachments=[edits[0].attachments[0]]))
        await interaction.followup.send(file=discord.File(io.BytesIO(b"note"), "note.txt"), ephemeral=True)

    await bot.tree.sync()
    record = await sandbox.interact(TOKEN_A, "files")
    await sandbox.interactions.wait(record, lambda r: len(r.messages) == 2)
    original, follow_up = record.messages
    assert [a.filename for a in edits[0].attachments] == ["one.png", "two.txt"]
    assert [a.filename for a in edits[1].attachments] == ["one.png"] and edits[1].content == "two files"
    [kept] = original.attachments
    assert (kept["filename"], kept["content_type"], kept["width"], kept["height"]) == ("one.png", "image/png", 8, 4)
    assert await edits[1].attachments[0].read() == images.png(8, 4)  # served by the sandbox
    assert sandbox.state.messages[original.id]["attachments"] == [kept]  # the channel's copy too
    assert (
        follow_up.ephemeral
        and follow_up.content == ""
        and [a["filename"] for a in follow_up.attachments] == ["note.txt"]
    )
    assert sandbox.attachment_bytes(follow_up.attachments[0]["url"]) == b"note"


@pytest.mark.bad_input
async def test_late_acknowledgement_is_an_unknown_interaction(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    clock = FakeTime()
    sandbox.interactions.clock = clock
    await bot.tree.sync()
    bot.tree.interaction_check = _late(clock)  # type: ignore[method-assign]
    record = await sandbox.interact(TOKEN_A, "echo", {"text": "hi"})
    await sandbox.interactions.wait(record, lambda r: bool(r.refused))
    assert record.refused == [("callback", 10062)] and record.original is None


def _late(clock: FakeTime):  # type: ignore[no-untyped-def]
    async def check(interaction: discord.Interaction) -> bool:
        clock.advance(ACK_DEADLINE + 0.1)
        return True

    return check


@pytest.mark.bad_input
async def test_expired_token_refuses_the_edit(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    clock = FakeTime()
    sandbox.interactions.clock = clock
    await bot.tree.sync()
    record = await sandbox.interact(TOKEN_A, "slow")
    await sandbox.interactions.wait(record, lambda r: r.original is not None)
    clock.advance(TOKEN_LIFETIME + 1)
    bot.gate.set()
    await sandbox.interactions.wait(record, lambda r: bool(r.refused))
    assert record.refused == [("edit original", 50027)]
    assert record.messages[0].loading  # the user still sees "thinking…"


@pytest.mark.bad_input
async def test_unknown_command_and_missing_option_reach_the_bot(sandbox: DiscordSandbox, bot: TreeBot) -> None:  # noqa: F811
    await bot.tree.sync()
    await sandbox.interact(TOKEN_A, "nosuch")
    await sandbox.interact(TOKEN_A, "echo")
    with anyio.fail_after(5):
        while len(bot.errors) < 2:
            await bot.errored.wait()
    assert {type(error) for error in bot.errors} == {
        app_commands.CommandNotFound,
        app_commands.CommandSignatureMismatch,
    }
