"""One exchange of the demo: post what the user typed, wait until every bot has handled it and
finished what it took on, print what the bots sent.

"Handled" is known, not guessed: after posting, each bot's client is asked for a gateway round trip
(:meth:`DiscordSandbox.round_trip`), which returns once the client has read the message; a bot that
took it has a job in its mailbox by then. So a message nobody answers is reported at once, and only
an answer in progress is waited for (up to ``answer_timeout``, for a slow real provider). A panel
(``!panel``) answers turn after turn from its own task: the exchange lasts until it has ended.
Files given to the demo (``--attach``) go with the first message posted; the demo shows the URL
the sandbox serves each file at. A file a bot posts (an ``!imagine`` or ``/imagine`` image) is saved
under ``files_dir``; the line shown says where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..config import BotSpec
from ..persona import slash
from ..runtime.supervisor import Supervisor
from ..sandbox.discord_server import DiscordSandbox, SentMessage
from ..sandbox.discord_server.interactions import InteractionRecord
from ..sandbox.discord_server.state import JSONDict
from .syntax import Kind, Line, parse_line

HANDLED_TIMEOUT = 10.0  # seconds for a bot's client to read a posted message (a loopback round trip)


@dataclass(frozen=True)
class Persona:
    """A bot of the demo as the sandbox knows it."""

    spec: BotSpec
    token: str
    user_id: int


class Conversation:
    """The demo's user ("you") talking to the bots in the sandbox's #general and in DMs."""

    def __init__(
        self,
        server: DiscordSandbox,
        supervisor: Supervisor,
        personas: dict[str, Persona],
        user_id: int,
        *,
        config_name: str,
        answer_timeout: float,
        files_dir: Path,
        attachments: Sequence[JSONDict] = (),
    ) -> None:
        """``attachments``: files (``filename``, ``data``) to send with the first message."""
        self.server = server
        self.supervisor = supervisor
        self.personas = personas
        self.user_id = user_id
        self.config_name = config_name
        self.answer_timeout = answer_timeout
        self.files_dir = files_dir
        self._by_user_id = {persona.user_id: persona for persona in personas.values()}
        self._last_answer: SentMessage | None = None
        self._attachments = list(attachments)

    async def exchange(self, text: str) -> list[str]:
        """Post ``text`` as typed (see ``syntax.py``); returns the lines to show the user."""
        try:
            line = parse_line(text, self.personas)
        except ValueError as exc:
            return [f"  ({exc})"]
        if line.kind is Kind.SLASH:
            return await self._slash(line)
        before = len(self.server.sent)
        posted = await self._post(line)
        if posted is None:
            return ["  (nothing to reply to yet: talk to a persona first, e.g. '!chat hello')"]
        attached = [f"  (you attached {a['filename']}, {a['size']} bytes: {a['url']})" for a in posted["attachments"]]
        if not await self._wait_until_handled():
            return [*attached, f"  (no answer within {self.answer_timeout:g} s)"]
        answers = self.server.sent[before:]
        if not answers:
            return [*attached, f"  ({self._unanswered(line)})"]
        self._last_answer = answers[-1]
        return [*attached, *(self._show(message) for message in answers)]

    async def _slash(self, line: Line) -> list[str]:
        """Run a slash command of the bot ``line`` names (or the first); the lines to show: its response,
        follow-ups (marked when only the user sees them), and what the bots posted meanwhile (a panel)."""
        assert line.command is not None
        persona = self.personas[line.bot] if line.bot is not None else next(iter(self.personas.values()))
        option = slash.text_option(line.command)
        before = len(self.server.sent)
        try:
            record = await self.server.interact(
                persona.token, line.command, {option: line.text} if option and line.text else {}, user_id=self.user_id
            )
        except LookupError:
            return [f"  ({persona.spec.name} is not connected)"]
        try:
            await self.server.interactions.wait(record, _settled, timeout=self.answer_timeout)
        except TimeoutError:
            return [f"  (no answer within {self.answer_timeout:g} s)"]
        if not await self._wait_until_handled():  # a panel it started, follow-ups
            return [f"  (no answer within {self.answer_timeout:g} s)"]
        shown = [
            f"{persona.spec.name}: {message.content}"
            + "".join(f" [{self._save(message.id, upload)}]" for upload in message.attachments)
            + (" (only you see this)" if message.ephemeral else "")
            for message in record.messages
        ]
        return shown + [self._show(message) for message in self.server.sent[before:]]

    async def _post(self, line: Line) -> JSONDict | None:
        """Post ``line`` as the user (with the files still to send); None if it replies while there is
        nothing to reply to."""
        files, self._attachments = self._attachments, []
        if line.kind is Kind.DM:
            assert line.bot is not None
            token = self.personas[line.bot].token
            return await self.server.post(
                line.text, author_id=self.user_id, guild=False, dm_to=token, attachments=files
            )
        if line.kind is Kind.MENTION:
            assert line.bot is not None
            bot_id = self.personas[line.bot].user_id
            content = f"<@{bot_id}> {line.text}".rstrip()
            return await self.server.post(content, author_id=self.user_id, mentions=[bot_id], attachments=files)
        if line.kind is Kind.REPLY:
            answer = self._last_answer
            if answer is None:
                self._attachments = files  # still to send
                return None
            if answer.channel_id == self.server.channel_id:
                return await self.server.post(line.text, author_id=self.user_id, reply_to=answer.id, attachments=files)
            token = self._by_user_id[answer.author_id].token  # the answer was a DM: reply in that DM
            return await self.server.post(
                line.text, author_id=self.user_id, guild=False, dm_to=token, reply_to=answer.id, attachments=files
            )
        return await self.server.post(line.text, author_id=self.user_id, attachments=files)

    async def _wait_until_handled(self) -> bool:
        """Wait until every connected bot has read the message and finished every job it has, and
        until a panel it started in #general has ended; False after ``answer_timeout``."""
        panels = self.supervisor.services.community.panels
        with anyio.move_on_after(self.answer_timeout):
            await self._settle()
            while panels.running(self.server.channel_id):
                await panels.wait_ended(self.server.channel_id)
                await self._settle()  # the last answer may address a persona: that answer too
            return True
        return False

    async def _settle(self) -> None:
        """Every connected bot has read what was posted so far and has no job left."""
        for persona in self.personas.values():
            try:
                await self.server.round_trip(persona.token, timeout=HANDLED_TIMEOUT)
            except (LookupError, TimeoutError):
                continue  # not connected (failed, restarting): it did not take the message
        for child in self.supervisor.children.values():
            await child.mailbox.wait_idle()

    def _unanswered(self, line: Line) -> str:
        if line.kind is Kind.DM and line.bot is not None:
            spec = self.personas[line.bot].spec
            if not spec.access.dms:
                return f"{spec.name} does not answer DMs: its access.dms is false in {self.config_name}"
        first = next(iter(self.personas.values())).spec
        heard = line.kind is Kind.CHANNEL and any(p.spec.context.channel_messages for p in self.personas.values())
        note = " — they heard it, as context for what they say next" if heard else ""
        return (
            f"no persona answered{note}; address one with its prefix ('{first.prefix}chat hello'), a mention "
            f"('@{first.name} hello'), a reply ('> text') or a DM ('/dm {first.name} hello')"
        )

    def _show(self, message: SentMessage) -> str:
        persona = self._by_user_id.get(message.author_id)
        name = persona.spec.name if persona is not None else "?"
        where = "" if message.channel_id == self.server.channel_id else " (DM)"
        saved = "".join(f" [{self._save(message.id, upload)}]" for upload in message.uploads)
        return f"{name}{where}: {message.content}{saved}"

    def _save(self, message_id: int, upload: dict[str, object]) -> str:
        """Write a file the bot posted with message ``message_id`` under ``files_dir``; what to show for it."""
        name = Path(str(upload["filename"])).name  # the bot's file name, never a path
        target = self.files_dir / f"{message_id}-{name}"
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.server.attachment_bytes(str(upload["url"])))
        except OSError as exc:
            return f"{name}: could not be saved to {target}: {exc.strerror or exc}"
        return f"{name} saved to {target}"


def _settled(record: InteractionRecord) -> bool:
    """The bot has answered the command, or Discord refused its answer."""
    return record.answered or bool(record.refused)
