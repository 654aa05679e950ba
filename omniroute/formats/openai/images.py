"""OpenAI's ``POST /v1/images/generations``, both sides.

Client side: ``{model, prompt, n?, size?, quality?, response_format?, ...}`` is
read into a :class:`~omniroute.formats.canonical.ImageRequest` (the other fields
ride in ``options``); the answer is ``{created, data: [{b64_json | url,
revised_prompt?}], usage?, size?, quality?, background?, output_format?}``.

Upstream side (an OpenAI-compatible images endpoint): the request goes back out
in the same shape, every field the client sent included, and the answer is read
into an :class:`~omniroute.formats.canonical.ImageResult`. The one exception is
``response_format`` for the GPT image models (``gpt-image-*``, ``chatgpt-image*``):
OpenAI refuses that parameter for them ("Unknown parameter") and always answers
``b64_json``, so it is left out and the gateway builds the asked-for shape from the
bytes (https://platform.openai.com/docs/api-reference/images/create).

Upstream side, through Chat Completions (OpenRouter, which has no images endpoint):
:func:`chat_request` asks for one image with ``modalities: ["image", "text"]`` and
:func:`chat_answer` reads ``choices[0].message.images``.

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
#: model-name prefixes of the models that refuse ``response_format`` (always b64_json)
_NO_RESPONSE_FORMAT = ("gpt-image", "chatgpt-image")
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
    names = ["size", "quality"]
    if not takes_no_response_format(model):
        names.append("response_format")
    for name in names:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    return body


def takes_no_response_format(model: str) -> bool:
    """True for the GPT image models, which refuse ``response_format`` (a vendor
    namespace such as OpenRouter's ``openai/`` is ignored)."""
    return model.rsplit("/", 1)[-1].lower().startswith(_NO_RESPONSE_FORMAT)


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


# ----------------------------------------------------------------------------- images via chat

#: the aspect ratios of OpenRouter's ``image_config`` (its image-generation docs)
CHAT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")


def chat_request(request: c.ImageRequest, model: str) -> dict[str, Any]:
    """A Chat Completions body that asks an image model for one image: the prompt as the
    user's message and ``modalities: ["image", "text"]``, as OpenRouter generates images
    (https://openrouter.ai/docs/features/multimodal/image-generation). ``size`` becomes
    ``image_config.aspect_ratio`` (the nearest ratio it takes; an ``aspect_ratio`` or
    ``image_size`` the client sent wins); ``user`` rides along."""
    body: dict[str, Any] = {"model": model,
                            "messages": [{"role": "user", "content": request.prompt}],
                            "modalities": ["image", "text"]}
    config: dict[str, Any] = {}
    asked = request.options.get("aspect_ratio")
    if isinstance(asked, str):
        config["aspect_ratio"] = asked
    elif request.size is not None and request.size != "auto":
        config["aspect_ratio"] = checks.nearest_ratio(*request.dimensions(), CHAT_RATIOS)
    if isinstance(request.options.get("image_size"), str):
        config["image_size"] = request.options["image_size"]
    if config:
        body["image_config"] = config
    if isinstance(request.options.get("user"), str):
        body["user"] = request.options["user"]
    return body


def chat_answer(body: bytes) -> c.ImageResult:
    """A Chat Completions answer's ``choices[0].message.images[].image_url.url`` (data
    URLs, or links) and its token usage; ``UpstreamError`` when it holds no image (the
    model's text, if any, says why)."""
    try:
        data = orjson.loads(body)
        message = data["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise UpstreamError("upstream sent a malformed chat answer to an image request") \
            from None
    images = []
    listed = message.get("images") if isinstance(message, dict) else None
    for item in listed if isinstance(listed, list) else ():
        link = item.get("image_url") if isinstance(item, dict) else None
        url = link.get("url") if isinstance(link, dict) else None
        if not isinstance(url, str):
            continue
        inline = parse_data_url(url)
        images.append(c.GeneratedImage(data=inline[1], media_type=inline[0])
                      if inline is not None else c.GeneratedImage(url=url))
    if not images:
        said = message.get("content") if isinstance(message, dict) else None
        reason = f": {said.strip()[:300]}" if isinstance(said, str) and said.strip() else ""
        raise UpstreamError(f"upstream sent a chat answer without any image{reason}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return c.ImageResult(images, c.Usage(input_tokens=token_count(usage.get("prompt_tokens")),
                                         output_tokens=token_count(
                                             usage.get("completion_tokens"))))
