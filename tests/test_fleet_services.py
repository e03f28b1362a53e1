"""tests/fleet_services.py: the postgres_dsn and redis_url fixtures answer with the local services,
and a missing or misconfigured service fails the test with a message saying what to do."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.fleet_services import (
    DEFAULT_POSTGRES_DSN,
    DEFAULT_REDIS_URL,
    ServiceUnavailable,
    check_postgres,
    check_redis,
    require,
)

Check = Callable[[str], None]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def answering(reply: bytes) -> Iterator[int]:
    """A loopback server that answers every connection with `reply`, then closes it; yields its port."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            self.request.sendall(reply)

    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, name="fake-service")
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join()


def test_the_fixtures_hand_out_the_local_services(postgres_dsn: str, redis_url: str) -> None:
    assert postgres_dsn == DEFAULT_POSTGRES_DSN
    assert redis_url == DEFAULT_REDIS_URL


@pytest.mark.parametrize(
    ("check", "scheme", "name"), [(check_redis, "redis", "Redis"), (check_postgres, "postgresql", "PostgreSQL")]
)
def test_a_stopped_service_fails_the_test_saying_how_to_start_it(check: Check, scheme: str, name: str) -> None:
    port = closed_port()
    with pytest.raises(pytest.fail.Exception) as failed:
        require(check, f"{scheme}://127.0.0.1:{port}/x")
    message = str(failed.value)
    assert f"{name} at 127.0.0.1:{port} does not answer" in message
    assert "bash scripts/services" in message


def test_redis_refusing_the_password_is_reported_without_the_password() -> None:
    # The local Redis has no password, so AUTH is refused.
    with pytest.raises(ServiceUnavailable) as refused:
        check_redis("redis://:hunter2-secret@127.0.0.1:6379/0")
    assert "did not answer PING with PONG but '-ERR" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_server_that_is_not_redis_is_named() -> None:
    with answering(b"HTTP/1.1 400 Bad Request\r\n\r\n") as port, pytest.raises(ServiceUnavailable) as wrong:
        check_redis(f"redis://127.0.0.1:{port}")
    assert "did not answer PING with PONG but 'HTTP/1.1 400 Bad Request'" in str(wrong.value)


def test_a_missing_database_is_named() -> None:
    with pytest.raises(ServiceUnavailable) as missing:
        check_postgres("postgresql://postgres@127.0.0.1:5432/no_such_database_here")
    assert 'database "no_such_database_here" does not exist' in str(missing.value)


def test_postgres_asking_for_a_password_says_trust_auth_is_needed() -> None:
    md5_request = b"R" + struct.pack("!ii", 12, 5) + b"salt"
    with answering(md5_request) as port, pytest.raises(ServiceUnavailable) as asked:
        check_postgres(f"postgresql://app@127.0.0.1:{port}/test")
    assert f"PostgreSQL at 127.0.0.1:{port} asks user app for a password" in str(asked.value)
    assert "trust auth" in str(asked.value)


def test_a_server_that_is_not_postgres_is_named() -> None:
    with answering(b"+PONG\r\n") as port, pytest.raises(ServiceUnavailable) as wrong:
        check_postgres(f"postgresql://127.0.0.1:{port}/test")
    assert f"PostgreSQL at 127.0.0.1:{port} closed the connection without a full answer: is it PostgreSQL?" in str(
        wrong.value
    )


@pytest.mark.parametrize(
    ("check", "address", "variable"),
    [
        (check_redis, "http://127.0.0.1:6379", "FLEET_REDIS_URL"),
        (check_postgres, "127.0.0.1:5432", "FLEET_POSTGRES_DSN"),
    ],
)
def test_an_address_of_the_wrong_kind_names_the_variable(check: Check, address: str, variable: str) -> None:
    with pytest.raises(ServiceUnavailable, match=f"{variable} must be a"):
        check(address)
