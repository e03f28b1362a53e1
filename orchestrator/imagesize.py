"""The format and pixel size of a PNG, JPEG, GIF or WebP image, read from its header (standard library only).

Used where an image must be recognised without decoding it: the bot sniffs what a user attached
(a corrupt or mislabelled image is refused, naming the file), the Discord sandbox fills in an
attachment's ``width``/``height`` and the OpenAI sandbox says what it saw.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Formats by their name in a MIME type (image/<format>).
FORMATS = ("png", "jpeg", "gif", "webp")

# JPEG start-of-frame markers (SOF0-SOF15 without DHT, JPG and DAC), which carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: its format (one of :data:`FORMATS`) and size in pixels."""

    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"

    def __str__(self) -> str:
        return f"{self.width}x{self.height} {self.format}"


def image_info(data: bytes) -> ImageInfo | None:
    """The image's format and size, or None when ``data`` is not a PNG, JPEG, GIF or WebP whose
    header parses (truncated, corrupt, or another kind of file)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return _sized("png", width, height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return _sized("gif", width, height)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
    except struct.error:  # the header ends early
        return None
    return None


def _sized(fmt: str, width: int, height: int) -> ImageInfo | None:
    return ImageInfo(fmt, width, height) if width > 0 and height > 0 else None


def _webp(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: a key frame's start code
        width, height = struct.unpack("<HH", data[26:30])
        return _sized("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1 and height-1
        (bits,) = struct.unpack("<I", data[21:25])
        return _sized("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _sized("webp", width, height) if len(data) >= 30 else None
    return None


def _jpeg(data: bytes) -> ImageInfo | None:
    """Walk the JPEG's segments to the first start-of-frame, which holds the size."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return _sized("jpeg", width, height)
        if length < 2:
            return None
        at += 2 + length
    return None
