"""The sandbox's ``POST /v1/images/generations``, as OpenAI documents it.

A request names ``model``, ``prompt``, optionally ``n`` (1-10), ``size`` (``WxH`` or ``auto``) and
``response_format`` (``url`` or ``b64_json``). The answer is ``{"created": ..., "data": [...]}``
with one real PNG per image (:func:`orchestrator.sandbox.png.png`, deterministic from the prompt
and the image's index) of the requested size. Models behave as OpenAI's do: a GPT image model
(``gpt-image-*``) always answers ``b64_json`` and refuses a ``response_format``; a DALL·E model
answers ``url`` unless asked for ``b64_json``, and adds a ``revised_prompt``. A URL points at the
sandbox itself (``GET /v1/images/files/<name>.png``, no key needed, as OpenAI's blob URLs need none).
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from dataclasses import dataclass
from typing import Any

from .png import png

IMAGE_MODELS = ("gpt-image-1", "dall-e-3")
DEFAULT_SIZE = (1024, 1024)
MAX_SIDE = 4096
CONTENT_POLICY = (
    "Your request was rejected as a result of our safety system. Your prompt may contain text that is not "
    "allowed by our safety system."
)
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


@dataclass(frozen=True)
class ImagesAnswer:
    """What to answer: ``payload`` with 200, else an error ``status`` with OpenAI's ``message`` and ``code``."""

    status: int
    payload: dict[str, Any] | None = None
    message: str | None = None
    code: str | None = None


class ImageGenerations:
    """Draws the images and keeps those handed out as URLs (``files``, by file name)."""

    def __init__(self, models: tuple[str, ...] = IMAGE_MODELS) -> None:
        self.models = models
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(1)

    def answer(self, body: dict[str, Any], files_url: str) -> ImagesAnswer:
        """The answer to a request ``body`` whose key was accepted; URLs start with ``files_url``."""
        prompt, n, response_format = body.get("prompt"), body.get("n", 1), body.get("response_format")
        if not isinstance(prompt, str) or not prompt.strip():
            return ImagesAnswer(400, message="'prompt' is a required property and must be a non-empty string.")
        if not isinstance(n, int) or not 1 <= n <= 10:
            return ImagesAnswer(400, message=f"{n!r} is not a valid value for 'n': expected an integer from 1 to 10.")
        size = _size(body.get("size"))
        if size is None:
            return ImagesAnswer(400, message=f"Invalid value for 'size': {body.get('size')!r}.", code="invalid_value")
        model = body.get("model") or "dall-e-3"
        if model not in self.models:
            return ImagesAnswer(
                404, message=f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )  # fmt: skip
        gpt_image = str(model).startswith("gpt-image")
        if response_format not in (None, "url", "b64_json") or (gpt_image and response_format is not None):
            return ImagesAnswer(400, message=f"Unknown parameter: 'response_format' ({response_format!r}).")
        as_url = not gpt_image and response_format != "b64_json"
        data = []
        for index in range(n):
            image = png(*size, f"{prompt}#{index}")
            item: dict[str, Any] = {}
            if as_url:
                name = f"img-{next(self._ids)}.png"
                self.files[name] = image
                item["url"] = f"{files_url}/{name}"
            else:
                item["b64_json"] = base64.b64encode(image).decode()
            if not gpt_image:
                item["revised_prompt"] = f"A picture of {prompt.strip()}"
            data.append(item)
        return ImagesAnswer(200, {"created": int(time.time()), "data": data})


def _size(size: object) -> tuple[int, int] | None:
    """The requested size in pixels (``auto`` or none: 1024×1024); None when it is not a valid ``WxH``."""
    if size is None or size == "auto":
        return DEFAULT_SIZE
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        return None
    width, height = int(match[1]), int(match[2])
    return (width, height) if 1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE else None
