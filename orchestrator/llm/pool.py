"""The shared model-provider pool: one ``AsyncOpenAI`` per provider for every bot.

For each call the pool: checks the bot's and user's quotas and spend caps (no provider call when
over), waits for a fair share of the provider's concurrency (a limit learnt from its answers,
:mod:`~orchestrator.llm.aimd`), respects a provider-wide pause when the provider said it is near
its rate limit, sends the request (through the provider's
:class:`~orchestrator.llm.transport.ChatTransport`), and retries 429/5xx/timeouts with
backoff + jitter honouring the provider's retry hints (:mod:`~orchestrator.llm.retry_hints`) within
one total deadline: a hinted wait beyond the deadline fails at once, naming the wait. The pool is the
only retry owner (the SDK's ``max_retries`` is 0). A circuit breaker per provider fails fast while
the provider is down. Every openai exception is translated to a :mod:`orchestrator.errors` class
(:mod:`~orchestrator.llm.failures`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio
import openai

from ..config import ModelPrice, ProviderSpec, QuotaSettings, SamplingParams
from ..errors import ProviderBadResponse, ProviderBusy, ProviderError, ProviderTimeout, ProviderUnavailable
from .admission import LocalQuotas, Quotas
from .aimd import CEILING, INITIAL, AIMDLimit
from .breaker import CircuitBreaker
from .failures import map_error
from .images import ImageBook
from .limiter import FairLimiter, LimiterStatistics, QueueFull, QueueTimeout
from .messages import Message, estimate_message_tokens, estimate_tokens
from .quota import QuotaBook, Reservation
from .retry_hints import KINDS, parse_duration, rate_count, retry_after_from, used_up
from .spend import SpendBook
from .transport import ChatTransport, Completion, CompletionStream, omitted_headers

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
    price: ModelPrice | None = None  # what the answer costs; None: spend is not counted


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

    def count(self, error: ProviderError) -> ProviderError:
        key = (error.provider, type(error).__name__)
        self.provider_errors[key] = self.provider_errors.get(key, 0) + 1
        return error


class _Answered(Protocol):
    """What an attempt returns: at least the answer's headers (they carry the provider's rate hints)."""

    @property
    def headers(self) -> Mapping[str, str]: ...


_Answer = TypeVar("_Answer", bound=_Answered)


class _Caller(NamedTuple):
    """Who a request is for, as retries, fairness and error messages need it."""

    bot: str
    model: str
    weight: float


KEYLESS = "no-key"  # the SDK insists on an api_key; a keyless provider's client never sends it
SPENT_PAUSE = (2.0, 60.0)  # a limit used up with no reset time: pause 2 s, doubling while it stays so, up to 60 s


def _unhealthy(exc: openai.OpenAIError) -> bool:
    """Failures that say the provider is down (they count towards opening its circuit)."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


class _Provider:
    """Everything the pool keeps per provider."""

    def __init__(self, spec: ProviderSpec, breaker: CircuitBreaker, clock: Callable[[], float], nodes: int) -> None:
        self.spec = spec
        self.clock = clock
        self.client = self._build()
        self.transport = ChatTransport(self.client)
        cap = self.cap(nodes)  # a hard cap, and then also the start
        self.concurrency = AIMDLimit(spec.name, initial=cap or INITIAL, ceiling=cap or CEILING, clock=clock)
        self.limiter = FairLimiter(self.concurrency.limit, spec.settings.max_queue)
        self.breaker = breaker
        self.paused_until = 0.0  # clock() until which no request is sent ...
        self.pause_asked = False  # ... because the provider said so (else our own guess)
        self.spent_pauses = 0  # answers in a row that said a limit is used up, without a reset time
        self.in_flight = 0
        self.retired = False

    def cap(self, nodes: int) -> int | None:
        """This process's share of ``max_concurrency`` among ``nodes`` fleet nodes (None: not set)."""
        total = self.spec.settings.max_concurrency
        return None if total is None else max(1, math.ceil(total / nodes))

    def share(self, nodes: int) -> None:
        """Take this process's share of ``max_concurrency`` now that the fleet has ``nodes`` live nodes."""
        cap = self.cap(nodes)
        if cap is None or cap == self.concurrency.ceiling:
            return
        self.concurrency.set_ceiling(cap)
        self.limiter.resize(self.concurrency.limit)
        log.info(
            "provider %s: at most %d requests at once from this node (max_concurrency %d shared by %d node(s))",
            self.spec.name,
            cap,
            self.spec.settings.max_concurrency,
            nodes,
        )

    def answered(self, sent_at: float, sent_saturated: bool) -> None:
        """Call before releasing the request's slot, so the limit sees whether others wait."""
        self.concurrency.succeeded(sent_at, saturated=sent_saturated or self.limiter.saturated)
        self.limiter.resize(self.concurrency.limit)

    def overloaded(self, sent_at: float) -> None:
        self.concurrency.overloaded(sent_at)
        self.limiter.resize(self.concurrency.limit)

    def _build(self) -> openai.AsyncOpenAI:
        key = self.spec.api_key.get_secret_value()
        return openai.AsyncOpenAI(
            base_url=self.spec.base_url,
            api_key=key or KEYLESS,
            # A keyless provider gets no Authorization header at all: the SDK drops a default header
            # set to ``omit`` (its own rule for caller-removed headers); ChatTransport does too.
            default_headers=None if key else {"Authorization": openai.omit},  # type: ignore[dict-item]
            max_retries=0,  # the pool owns retries
            timeout=self.spec.settings.timeout,
        )

    def pause(self, seconds: float, *, asked: bool) -> None:
        """Hold every request to this provider for ``seconds`` (a longer pause already set stays)."""
        until = self.clock() + seconds
        if until > self.paused_until:
            self.paused_until, self.pause_asked = until, asked

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
        spend: SpendBook | None = None,
        *,
        images: ImageBook | None = None,
        near_limit_fraction: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        # Pauses, the breakers' cool-downs and retry waits read ``clock`` and wait with ``sleep``;
        # both may be replaced at any time (tests advance a fake clock instead of sleeping).
        self.clock = clock
        self.sleep = sleep
        self.quotas = quotas or QuotaBook()
        self.spend = spend or SpendBook()
        self.images = images or ImageBook()
        # Where each call reserves and settles (and each image is counted): these books here; fleet
        # mode puts its Redis in front.
        self.admission: Quotas = LocalQuotas(self.quotas, self.spend, self.images)
        self._nodes = 1  # fleet nodes sharing each provider's max_concurrency
        self.stats = PoolStats()
        self._near_limit = near_limit_fraction
        self._providers: dict[str, _Provider] = {}
        self._random = random.Random()
        self._add_providers(providers)

    def _add_providers(self, providers: Mapping[str, ProviderSpec]) -> None:
        for name, spec in providers.items():
            if name not in self._providers:
                breaker = CircuitBreaker(spec.settings.breaker_threshold, spec.settings.breaker_cooldown, self._now)
                self._providers[name] = _Provider(spec, breaker, self._now, self._nodes)

    def share_concurrency(self, nodes: int) -> None:
        """A fleet of ``nodes`` live nodes: each provider's ``max_concurrency`` is divided among them
        (rounded up, at least 1 each)."""
        self._nodes = max(1, nodes)
        for state in self._providers.values():
            state.share(self._nodes)

    async def update_providers(self, providers: Mapping[str, ProviderSpec]) -> None:
        """Apply a new provider configuration. A replaced client closes once its last request ends."""
        for name in list(self._providers):
            if name not in providers or self._providers[name].spec != providers[name]:
                state = self._providers.pop(name)
                state.retired = True
                if not state.in_flight:
                    await state.close()
        self._add_providers(providers)

    def _now(self) -> float:
        return self.clock()

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
            page = await state.client.models.list(extra_headers=omitted_headers(state.client))
        except openai.OpenAIError as exc:
            raise map_error(state.spec, exc) from exc
        return sorted(model.id for model in page.data)

    async def complete(self, call: ChatCall) -> ChatResult:
        """Answer ``call`` or raise a :class:`ProviderError` whose ``user_message`` can be shown."""
        async with self._call(call, stream=False) as (answer, attempts, reservation):
            assert isinstance(answer, Completion)
            completion = answer.completion
            try:
                text = completion.choices[0].message.content or ""
            except (IndexError, AttributeError, TypeError) as exc:
                raise self.stats.count(ProviderBadResponse(call.provider, f"unreadable answer: {exc}")) from exc
            usage = completion.usage
            prompt = usage.prompt_tokens if usage else 0
            completion_tokens = usage.completion_tokens if usage else estimate_tokens(text)
            await self.admission.settle(reservation, call.price, prompt, completion_tokens)
            return ChatResult(
                text,
                prompt,
                completion_tokens,
                completion.model or call.model,
                attempts,
                answer.requested_at,
                answer.answered_at,
            )

    async def stream(self, call: ChatCall) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it arrives. Use with ``contextlib.aclosing``."""
        async with self._call(call, stream=True) as (answer, _attempts, reservation):
            assert isinstance(answer, CompletionStream)
            prompt = completion = 0
            text_len = 0
            try:
                async for chunk in answer.chunks:
                    if chunk.usage is not None:
                        prompt, completion = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            text_len += len(choice.delta.content)
                            yield choice.delta.content
            except Exception as exc:  # the SDK's errors from the transport, or an unreadable chunk
                cut = ProviderBadResponse(call.provider, f"the stream was cut: {type(exc).__name__}: {exc}")
                raise self.stats.count(cut) from exc
            finally:  # without the provider's usage (a cut stream), the answer's length estimates it
                completion = completion if prompt or completion else text_len // 4 + 1
                await self.admission.settle(reservation, call.price, prompt, completion)

    @asynccontextmanager
    async def _call(
        self, call: ChatCall, *, stream: bool
    ) -> AsyncIterator[tuple[Completion | CompletionStream, int, Reservation]]:
        estimate = sum(estimate_message_tokens(m) for m in call.messages) + (call.params.max_tokens or 256)
        reservation = await self.admission.reserve(
            call.provider, call.bot, call.user, estimate, call.quota, call.user_quota
        )
        kwargs: dict[str, Any] = {"model": call.model, "messages": call.messages}
        kwargs.update(call.params.body)
        try:
            async with self._using(call.provider) as state, AsyncExitStack() as open_stream:

                async def send(timeout: float, retries_taken: int) -> Completion | CompletionStream:
                    # state.transport is read per attempt: a breaker that opened may have rebuilt it
                    if not stream:
                        return await state.transport.create(kwargs, timeout=timeout, retries_taken=retries_taken)
                    return await open_stream.enter_async_context(
                        state.transport.stream(kwargs, timeout=timeout, retries_taken=retries_taken)
                    )

                answer, attempts = await self._with_retries(state, _Caller(call.bot, call.model, call.weight), send)
                yield answer, attempts, reservation
        finally:
            if not reservation.settled:  # the call failed before the provider counted it: a refund
                await self.admission.settle(reservation, None, 0, 0)

    async def request(
        self,
        provider: str,
        *,
        bot: str,
        model: str,
        weight: float,
        send: Callable[[openai.AsyncOpenAI, float, int], Awaitable[_Answer]],
    ) -> tuple[_Answer, int]:
        """One request of another endpoint than chat (images) with what chat answers get: the breaker,
        the provider's pauses, a fair slot, retries within ``timeout`` and failures as
        :class:`ProviderError`. ``send(client, timeout, retries_taken)`` makes one attempt with the
        provider's client and returns something with the answer's ``headers``; returns it and the
        number of attempts. No quota is counted here: that is the caller's."""
        async with self._using(provider) as state:
            return await self._with_retries(
                state, _Caller(bot, model, weight), lambda timeout, retries: send(state.client, timeout, retries)
            )

    @asynccontextmanager
    async def _using(self, provider: str) -> AsyncIterator[_Provider]:
        """The provider's state while a request uses it; a provider replaced meanwhile closes after its last."""
        state = self._provider(provider)
        state.in_flight += 1
        try:
            yield state
        finally:
            state.in_flight -= 1
            if state.retired and not state.in_flight:
                await state.close()

    async def _with_retries(
        self, state: _Provider, caller: _Caller, send: Callable[[float, int], Awaitable[_Answer]]
    ) -> tuple[_Answer, int]:
        """Attempts of ``send`` until one is answered, a failure is not worth retrying, or the
        provider's ``timeout`` would pass; the answer and the number of attempts."""
        settings = state.spec.settings
        deadline = anyio.current_time() + settings.timeout
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                return await self._attempt(state, caller, deadline, attempt, send), attempt + 1
            except ProviderError as error:
                self.stats.count(error)
                delay = self._retry_delay(error, attempt, settings.max_retries)
                if delay is None:
                    raise
                delay = max(delay, state.paused_until - self.clock())  # a provider-wide pause holds it too
                if anyio.current_time() + delay >= deadline:
                    if isinstance(error, ProviderBusy) and error.asked:
                        log.info(
                            "provider %s asks to wait %.3gs, beyond the %.3gs left: not retrying",
                            state.spec.name,
                            delay,
                            deadline - anyio.current_time(),
                        )
                    raise
                log.info(
                    "provider %s: %s; retry %d/%d in %.2fs",
                    state.spec.name,
                    error.detail,
                    attempt + 1,
                    settings.max_retries,
                    delay,
                )
                self.stats.retries += 1
                attempt += 1
                await self.sleep(delay)

    def _retry_delay(self, error: ProviderError, attempt: int, max_retries: int) -> float | None:
        """The wait before retrying after ``error``: the provider's hint, else backoff; None: do not retry."""
        retryable = error.retryable
        if retryable is None:  # the provider gave no verdict: retry what is transient
            retryable = isinstance(error, (ProviderBusy, ProviderTimeout))
        if not retryable or attempt >= max_retries:
            return None
        if error.retry_after is not None:
            return error.retry_after
        return min(8.0, 0.5 * 2.0**attempt) * self._random.uniform(0.5, 1.0)

    async def _attempt(
        self,
        state: _Provider,
        caller: _Caller,
        deadline: float,
        retries_taken: int,
        send: Callable[[float, int], Awaitable[_Answer]],
    ) -> _Answer:
        """One request: ``send(timeout, retries_taken)`` once the breaker, a pause and a fair slot allow."""
        wait = state.breaker.allow()
        if wait is not None:
            raise ProviderUnavailable(state.spec.name, "circuit breaker is open", retry_after=wait)
        while True:
            pause = state.paused_until - self.clock()
            if pause > 0:
                if anyio.current_time() + pause >= deadline:
                    raise ProviderBusy(
                        state.spec.name, "provider is rate limited", retry_after=pause, asked=state.pause_asked
                    )
                await self.sleep(pause)
            queue_wait = min(deadline - anyio.current_time(), state.spec.settings.queue_timeout)
            try:
                await state.limiter.acquire(caller.bot, caller.weight, queue_wait)
            except (QueueFull, QueueTimeout) as exc:
                raise ProviderBusy(state.spec.name, f"pool queue {type(exc).__name__}") from None
            if state.paused_until <= self.clock():
                break
            state.limiter.release()  # a pause began while we queued: wait it out before sending
        try:
            remaining = deadline - anyio.current_time()
            sent_at, sent_saturated = self.clock(), state.limiter.saturated
            try:
                answer = await send(remaining, retries_taken)
            except openai.OpenAIError as exc:
                if isinstance(exc, openai.RateLimitError):
                    state.overloaded(sent_at)
                error = map_error(state.spec, exc, caller.model)
                if isinstance(exc, openai.APIStatusError):
                    self._note_rate_headers(state, exc.response.headers)
                    if exc.status_code == 429 and error.retry_after:
                        state.pause(error.retry_after, asked=True)
                if not _unhealthy(exc):
                    state.breaker.record_success()  # a 429 or 4xx: the provider is up and answering
                elif state.breaker.record_failure():
                    log.error("provider %s: circuit opened after repeated failures (%s)", state.spec.name, error.detail)
                    await state.rebuild()
                raise error from exc
            state.answered(sent_at, sent_saturated)
        finally:
            state.limiter.release()
        state.breaker.record_success()
        self._note_rate_headers(state, answer.headers)
        return answer

    def _note_rate_headers(self, state: _Provider, headers: Mapping[str, str]) -> None:
        """Pause every bot on this provider while it says a limit is (nearly) used up: until the
        limit's reset when it names one, else for a doubling guess (:data:`SPENT_PAUSE`)."""
        reset_wait = 0.0
        for kind in KINDS:
            left = rate_count(headers, "remaining", kind)
            if left is None:
                continue
            limit = rate_count(headers, "limit", kind)
            # near: nothing left, fewer left than we already have in flight, or a small fraction
            near = left <= 0 or (limit is not None and left <= max(1.0, limit * self._near_limit, state.in_flight))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) if near else None
            if reset:
                reset_wait = max(reset_wait, reset)
                log.info("provider %s: near its %s limit, pausing new requests for %.2fs", state.spec.name, kind, reset)
        if reset_wait:
            state.pause(reset_wait, asked=True)
        spent = used_up(headers)
        if reset_wait or not spent or retry_after_from(headers) is not None:
            state.spent_pauses = 0
            return
        initial, longest = SPENT_PAUSE
        wait = min(longest, initial * 2**state.spent_pauses)
        state.spent_pauses += 1
        state.pause(wait, asked=False)
        log.info(
            "provider %s: no %s left and no reset time given; pausing new requests for %.3gs",
            state.spec.name,
            " or ".join(spent),
            wait,
        )
