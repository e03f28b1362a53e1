"""Access control and secrets: allow lists, DMs, admin commands, users kept apart, no secret anywhere.

Messages from outside a bot's allow lists (guilds, channels, roles; DMs unless ``dms: true``) are
ignored silently: no reply and no provider call. Those cases are marked ``bad_input``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestrator.persona.replies import APOLOGY
from orchestrator.sandbox.openai_server import said

from .conftest import API_KEY, World, token_for

ROOT = Path(__file__).resolve().parent.parent
denied = pytest.mark.bad_input


def asked(world: World) -> list[str]:
    """The last user message of every provider request, in order."""
    return [said(r.body["messages"][-1]) for r in world.openai.chat_requests]


# ---------------------------------------------------------------- allow lists

Scenario = Callable[[World], tuple[dict, dict, dict]]  # -> (sage's access, denied post, allowed post)


def other_guild(world: World) -> tuple[dict, dict, dict]:
    guild = world.discord.add_guild("Elsewhere")
    there = world.discord.add_channel("there", guild)
    return {"guilds": [guild]}, {}, {"channel_id": there}


def other_channel(world: World) -> tuple[dict, dict, dict]:
    bots_only = world.discord.add_channel("bots-only")
    return {"channels": [bots_only]}, {}, {"channel_id": bots_only}


def missing_role(world: World) -> tuple[dict, dict, dict]:
    patrons = world.discord.add_role(world.discord.guild_id, "patrons")
    patron = world.discord.add_user("patron", roles=[patrons])
    return {"roles": [patrons]}, {}, {"author_id": patron}


def dm_by_default(world: World) -> tuple[dict, dict, dict]:
    return {}, {"guild": False, "dm_to": token_for("sage")}, {}


def dm_with_guild_lists(world: World) -> tuple[dict, dict, dict]:
    bots_only = world.discord.add_channel("bots-only")
    return (
        {"channels": [bots_only], "guilds": [world.discord.guild_id]},
        {"guild": False, "dm_to": token_for("sage")},
        {"channel_id": bots_only},
    )


def role_of_another_guild(world: World) -> tuple[dict, dict, dict]:
    guild = world.discord.add_guild("Elsewhere")
    role_there = world.discord.add_role(guild, "patrons")
    holder = world.discord.add_user("holder", roles=[role_there])
    role_here = world.discord.add_role(world.discord.guild_id, "members")
    member = world.discord.add_user("member", roles=[role_here])
    return {"roles": [role_here]}, {"author_id": holder}, {"author_id": member}


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(other_guild, id="guild-not-listed", marks=denied),
        pytest.param(other_channel, id="channel-not-listed", marks=denied),
        pytest.param(missing_role, id="author-without-a-listed-role", marks=denied),
        pytest.param(role_of_another_guild, id="only-a-role-of-another-guild", marks=denied),
        pytest.param(dm_by_default, id="dm-off-by-default", marks=denied),
        pytest.param(dm_with_guild_lists, id="dm-not-opened-by-guild-lists", marks=denied),
    ],
)
async def test_messages_outside_the_allow_lists_are_ignored_silently(world: World, scenario: Scenario) -> None:
    access, outside, inside = scenario(world)
    world.write([{"name": "sage", "access": access}, {"name": "hafez", "prefix": "?"}])
    sage = world.bot_ids["sage"]
    async with world.running():
        await world.discord.post("!chat outside: command", **outside)
        await world.discord.post(f"<@{sage}> outside: mention", mentions=[sage], **outside)
        [allowed] = await world.chat("!chat inside", **inside)  # same bot, later: nothing else came first
        [sibling] = await world.chat("?chat sibling")
    assert allowed.author_id == sage and allowed.content.endswith("| inside")
    assert sibling.author_id == world.bot_ids["hafez"]
    assert world.discord.sent_by(sage) == [allowed]
    assert not [text for text in asked(world) if text.startswith("outside")], "no provider call for them"
    assert not [typing for typing in world.discord.typing if typing[0] == sage and typing[1] != allowed.channel_id]


async def test_dms_are_answered_when_enabled_in_the_dm_channel(world: World) -> None:
    world.write([{"name": "sage", "access": {"dms": True}}, {"name": "hafez", "prefix": "?"}])
    async with world.running():
        [private] = await world.chat("!chat in private", guild=False, dm_to=token_for("sage"))
        await world.discord.post("?chat hafez keeps dms off", guild=False, dm_to=token_for("hafez"))
        [public] = await world.chat("!chat in public")
    assert private.channel_id != world.discord.channel_id and private.content.endswith("| in private")
    assert public.content.endswith("| in public")
    assert asked(world) == ["in private", "in public"]
    assert [said(m) for m in world.openai.chat_requests[1].body["messages"][1:]] == ["in public"], (
        "the DM is its own conversation"
    )


async def test_a_dm_needs_no_prefix(world: World) -> None:
    world.write([{"name": "sage", "access": {"dms": True}}])
    async with world.running():
        [reply] = await world.chat("just talking", guild=False, dm_to=token_for("sage"))
    assert reply.content.endswith("| just talking")
    assert asked(world) == ["just talking"]


async def test_defaults_access_is_inherited_key_by_key(world: World) -> None:
    bots_only = world.discord.add_channel("bots-only")
    world.write(
        [{"name": "sage", "access": {"dms": True}}, {"name": "hafez", "prefix": "?"}],
        defaults={"model": "gpt-4o-mini", "params": {"max_tokens": 200}, "access": {"channels": [bots_only]}},
    )
    async with world.running():
        await world.discord.post("!chat general is not listed")
        await world.discord.post("?chat general is not listed")
        await world.chat("!chat dm", guild=False, dm_to=token_for("sage"))
        [sage] = await world.chat("!chat listed", channel_id=bots_only)
        [hafez] = await world.chat("?chat listed", channel_id=bots_only)
    assert (sage.author_id, hafez.author_id) == (world.bot_ids["sage"], world.bot_ids["hafez"])
    assert asked(world) == ["dm", "listed", "listed"]


# ---------------------------------------------------------------- admin commands


def admin_case(who: str) -> Callable[[World], tuple[dict, dict, int]]:
    def build(world: World) -> tuple[dict, dict, int]:
        mods = world.discord.add_role(world.discord.guild_id, "mods")
        admins = world.discord.add_role(world.discord.guild_id, "admins-of-nothing")
        boss = world.discord.add_user("boss")
        moderator = world.discord.add_user("moderator", roles=[mods])
        pretender = world.discord.add_user("pretender", roles=[admins])
        hafez_admin = world.discord.add_user("hafez-admin")
        sage = {"admins": [boss], "admin_roles": [mods]}
        hafez = {"admins": [hafez_admin]}
        user = {
            "user-id-in-admins": boss,
            "role-in-admin-roles": moderator,
            "plain-member": world.discord.default_user_id,
            "role-not-in-admin-roles": pretender,
            "admin-of-another-bot": hafez_admin,
        }[who]
        return sage, hafez, user

    return build


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        pytest.param("user-id-in-admins", True),
        pytest.param("role-in-admin-roles", True),
        pytest.param("plain-member", False, marks=denied),
        pytest.param("role-not-in-admin-roles", False, marks=denied),
        pytest.param("admin-of-another-bot", False, marks=denied),
    ],
)
async def test_channel_reset_needs_an_admin_of_that_bot(world: World, who: str, allowed: bool) -> None:
    sage_access, hafez_access, user = admin_case(who)(world)
    world.write([{"name": "sage", "access": sage_access}, {"name": "hafez", "prefix": "?", "access": hafez_access}])
    async with world.running():
        await world.chat("!chat remember me")
        [answer] = await world.chat("!reset channel", author_id=user)
        await world.chat("!chat do you remember?")
    remembered = [said(m) for m in world.openai.chat_requests[-1].body["messages"][1:]]
    if allowed:
        assert "cleared" in answer.content
        assert remembered == ["do you remember?"]
    else:
        assert answer.content == "Only an admin of this bot can clear the whole channel's memory."
        assert remembered[0] == "remember me", "a refused reset deletes nothing"


# ---------------------------------------------------------------- users kept apart


async def test_users_never_see_or_reset_each_others_conversation(world: World) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    bob = world.discord.add_user("bob")
    sage = world.bot_ids["sage"]
    async with world.running():
        [to_alice] = await world.chat("!chat alice: my secret plan")
        await world.chat("!chat bob: hello", author_id=bob)
        await world.chat("bob: replying to alice's answer", reply_to=to_alice.id, author_id=bob)
        await world.chat(f"<@{sage}> bob: mentioning", mentions=[sage], author_id=bob)
        [reset] = await world.chat("!reset", author_id=bob)
        await world.chat("!chat bob: after my reset", author_id=bob)
        await world.chat("!chat alice: still there?")
    requests = [r.body["messages"][1:] for r in world.openai.chat_requests]
    for messages, asker in zip(requests, ["alice", "bob", "bob", "bob", "bob", "alice"], strict=True):
        users = [said(m) for m in messages if m["role"] == "user"]
        assert all(text.startswith(f"{asker}:") for text in users), users
        answers = [said(m) for m in messages if m["role"] == "assistant"]
        assert all(f"| {asker}:" in text for text in answers), answers
    assert "3 exchanges forgotten" in reset.content
    assert [said(m) for m in requests[4]] == ["bob: after my reset"]
    assert [said(m) for m in requests[5] if m["role"] == "user"] == ["alice: my secret plan", "alice: still there?"]


# ---------------------------------------------------------------- secrets

SECRET_KEY = API_KEY  # the key the loopback provider accepts; distinctive enough to grep for
BROKEN_TOKEN = "distinctive-unknown-discord-token-31337"


def secrets(world: World) -> list[str]:
    return [SECRET_KEY, BROKEN_TOKEN, *(token_for(name) for name in world.bot_ids)]


def leaks(text: str, world: World) -> list[str]:
    return [secret for secret in secrets(world) if secret in text]


async def test_secrets_never_reach_logs_discord_or_error_texts(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: discord.py, openai, httpx, aiohttp and ours
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}, {"name": "broken", "prefix": "$"}])
    config = world.load({"TOKEN_BROKEN": BROKEN_TOKEN})
    async with world.running(config) as app:
        await world.chat("!chat hello")
        pool = app.pool
        assert pool is not None and app.supervisor is not None
        original = pool.complete

        async def crash_with_secrets(call):  # type: ignore[no-untyped-def]
            monkeypatch.setattr(pool, "complete", original)
            raise RuntimeError(f"bug while using {SECRET_KEY} for {token_for('sage')}")

        monkeypatch.setattr(pool, "complete", crash_with_secrets)
        [apology] = await world.chat("!chat trigger the bug")
        world.openai.api_keys.clear()  # the provider now refuses the key
        [refused] = await world.chat("?chat is my key fine?")
        errors = [child.last_error for child in app.supervisor.children.values()]
    assert apology.content == APOLOGY and "API key was refused" in refused.content
    assert "refused the token" in errors[2]
    shown = [text for m in world.discord.sent for text in (m.content, *m.edits)]
    assert not leaks("\n".join(shown), world), "no secret in Discord"
    assert not leaks("\n".join(errors), world), "no secret in the supervisor's error texts"
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    lines = "\n".join(formatter.format(record) for record in caplog.records)
    assert "bug while using ***" in lines, "the crash was logged, redacted"
    assert len(caplog.records) > 50 and not leaks(lines + caplog.text, world), "no secret in any log line"


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_", "TOKEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "--log-level", "DEBUG", "check", str(path)],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_output_never_shows_a_secret(tmp_path: Path) -> None:
    key, sage, hafez = "sk-distinctive-check-key-4242", "distinctive-sage-token-1111", "distinctive-hafez-token-2222"
    pasted = "MTAxNTk4.distinctive-pasted.token-into-token_env"
    env = {"OPENAI_API_KEY": key, "TOKEN_SAGE": sage, "TOKEN_HAFEZ": hafez, "TOKEN_COPY": sage}
    document = {
        "providers": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "OPENAI_API_KEY"}},
        "bots": [
            {"name": "sage", "token_env": "TOKEN_SAGE", "persona": "p"},
            {"name": "hafez", "token_env": "TOKEN_HAFEZ", "persona": "p", "prefix": "?"},
        ],
    }
    path = tmp_path / "bots.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    good = check(path, env)
    assert good.returncode == 0, good.stderr
    document["bots"] += [
        {"name": "copy", "token_env": "TOKEN_COPY", "persona": "p", "prefix": "+"},  # the same token twice
        {"name": "pasted", "token_env": pasted, "persona": "p", "prefix": "-"},  # a token where its name goes
    ]
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    resolved = check(path, env)
    assert resolved.returncode == 2
    assert "same Discord token" in resolved.stderr and "'pasted'" in resolved.stderr
    document["bots"][-1] = {"name": "pasted", "token": pasted, "token_env": "TOKEN_X", "persona": "p", "temprature": 1}
    document["providers"]["openai"]["api_key"] = key  # secrets written into the file, under wrong keys
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    schema = check(path, env)
    assert schema.returncode == 2
    assert "unknown key 'token'" in schema.stderr and "temprature" in schema.stderr
    for result in (good, resolved, schema):
        for secret in (key, sage, hafez, pasted):
            assert secret not in result.stdout + result.stderr, (secret, result.stderr)
