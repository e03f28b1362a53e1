"""bots.yaml fuzzing: malformed and hostile files never crash the loader.

``parse_config`` either returns a :class:`Config` or raises :class:`ConfigError` whose every issue has a
message; any other exception is a bug. Hand-written hostile files come first (each marked ``bad_input``),
then hypothesis generates about 300 more (counted as generated files in the reliability summary).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import Config, parse_config
from orchestrator.errors import ConfigError

from .conftest import count_generated

ENV = {"OPENAI_API_KEY": "sk-fuzz-key-000000", "TOKEN_A": "fuzz-token-a-000000", "TOKEN_B": "fuzz-token-b-000000"}
VALID: dict[str, Any] = {
    "discord": {"api_url": "http://127.0.0.1:1/api/v10", "guild_ready_timeout": 0.5},
    "providers": {
        "openai": {
            "base_url": "http://127.0.0.1:1/v1",
            "api_key_env": "OPENAI_API_KEY",
            "max_concurrency": 4,
            "timeout": 30,
            "max_retries": 2,
        }
    },
    "defaults": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prefix": "!",
        "params": {"max_tokens": 300, "temperature": 0.7},
        "quota": {"requests_per_minute": 60},
        "user_quota": {"tokens_per_day": 5000},
        "memory": {"scope": "user", "max_turns": 20},
        "access": {"guilds": [1], "dms": False, "admins": [2]},
        "mailbox_size": 8,
    },
    "database": "memory.sqlite3",
    "restart": {"max_restarts": 3, "window": 60},
    "bots": [
        {"name": "a", "token_env": "TOKEN_A", "persona": "You are A.", "params": {"temperature": 0.2}},
        {"name": "b", "token_env": "TOKEN_B", "persona": "You are B.", "prefix": "?", "access": {"channels": [5]}},
    ],
}


def loads_or_explains(raw: bytes | str) -> Config | ConfigError:
    """The property: a Config, or a ConfigError whose every issue says something. Anything else raises."""
    try:
        config = parse_config(raw, "bots.yaml", ENV, base_dir=Path("/nonexistent"))
    except ConfigError as exc:
        assert exc.issues, "a ConfigError lists at least one issue"
        for issue in exc.issues:
            assert isinstance(issue.message, str) and issue.message.strip(), issue
        assert str(exc).startswith(f"{len(exc.issues)} problem")
        return exc
    assert isinstance(config, Config)
    return config


def dump(document: Any) -> bytes:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False).encode("utf-8")


def test_the_base_document_is_valid() -> None:
    config = loads_or_explains(dump(VALID))
    assert isinstance(config, Config) and list(config.bots) == ["a", "b"]


# ---------------------------------------------------------------- hand-written hostile files


def anchor_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nbots: *l{levels - 1}\n"


HOSTILE = [
    pytest.param(b"", "empty", id="empty-file"),
    pytest.param(b"   \n# only a comment\n", "empty", id="only-a-comment"),
    pytest.param(b"- just\n- a list\n", "top level must be a mapping", id="top-level-list"),
    pytest.param(b"bots: [\n", "not valid YAML", id="unclosed-bracket"),
    pytest.param(b"bots:\n\t- name: a\n", "not valid YAML", id="tab-indentation"),
    pytest.param(b"\xff\xfe b\x00o\x00t\x00s\x00", "UTF-8", id="utf-16-bytes"),
    pytest.param("bots: café".encode("latin-1"), "UTF-8", id="latin-1-bytes"),
    pytest.param(b"a: " + b"[" * 5000 + b"]" * 5000, "nested", id="deeply-nested-lists"),
    pytest.param(b"bots: " + b"{a: " * 3000 + b"1" + b"}" * 3000, "nested", id="deeply-nested-mappings"),
    pytest.param(b"x:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 400)), "", id="deeply-indented-block"),
    pytest.param(anchor_bomb().encode(), "expands", id="billion-laughs-anchor-bomb"),
    pytest.param(b"health_port: " + b"9" * 5000, "", id="5000-digit-integer"),
    pytest.param(b"bots: [{name: a, token_env: TOKEN_A, persona: p, weight: 1e999}]", "", id="float-overflow"),
    pytest.param(b"database: 2020-13-45", "", id="impossible-date"),
    pytest.param(b"database: !!binary '@@@ not base64'", "", id="bad-binary-tag"),
    pytest.param(b"database: !!python/object/apply:os.system ['echo pwned']", "not valid YAML", id="python-tag"),
    pytest.param(b"? [complex, key]\n: value\n", "", id="unhashable-key"),
    pytest.param(b"defaults: {<<: 5}", "", id="bad-merge-key"),
    pytest.param(b"bots: &a [*a]", "", id="recursive-alias"),
    pytest.param(b"bots:\n- name: a\n  name: b\n  token_env: TOKEN_A\n  persona: p\n", "", id="duplicate-keys"),
    pytest.param(dump({**VALID, "bots": [{**VALID["bots"][0], "persona": "x" * 900_000}]}), "", id="900k-persona"),
    pytest.param(
        dump({**VALID, "bots": [{"name": "a" * 10_000, "token_env": "T", "persona": "p"}]}), "", id="huge-name"
    ),
    pytest.param(dump({**VALID, "defaults": {"access": {"guilds": list(range(10_000))}}}), "", id="10k-guild-ids"),
    pytest.param(
        dump({**VALID, "bots": [{**VALID["bots"][0], "name": f"b{i}", "token_env": f"T{i}"} for i in range(500)]}),
        "",
        id="500-bots",
    ),
    pytest.param(
        dump({**VALID, "providers": {"openai": {**VALID["providers"]["openai"], "timeout": math.nan}}}),
        "",
        id="nan-timeout",
    ),
    pytest.param(
        dump({**VALID, "restart": {"window": math.inf, "backoff_max": math.inf}}), "", id="infinite-restart-window"
    ),
    pytest.param(dump({**VALID, "providers": {1: {"base_url": "x"}, None: {}}}), "", id="non-string-provider-names"),
    pytest.param(
        dump({**VALID, "bots": [{**VALID["bots"][0], "token_env": "sk-pasted.secret/value"}]}),
        "name",
        id="secret-in-token_env",
    ),
    pytest.param(dump({**VALID, "bots": {"a": VALID["bots"][0]}}), "", id="bots-as-mapping"),
    pytest.param(dump({**VALID, "defaults": [1, 2, 3]}), "", id="defaults-as-list"),
    pytest.param(b"\xef\xbb\xbf" + dump(VALID), None, id="utf-8-bom-is-fine"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(("raw", "says"), HOSTILE)
def test_hostile_file_is_refused_with_a_clear_message(raw: bytes, says: str | None) -> None:
    result = loads_or_explains(raw)
    if says is None:
        assert isinstance(result, Config)
    elif says:
        assert isinstance(result, ConfigError) and says in str(result)


# ---------------------------------------------------------------- generated files

HUGE = st.sampled_from(
    [
        10**30,
        -(10**30),
        2**63,
        10**4000,
        1e308,
        -1e308,
        math.inf,
        -math.inf,
        math.nan,
        0,
        -1,
        "",
        " ",
        "\x00",
        "x" * 50_000,
        "\u202e" * 100,
        "../../../etc/passwd",
        "${OPENAI_API_KEY}",
        "{{ 7*7 }}",
        "null",
        "~",
        "yes",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    HUGE,
    st.dates(),
    st.binary(max_size=20),
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "name",
            "token_env",
            "persona",
            "bots",
            "providers",
            "defaults",
            "params",
            "access",
            "quota",
            "memory",
            "prefix",
            "model",
            "stream",
            "weight",
            "guilds",
            "roles",
            "<<",
            "temperature",
        ]
    ),
    st.text(max_size=12),
    st.integers(),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=24,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


VALID_PATHS = paths(VALID)[1:]


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    """The valid document with a few places replaced, removed or given unknown keys."""
    document = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(VALID_PATHS))
        parent: Any = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "unknown-key"]))
            if action == "replace":
                parent[path[-1]] = draw(VALUES)
            elif action == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(KEYS)] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this place
    return dump(document)


@st.composite
def mangled_text(draw: st.DrawFn) -> bytes:
    """A valid file with bytes cut, inserted or swapped (broken YAML, broken UTF-8)."""
    raw = bytearray(dump(VALID))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        junk = draw(
            st.binary(min_size=1, max_size=8) | st.sampled_from([b"[", b"{", b"&a", b"*a", b"!!", b"\t", b": ", b"- "])
        )
        if kind == "insert":
            raw[at:at] = junk
        elif kind == "delete":
            del raw[at : at + len(junk)]
        else:
            raw[at : at + len(junk)] = junk
    return bytes(raw)


FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@FUZZ
@given(mutated_documents())
def test_generated_valid_files_with_hostile_values_never_crash(raw: bytes) -> None:
    count_generated(1)
    loads_or_explains(raw)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled_text())
def test_generated_broken_bytes_never_crash(raw: bytes) -> None:
    count_generated(1)
    loads_or_explains(raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_generated_yaml_of_random_structure_never_crashes(document: Any) -> None:
    count_generated(1)
    loads_or_explains(dump(document))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_generated_random_bytes_never_crash(raw: bytes) -> None:
    count_generated(1)
    loads_or_explains(raw)


SECRETS = st.from_regex(r"(sk-|MT)[A-Za-z0-9]{8,30}\.[A-Za-z0-9_-]{4,20}", fullmatch=True)
PASTE_SITES = [
    ("providers", "openai", "api_key"),
    ("providers", "openai", "api_key_env"),
    ("bots", 0, "token"),
    ("bots", 0, "token_env"),
    ("bots", 1, "api_key"),
    ("defaults", "token"),
]


@settings(max_examples=40, deadline=None)
@given(SECRETS, st.sampled_from(PASTE_SITES))
def test_a_secret_pasted_anywhere_is_never_echoed(secret: str, site: tuple[Any, ...]) -> None:
    count_generated(1)
    document = copy.deepcopy(VALID)
    parent: Any = document
    for part in site[:-1]:
        parent = parent[part]
    parent[site[-1]] = secret
    result = loads_or_explains(dump(document))
    assert isinstance(result, ConfigError)
    assert secret not in str(result) and secret[:12] not in str(result)
