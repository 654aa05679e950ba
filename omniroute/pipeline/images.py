"""Image generation: a prompt in, ``n`` images out, from any provider type that makes them.

The client's images API (OpenAI's ``/v1/images/generations``) is a pair of
functions from its format: ``decode`` reads its body into a
:class:`~omniroute.formats.canonical.ImageRequest`, ``encode`` writes the
:class:`~omniroute.formats.canonical.ImageResult` in its shape. A target whose
provider type makes no images (capability ``"images"``) is skipped without
being charged.

A generation is slow (seconds to minutes) and each one is paid for, so a slow
call never races a second target (``hedged = False``); each call is bounded by
the ``image_timeout`` setting instead of the chat timeouts (the providers'
:attr:`~omniroute.providers.base.Timeouts.images`). The record counts the images
made (``images``) and any tokens the upstream counted; the price book prices
them per image or per token (:mod:`omniroute.pricing`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from omniroute.errors import GatewayError, ImagesNotSupported
from omniroute.formats import canonical as c
from omniroute.formats.base import Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.operation import Operation, Prices
from omniroute.routing import Target
from omniroute.storage import RequestRecord
from omniroute.tokens import estimate_text

#: a client body -> the request (raise ``InvalidRequest`` when it is malformed)
Decode = Callable[[dict[str, Any]], c.ImageRequest]
#: (request, result) -> the client's JSON answer
Encode = Callable[[c.ImageRequest, c.ImageResult], Any]
#: output tokens a budget reserves per image of a token-priced model (a 1024x1024 image
#: is 1056 to 1290 output tokens on gpt-image-1 and the Gemini image models)
TOKENS_PER_IMAGE = 1290


class Images(Operation):
    """An image generation request in one client API's shape."""

    name = "images"
    capability = "images"
    hedged = False

    def __init__(self, fmt: Format, endpoint: str, decode: Decode, encode: Encode) -> None:
        super().__init__(fmt, endpoint)
        self.decode = decode
        self.encode = encode

    def inspect(self, ctx: RequestContext) -> None:
        ask = ctx.payload = self.decode(ctx.body)
        ctx.model, ctx.stream = ask.model, False

    def unusable(self, target: Target) -> GatewayError | None:
        if self.capability not in target.provider.capabilities:
            return ImagesNotSupported(
                f"Provider type {target.provider.type!r} (connection "
                f"{target.connection.name!r}) does not generate images.", param="model")
        return None

    def estimate_usd(self, ctx: RequestContext, prices: Prices, target: Target,
                     tokens_in: int, tokens_out: int) -> float | None:
        ask: c.ImageRequest = ctx.payload
        return prices.estimate_usd(target, tokens_in, TOKENS_PER_IMAGE * ask.n, images=ask.n)

    async def call(self, ctx: RequestContext, target: Target) -> Reply:
        ask: c.ImageRequest = ctx.payload
        result = await target.provider.generate_images(target.model, ask)
        return Reply(body=orjson.dumps(self.encode(ask, result)),
                     on_win=partial(_counted, ctx.record, ask, result))


def _counted(record: RequestRecord, ask: c.ImageRequest, result: c.ImageResult) -> None:
    """The served answer's images and tokens into the record (tokens only where the upstream
    counts them; its input then estimated when it counted only the output)."""
    record.images = len(result.images)
    record.prompt_tokens = c.token_count(result.usage.input_tokens)
    record.completion_tokens = c.token_count(result.usage.output_tokens)
    if record.prompt_tokens is None and record.completion_tokens is not None:
        record.prompt_tokens = estimate_text(ask.prompt)
        record.usage_estimated = 1
