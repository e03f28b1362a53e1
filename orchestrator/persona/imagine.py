"""``<prefix>imagine <prompt>`` (and ``/imagine prompt:<text>``): the persona draws with its
provider's images endpoint (``image_model``, ``image_size``), within ``images_per_day``.

:func:`imagine` is the one entry point for both ways of asking: it returns the image to post, or
the one line to show the user instead (a usage hint, image generation not enabled, a limit, a
refusal, a provider failure). Posting is the caller's: a reply with the file for a message, the
interaction's response for a slash command.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..discord_io.text import clean_user_text, neutralize_mentions
from ..errors import ProviderError
from ..llm.images import ImageCall, generate_image

if TYPE_CHECKING:
    from .bot import PersonaBot

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000  # DALL·E 3's limit (GPT image models take more; DALL·E 2 refuses over 1000)
_NOT_A_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Drawn:
    """An image to post: the file's name and bytes, and the line that goes with it."""

    file_name: str
    data: bytes
    caption: str


def usage_line(prefix: str) -> str:
    return f"Describe the image after `{prefix}imagine`, for example `{prefix}imagine a red fox in the snow`."


async def imagine(bot: PersonaBot, user_id: int, prompt: str) -> Drawn | str:
    """Draw ``prompt`` for the user ``user_id`` as ``bot``: the image, or the one line to show instead."""
    spec = bot.spec  # a hot reload may replace bot.spec; this image keeps one consistent view
    text = clean_user_text(prompt)[:MAX_PROMPT_CHARS].strip()
    if spec.image_model is None:
        return f"Image generation is not enabled for {spec.name}."
    if not text:
        return usage_line(spec.prefix)
    call = ImageCall(
        bot=spec.name,
        user=str(user_id),
        provider=spec.provider,
        model=spec.image_model,
        prompt=text,
        size=spec.image_size,
        weight=spec.weight,
        quota=spec.quota,
        user_quota=spec.user_quota,
    )
    try:
        image = await generate_image(bot.services.pool, call, max_bytes=bot.services.options.image_max_bytes)
    except ProviderError as exc:
        log.warning("bot %s: image not made: %s", spec.name, exc)
        return exc.user_message
    name = _NOT_A_NAME.sub("-", text.lower()).strip("-")[:40] or "image"
    return Drawn(f"{name}.{image.extension}", image.data, _caption(text))


def _caption(prompt: str) -> str:
    """The prompt on one line, clipped, as the image's caption."""
    line = " ".join(prompt.split())
    return neutralize_mentions(f"> {line if len(line) <= 200 else line[:199] + '…'}")
