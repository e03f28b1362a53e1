"""Text helpers for Discord: split long answers, defuse mentions, clean incoming text.

Pure functions, no discord.py import. ``split_message`` cuts a model's answer into
messages of at most ``limit`` characters (Discord counts code points, i.e. ``len()``):

* it breaks at paragraph ends, then line ends, then spaces (any script; no-break spaces
  are not break points); a word longer than the room is hard-split, but never inside a
  grapheme cluster (combining marks, ZWJ emoji sequences, variation selectors, skin
  tones, flag pairs, ZWNJ inside Persian words);
* a chunk that ends inside a ``` fence gets "\\n```" appended and the next chunk reopens
  the fence with the original opening line ("```python\\n"), both counted in the limit;
  an answer that ends with its fence still open is closed too, so every chunk is balanced;
* whitespace at a break point may be dropped (indentation inside code is kept), no other
  character is lost, duplicated or reordered.

A fence is every non-overlapping "```" scanning left to right (what ``str.count`` sees);
an opening fence's language tag is the rest of its line when that looks like a tag.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

__all__ = ["MIN_LIMIT", "clean_user_text", "neutralize_mentions", "replace_lone_surrogates", "split_message"]

MIN_LIMIT = 16
"""Smallest ``limit`` for which a fenced chunk ("```\\n" + content + "\\n```") still has room."""

_FENCE = "```"
_CLOSE = "\n```"
# Whitespace we may break at: everything str.isspace() accepts except the no-break spaces
# (U+00A0, U+2007, U+202F), which are whitespace to Python but glue words together.
_BREAK_WS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2008\u2009\u200a\u2028\u2029\u205f\u3000"
)
_WS_CLASS = "[" + re.escape(_BREAK_WS) + "]"
_WS_RUN = re.compile(_WS_CLASS + "+")
_ANY_WS = re.compile(r"\s*")
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# Greedy ".*" makes re.match find the LAST break in a window, scanning back in C.
_LAST_PARA = re.compile(r"(?s).*(\n)[^\S\n\u00a0\u2007\u202f]*\n")
_LAST_LINE = re.compile("(?s).*([" + re.escape(_LINE_BREAKS) + "])")
_LAST_SPACE = re.compile("(?s).*(" + _WS_CLASS + ")")
_TAG = re.compile(r"[\w+#.\-]{0,32}")

_ZWNJ = "\u200c"
_ZWJ = "\u200d"
_UP_TO_LAST_NON_RI = re.compile("(?s)(?:.*[^\U0001f1e6-\U0001f1ff])?")
_MAX_CLUSTER = 256  # longest grapheme cluster we try to keep whole (real ones are < 30)


def _is_regional_indicator(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _extends(ch: str) -> bool:
    """True if ``ch`` belongs to the grapheme cluster of the character before it."""
    if ch in (_ZWJ, _ZWNJ):
        return True
    if "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef":  # variation selectors
        return True
    if "\U0001f3fb" <= ch <= "\U0001f3ff":  # emoji skin-tone modifiers
        return True
    if "\U000e0020" <= ch <= "\U000e007f":  # emoji tag sequences (subdivision flags)
        return True
    if "\udc00" <= ch <= "\udfff":  # low half of a stray surrogate pair
        return True
    if "\u1160" <= ch <= "\u11ff" or "\ud7b0" <= ch <= "\ud7ff":  # Hangul medial/final jamo
        return True
    return unicodedata.combining(ch) != 0 or unicodedata.category(ch) in ("Mn", "Me", "Mc")


def _is_safe_cut(text: str, i: int, lo: int = 0) -> bool:
    """True if cutting ``text`` between ``text[i-1]`` and ``text[i]`` keeps every grapheme whole.

    A small, dependency-free approximation of UAX #29 that covers what models actually
    emit: combining marks, ZWJ/ZWNJ on either side, variation selectors, skin tones,
    regional-indicator pairs, viramas joining consonants, CRLF and surrogate pairs.
    Flags are paired counting from ``lo``, which must itself be a cluster boundary.
    """
    if i <= 0 or i >= len(text):
        return True
    prev, cur = text[i - 1], text[i]
    if prev in (_ZWJ, _ZWNJ) or _extends(cur):
        return False
    if prev == "\r" and cur == "\n":
        return False
    if "\ud800" <= prev <= "\udbff":  # high surrogate waiting for its low half
        return False
    if unicodedata.combining(prev) == 9 and unicodedata.category(cur).startswith("L"):
        return False  # virama + consonant: an Indic conjunct
    if _is_regional_indicator(prev) and _is_regional_indicator(cur):
        m = _UP_TO_LAST_NON_RI.match(text, lo, i)
        run = i - (m.end() if m else lo)
        return run % 2 == 0  # flags pair up from the start of the run
    return True


@dataclass
class _Layout:
    """What ``split_message`` needs to know about ``text`` beyond the text itself."""

    text: str
    end: int  # length without trailing breakable whitespace
    token_starts: list[int]  # every non-overlapping "```"
    tags: list[str]  # per token; only meaningful for opening tokens (even index)
    no_cut: bytearray  # 1 where a cut would split a fence or leave an opening fence line empty

    @classmethod
    def build(cls, text: str) -> _Layout:
        n = len(text)
        no_cut = bytearray(n + 1)
        starts: list[int] = []
        tags: list[str] = []
        for m in re.finditer(_FENCE, text):
            p = m.start()
            starts.append(p)
            tag = ""
            stop = p + 2  # cuts at p+1, p+2 would split the fence itself
            if len(starts) % 2 == 1:  # opening fence: keep its info line with it
                nl = text.find("\n", p + 3)
                line_end = n if nl < 0 else nl
                rest = text[p + 3 : line_end].strip()
                if _TAG.fullmatch(rest):
                    tag = rest
                    stop = line_end
                else:
                    stop = p + 3
            tags.append(tag)
            no_cut[p + 1 : stop + 1] = b"\x01" * (stop - p)
        return cls(text, len(text.rstrip(_BREAK_WS)), starts, tags, no_cut)

    def fences_before(self, i: int) -> int:
        """Number of fences wholly before position ``i`` (``i`` is never inside one)."""
        return bisect_right(self.token_starts, i - 3)

    def is_open(self, i: int) -> bool:
        return self.fences_before(i) % 2 == 1

    def reopen_line(self, i: int) -> str:
        return _FENCE + self.tags[self.fences_before(i) - 1] + "\n"

    def token_at(self, i: int) -> bool:
        k = bisect_left(self.token_starts, i)
        return k < len(self.token_starts) and self.token_starts[k] == i

    def _inside_token(self, i: int) -> bool:
        k = bisect_right(self.token_starts, i) - 1
        return k >= 0 and self.token_starts[k] < i < self.token_starts[k] + 3

    def skip(self, i: int) -> int:
        """First position of the next chunk when a chunk was cut at ``i``."""
        if i >= self.end:
            return self.end
        m = _WS_RUN.match(self.text, i)
        if m is None:
            return i
        if self.is_open(i):  # inside code: drop the line break, keep the indentation
            run = m.group()
            last_nl = max(run.rfind("\n"), run.rfind("\r"))
            if last_nl >= 0:
                return min(i + last_nl + 1, self.end)
        return min(m.end(), self.end)

    def _last_break(self, pattern: re.Pattern[str], pos: int, hi: int) -> int | None:
        """Start of the whitespace run holding the last ``pattern`` break in ``(pos, hi]``."""
        text = self.text
        endpos = hi + 1
        while True:
            m = pattern.match(text, pos, endpos)
            if m is None:
                return None
            e = m.start(1)
            while e > pos and text[e - 1] in _BREAK_WS:
                e -= 1
            if e <= pos:
                return None
            if not self.no_cut[e]:
                return e
            endpos = e  # inside an opening fence line: look further back

    def cut(self, pos: int, hi: int) -> int:
        """Best cut in ``(pos, hi]``: ``text[pos:cut]`` is the chunk body."""
        if self.end <= hi:
            return self.end
        half = pos + (hi - pos) // 2
        para = self._last_break(_LAST_PARA, pos, hi)
        if para is not None and para >= half:
            return para
        line = self._last_break(_LAST_LINE, pos, hi)
        if line is not None and line >= half:
            return line
        space = self._last_break(_LAST_SPACE, pos, hi)
        if space is not None and space >= half and not self.is_open(space):
            return space  # in prose a space late in the window beats an early line break
        if line is not None:
            return line  # inside code, lines win
        if space is not None:
            return space
        return self.hard_cut(pos, hi)

    def hard_cut(self, pos: int, hi: int) -> int:
        text, no_cut = self.text, self.no_cut
        for i in range(hi, max(pos, hi - _MAX_CLUSTER), -1):
            if not no_cut[i] and _is_safe_cut(text, i, pos):
                return i
        # One grapheme cluster (or fence line) longer than the room: keep fences intact at least.
        for i in range(hi, pos, -1):
            if not self._inside_token(i):
                return i
        return hi


def split_message(text: str, limit: int = 2000) -> list[str]:
    """Split ``text`` into Discord messages of at most ``limit`` characters each.

    Returns ``[]`` for empty or whitespace-only text; never returns an empty or
    whitespace-only chunk. Runs in O(n log n). Raises ``ValueError`` if
    ``limit < MIN_LIMIT``. A reopened fence drops its language tag when the tag
    would eat more than half of ``limit``.
    """
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    if not text or text.isspace():
        return []
    lay = _Layout.build(text)
    chunks: list[str] = []
    pos = lay.skip(0)
    while pos < lay.end:
        prefix = ""
        if lay.is_open(pos):
            prefix = lay.reopen_line(pos)
            if len(prefix) + len(_CLOSE) > limit // 2:
                prefix = _FENCE + "\n"
        hi = pos + limit - len(prefix)
        e = lay.cut(pos, hi)
        if lay.is_open(e) and e > hi - len(_CLOSE):
            e = lay.cut(pos, hi - len(_CLOSE))
        nxt = lay.skip(e)
        body = text[pos:e]
        if not body.strip():  # e.g. a run of no-break spaces: nothing worth a message
            pos = nxt
            continue
        suffix = ""
        if lay.is_open(e):
            suffix = _CLOSE
            # If only whitespace separates the cut from the block's own closing fence,
            # our "\n```" stands in for it instead of reopening an empty block.
            ws = _ANY_WS.match(text, e)
            q = ws.end() if ws else e
            if q < lay.end and lay.token_at(q):
                nxt = lay.skip(q + 3)
        chunks.append(prefix + body + suffix)
        pos = nxt
    return chunks


_MENTION_EVERYONE = re.compile(r"@(?=everyone|here)")
_MENTION_TAG = re.compile("<@(?!\u200b)")


def neutralize_mentions(text: str) -> str:
    """Make mass and user/role mentions inert by inserting U+200B (zero-width space).

    ``allowed_mentions`` on every send is the primary guard; this is defence in depth so
    the text stays harmless if it is quoted, logged into another channel, or sent through
    a path that forgot ``allowed_mentions``. "@everyone"/"@here" become "@\\u200beveryone"/
    "@\\u200bhere" and "<@" (users "<@1>", "<@!1>", roles "<@&1>") becomes "<@\\u200b".
    Idempotent: already neutralized text is returned unchanged.
    """
    return _MENTION_TAG.sub("<@\u200b", _MENTION_EVERYONE.sub("@\u200b", text))


_INVISIBLE = dict.fromkeys([0x200B, 0x200E, 0x200F, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def clean_user_text(text: str) -> str:
    """Drop zero-width/bidi control characters from a user's message and strip it.

    Removes U+200B, LRM/RLM (U+200E/F), embeddings/overrides (U+202A–U+202E),
    isolates (U+2066–U+2069) and BOM (U+FEFF). Keeps U+200C (ZWNJ, part of Persian
    spelling) and U+200D (ZWJ, part of emoji sequences). A lone surrogate (valid JSON can
    carry one, UTF-8 cannot) becomes U+FFFD. Returns "" if nothing is left.
    """
    return replace_lone_surrogates(text.translate(_INVISIBLE)).strip()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (valid in JSON, not in UTF-8) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)
