"""The orchestrator's exception tree.

    OrchestratorError
    ├── ConfigError              bots.yaml or the environment is wrong (carries every ConfigIssue)
    ├── BotFatalError            a bot cannot run until ops fix something (bad token, missing intent)
    ├── LeaseExpired             fleet mode: this node may no longer post as the bot (its lease ran out)
    └── ProviderError            a model provider call failed; ``user_message`` is safe to show in Discord
        ├── ProviderAuthError      401/403: the key was refused (never retried)
        ├── ProviderModelNotFound  the provider does not serve the bot's model
        ├── ProviderRefused        any other 4xx: the request was refused, for the reason the provider gives
        │   └── ContentRefused       the provider's content policy refused the prompt (content_policy_violation)
        ├── ProviderBusy           429 / 5xx / pool queue full, after retries, or a wait beyond the deadline
        ├── ProviderTimeout        no answer within the deadline
        ├── ProviderUnavailable    circuit breaker open, connection refused
        ├── ProviderBadResponse    an answer that cannot be parsed, a cut stream
        ├── ImageUnavailable       a generated image that cannot be downloaded, or is too large to post
        └── QuotaExceeded          a bot or user limit was hit before any provider call

Foreign errors (openai, discord.py) are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass


class OrchestratorError(Exception):
    """Base class of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located as precisely as we can."""

    file: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line else self.file
        prefix = f"{self.where}: " if self.where else ""
        return f"{location}: {prefix}{self.message}"


class ConfigError(OrchestratorError):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        count = len(issues)
        header = f"{count} problem{'s' if count != 1 else ''} in the configuration:"
        super().__init__("\n".join([header, *(f"  - {issue}" for issue in issues)]))


class BotFatalError(OrchestratorError):
    """Restarting the bot cannot help: ops must change its token, intents or settings."""

    def __init__(self, bot: str, reason: str) -> None:
        self.bot = bot
        self.reason = reason
        super().__init__(f"bot {bot!r}: {reason}")


class LeaseExpired(OrchestratorError):
    """Fleet mode: this node's lease on the bot has run out, so another node may run it now; posting
    could answer a message twice. The node that holds the lease answers instead."""

    def __init__(self, bot: str) -> None:
        self.bot = bot
        super().__init__(f"bot {bot!r}: this node's lease on the bot has expired; not posting")


class ProviderError(OrchestratorError):
    """A model call failed. ``user_message`` is short and safe to show to a Discord user."""

    user_message = "Something went wrong while asking the model. Please try again."

    def __init__(
        self, provider: str, detail: str, *, retry_after: float | None = None, retryable: bool | None = None
    ) -> None:
        """``retryable``: the provider's own verdict (``x-should-retry``); None leaves it to the error's kind."""
        self.provider = provider
        self.detail = detail
        self.retry_after = retry_after
        self.retryable = retryable
        super().__init__(f"provider {provider!r}: {detail}")


class ProviderAuthError(ProviderError):
    user_message = "This persona's API key was refused by the model provider. Please tell the server admins."


class ProviderModelNotFound(ProviderError):
    """The provider does not know the model (a misspelt name, or one it does not serve)."""

    def __init__(self, provider: str, model: str, detail: str) -> None:
        self.model = model
        super().__init__(provider, detail)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return (
            f"The model `{self.model}` is not available from the provider `{self.provider}`. "
            "Please tell the server admins."
        )


class ProviderRefused(ProviderError):
    """The provider refused the request; ``reason`` is its own message, secrets removed, shortened."""

    def __init__(self, provider: str, reason: str, detail: str, *, retryable: bool | None = None) -> None:
        self.reason = reason
        super().__init__(provider, detail, retryable=retryable)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        end = "" if self.reason.endswith((".", "!", "?", "…")) else "."
        return f"The model provider refused the request: {self.reason}{end} Please tell the server admins."


class ContentRefused(ProviderRefused):
    """The provider's safety system refused the prompt: the user can ask for something else."""

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return "The model provider refused this request under its content policy. Try asking for something else."


class ProviderBusy(ProviderError):
    """``asked``: ``retry_after`` is the provider's own request to wait, which users are told."""

    def __init__(
        self,
        provider: str,
        detail: str,
        *,
        retry_after: float | None = None,
        retryable: bool | None = None,
        asked: bool = False,
    ) -> None:
        self.asked = asked and retry_after is not None
        super().__init__(provider, detail, retry_after=retry_after, retryable=retryable)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        if self.asked and self.retry_after is not None and self.retry_after >= 1:
            wait = format_duration(self.retry_after)
            return f"The model provider is busy right now; it asks to wait {wait}. Please try again then."
        return "The model provider is busy right now. Please try again in a moment."


class ProviderTimeout(ProviderError):
    user_message = "The model took too long to answer. Please try again."


class ProviderUnavailable(ProviderError):
    user_message = "The model provider is unavailable right now. Please try again in a minute."


class ProviderBadResponse(ProviderError):
    user_message = "The model provider sent an answer I could not read. Please try again."


class ImageUnavailable(ProviderError):
    """The provider made an image that cannot be posted: its download failed, or it is too large."""

    def __init__(self, provider: str, detail: str, user_message: str) -> None:
        self._user_message = user_message
        super().__init__(provider, detail)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return self._user_message


class QuotaExceeded(ProviderError):
    """A configured limit was reached; no provider call was made."""

    def __init__(self, provider: str, scope: str, limit: str, retry_after: float) -> None:
        self.scope = scope
        self.limit = limit
        super().__init__(provider, f"{scope} quota {limit} exhausted", retry_after=retry_after)

    @property
    def user_message(self) -> str:  # type: ignore[override]
        who = "You have" if self.scope == "user" else "This persona has"
        limit = self.limit.replace("_", " ")
        return f"{who} reached the limit of {limit}; it resets in {format_duration(self.retry_after or 0)}."


def format_duration(seconds: float) -> str:
    """Human-friendly duration: ``45s``, ``3m 20s``, ``2h 5m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if minutes else f"{hours}h"
