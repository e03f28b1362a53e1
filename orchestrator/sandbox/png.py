"""A real PNG from the standard library alone (``zlib`` + ``struct``), for the sandbox's image answers.

The picture is a deterministic function of a seed text: horizontal bands of two colours taken from
the text's SHA-256, so the same prompt draws the same image and a test can tell two apart.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND = 16  # rows per colour band


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, seed: str) -> bytes:
    """An 8-bit RGB PNG of ``width`` × ``height`` pixels drawn from ``seed``."""
    digest = hashlib.sha256(seed.encode()).digest()
    rows = [b"\x00" + digest[i : i + 3] * width for i in (0, 3)]  # filter byte 0 (None), then the pixels
    raw = b"".join(rows[(y // BAND) % 2] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # bit depth 8, colour type 2 (RGB)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
