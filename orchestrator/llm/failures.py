"""A provider's failures as the orchestrator's errors, each saying what really went wrong.

The SDK's exceptions (from the transport or the SDK itself) become :mod:`orchestrator.errors`
classes: a refused key, an unknown model, a refused request (in the provider's own words, secrets
removed, shortened; a content-policy refusal as such), a busy provider (with the wait it asked for),
a timeout, an unreachable provider, or an answer that cannot be read. The pool raises them ``from`` the SDK's exception.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import openai

from ..config import ProviderSpec
from ..errors import (
    ContentRefused,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderBusy,
    ProviderError,
    ProviderModelNotFound,
    ProviderRefused,
    ProviderTimeout,
    ProviderUnavailable,
)
from ..ops.logs import redactor
from .retry_hints import retry_after_from

log = logging.getLogger(__name__)

REASON_LIMIT = 200  # characters of the provider's message shown to users
_SHOULD_RETRY = {"true": True, "false": False}
_MISSING = re.compile(
    r"not found|does ?n[o']t exist|unknown|invalid model|not a valid model|no such|not supported|unsupported|"
    r"not available",
    re.IGNORECASE,
)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def provider_reason(exc: openai.APIStatusError) -> str:
    """The provider's own explanation: its error message, or the text of a body that is not JSON
    (an HTML page's title); secrets removed, on one line of at most :data:`REASON_LIMIT` characters."""
    body = exc.body
    text = ""
    if isinstance(body, Mapping):  # the SDK hands over the "error" object when there is one
        text = next((v for key in ("message", "detail", "error") if isinstance(v := body.get(key), str)), "")
    elif isinstance(body, str):
        title = _TITLE.search(body)
        text = title.group(1) if title else _TAG.sub(" ", body)
    text = " ".join(redactor.redact(text).split())
    if len(text) > REASON_LIMIT:
        text = text[: REASON_LIMIT - 1].rstrip() + "…"
    return text or f"HTTP {exc.status_code} without a reason"


def _model_missing(exc: openai.APIStatusError, model: str, reason: str) -> bool:
    """OpenAI says ``model_not_found``; others (Ollama, vLLM, LiteLLM, OpenRouter) name the model in
    a 404, or in a 400 that says it is unknown."""
    if exc.code == "model_not_found":
        return True
    if exc.status_code not in (400, 404) or model not in reason:
        return False
    return exc.status_code == 404 or bool(_MISSING.search(reason))


def map_error(spec: ProviderSpec, exc: openai.OpenAIError, model: str | None = None) -> ProviderError:
    """The orchestrator's error for ``exc``, a failure of a request to ``spec`` (for ``model``)."""
    name = spec.name
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(name, "request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnavailable(name, f"cannot connect to {spec.base_url}")
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        log.error(
            "provider %s refused the API key (HTTP %s); check %s",
            name,
            exc.status_code,
            spec.settings.api_key_env or "its api_key_env",
        )
        return ProviderAuthError(name, f"API key refused (HTTP {exc.status_code})")
    if not isinstance(exc, openai.APIStatusError):  # an answer the SDK or the transport could not parse
        return ProviderBadResponse(name, f"{type(exc).__name__}: {exc}")
    status = exc.status_code
    headers = exc.response.headers
    retryable = _SHOULD_RETRY.get(headers.get("x-should-retry", ""))  # the SDK obeys it too
    if status == 429 or status >= 500 or status in (408, 409):  # rate limits, server errors, request and lock timeouts
        wait = retry_after_from(headers)
        detail = "rate limited (429)" if status == 429 else f"HTTP {status} from the provider"
        if wait is not None:
            detail += f"; it asks to wait {wait:.3g}s"
        return ProviderBusy(name, detail, retry_after=wait, retryable=retryable, asked=wait is not None)
    reason = provider_reason(exc)
    if model is not None and _model_missing(exc, model, reason):
        return ProviderModelNotFound(name, model, f"unknown model {model!r} (HTTP {status}: {reason})")
    if exc.code == "content_policy_violation":
        return ContentRefused(name, reason, f"refused by its content policy (HTTP {status}: {reason})")
    hint = f"; check its base_url {spec.base_url}" if status == 404 else ""
    return ProviderRefused(name, reason, f"request refused (HTTP {status}: {reason}){hint}", retryable=retryable)
