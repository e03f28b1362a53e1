"""Logging with the bot's name on every line, and secret redaction.

``current_bot`` is a context variable set by each bot's actor; every task that actor starts (and
discord.py's own tasks inside its client) inherits it, so every log line names its bot.

:class:`SecretRedactor` knows every token and API key of the configuration. Redaction happens
where a log record is *created* (:func:`install_log_redaction` wraps the log record factory), so
no handler anywhere in the process (ours, pytest's, Sentry's breadcrumbs, a library's) ever sees a
secret; our formatters redact the final text once more.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

current_bot: contextvars.ContextVar[str] = contextvars.ContextVar("current_bot", default="-")

MIN_SECRET_LENGTH = 6

log = logging.getLogger(__name__)


class SecretRedactor:
    """Replaces known secret values inside arbitrary text."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()

    def update(self, secrets: Iterable[str]) -> None:
        self._secrets = self._secrets | {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def contains_secret(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


redactor = SecretRedactor()


# ---------------------------------------------------------------- redaction at the source


def redact_record(record: logging.LogRecord) -> None:
    """Remove every known secret from ``record``'s message, arguments, traceback and stack.

    A record without secrets is left untouched (its message template and arguments stay as they
    were). One with a secret gets its message pre-formatted and redacted, and its arguments dropped.
    """
    if not redactor:
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string: keep what we can, safely
        message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redactor.redact(message), ()
    else:
        if redactor.contains_secret(message) or (record.args and redactor.contains_secret(repr(record.args))):
            record.msg, record.args = redactor.redact(message), ()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text and redactor.contains_secret(record.exc_text):
        record.exc_text = redactor.redact(record.exc_text)
        record.exc_info = None  # nobody may format the secret-bearing exception again
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)


class _RedactingRecordFactory:
    """Wraps the process's log record factory: every record is redacted as it is made."""

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        redact_record(record)
        return record


def install_log_redaction() -> None:
    """Make every log record of this process secret-free from birth. Idempotent."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(factory))


# ---------------------------------------------------------------- formatting


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "bot"):
            record.bot = current_bot.get()
        return True


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redactor.redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "bot": getattr(record, "bot", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        return redactor.redact(json.dumps(payload, ensure_ascii=False))


TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(bot)s] %(name)s: %(message)s"


def build_handler(fmt: str = "text", stream: object = None) -> logging.Handler:
    """A handler writing one line per event (text) or one JSON object per line (json), with the bot's name."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(_ContextFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _RedactingFormatter(TEXT_FORMAT))
    return handler


def setup_logging(level: str = "INFO", fmt: str = "text", stream: object = None) -> None:
    """Configure the root logger once: human-readable text or one JSON object per line."""
    install_log_redaction()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(build_handler(fmt, stream))
    root.setLevel(level.upper())
    logging.getLogger("discord").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("discord.client").addFilter(_skip_voice_warnings)
    for noisy in ("httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _skip_voice_warnings(record: logging.LogRecord) -> bool:
    return "voice will NOT be supported" not in record.getMessage()
