"""Fixtures for tests that need the local PostgreSQL and Redis: `postgres_dsn` and `redis_url` check
that their service answers (Redis: PING; PostgreSQL: a trust-auth login to the database) and fail
the test, naming the service, its address and how to start it, when it does not. They never skip:
a missing service is a broken machine, not an optional feature.

FLEET_POSTGRES_DSN and FLEET_REDIS_URL replace the defaults (127.0.0.1, user postgres, database test).
Only the standard library is used, so the project needs no database client to run these checks.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import pytest

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TIMEOUT = 5.0
HOW_TO_START = "start it with `bash scripts/services` (CI's .ci/run does)"


class ServiceUnavailable(Exception):
    """The service did not answer as expected; the message says what happened and what to do."""


def _exchange(what: str, host: str, port: int, request: bytes, complete: Callable[[bytes], bool]) -> bytes:
    """Send `request`; return the reply once `complete(reply)` holds. No secret goes into a message."""
    where = f"{what} at {host}:{port}"
    reply = b""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
            conn.sendall(request)
            while not complete(reply):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        raise ServiceUnavailable(f"{where} does not answer ({exc.strerror or exc}): {HOW_TO_START}") from exc
    if not complete(reply):
        raise ServiceUnavailable(f"{where} closed the connection without a full answer: is it {what}?")
    return reply


def check_redis(url: str) -> None:
    """PING the Redis server of a redis:// URL (AUTH first when the URL has a password)."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ServiceUnavailable(f"FLEET_REDIS_URL must be a redis:// URL, not {parts.scheme or 'no scheme'}://")
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    commands = [["PING"]]
    if parts.password is not None:
        commands.insert(0, ["AUTH", *([unquote(parts.username)] if parts.username else []), unquote(parts.password)])
    request = b"".join(
        f"*{len(words)}\r\n".encode() + b"".join(f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)
        for words in commands
    )
    # Each command's reply here is one line: +OK, +PONG or -ERROR ...
    reply = _exchange("Redis", host, port, request, lambda got: got.count(b"\r\n") >= len(commands))
    lines = reply.split(b"\r\n")[: len(commands)]
    if lines[-1] != b"+PONG" or any(line.startswith(b"-") for line in lines):
        answer = next((line for line in lines if line.startswith(b"-")), lines[-1])[:80].decode(errors="replace")
        raise ServiceUnavailable(
            f"Redis at {host}:{port} did not answer PING with PONG but {answer!r}: check FLEET_REDIS_URL"
        )


# PostgreSQL wire protocol 3.0: the client's startup message; the server answers with messages of a
# type byte and an int32 length: 'R' authentication (0 = ok), then 'Z' ready for queries, or 'E' error.
_PROTOCOL_3 = 196608
_AUTH_OK = 0


def _messages(reply: bytes) -> list[tuple[bytes, bytes]]:
    """The complete (type, body) messages at the start of `reply`."""
    messages, at = [], 0
    while len(reply) >= at + 5:
        length = struct.unpack("!i", reply[at + 1 : at + 5])[0]
        if length < 4 or len(reply) < at + 1 + length:
            break
        messages.append((reply[at : at + 1], reply[at + 5 : at + 1 + length]))
        at += 1 + length
    return messages


def _login_settled(reply: bytes) -> bool:
    """Whether the server has said how the login ends: ready, refused, or a password wanted."""
    return any(
        kind in (b"Z", b"E") or (kind == b"R" and body[:4] != struct.pack("!i", _AUTH_OK))
        for kind, body in _messages(reply)
    )


def check_postgres(dsn: str) -> None:
    """Log in to the database of a postgresql:// DSN without a password, as trust auth allows."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ServiceUnavailable(
            f"FLEET_POSTGRES_DSN must be a postgresql:// URL, not {parts.scheme or 'no scheme'}://"
        )
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    user = unquote(parts.username or "postgres")
    database = unquote(parts.path.lstrip("/")) or user
    params = b"".join(f"{key}\0{value}\0".encode() for key, value in (("user", user), ("database", database))) + b"\0"
    startup = struct.pack("!ii", 8 + len(params), _PROTOCOL_3) + params
    where = f"PostgreSQL at {host}:{port}"
    reply = _exchange("PostgreSQL", host, port, startup, _login_settled)
    for kind, body in _messages(reply):
        if kind == b"E":
            # Error fields: a type byte, then a NUL-terminated string; 'M' is the message.
            fields = {field[:1]: field[1:].decode(errors="replace") for field in body.split(b"\0") if field}
            message = fields.get(b"M", "an error")
            raise ServiceUnavailable(
                f"{where} refused user {user}, database {database}: {message}: check FLEET_POSTGRES_DSN"
            )
        if kind == b"R" and body[:4] != struct.pack("!i", _AUTH_OK):
            raise ServiceUnavailable(
                f"{where} asks user {user} for a password: the tests need trust auth for 127.0.0.1 in pg_hba.conf"
            )


def require(check: Callable[[str], None], address: str) -> str:
    """`address` once `check` passes; otherwise the test fails (not skips) with the check's message."""
    try:
        check(address)
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    return address


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """postgresql:// DSN of a PostgreSQL that answers (FLEET_POSTGRES_DSN, default the local one)."""
    return require(check_postgres, os.environ.get("FLEET_POSTGRES_DSN", DEFAULT_POSTGRES_DSN))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """redis:// URL of a Redis that answers (FLEET_REDIS_URL, default the local one)."""
    return require(check_redis, os.environ.get("FLEET_REDIS_URL", DEFAULT_REDIS_URL))
