"""The shared model-provider pool: one ``AsyncOpenAI`` per provider for every bot.

For each call the pool: checks the bot's and user's quotas (no provider call when over), waits
for a fair share of the provider's concurrency (a limit learnt from its answers,
:mod:`~orchestrator.llm.aimd`), respects a provider-wide pause when the provider said it is near
its rate limit, sends the request (through the provider's
:class:`~orchestrator.llm.transport.ChatTransport`), and retries 429/5xx/timeouts with
backoff + jitter honouring ``retry-after`` within one total deadline. The pool is the only retry
owner (the SDK's ``max_retries`` is 0). A circuit breaker per provider fails fast while the
provider is down. Every openai exception is translated to a :mod:`orchestrator.errors` class.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import openai

from ..config import ProviderSpec, QuotaSettings, SamplingParams
from ..errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderBusy,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from .aimd import CEILING, INITIAL, AIMDLimit
from .breaker import CircuitBreaker
from .messages import Message, estimate_tokens
from .limiter import FairLimiter, LimiterStatistics, QueueFull, QueueTimeout
from .quota import QuotaBook, Reservation
from .transport import ChatTransport, Completion, CompletionStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatCall:
    """One request as the bots see it: no HTTP, no retries."""

    bot: str
    user: str
    provider: str
    model: str
    messages: list[Message]
    params: SamplingParams = SamplingParams()
    weight: float = 1.0
    quota: QuotaSettings = QuotaSettings()
    user_quota: QuotaSettings = QuotaSettings()


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    attempts: int = 1
    requested_at: float = 0.0  # time.monotonic() when the answered attempt was sent ...
    answered_at: float = 0.0  # ... and when its answer had been read


@dataclass
class PoolStats:
    requests: int = 0
    retries: int = 0
    provider_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, error class)


_SHOULD_RETRY = {"true": True, "false": False}
_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """Parse OpenAI's reset durations (``1s``, ``6m0s``, ``12ms``) or plain seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """The wait a provider asked for: ``retry-after-ms``, ``retry-after``, then ``x-ratelimit-reset-*``."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        seconds = parse_duration(headers.get(name))
        if seconds is not None:
            return seconds
    return None


def _unhealthy(exc: openai.OpenAIError) -> bool:
    """Failures that say the provider is down (they count towards opening its circuit)."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


class _Provider:
    """Everything the pool keeps per provider."""

    def __init__(self, spec: ProviderSpec, breaker: CircuitBreaker) -> None:
        self.spec = spec
        self.client = self._build()
        self.transport = ChatTransport(self.client)
        cap = spec.settings.max_concurrency  # a hard cap, and then also the start
        self.concurrency = AIMDLimit(spec.name, initial=cap or INITIAL, ceiling=cap or CEILING)
        self.limiter = FairLimiter(self.concurrency.limit, spec.settings.max_queue)
        self.breaker = breaker
        self.paused_until = 0.0
        self.in_flight = 0
        self.retired = False

    def answered(self, sent_at: float, sent_saturated: bool) -> None:
        """Call before releasing the request's slot, so the limit sees whether others wait."""
        self.concurrency.succeeded(sent_at, saturated=sent_saturated or self.limiter.saturated)
        self.limiter.resize(self.concurrency.limit)

    def overloaded(self, sent_at: float) -> None:
        self.concurrency.overloaded(sent_at)
        self.limiter.resize(self.concurrency.limit)

    def _build(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.spec.base_url,
            api_key=self.spec.api_key.get_secret_value(),
            max_retries=0,  # the pool owns retries
            timeout=self.spec.settings.timeout,
        )

    async def rebuild(self) -> None:
        """Replace a client that keeps failing (its connections may be broken)."""
        old, old_transport = self.client, self.transport
        self.client = self._build()
        self.transport = ChatTransport(self.client)
        with anyio.move_on_after(2, shield=True):
            await old_transport.aclose()
            await old.close()

    async def close(self) -> None:
        with anyio.move_on_after(2, shield=True):
            await self.transport.aclose()
            await self.client.close()


class LLMPool:
    """Shared, supervised access to every configured provider."""

    def __init__(
        self,
        providers: Mapping[str, ProviderSpec],
        quotas: QuotaBook | None = None,
        *,
        near_limit_fraction: float = 0.02,
    ) -> None:
        self.quotas = quotas or QuotaBook()
        self.stats = PoolStats()
        self._near_limit = near_limit_fraction
        self._providers: dict[str, _Provider] = {}
        self._random = random.Random()
        self._add_providers(providers)

    def _add_providers(self, providers: Mapping[str, ProviderSpec]) -> None:
        for name, spec in providers.items():
            if name not in self._providers:
                breaker = CircuitBreaker(spec.settings.breaker_threshold, spec.settings.breaker_cooldown)
                self._providers[name] = _Provider(spec, breaker)

    async def update_providers(self, providers: Mapping[str, ProviderSpec]) -> None:
        """Apply a new provider configuration. A replaced client closes once its last request ends."""
        for name in list(self._providers):
            if name not in providers or self._providers[name].spec != providers[name]:
                state = self._providers.pop(name)
                state.retired = True
                if not state.in_flight:
                    await state.close()
        self._add_providers(providers)

    async def __aenter__(self) -> LLMPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.close()

    def client(self, provider: str) -> openai.AsyncOpenAI:
        return self._provider(provider).client

    def concurrency(self, provider: str) -> LimiterStatistics:
        """The provider's current concurrency limit (``capacity``), requests in flight and waiting."""
        return self._provider(provider).limiter.statistics()

    def _provider(self, name: str) -> _Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise ProviderUnavailable(name, "provider is not configured") from None

    async def list_models(self, provider: str) -> list[str]:
        state = self._provider(provider)
        try:
            page = await state.client.models.list()
        except openai.OpenAIError as exc:
            raise self._map_error(state, exc) from exc
        return sorted(model.id for model in page.data)

    async def complete(self, call: ChatCall) -> ChatResult:
        """Answer ``call`` or raise a :class:`ProviderError` whose ``user_message`` can be shown."""
        async with self._call(call, stream=False) as (answer, attempts, reservation):
            assert isinstance(answer, Completion)
            completion = answer.completion
            try:
                text = completion.choices[0].message.content or ""
            except (IndexError, AttributeError, TypeError) as exc:
                raise ProviderBadResponse(call.provider, f"unreadable answer: {exc}") from exc
            usage = completion.usage
            prompt = usage.prompt_tokens if usage else 0
            completion_tokens = usage.completion_tokens if usage else estimate_tokens(text)
            self.quotas.settle(reservation, prompt + completion_tokens)
            return ChatResult(
                text, prompt, completion_tokens, completion.model or call.model, attempts, answer.requested_at,
                answer.answered_at,
            )

    async def stream(self, call: ChatCall) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives. Use with ``contextlib.aclosing``."""
        async with self._call(call, stream=True) as (answer, _attempts, reservation):
            assert isinstance(answer, CompletionStream)
            used = 0
            text_len = 0
            try:
                async for chunk in answer.chunks:
                    if chunk.usage is not None:
                        used = chunk.usage.total_tokens
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            text_len += len(choice.delta.content)
                            yield choice.delta.content
            except Exception as exc:  # the SDK's errors from the transport, or an unreadable chunk
                raise ProviderBadResponse(call.provider, f"the stream was cut: {type(exc).__name__}: {exc}") from exc
            finally:
                self.quotas.settle(reservation, used or text_len // 4 + 1)

    @asynccontextmanager
    async def _call(
        self, call: ChatCall, *, stream: bool
    ) -> AsyncIterator[tuple[Completion | CompletionStream, int, Reservation]]:
        state = self._provider(call.provider)
        estimate = sum(estimate_tokens(m["content"]) for m in call.messages) + (call.params.max_tokens or 256)
        reservation = self.quotas.reserve(call.provider, call.bot, call.user, estimate, call.quota, call.user_quota)
        settings = state.spec.settings
        deadline = anyio.current_time() + settings.timeout
        kwargs: dict[str, Any] = {"model": call.model, "messages": call.messages}
        kwargs.update(call.params.body)
        attempt = 0
        state.in_flight += 1
        try:
            async with AsyncExitStack() as open_stream:
                while True:
                    self.stats.requests += 1
                    try:
                        answer = await self._attempt(
                            state, call, kwargs, deadline, attempt, open_stream if stream else None
                        )
                        break
                    except ProviderError as error:
                        by_provider = (call.provider, type(error).__name__)
                        self.stats.provider_errors[by_provider] = self.stats.provider_errors.get(by_provider, 0) + 1
                        delay = self._retry_delay(error, attempt, settings.max_retries, deadline)
                        if delay is None:
                            raise
                        log.info(
                            "provider %s: %s; retry %d/%d in %.2fs", call.provider, error.detail, attempt + 1,
                            settings.max_retries, delay,
                        )
                        self.stats.retries += 1
                        attempt += 1
                        await anyio.sleep(delay)
                yield answer, attempt + 1, reservation
        finally:
            self.quotas.settle(reservation, 0)  # a no-op when the caller settled the real usage
            state.in_flight -= 1
            if state.retired and not state.in_flight:
                await state.close()

    def _retry_delay(self, error: ProviderError, attempt: int, max_retries: int, deadline: float) -> float | None:
        retryable = error.retryable
        if retryable is None:  # the provider gave no verdict: retry what is transient
            retryable = isinstance(error, (ProviderBusy, ProviderTimeout))
        if not retryable or attempt >= max_retries:
            return None
        backoff = min(8.0, 0.5 * 2**attempt) * self._random.uniform(0.5, 1.0)
        delay = error.retry_after if error.retry_after is not None else backoff
        if anyio.current_time() + delay >= deadline:
            return None
        return delay

    async def _attempt(
        self,
        state: _Provider,
        call: ChatCall,
        body: dict[str, Any],
        deadline: float,
        retries_taken: int,
        open_stream: AsyncExitStack | None,
    ) -> Completion | CompletionStream:
        """One request. A stream is entered into ``open_stream`` and stays open for the caller."""
        wait = state.breaker.allow()
        if wait is not None:
            raise ProviderUnavailable(call.provider, "circuit breaker is open", retry_after=wait)
        while True:
            pause = state.paused_until - time.monotonic()
            if pause > 0:
                if anyio.current_time() + pause >= deadline:
                    raise ProviderBusy(call.provider, "provider is rate limited", retry_after=pause)
                await anyio.sleep(pause)
            remaining = deadline - anyio.current_time()
            try:
                await state.limiter.acquire(call.bot, call.weight, min(remaining, state.spec.settings.queue_timeout))
            except (QueueFull, QueueTimeout) as exc:
                raise ProviderBusy(call.provider, f"pool queue {type(exc).__name__}") from None
            if state.paused_until <= time.monotonic():
                break
            state.limiter.release()  # a pause began while we queued: wait it out before sending
        try:
            remaining = deadline - anyio.current_time()
            sent_at, sent_saturated = time.monotonic(), state.limiter.saturated
            try:
                if open_stream is None:
                    answer: Completion | CompletionStream = await state.transport.create(
                        body, timeout=remaining, retries_taken=retries_taken
                    )
                else:
                    answer = await open_stream.enter_async_context(
                        state.transport.stream(body, timeout=remaining, retries_taken=retries_taken)
                    )
            except openai.OpenAIError as exc:
                if isinstance(exc, openai.RateLimitError):
                    state.overloaded(sent_at)
                error = self._map_error(state, exc)
                if not _unhealthy(exc):
                    state.breaker.record_success()  # a 429 or 4xx: the provider is up and answering
                elif state.breaker.record_failure():
                    log.error("provider %s: circuit opened after repeated failures (%s)", call.provider, error.detail)
                    await state.rebuild()
                raise error from exc
            state.answered(sent_at, sent_saturated)
        finally:
            state.limiter.release()
        state.breaker.record_success()
        self._note_rate_headers(state, answer.headers)
        return answer

    def _note_rate_headers(self, state: _Provider, headers: Mapping[str, str]) -> None:
        """Pause every bot on this provider when it says it is close to its rate limit."""
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            limit = headers.get(f"x-ratelimit-limit-{kind}")
            if remaining is None or limit is None:
                continue
            try:  # near: fewer requests left than we already have in flight, or a small fraction
                if int(remaining) > max(1.0, int(limit) * self._near_limit, state.in_flight):
                    continue
            except ValueError:
                continue
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset:
                state.paused_until = max(state.paused_until, time.monotonic() + reset)
                log.info("provider %s: near its %s limit, pausing new requests for %.2fs", state.spec.name, kind, reset)

    def _map_error(self, state: _Provider, exc: openai.OpenAIError) -> ProviderError:
        name = state.spec.name
        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeout(name, "request timed out")
        if isinstance(exc, openai.APIConnectionError):
            return ProviderUnavailable(name, f"cannot connect to {state.spec.base_url}")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            log.error(
                "provider %s refused the API key (HTTP %s); check %s", name, exc.status_code,
                state.spec.settings.api_key_env or "its api_key_env",
            )
            return ProviderAuthError(name, f"API key refused (HTTP {exc.status_code})")
        if not isinstance(exc, openai.APIStatusError):
            return ProviderBadResponse(name, f"{type(exc).__name__}: {exc}")
        headers = exc.response.headers
        retry_after = retry_after_from(headers)
        retryable = _SHOULD_RETRY.get(headers.get("x-should-retry", ""))  # the SDK obeys it too
        if isinstance(exc, openai.RateLimitError):
            if retry_after:
                state.paused_until = max(state.paused_until, time.monotonic() + retry_after)
            return ProviderBusy(name, "rate limited (429)", retry_after=retry_after, retryable=retryable)
        if exc.status_code >= 500 or exc.status_code in (408, 409):  # server errors, request and lock timeouts
            return ProviderBusy(
                name, f"HTTP {exc.status_code} from the provider", retry_after=retry_after, retryable=retryable
            )
        return ProviderBadResponse(name, f"HTTP {exc.status_code}: {exc.message}", retryable=retryable)
