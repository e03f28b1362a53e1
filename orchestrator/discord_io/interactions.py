"""Answering a slash command: the interaction's original response, then follow-up messages.

A slash command is acknowledged at once with a deferred response (the user sees "<bot> is
thinking…"; Discord allows 3 seconds for that), publicly or, for answers only the user should
see, ephemerally. The answer then replaces "thinking…" (an edit of the original response, within
the interaction token's 15 minutes); text past 2,000 characters continues in follow-ups. An image
(``/imagine``) is a file of that edit.

An :class:`InteractionReply` is only the interaction's webhook (application id, token, the original
response's id): each call posts through the :class:`~.delivery.Delivery` it is given (retries; in
fleet mode only while the lease holds) and that delivery's client. So a job that a crashing client
could not finish is answered by the next incarnation through its own client, as a prefix command's is.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import discord
from discord.utils import MISSING

from . import internals
from .client import describe_error
from .delivery import Delivery

log = logging.getLogger(__name__)


def command_name(interaction: discord.Interaction) -> str:
    """The name of the slash command the user ran (as Discord sent it, known to the bot or not)."""
    data: dict[str, Any] = dict(interaction.data or {})
    return str(data.get("name", "?"))


async def refuse(interaction: discord.Interaction, text: str) -> None:
    """Answer a slash command at once with ``text`` that only its user sees (nothing was deferred)."""
    try:
        await interaction.response.send_message(text, ephemeral=True)
    except (discord.HTTPException, discord.InteractionResponded) as exc:
        log.warning("could not answer /%s (%s)", command_name(interaction), describe_error(exc))


@dataclass(frozen=True)
class InteractionReply:
    """Where the answer to one deferred slash command goes. ``private``: it was deferred ephemerally,
    so everything it shows is seen by the user only."""

    bot: str
    command: str
    application_id: int
    token: str
    original_id: int  # the original response ("thinking…")
    channel_id: int
    private: bool

    @classmethod
    async def defer(cls, interaction: discord.Interaction, bot: str, *, private: bool) -> InteractionReply | None:
        """Acknowledge the command with "thinking…"; None (logged) when Discord refuses, e.g. after its
        3-second deadline."""
        name = command_name(interaction)
        try:
            response = await interaction.response.defer(thinking=True, ephemeral=private)
        except (discord.HTTPException, discord.InteractionResponded) as exc:
            log.warning("bot %s: could not acknowledge /%s in time (%s)", bot, name, describe_error(exc))
            return None
        if response is None or response.message_id is None:  # Discord always names it for a thinking deferral
            log.warning("bot %s: Discord did not name the response to /%s; it cannot be answered", bot, name)
            return None
        return cls(
            bot, name, interaction.application_id, interaction.token, response.message_id,
            interaction.channel_id or 0, private,
        )  # fmt: skip

    def _webhook(self, delivery: Delivery) -> discord.Webhook:
        return internals.interaction_webhook(delivery.client, self.application_id, self.token)

    async def _send(
        self, delivery: Delivery, text: str, *, private: bool, attachment: tuple[str, bytes] | None = None
    ) -> discord.WebhookMessage:
        webhook = self._webhook(delivery)

        async def send() -> discord.WebhookMessage:
            return await webhook.send(text, ephemeral=private, wait=True, file=_file(attachment))

        return await delivery.deliver(self.channel_id, send)

    async def answer(
        self, delivery: Delivery, text: str, *, attachment: tuple[str, bytes] | None = None
    ) -> discord.WebhookMessage:
        """Show ``text`` in place of "thinking…", with ``attachment`` (file name, bytes) as its file.
        Raises on failure."""
        webhook = self._webhook(delivery)

        async def edit() -> discord.WebhookMessage:
            files = MISSING if attachment is None else [_file(attachment)]
            return await webhook.edit_message(self.original_id, content=text, attachments=files)

        return await delivery.deliver(self.channel_id, edit)

    async def follow_up(
        self, delivery: Delivery, text: str, *, attachment: tuple[str, bytes] | None = None
    ) -> discord.WebhookMessage:
        """Post ``text`` after the original response, as private as it, with ``attachment`` (file name,
        bytes) as its file. Raises on failure."""
        return await self._send(delivery, text, private=self.private, attachment=attachment)

    async def send_editable(self, delivery: Delivery, text: str, first: bool) -> discord.WebhookMessage:
        """A streamed answer's messages: the original response first, then follow-ups."""
        return await (self.answer(delivery, text) if first else self.follow_up(delivery, text))

    async def tell(self, delivery: Delivery, text: str, *, private: bool = False) -> None:
        """Show a line of the bot's own (not the model's); ``private``: only to the user. After a public
        deferral, "thinking…" is deleted first: the first follow-up would take its place, publicly.
        A failure is logged, not raised."""
        try:
            if private and not self.private:
                await self._webhook(delivery).delete_message(self.original_id)
                await self._send(delivery, text, private=True)
            else:
                await self.answer(delivery, text)
        except Exception as exc:  # noqa: BLE001 - nothing is left to tell the user with; the log says why
            log.warning("bot %s: could not answer /%s (%s)", self.bot, self.command, describe_error(exc))


def _file(attachment: tuple[str, bytes] | None) -> discord.File:
    """``attachment`` (file name, bytes) as the file of one request, MISSING for none: a new File per
    try, since a retry must read the bytes from their start again."""
    return MISSING if attachment is None else discord.File(io.BytesIO(attachment[1]), attachment[0])
