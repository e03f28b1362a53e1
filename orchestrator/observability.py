"""Logging with the bot's name on every line, and secret redaction for everything we emit.

``current_bot`` is a context variable set by each bot's actor; every task that actor starts (and
discord.py's own tasks inside its client) inherits it, so every log line names its bot.
:class:`SecretRedactor` replaces every known token and API key with ``***`` in log records.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable

current_bot: contextvars.ContextVar[str] = contextvars.ContextVar("current_bot", default="-")

MIN_SECRET_LENGTH = 6


class SecretRedactor:
    """Replaces known secret values inside arbitrary text."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()

    def update(self, secrets: Iterable[str]) -> None:
        self._secrets = self._secrets | {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


redactor = SecretRedactor()


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
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return redactor.redact(json.dumps(payload, ensure_ascii=False))


def setup_logging(level: str = "INFO", fmt: str = "text", stream: object = None) -> None:
    """Configure the root logger once: human-readable text or one JSON object per line."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)-7s [%(bot)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("discord").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("discord.client").addFilter(_skip_voice_warnings)
    for noisy in ("httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _skip_voice_warnings(record: logging.LogRecord) -> bool:
    return "voice will NOT be supported" not in record.getMessage()
