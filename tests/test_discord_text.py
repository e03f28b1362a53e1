"""Tests for orchestrator.discord_io.text: message splitting, mention defusing, input cleaning."""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.discord_io.text import (
    MIN_LIMIT,
    clean_user_text,
    neutralize_mentions,
    split_message,
)

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 👨‍👩‍👧‍👦, 7 code points
E_ACUTE = "e\u0301"  # decomposed é
THUMBS_MEDIUM = "\U0001f44d\U0001f3fd"  # 👍🏽
FLAG_IR = "\U0001f1ee\U0001f1f7"  # 🇮🇷
FLAG_FR = "\U0001f1eb\U0001f1f7"  # 🇫🇷
KEYCAP_ONE = "1\ufe0f\u20e3"  # 1️⃣
ZWNJ = "\u200c"
ZWJ = "\u200d"
PERSIAN_WORDS = ["می\u200cخواهم", "کتاب\u200cها", "نمی\u200cدانم", "سلام", "دوست", "خانه\u200cی", "ایران"]
TAGS = ["python", "js", "c++", "", "rust"]
_TAG_LIKE = re.compile(r"[\w+#.\-]{0,32}")


# ---------------------------------------------------------------- checking helpers


def _nonws(s: str) -> str:
    return "".join(s.split())


def _open_fence_at(src: str, fences: list[int], i: int) -> str | None:
    """The reopen line expected for a chunk starting at ``src[i]``, or None outside a fence.

    ``fences`` holds the start of every non-overlapping "```" in ``src``.
    """
    before = bisect_right(fences, i - 3)  # fences wholly before i
    if before % 2 == 0:
        return None
    p = fences[before - 1] + 3
    nl = src.find("\n", p)
    rest = src[p : len(src) if nl < 0 else nl].strip()
    return f"```{rest}\n" if _TAG_LIKE.fullmatch(rest) else "```\n"


def _consume(src: str, i: int, body: str) -> int | None:
    """Match ``body``'s non-whitespace against ``src`` from ``i`` (skipping whitespace)."""
    for ch in _nonws(body):
        while i < len(src) and src[i].isspace():
            i += 1
        if i >= len(src) or src[i] != ch:
            return None
        i += 1
    return i


def assert_faithful(src: str, chunks: list[str], limit: int) -> None:
    """Chunks minus the fence lines the splitter adds give back ``src``'s non-whitespace, in order."""
    fences = [m.start() for m in re.finditer("```", src)]
    i = 0
    for chunk in chunks:
        body = chunk
        reopen = _open_fence_at(src, fences, i)
        if reopen is not None:
            if len(reopen) + 4 > limit // 2:
                reopen = "```\n"
            assert chunk.startswith(reopen), (chunk[:40], reopen)
            body = body[len(reopen) :]
        j = _consume(src, i, body)
        if j is None or _open_fence_at(src, fences, j) is not None:
            # the chunk must have been closed artificially, inside a fence
            assert body.endswith("\n```"), chunk[-40:]
            j = _consume(src, i, body[:-4])
            assert j is not None, "content lost, duplicated or reordered"
            assert _open_fence_at(src, fences, j) is not None, "fence closed outside a code block"
        i = j
    assert _nonws(src[i:]) == "", "content lost at the end"


def assert_well_formed(chunks: list[str], limit: int) -> None:
    for chunk in chunks:
        assert 0 < len(chunk) <= limit
        assert chunk.strip(), "whitespace-only chunk"
        assert chunk.count("```") % 2 == 0, f"unbalanced fence in {chunk!r}"


def _glues_to_previous(ch: str) -> bool:
    return (
        ch in (ZWJ, ZWNJ, "\ufe0f", "\ufe0e")
        or "\U0001f3fb" <= ch <= "\U0001f3ff"
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
    )


def assert_cluster_edges(chunks: list[str]) -> None:
    """No chunk starts with a character that glues to the previous one, or ends with ZWJ/ZWNJ."""
    for chunk in chunks:
        first = chunk
        if first.startswith("```") and "\n" in first:
            first = first[first.index("\n") + 1 :] or first
        last = chunk[:-4] if chunk.endswith("\n```") and len(chunk) > 4 else chunk
        assert not _glues_to_previous(first[0]), repr(chunk[:20])
        assert last[-1] not in (ZWJ, ZWNJ), repr(chunk[-20:])


# ---------------------------------------------------------------- generators

_clusters = st.sampled_from(
    [
        "a",
        "b",
        "z",
        "Q",
        "7",
        "é",
        E_ACUTE,
        "o\u0308\u0304",
        FAMILY,
        THUMBS_MEDIUM,
        FLAG_IR,
        FLAG_FR,
        KEYCAP_ONE,
        "\u2764\ufe0f",
        "ک",
        "س",
        "क्ष",
        ".",
        ",",
        "!",
        "\u00a0",
    ]
)
_short_words = st.lists(_clusters, min_size=1, max_size=8).map("".join)
# a long "word" (URL, hash, emoji wall) that has to be hard-split; repeating keeps generation cheap
_long_words = st.builds(lambda word, times: word * times, _short_words, st.integers(10, 80))
_persian = st.sampled_from(PERSIAN_WORDS)
_words = st.one_of(_short_words, _short_words, _persian, _long_words)
_seps = st.sampled_from([" ", " ", " ", "\n", "\n\n", "  ", "\t", "\n   ", "\r\n"])
_code_lines = st.builds(
    lambda indent, words: " " * indent + " ".join(words),
    st.integers(0, 8),
    st.lists(st.one_of(_short_words, _persian), max_size=6),
)
_code_block = st.builds(
    lambda tag, lines: f"```{tag}\n" + "\n".join(lines) + "\n```",
    st.sampled_from(TAGS),
    st.lists(_code_lines, max_size=20),
)
_unclosed = st.builds(
    lambda tag, lines: f"```{tag}\n" + "\n".join(lines),
    st.sampled_from(TAGS),
    st.lists(_code_lines, max_size=10),
)
_pieces = st.one_of(_words, _words, _words, _code_block, st.sampled_from(["   ", "\n\n\n", "\t \n"]))
_texts = st.builds(
    lambda parts, tail: "".join(p + s for p, s in parts) + tail,
    st.lists(st.tuples(_pieces, _seps), max_size=30),
    st.one_of(st.just(""), _unclosed),
)


# ---------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    text=_texts,
    limit=st.one_of(st.integers(MIN_LIMIT, 60), st.integers(50, 300), st.integers(300, 2000)),
)
def test_split_properties(text: str, limit: int) -> None:
    chunks = split_message(text, limit)
    assert_well_formed(chunks, limit)
    assert_faithful(text, chunks, limit)
    assert_cluster_edges(chunks)
    assert (chunks == []) == (text.strip() == "")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=600), limit=st.integers(MIN_LIMIT, 120))
def test_split_arbitrary_unicode(text: str, limit: int) -> None:
    chunks = split_message(text, limit)
    assert_well_formed(chunks, limit)
    assert_faithful(text, chunks, limit)


@settings(max_examples=100, deadline=None)
@given(words=st.lists(_persian, min_size=1, max_size=400), limit=st.integers(50, 400))
def test_persian_splits_only_at_spaces(words: list[str], limit: int) -> None:
    text = " ".join(words)
    chunks = split_message(text, limit)
    assert " ".join(chunks) == text
    assert all(len(c) <= limit for c in chunks)


# ---------------------------------------------------------------- basic behaviour


def test_short_text_is_returned_whole() -> None:
    assert split_message("hello world") == ["hello world"]
    exact = "x" * 2000
    assert split_message(exact) == [exact]
    assert split_message("  padded \n") == ["padded"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n", "\u00a0 \u3000"])
def test_empty_or_whitespace_gives_no_chunks(text: str) -> None:
    assert split_message(text) == []


def test_limit_below_minimum_is_rejected() -> None:
    with pytest.raises(ValueError):
        split_message("hello", MIN_LIMIT - 1)


def test_prefers_paragraph_break() -> None:
    text = "A" * 55 + "\n\n" + "B" * 20 + "\n" + "c " * 40
    assert split_message(text, 100)[0] == "A" * 55  # not the later line break


def test_prefers_line_break_over_space() -> None:
    text = "a a a " * 10 + "\n" + "b " * 40
    assert split_message(text, 100)[0] == ("a a a " * 10).strip()


def test_breaks_between_words() -> None:
    words = [f"word{i}" for i in range(100)]
    chunks = split_message(" ".join(words), 50)
    assert " ".join(chunks) == " ".join(words)
    assert all(len(c) <= 50 for c in chunks)
    assert len(chunks) >= 12


def test_no_break_space_is_not_a_break_point() -> None:
    text = "a" * 30 + "\u00a0" + "b" * 40
    assert split_message(text, 50) == ["a" * 30 + "\u00a0" + "b" * 19, "b" * 21]


def test_whitespace_only_pieces_are_dropped() -> None:
    assert split_message("hello " + "\u00a0" * 40 + " world", 20) == ["hello", "world"]


# ---------------------------------------------------------------- scripts and graphemes


def test_persian_5000_chars_splits_only_at_spaces_never_at_zwnj() -> None:
    words = [PERSIAN_WORDS[(i * 3) % len(PERSIAN_WORDS)] for i in range(900)]
    text = " ".join(words)
    assert len(text) > 5000
    chunks = split_message(text)
    assert len(chunks) >= 3
    assert " ".join(chunks) == text  # every break replaced exactly one space
    for chunk in chunks:
        assert len(chunk) <= 2000
        assert chunk[0] != ZWNJ and chunk[-1] != ZWNJ
        assert chunk.split(" ")[0] in PERSIAN_WORDS and chunk.split(" ")[-1] in PERSIAN_WORDS


def test_long_persian_word_hard_split_avoids_zwnj() -> None:
    word = PERSIAN_WORDS[0] * 40  # ZWNJ at every index == 2 (mod 8)
    assert word[50] == ZWNJ  # a naive cut at 51 would leave a ZWNJ at the chunk's end
    for limit in range(MIN_LIMIT, 90):
        chunks = split_message(word, limit)
        assert "".join(chunks) == word
        for chunk in chunks:
            assert len(chunk) <= limit
            assert chunk[0] != ZWNJ and chunk[-1] != ZWNJ


def test_long_word_of_family_emoji_is_cut_between_families() -> None:
    word = FAMILY * 30
    chunks = split_message(word, 50)  # 50 is not a multiple of 7
    assert "".join(chunks) == word
    assert [len(c) for c in chunks] == [49, 49, 49, 49, 14]
    assert all(c == FAMILY * (len(c) // 7) for c in chunks)


def test_long_word_of_combining_marks_keeps_accents_on_their_letter() -> None:
    word = E_ACUTE * 60
    chunks = split_message(word, 51)
    assert "".join(chunks) == word
    assert [len(c) for c in chunks] == [50, 50, 20]
    assert all(not c.startswith("\u0301") for c in chunks)


@pytest.mark.parametrize(
    ("prefix", "cluster"),
    [("", FLAG_IR + FLAG_FR), ("x", FLAG_IR), ("", THUMBS_MEDIUM), ("", KEYCAP_ONE), ("", "\u2764\ufe0f")],
)
def test_hard_split_keeps_emoji_clusters(prefix: str, cluster: str) -> None:
    size = 2 if cluster.startswith(FLAG_IR) else len(cluster)  # a flag is two code points
    word = prefix + cluster * 40
    for limit in (MIN_LIMIT, 17, 31, 50, 51, 53):
        chunks = split_message(word, limit)
        assert "".join(chunks) == word
        assert all(len(c) <= limit for c in chunks)
        offset = 0
        for chunk in chunks[:-1]:
            offset += len(chunk)
            assert (offset - len(prefix)) % size == 0, (limit, chunk)


# ---------------------------------------------------------------- code fences


def _python_block(lines: int) -> tuple[str, list[str]]:
    code = [f"    value_{i} = compute({i}, flag=True)  # step {i}" for i in range(lines)]
    return "```python\n" + "\n".join(code) + "\n```", code


def test_long_python_block_is_refenced_on_every_chunk() -> None:
    text, code = _python_block(80)
    chunks = split_message(text, 500)
    assert len(chunks) > 3
    bodies = []
    for chunk in chunks:
        assert len(chunk) <= 500
        assert chunk.startswith("```python\n")
        assert chunk.endswith("\n```")
        body = chunk[len("```python\n") : -len("\n```")]
        lines = body.split("\n")
        assert all(line in code for line in lines)  # split at line boundaries, indentation kept
        bodies.extend(lines)
    assert bodies == code  # nothing lost or duplicated


def test_reopened_fence_keeps_language_tag_after_prose() -> None:
    code = "\n".join(f"console.log({i});" for i in range(60))
    text = "Here you go:\n\n```js\n" + code + "\n```\n\nThat's all."
    chunks = split_message(text, 300)
    assert_well_formed(chunks, 300)
    assert_faithful(text, chunks, 300)
    reopened = [c for c in chunks[1:] if c.startswith("```")]
    assert reopened and all(c.startswith("```js\n") for c in reopened)
    assert chunks[-1].endswith("That's all.")


def test_chunk_ending_inside_fence_is_closed_and_next_reopened() -> None:
    text = "```c++\n" + "int x = 1;\n" * 20 + "```"
    chunks = split_message(text, 100)
    assert chunks[0].startswith("```c++\n") and chunks[0].endswith("int x = 1;\n```")
    assert chunks[1].startswith("```c++\nint x = 1;")
    assert all(c.count("```") == 2 for c in chunks)


def test_unclosed_fence_at_end_is_closed() -> None:
    assert split_message("```py\nprint(1)") == ["```py\nprint(1)\n```"]


def test_original_closing_fence_is_reused_not_reopened() -> None:
    text = "```py\n" + "a" * 30 + "\n" * 8 + "```\nafter"
    assert split_message(text, 45) == ["```py\n" + "a" * 30 + "\n```", "after"]


def test_never_cuts_between_fence_and_language_tag() -> None:
    text = "x " * 20 + "```python\nprint('hello')\n```"
    for limit in range(MIN_LIMIT, 60):
        chunks = split_message(text, limit)
        assert_well_formed(chunks, limit)
        assert_faithful(text, chunks, limit)
        # no empty block: the opening line is never separated from the first line of code
        assert not any(c.endswith("```python\n```") or c.startswith("```python\n```") for c in chunks)
        if limit >= 30:
            assert any("print('hello')" in c for c in chunks)


# ---------------------------------------------------------------- size (speed is measured by scripts/bench)


def test_100kb_answer_splits_well_formed() -> None:
    prose = ("Lorem ipsum dolor sit amet, " + PERSIAN_WORDS[0] + " " + FAMILY + " consectetur.\n") * 400
    code = "```python\n" + "    x = compute(1, 2, 3)  # comment\n" * 800 + "```\n"
    text = ((prose + code) * 3)[:100_000]
    chunks = split_message(text)
    assert len(text) == 100_000 and len(chunks) >= 50
    assert_well_formed(chunks, 2000)


# ---------------------------------------------------------------- mentions


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("@everyone look", "@\u200beveryone look"),
        ("hi @here!", "hi @\u200bhere!"),
        ("<@123>", "<@\u200b123>"),
        ("<@!123>", "<@\u200b!123>"),
        ("<@&456> ping role", "<@\u200b&456> ping role"),
        ("mail me at a@example.com", "mail me at a@example.com"),
        ("<#789> is a channel", "<#789> is a channel"),
        ("", ""),
    ],
)
def test_neutralize_mentions(raw: str, expected: str) -> None:
    assert neutralize_mentions(raw) == expected


def test_neutralize_mentions_is_idempotent() -> None:
    text = "@everyone @here <@1> <@!2> <@&3>"
    once = neutralize_mentions(text)
    assert "@everyone" not in once and "@here" not in once and "<@1" not in once
    assert neutralize_mentions(once) == once


# ---------------------------------------------------------------- incoming text


@pytest.mark.parametrize(
    "junk",
    [
        "\u200b",
        "\u200e",
        "\u200f",
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",
        "\u202e",
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",
        "\ufeff",
    ],
)
def test_clean_user_text_removes_invisible_controls(junk: str) -> None:
    assert clean_user_text(f"{junk}he{junk}llo{junk}") == "hello"


def test_clean_user_text_keeps_zwnj_and_zwj() -> None:
    persian = PERSIAN_WORDS[0]
    assert ZWNJ in persian and clean_user_text(f"\u200f{persian}\u200f") == persian
    assert clean_user_text(f" {FAMILY}\u200b ") == FAMILY
    assert ZWJ in clean_user_text(FAMILY)


def test_clean_user_text_strips_and_empties() -> None:
    assert clean_user_text("  \n hi there \t") == "hi there"
    assert clean_user_text("\u200b \u200e\ufeff\n") == ""
    assert clean_user_text("abc\u202edcba") == "abcdcba"
