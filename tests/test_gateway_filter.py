"""Messages for other bots in a shared channel are dropped before discord.py decodes them, and only those."""

from __future__ import annotations

import pytest

from orchestrator.discord_io.gateway_filter import may_concern
from orchestrator.persona.bot import PersonaBot

from .conftest import World, token_for

ME = 1312312312312312001
GUILD = '{"id":"7","guild_id":"9","author":{"id":"5"},"content":"%s"}'


@pytest.mark.parametrize(
    ("body", "prefix", "expected"),
    [
        (GUILD % "?chat for another bot", "!", False),
        (GUILD % "just talking", "!", False),
        (GUILD % "!chat hello", "!", True),
        (GUILD % "hey <@%d>" % ME, "!", True),  # a mention, a reply to me, or my own message carry my id
        ('{"id":"7","author":{"id":"5"},"content":"a DM"}', "!", True),  # no guild_id: a DM
        (GUILD % "\\u061fchat سلام", "؟", True),  # a non-ASCII prefix, escaped by the encoder
        (GUILD % "؟chat سلام", "؟", True),  # ... or not
        (GUILD % 'say \\"hi\\"', '"', True),  # a prefix JSON must escape
        (GUILD % "a\\/b", "/", True),  # an encoder that escapes more than JSON requires: decode it
        (GUILD % "!chat hello", None, False),  # no Message Content intent: no prefix is looked for
        (GUILD % "hey <@%d>" % ME, None, True),
        ('{"id":"7","author":{"id":"5"},"content":"!chat in a DM"}', None, True),
    ],
)
def test_only_messages_that_cannot_concern_the_bot_are_dropped(body: str, prefix: str | None, expected: bool) -> None:
    assert may_concern(body, ME, prefix) is expected


def test_nothing_is_dropped_before_the_bot_knows_its_id() -> None:
    assert may_concern(GUILD % "?chat for another bot", None, "!")


def _actor(world: World, name: str) -> PersonaBot:
    assert world.app is not None and world.app.supervisor is not None
    actor = world.app.supervisor.children[name].actor
    assert actor is not None
    return actor


@pytest.mark.parametrize("compress", [False, True], ids=["plain-frames", "zlib-stream"])
async def test_bots_sharing_a_channel_decode_only_what_concerns_them(world: World, compress: bool) -> None:
    world.discord.compress = compress
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    world.openai.queue_replies("answer one", "answer two", "answer three", "answer four")
    sage_id = world.bot_ids["sage"]
    async with world.running():
        sage, hafez = _actor(world, "sage"), _actor(world, "hafez")
        assert len(world.discord._deflaters) == (2 if compress else 0)
        [one] = await world.chat("?chat one")
        [two] = await world.chat("!chat two")  # the gateway is ordered: sage has seen hafez's reply
        [three] = await world.chat(f"<@{sage_id}> three", mentions=[sage_id])
        # sage: "?chat one" and hafez's reply dropped; its own reply and the mention decoded
        assert sage.counters.dropped == 2
        [four] = await world.chat("?chat four")
        # hafez: "!chat two", sage's reply, the mention of sage and sage's reply to it dropped
        assert hafez.counters.dropped == 4
        assert [m.author_id for m in (one, two, three, four)] == [
            world.bot_ids[n] for n in ("hafez", "sage", "sage", "hafez")
        ]
        # a dropped event still moves the session's sequence number on (discord.py resumes with it)
        for actor, name in ((sage, "sage"), (hafez, "hafez")):
            await world.discord.round_trip(token_for(name), timeout=5)  # the client has handled every event
            assert actor.client.ws.sequence == world.discord.sessions[token_for(name)].seq
