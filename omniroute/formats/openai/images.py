"""OpenAI's ``POST /v1/images/generations``, both sides.

Client side: ``{model, prompt, n?, size?, quality?, response_format?, ...}`` is
read into a :class:`~omniroute.formats.canonical.ImageRequest` (the other fields
ride in ``options``); the answer is ``{created, data: [{b64_json | url,
revised_prompt?}], usage?, size?, quality?, background?, output_format?}``.

Upstream side (an OpenAI-compatible images endpoint): the request goes back out
in the same shape, every field the client sent included, and the answer is read
into an :class:`~omniroute.formats.canonical.ImageResult`.

``response_format``: ``b64_json`` answers carry the bytes as base64; ``url``
answers carry the upstream's URL, or a ``data:`` URL when the upstream only made
bytes (the gateway keeps no images to serve: docs/media.md says why). Left out,
the answer holds what the upstream gave.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import images as checks
from omniroute.formats.canonical import token_count
from omniroute.formats.media import data_url, parse_data_url, sniff_media_type

NAME = "openai"
_READ = frozenset({"model", "prompt", "n", "size", "quality", "response_format", "stream"})
#: answer fields besides ``created`` and ``data`` that the client API also has
_ANSWER_EXTRAS = ("background", "output_format", "quality", "size", "usage")


def decode_request(body: dict[str, Any]) -> c.ImageRequest:
    checks.no_stream(body)
    return c.ImageRequest(
        model=checks.model_of(body), prompt=checks.prompt_of(body), n=checks.count_of(body),
        size=checks.size_of(body),
        quality=checks.choice_of(body, "quality", checks.QUALITIES),
        response_format=checks.choice_of(body, "response_format", checks.RESPONSE_FORMATS),
        options={k: v for k, v in body.items() if k not in _READ})


def encode_answer(request: c.ImageRequest, result: c.ImageResult) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "created": result.created or int(time.time()),
        "data": [_item(image, request.response_format) for image in result.images]}
    extras = result.meta.get(NAME)
    if isinstance(extras, dict):
        answer.update({k: v for k, v in extras.items() if k in _ANSWER_EXTRAS})
    usage = result.usage
    if "usage" not in answer and usage.input_tokens is not None \
            and usage.output_tokens is not None:
        answer["usage"] = {"input_tokens": usage.input_tokens,
                           "input_tokens_details": {"text_tokens": usage.input_tokens,
                                                    "image_tokens": 0},
                           "output_tokens": usage.output_tokens,
                           "total_tokens": usage.input_tokens + usage.output_tokens}
    return answer


def _item(image: c.GeneratedImage, response_format: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    data, url = image.data, image.url
    if data is None and url is not None and (inline := parse_data_url(url)) is not None:
        data = inline[1]  # a data: URL holds the bytes already
    if response_format == "url" or (response_format is None and data is None):
        if url is None and data is not None:
            url = data_url(image.media_type or sniff_media_type(data), data)
        item["url"] = url
    elif data is not None:
        item["b64_json"] = data
    else:  # asked for bytes, and the upstream gave only a link (docs/media.md)
        item["url"] = url
    if image.revised_prompt is not None:
        item["revised_prompt"] = image.revised_prompt
    return item


# ----------------------------------------------------------------------------- upstream side

def encode_request(request: c.ImageRequest, model: str) -> dict[str, Any]:
    """The upstream body: the client's fields as sent, with the upstream's model name."""
    body: dict[str, Any] = {**request.options, "model": model, "prompt": request.prompt}
    if request.n != 1:
        body["n"] = request.n
    for name in ("size", "quality", "response_format"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    return body


def decode_answer(body: bytes) -> c.ImageResult:
    """An upstream's ``{created, data: [...], usage?}``; ``UpstreamError`` when it is not
    one or holds no image."""
    try:
        data = orjson.loads(body)
        items = data["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UpstreamError("upstream sent a malformed image answer") from None
    images = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        b64, url = item.get("b64_json"), item.get("url")
        if not isinstance(b64, str) and not isinstance(url, str):
            continue
        revised = item.get("revised_prompt")
        images.append(c.GeneratedImage(
            data=b64 if isinstance(b64, str) else None,
            url=url if isinstance(url, str) else None,
            revised_prompt=revised if isinstance(revised, str) else None))
    if not images:
        raise UpstreamError("upstream sent an image answer without any image")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    created = data.get("created")
    return c.ImageResult(
        images,
        c.Usage(input_tokens=token_count(usage.get("input_tokens")),
                output_tokens=token_count(usage.get("output_tokens"))),
        created if isinstance(created, int) and not isinstance(created, bool) else None,
        {NAME: {k: data[k] for k in _ANSWER_EXTRAS if k in data}})
