"""What kind of file a Discord attachment is, and the short note that stands for it in text.

A persona reads two kinds: images (PNG, JPEG, WebP, GIF, by content type or file extension; the
bytes are checked later) and small text files (by extension). Memory and channel context keep a
note such as ``[image: cat.png]`` or ``[file: notes.txt]`` in place of the file, never its bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Literal

Kind = Literal["image", "text"]

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
TEXT_EXTENSIONS = (".txt", ".md", ".py", ".json", ".csv")


def kind_of(filename: str, content_type: str | None) -> Kind | None:
    """``image``, ``text``, or None for a file a persona does not read."""
    extension = PurePosixPath(filename).suffix.lower()
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in IMAGE_TYPES or extension in IMAGE_EXTENSIONS:
        return "image"
    if extension in TEXT_EXTENSIONS:
        return "text"
    return None


def note(filename: str, content_type: str | None) -> str:
    """``[image: cat.png]`` for an image, else ``[file: notes.txt]``."""
    return f"[{'image' if kind_of(filename, content_type) == 'image' else 'file'}: {filename}]"


def with_notes(text: str, files: Iterable[tuple[str, str | None]]) -> str:
    """``text`` followed by a note per ``(filename, content_type)``, on its own line."""
    notes = " ".join(note(filename, content_type) for filename, content_type in files)
    return f"{text}\n{notes}".strip() if notes else text
