"""Error reporting to Sentry (optional).

:func:`init_sentry` turns it on when ``SENTRY_DSN`` is set, and :func:`report_exception` (a no-op
without Sentry) reports bot crashes and unexpected errors tagged with the bot, its provider and its
model. ``before_send`` redacts every string of every event, and local variables are never sent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .logs import current_bot, redactor

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

log = logging.getLogger(__name__)

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


def _before_send(event: Event, hint: Hint) -> Event:
    tags = event.setdefault("tags", {})
    bot = tags.get("bot") or current_bot.get()
    if bot != "-":
        tags["bot"] = bot
        if _bot_tags is not None:
            for key, value in _bot_tags(bot).items():
                tags.setdefault(key, value)
    scrubbed: Event = scrub(event)  # the same structure, strings redacted
    return scrubbed


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
