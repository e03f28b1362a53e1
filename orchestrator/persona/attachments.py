"""A message's attachments as the model reads them: images as image parts, text files as text.

Rules, checked before the model is asked (a file that breaks one gets a reply naming it, and
the model is not called):

- Images (PNG, JPEG, WebP, GIF by content type or extension) need the bot's ``vision``; without
  it the persona says it cannot see images. At most ``vision.max_images`` per message, each at
  most ``vision.max_bytes``. Each is downloaded (bounded by that size) and its header must parse
  (:mod:`orchestrator.imagesize`): a corrupt or mislabelled file is refused. The model gets the
  attachment's URL, or with ``vision.inline`` its bytes as a base64 ``data:`` URL (for providers
  that cannot fetch Discord's CDN).
- Text files (``.txt .md .py .json .csv``, at most 100 KB, UTF-8) are added to the message's text.
- Anything else is refused, as is a file whose URL does not answer (deleted, expired).

What memory keeps is :attr:`ReadAttachments.notes`: a note per file (``[image: cat.png]``), never
the bytes, a text file's contents or a data URL.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import discord

from ..config import VisionSettings
from ..discord_io.attachments import TEXT_EXTENSIONS, kind_of, note
from ..download import DownloadFailed, TooLarge, read_bounded
from ..imagesize import image_info

MAX_TEXT_BYTES = 100_000
DOWNLOAD_TIMEOUT = 30.0


class AttachmentRefused(Exception):
    """An attachment the persona will not read; the message, shown to the user, names the file."""


@dataclass(frozen=True)
class ReadAttachments:
    text: str  # added to the user's text for the model: text files' contents and a note per image
    image_urls: tuple[str, ...]  # http(s) or data: URLs, for the message's image parts
    notes: str  # added to the user's text in memory: a note per file


NOTHING = ReadAttachments("", (), "")


def size_text(size: int) -> str:
    """``8 MB``, ``100 KB``, ``512 bytes`` (decimal units, as Discord shows sizes)."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:.3g} MB"
    if size >= 1_000:
        return f"{size / 1_000:.3g} KB"
    return f"{size} bytes"


class AttachmentReader:
    """Reads attachments for one bot over its own HTTP session (opened on first use; :meth:`aclose`)."""

    def __init__(self, bot: str) -> None:
        self._bot = bot
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def read(self, attachments: Sequence[discord.Attachment], vision: VisionSettings) -> ReadAttachments:
        """Check and download ``attachments``; :class:`AttachmentRefused` for the first that breaks a rule."""
        if not attachments:
            return NOTHING
        images: list[discord.Attachment] = []
        texts: list[discord.Attachment] = []
        for attachment in attachments:
            kind = kind_of(attachment.filename, attachment.content_type)
            if kind is None:
                readable = "images (PNG, JPEG, WebP, GIF) and " if vision.enabled else ""
                raise AttachmentRefused(
                    f"I can't read `{attachment.filename}`: I read {readable}text files "
                    f"({', '.join(TEXT_EXTENSIONS)}) only."
                )
            (images if kind == "image" else texts).append(attachment)
        if images and not vision.enabled:
            raise AttachmentRefused(
                f"I can't see images, so I can't look at `{images[0].filename}`. Describe it in words, "
                f"or ask an admin to turn on `vision` for {self._bot}."
            )
        if len(images) > vision.max_images:
            raise AttachmentRefused(
                f"You sent {len(images)} images; I look at {vision.max_images} per message at most. "
                "Send them in smaller groups."
            )
        parts = [await self._text(attachment) for attachment in texts]
        urls = [await self._image(attachment, vision) for attachment in images]
        parts.extend(note(attachment.filename, attachment.content_type) for attachment in images)
        notes = " ".join(note(a.filename, a.content_type) for a in (*texts, *images))
        return ReadAttachments("\n".join(parts), tuple(urls), notes)

    async def _text(self, attachment: discord.Attachment) -> str:
        data = await self._download(attachment, MAX_TEXT_BYTES, "text files")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AttachmentRefused(
                f"`{attachment.filename}` is not UTF-8 text; save it as UTF-8 and send it again."
            ) from None
        return f"[file {attachment.filename}]\n{text.strip()}\n[end of {attachment.filename}]"

    async def _image(self, attachment: discord.Attachment, vision: VisionSettings) -> str:
        data = await self._download(attachment, vision.max_bytes, "images")
        info = image_info(data)
        if info is None:
            raise AttachmentRefused(
                f"`{attachment.filename}` is not a PNG, JPEG, WebP or GIF image I can read: the file is damaged "
                "or of another kind."
            )
        if vision.inline:
            return f"data:{info.content_type};base64,{base64.b64encode(data).decode('ascii')}"
        return attachment.url

    async def _download(self, attachment: discord.Attachment, limit: int, what: str) -> bytes:
        """The attachment's bytes, refused when over ``limit`` (as Discord declares it, or as it arrives)."""
        if self._session is None:  # created here: aiohttp wants a running event loop
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT))
        try:
            return await read_bounded(self._session, attachment.url, limit, declared=attachment.size)
        except TooLarge:
            raise AttachmentRefused(
                f"`{attachment.filename}` is {size_text(attachment.size)}; I read {what} up to {size_text(limit)}."
            ) from None
        except DownloadFailed as failed:
            if failed.status is not None:
                raise AttachmentRefused(
                    f"I couldn't download `{attachment.filename}` (HTTP {failed.status}); it may have been deleted. "
                    "Send it again."
                ) from None
            exc = failed.__cause__
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise AttachmentRefused(
                f"I couldn't download `{attachment.filename}` ({reason}). Try again in a moment."
            ) from exc
