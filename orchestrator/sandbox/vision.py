"""What the OpenAI sandbox sees in a chat request's image parts.

A user message's content may be a list of parts, ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": ...}}``; the URL is an ``http(s)`` address (fetched,
on loopback: the Discord sandbox serves attachments) or a ``data:image/...;base64,`` URL. As
OpenAI does, an image that cannot be downloaded or is not a PNG, JPEG, GIF or WebP refuses the
whole request with a 400 (:class:`ImageRefused`); an image part in a non-user message too.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from ..imagesize import ImageInfo, image_info

MAX_IMAGE_BYTES = 20_000_000  # OpenAI's limit per image
IMAGE_TOKENS = 85  # what OpenAI bills a low-detail image; the sandbox bills every image so


class ImageRefused(Exception):
    """An image part OpenAI would refuse: ``code`` is OpenAI's error code, the message its text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SeenImage:
    """One image the sandbox looked at: where it came from (a file name, or ``inline``) and its header."""

    source: str
    info: ImageInfo

    def __str__(self) -> str:
        return f"image {self.source} {self.info}"


def image_urls(messages: Sequence[Any]) -> list[str]:
    """The URLs of every image part, in order; :class:`ImageRefused` for one outside a user message."""
    urls = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), list):
            continue
        for part in message["content"]:
            if not isinstance(part, Mapping) or part.get("type") != "image_url":
                continue
            if message.get("role") != "user":
                raise ImageRefused("invalid_value", "Image URLs are only allowed for messages with role 'user'.")
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str):
                raise ImageRefused("invalid_value", "Invalid image_url: an object with a string 'url' is required.")
            urls.append(url)
    return urls


async def look(session: aiohttp.ClientSession, url: str) -> SeenImage:
    """Fetch or decode one image and read its header; :class:`ImageRefused` as OpenAI refuses it."""
    if url.startswith("data:"):
        header, _, encoded = url.partition(",")
        if not header.endswith(";base64"):
            raise ImageRefused("invalid_image_url", "Invalid image URL: data URLs must be base64 encoded.")
        try:
            data = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ImageRefused("invalid_image_url", "Invalid base64 image data.") from None
        source = "inline"
    elif urlsplit(url).scheme in ("http", "https"):
        data = await _download(session, url)
        source = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or url
    else:
        raise ImageRefused("invalid_image_url", f"Invalid image URL: {url[:80]!r} is neither http(s) nor data.")
    info = image_info(data)
    if info is None:
        raise ImageRefused(
            "invalid_image_format",
            "You uploaded an unsupported image. Please make sure your image has of one the following formats: "
            "['png', 'jpeg', 'gif', 'webp'].",
        )
    return SeenImage(source, info)


async def _download(session: aiohttp.ClientSession, url: str) -> bytes:
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise ImageRefused("invalid_image_url", f"Error while downloading {url}.")
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise ImageRefused("image_too_large", f"Image at {url} is larger than {MAX_IMAGE_BYTES} bytes.")
    except aiohttp.ClientError:
        raise ImageRefused("invalid_image_url", f"Error while downloading {url}.") from None
    return bytes(data)


def describe_parts(content: object) -> str:
    """The image parts of a message's content as text, for :func:`said`: ``<image URL>`` for an
    address, ``<image data:image/png, 149 bytes>`` for inline data (never the data itself)."""
    if not isinstance(content, list):
        return ""
    shown = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:"):
                header, _, encoded = url.partition(",")
                size = len(encoded) * 3 // 4 - encoded.count("=")
                url = f"{header.removesuffix(';base64')}, {size} bytes"
            shown.append(f"<image {url}>")
    return " ".join(shown)
