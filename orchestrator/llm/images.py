"""Images out: a prompt drawn by the provider's images endpoint (``POST /images/generations``).

:func:`generate_image` sends the request through the pool (:meth:`LLMPool.request`: the provider's
client and key, breaker, pauses, fair slot and retries, as chat), counted against the per-bot and
per-user ``images_per_day`` (``quota`` / ``user_quota``) by the pool's admission: this process'
:class:`ImageBook`, or in fleet mode the fleet's count in Redis (fleet/quotas.py). The answer's
image is base64 (decoded) or a URL (downloaded, without the provider's key, up to ``max_bytes``).
No ``response_format`` is sent: GPT image models refuse it and always answer base64, DALL·E models
answer a URL unless asked otherwise, so both shapes are read.

An image is counted when it is asked for and given back when none came, so concurrent requests
cannot pass a limit together; the day's counts are persisted through :class:`ImageSink` (both
stores) once an image came, so a restart keeps them.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
import openai
from openai.types import ImagesResponse

from ..config import QuotaSettings
from ..download import DownloadFailed, TooLarge, read_bounded
from ..errors import ImageUnavailable, ProviderBadResponse, QuotaExceeded
from ..imagesize import image_info
from .quota import QuotaBook, utc_day
from .transport import omitted_headers

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .pool import LLMPool

DAY = 86400.0
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # Discord's upload limit for a bot in a server without boosts
DOWNLOAD_TIMEOUT = 30.0


class ImageSink(Protocol):
    """Where the day's image counts are persisted (both stores implement it)."""

    def load_daily_images(self, day: str) -> dict[tuple[str, str], int]: ...

    def add_daily_images(self, day: str, bot: str, user: str, images: int) -> None: ...


@dataclass(frozen=True)
class ImageTicket:
    """One image counted against the day's limits, until it is recorded or given back."""

    day: str
    bot: str
    user: str
    fleet_day: int | None = None  # the UTC day (since 1970) the fleet's Redis counted it on; None: not counted there


class ImageBook:
    """Images per (bot) and (bot, user) for the UTC day, against ``images_per_day``."""

    ALL_USERS = QuotaBook.ALL_USERS

    def __init__(self, sink: ImageSink | None = None, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self._wall = wall_clock
        self._day = ""
        self._daily: dict[tuple[str, str], int] = {}

    def _roll_day(self) -> str:
        day = utc_day(self._wall())
        if day != self._day:
            self._day = day
            self._daily = dict(self._sink.load_daily_images(day)) if self._sink else {}
        return day

    def take(
        self, provider: str, bot: str, user: str, bot_quota: QuotaSettings, user_quota: QuotaSettings
    ) -> ImageTicket:
        """Count one image for ``bot`` and ``user``, or raise :class:`QuotaExceeded` (nothing counted)."""
        day = self._roll_day()
        keys = ((bot, self.ALL_USERS), (bot, user))
        limits = (("bot", keys[0], bot_quota.images_per_day), ("user", keys[1], user_quota.images_per_day))
        for scope, key, limit in limits:
            if limit is not None and self._daily.get(key, 0) >= limit:
                raise QuotaExceeded(provider, scope, "images_per_day", DAY - self._wall() % DAY)
        for key in keys:
            self._daily[key] = self._daily.get(key, 0) + 1
        return ImageTicket(day, bot, user)

    def give_back(self, ticket: ImageTicket) -> None:
        """No image came: it does not count (unless the day has changed since)."""
        if ticket.day == self._roll_day():
            for key in ((ticket.bot, self.ALL_USERS), (ticket.bot, ticket.user)):
                self._daily[key] = max(0, self._daily.get(key, 0) - 1)

    def record(self, ticket: ImageTicket) -> None:
        """The image came: persist it, on the day it was asked for."""
        if self._sink is not None:
            for user in (self.ALL_USERS, ticket.user):
                self._sink.add_daily_images(ticket.day, ticket.bot, user, 1)

    def today(self, bot: str, user: str = ALL_USERS) -> int:
        """Images made today (UTC) by ``bot``, or for ``user`` with it."""
        self._roll_day()
        return self._daily.get((bot, user), 0)


@dataclass(frozen=True)
class ImageCall:
    """One image as a bot asks for it."""

    bot: str
    user: str
    provider: str
    model: str
    prompt: str
    size: str = "1024x1024"
    weight: float = 1.0
    quota: QuotaSettings = QuotaSettings()
    user_quota: QuotaSettings = QuotaSettings()


@dataclass(frozen=True)
class Image:
    data: bytes
    extension: str  # png, jpg, gif or webp, from the bytes themselves
    revised_prompt: str | None = None  # what a DALL·E model drew instead of the prompt as written


@dataclass(frozen=True)
class _Generated:
    response: ImagesResponse
    headers: Mapping[str, str]


async def generate_image(pool: LLMPool, call: ImageCall, *, max_bytes: int = MAX_IMAGE_BYTES) -> Image:
    """Draw ``call.prompt``, or raise a :class:`~orchestrator.errors.ProviderError` whose
    ``user_message`` can be shown (a refusal, the day's limit, a provider failure, an image that
    cannot be fetched or is larger than ``max_bytes``)."""
    admission = pool.admission
    ticket = await admission.take_image(call.provider, call.bot, call.user, call.quota, call.user_quota)
    try:
        image = await _draw(pool, call, max_bytes)
    except BaseException:
        await admission.give_back_image(ticket)
        raise
    pool.images.record(ticket)
    return image


async def _draw(pool: LLMPool, call: ImageCall, max_bytes: int) -> Image:
    async def send(client: openai.AsyncOpenAI, timeout: float, retries_taken: int) -> _Generated:
        raw = await client.images.with_raw_response.generate(
            model=call.model,
            prompt=call.prompt,
            n=1,
            size=call.size,
            user=call.user,
            timeout=timeout,
            extra_headers={**omitted_headers(client), "X-Stainless-Retry-Count": str(retries_taken)},
        )
        return _Generated(raw.parse(), raw.headers)

    generated, _attempts = await pool.request(
        call.provider, bot=call.bot, model=call.model, weight=call.weight, send=send
    )
    first = generated.response.data[0] if generated.response.data else None
    if first is not None and first.b64_json:
        try:
            data = base64.b64decode(first.b64_json, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderBadResponse(call.provider, f"the image's base64 cannot be decoded: {exc}") from exc
        if len(data) > max_bytes:
            raise _too_large(call.provider, max_bytes)
    elif first is not None and first.url:
        data = await download(call.provider, first.url, max_bytes)
    else:
        raise ProviderBadResponse(call.provider, "the images answer holds no image (no b64_json, no url)")
    return Image(data, _extension(call.provider, data), first.revised_prompt)


async def download(provider: str, url: str, max_bytes: int) -> bytes:
    """The image at ``url``, refused beyond ``max_bytes`` (before reading it when its length is told).

    A session of its own, without the provider's headers: the image is usually on another host
    (OpenAI's blob storage), which must not see the API key. Images are few, so no session is kept."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT)) as session:
            return await read_bounded(session, url, max_bytes)
    except TooLarge:
        raise _too_large(provider, max_bytes) from None
    except DownloadFailed as failed:
        cause = failed.__cause__
        how = f"HTTP {failed.status}" if failed.status is not None else f"{type(cause).__name__}: {cause}"
        raise ImageUnavailable(
            provider, f"the image's download failed: {how}",
            "The image was made but could not be downloaded from the model provider. Please try again.",
        ) from cause  # fmt: skip


def _too_large(provider: str, max_bytes: int) -> ImageUnavailable:
    limit = f"{max_bytes / 1024 / 1024:.3g} MB" if max_bytes >= 1024 * 1024 else f"{max_bytes} bytes"
    return ImageUnavailable(
        provider, f"the image is larger than {max_bytes} bytes",
        f"The image is larger than {limit}, too large to post here.",
    )  # fmt: skip


def _extension(provider: str, data: bytes) -> str:
    """The image's format from its header (a file name's extension is how Discord shows it)."""
    info = image_info(data)
    if info is None:
        raise ProviderBadResponse(provider, f"the answer is not a PNG, JPEG, GIF or WebP image (starts {data[:8]!r})")
    return "jpg" if info.format == "jpeg" else info.format
