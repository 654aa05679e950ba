"""Reading image generation request bodies: the checks every images API shares.

The model, the prompt, how many images (``n``), their ``size``, ``quality`` and
``response_format``; each format builds its own
:class:`~omniroute.formats.canonical.ImageRequest` from them. The bounds are
OpenAI's (``n`` from 1 to 10) and wide enough for every provider type
(``size`` from 64 to 8192 pixels a side); which sizes a model really makes is
the upstream's to say.
"""

from __future__ import annotations

import re
from typing import Any

from omniroute.errors import InvalidRequest

#: the most images one request may ask for (OpenAI's own limit)
MAX_IMAGES = 10
#: the smallest and largest side of an image, in pixels
MIN_SIDE, MAX_SIDE = 64, 8192
QUALITIES = ("auto", "standard", "hd", "low", "medium", "high")
RESPONSE_FORMATS = ("url", "b64_json")
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required: the image model to generate with.",
                             param="model", code="missing_model")
    return model


def prompt_of(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' is required: a non-empty text describing the image.",
                             param="prompt", code="missing_prompt")
    return prompt


def count_of(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"'n' must be a whole number from 1 to {MAX_IMAGES}, got {n!r}.",
                             param="n", code="invalid_n")
    return n


def size_of(body: dict[str, Any]) -> str | None:
    """``"WIDTHxHEIGHT"`` (lower-case ``x``), ``"auto"``, or None when not given."""
    size = body.get("size")
    if size is None:
        return None
    if size == "auto":
        return size
    match = _SIZE.fullmatch(size.strip().lower()) if isinstance(size, str) else None
    if match is None or not all(MIN_SIDE <= int(side) <= MAX_SIDE for side in match.groups()):
        raise InvalidRequest(
            f"'size' must be 'auto' or WIDTHxHEIGHT in pixels, each side from {MIN_SIDE} to "
            f"{MAX_SIDE} (e.g. '1024x1024'), got {size!r}.", param="size", code="invalid_size")
    return f"{int(match[1])}x{int(match[2])}"


def choice_of(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if value not in choices:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(choices)}, got {value!r}.",
                             param=name, code=f"invalid_{name}")
    return str(value)


def no_stream(body: dict[str, Any]) -> None:
    """Partial images streamed as they form are not served: a clear 400, not a hang."""
    if body.get("stream"):
        raise InvalidRequest("This gateway does not stream image generation; send the "
                             "request without 'stream' to get the finished images.",
                             param="stream", code="stream_not_supported")


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    """The ``"W:H"`` of ``ratios`` closest to ``width`` / ``height`` (for APIs that take an
    aspect ratio rather than a size: Imagen, the Gemini image models)."""
    wanted = width / height

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(int(w) / int(h) - wanted)

    return min(ratios, key=distance)
