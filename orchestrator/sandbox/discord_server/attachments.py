"""Attachments the sandbox stores and serves itself, as Discord's CDN does.

A file a user posts (through :meth:`DiscordSandbox.post`) or a bot uploads (multipart
``POST /channels/{id}/messages``) is kept here and served at
``GET /attachments/{channel_id}/{attachment_id}/{filename}`` (404 once deleted or if unknown).
Its attachment object has Discord's shape: ``id``, ``filename``, ``size``, ``url``,
``proxy_url``, ``content_type`` and, for an image whose header parses, ``width`` and ``height``.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ...imagesize import image_info

JSONDict = dict[str, Any]
ROUTE = "/attachments/{channel_id:\\d+}/{attachment_id:\\d+}/{filename}"


@dataclass(frozen=True)
class StoredFile:
    """One stored attachment: its bytes and the object messages carry."""

    data: bytes
    payload: JSONDict


class AttachmentStore:
    """Attachment bytes by attachment id, served over HTTP under :data:`ROUTE`."""

    def __init__(self) -> None:
        self._files: dict[int, StoredFile] = {}

    def add(
        self,
        base_url: str,
        channel_id: int,
        attachment_id: int,
        filename: str,
        data: bytes | None,
        content_type: str | None = None,
        extra: JSONDict | None = None,
    ) -> JSONDict:
        """Store a file and return its attachment object.

        ``data=None`` describes a file without bytes (older tests give only metadata): its object
        is built from ``extra`` (``size`` ...) and its URL is a 404. Without a ``content_type``, or
        with the generic one clients send (discord.py: ``application/octet-stream``), Discord
        infers it: from the image header, else from the file name."""
        info = image_info(data) if data is not None else None
        if content_type in (None, "application/octet-stream"):
            content_type = info.content_type if info is not None else mimetypes.guess_type(filename)[0]
        url = f"{base_url}/attachments/{channel_id}/{attachment_id}/{quote(filename)}"
        payload: JSONDict = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data) if data is not None else 0,
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        if info is not None:
            payload.update(width=info.width, height=info.height)
        payload.update(extra or {})
        if data is not None:
            self._files[attachment_id] = StoredFile(data, payload)
        return payload

    def read(self, url_or_id: str | int) -> bytes:
        """The stored bytes of an attachment, by its id or URL; KeyError if unknown or deleted."""
        return self._files[_attachment_id(url_or_id)].data

    def delete(self, url_or_id: str | int) -> None:
        """Forget an attachment: its URL answers 404 from now on (an expired or removed CDN file)."""
        self._files.pop(_attachment_id(url_or_id), None)

    async def serve(self, request: web.Request) -> web.Response:
        """``GET`` :data:`ROUTE`: the file's bytes with its content type, or 404."""
        stored = self._files.get(int(request.match_info["attachment_id"]))
        if stored is None or stored.payload["url"].split("/")[-3] != request.match_info["channel_id"]:
            raise web.HTTPNotFound(text="attachment not found")
        content_type = stored.payload.get("content_type", "application/octet-stream")
        return web.Response(body=stored.data, headers={"Content-Type": content_type})


def _attachment_id(url_or_id: str | int) -> int:
    if isinstance(url_or_id, int):
        return url_or_id
    return int(url_or_id.split("?")[0].rstrip("/").split("/")[-2]) if "/" in url_or_id else int(url_or_id)
