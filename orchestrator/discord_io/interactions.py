"""Answering a slash command: the interaction's original response, then follow-up messages.

A slash command is acknowledged at once with a deferred response (the user sees "<bot> is
thinking…"; Discord allows 3 seconds for that), publicly or, for answers only the user should
see, ephemerally. The answer then replaces "thinking…" (an edit of the original response, within
the interaction token's 15 minutes); text past 2,000 characters continues in follow-ups. Posting
goes through the bot's :class:`~.delivery.Delivery` (retries; in fleet mode only while the lease
holds), like every other message of the bot.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import discord

from .client import describe_error
from .delivery import Delivery

log = logging.getLogger(__name__)


async def refuse(interaction: discord.Interaction, text: str) -> None:
    """Answer a slash command at once with ``text`` that only its user sees (nothing was deferred)."""
    try:
        await interaction.response.send_message(text, ephemeral=True)
    except (discord.HTTPException, discord.InteractionResponded) as exc:
        log.warning("could not answer /%s (%s)", command_name(interaction), describe_error(exc))


def command_name(interaction: discord.Interaction) -> str:
    """The name of the slash command the user ran (as Discord sent it, known to the bot or not)."""
    data: dict[str, Any] = dict(interaction.data or {})
    return str(data.get("name", "?"))


class InteractionReply:
    """Where the answer to one deferred slash command goes. ``private``: it was deferred ephemerally,
    so everything it shows is seen by the user only."""

    def __init__(self, interaction: discord.Interaction, delivery: Delivery, bot: str, *, private: bool) -> None:
        self._interaction = interaction
        self._delivery = delivery
        self._bot = bot
        self.private = private
        self._channel = interaction.channel_id or 0

    @classmethod
    async def defer(
        cls, interaction: discord.Interaction, delivery: Delivery, bot: str, *, private: bool
    ) -> InteractionReply | None:
        """Acknowledge the command with "thinking…"; None (logged) when Discord refuses, e.g. after its
        3-second deadline."""
        try:
            await interaction.response.defer(thinking=True, ephemeral=private)
        except (discord.HTTPException, discord.InteractionResponded) as exc:
            name = command_name(interaction)
            log.warning("bot %s: could not acknowledge /%s in time (%s)", bot, name, describe_error(exc))
            return None
        return cls(interaction, delivery, bot, private=private)

    async def answer(self, text: str) -> int:
        """Show ``text`` in place of "thinking…"; the message id. Raises on failure."""
        message = await self._delivery.deliver(
            self._channel, partial(self._interaction.edit_original_response, content=text)
        )
        return message.id

    async def follow_up(self, text: str) -> int:
        """Post ``text`` after the original response (as private as it); the message id. Raises on failure."""
        sent = await self._delivery.deliver(
            self._channel, partial(self._interaction.followup.send, text, ephemeral=self.private, wait=True)
        )
        return sent.id

    async def send_editable(self, text: str, first: bool) -> discord.Message:
        """A streamed answer's messages: the original response first, then follow-ups."""
        if first:
            return await self._delivery.deliver(
                self._channel, partial(self._interaction.edit_original_response, content=text)
            )
        return await self._delivery.deliver(
            self._channel, partial(self._interaction.followup.send, text, ephemeral=self.private, wait=True)
        )

    async def tell(self, text: str, *, private: bool = False) -> None:
        """Show a line of the bot's own (not the model's); ``private``: only to the user. After a public
        deferral, "thinking…" is deleted first: the first follow-up would take its place, publicly.
        A failure is logged, not raised."""
        try:
            if private and not self.private:
                await self._interaction.delete_original_response()
                await self._delivery.deliver(
                    self._channel, partial(self._interaction.followup.send, text, ephemeral=True, wait=True)
                )
            else:
                await self.answer(text)
        except Exception as exc:  # noqa: BLE001 - nothing is left to tell the user with; the log says why
            log.warning(
                "bot %s: could not answer /%s (%s)", self._bot, command_name(self._interaction), describe_error(exc)
            )
