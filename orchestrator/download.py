"""Bounded HTTP downloads: the bytes at a URL, refused beyond a size (as declared, or as they arrive).

Used for what a user attached (persona/attachments.py) and for an image a provider answers with a
URL (llm/images.py); each maps the two failures below to its own words for the user.
"""

from __future__ import annotations

import aiohttp

_CHUNK = 64 * 1024


class TooLarge(Exception):
    """The file is larger than the limit: its declared size says so, or its bytes went past it."""


class DownloadFailed(Exception):
    """The file could not be fetched: ``status`` is the HTTP status of an answer other than 200, None
    for a network error or a timeout (then the exception's cause)."""

    def __init__(self, status: int | None = None) -> None:
        super().__init__(f"HTTP {status}" if status is not None else "no answer")
        self.status = status


async def read_bounded(session: aiohttp.ClientSession, url: str, limit: int, *, declared: int = 0) -> bytes:
    """The bytes at ``url`` read with ``session``, at most ``limit`` of them; ``declared``: the size
    the file is said to have (e.g. Discord's), checked before anything is fetched."""
    if declared > limit:
        raise TooLarge
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise DownloadFailed(response.status)
            if (response.content_length or 0) > limit:
                raise TooLarge
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > limit:  # the declared size was wrong: stop reading
                    raise TooLarge
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed() from exc
    return bytes(data)
