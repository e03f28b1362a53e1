"""Logging with the bot's name on every line, secret redaction, and error reporting to Sentry.

``current_bot`` is a context variable set by each bot's actor; every task that actor starts (and
discord.py's own tasks inside its client) inherits it, so every log line names its bot.

:class:`SecretRedactor` knows every token and API key of the configuration. Redaction happens
where a log record is *created* (:func:`install_log_redaction` wraps the log record factory), so
no handler anywhere in the process (ours, pytest's, Sentry's breadcrumbs, a library's) ever sees a
secret; our formatters redact the final text once more.

Sentry is optional: :func:`init_sentry` turns it on when ``SENTRY_DSN`` is set, and
:func:`report_exception` (a no-op without Sentry) reports bot crashes and unexpected errors
tagged with the bot, its provider and its model. ``before_send`` redacts every string of every
event, and local variables are never sent.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
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


# ---------------------------------------------------------------- Sentry

_bot_tags: Callable[[str], Mapping[str, str]] | None = None


def set_bot_tag_source(source: Callable[[str], Mapping[str, str]] | None) -> None:
    """Tell Sentry reporting how to find a bot's provider and model (the app sets this)."""
    global _bot_tags
    _bot_tags = source


def scrub(value: Any) -> Any:
    """``value`` with every known secret redacted from every string in it, however deeply nested."""
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, Mapping):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(item) for item in value)
    return value


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    tags = event.setdefault("tags", {})
    bot = tags.get("bot") or current_bot.get()
    if bot != "-":
        tags["bot"] = bot
        if _bot_tags is not None:
            for key, value in _bot_tags(bot).items():
                tags.setdefault(key, value)
    return scrub(event)


def sentry_enabled() -> bool:
    import sentry_sdk

    return sentry_sdk.get_client().is_active()


def init_sentry(dsn: str | None, *, transport: Any = None, environment: str | None = None) -> bool:
    """Start reporting to Sentry when ``dsn`` is set; call it inside the running event loop.

    Unhandled errors in any asyncio task are reported (asyncio integration); log lines become
    breadcrumbs, not events (the code reports what matters through :func:`report_exception`).
    ``transport`` replaces the network (tests). Returns whether Sentry is on.
    """
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.asyncio import enable_asyncio_integration
    from sentry_sdk.integrations.logging import LoggingIntegration

    redactor.update([dsn])
    sentry_sdk.init(
        dsn=dsn,
        transport=transport,
        environment=environment,
        before_send=_before_send,
        include_local_variables=False,
        auto_enabling_integrations=False,  # no patching of openai, aiohttp or httpx
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
    )
    enable_asyncio_integration(task_spans=False)  # patches *this* loop (also on a second run in one process)
    log.info("reporting errors to Sentry")
    return True


def report_exception(
    exc: BaseException | None = None,
    *,
    bot: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    level: str = "error",
) -> None:
    """Report ``exc`` (default: the exception being handled) to Sentry, tagged; a no-op without Sentry."""
    if "sentry_sdk" not in sys.modules:
        return
    import sentry_sdk

    if not sentry_sdk.get_client().is_active():
        return
    tags = {}
    if (bot := bot or current_bot.get()) != "-":
        tags["bot"] = bot
    if provider:
        tags["provider"] = provider
    if model:
        tags["model"] = model
    with sentry_sdk.new_scope() as scope:
        scope.set_level(level)  # type: ignore[arg-type]
        for key, value in tags.items():
            scope.set_tag(key, value)
        scope.capture_exception(exc if exc is not None else sys.exc_info()[1])


async def flush_sentry(timeout: float = 2.0) -> None:
    """Send what Sentry still holds (off the event loop's thread); a no-op without Sentry."""
    if "sentry_sdk" not in sys.modules:
        return
    import anyio
    import sentry_sdk

    if sentry_sdk.get_client().is_active():
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sentry_sdk.flush, timeout)
