"""Embeddings: one vector per input text, from any provider type that serves them.

The client's embeddings API (OpenAI's ``/v1/embeddings``, Ollama's
``/api/embed`` and ``/api/embeddings``) is a pair of functions from its format:
``decode`` reads its body into a :class:`~omniroute.formats.canonical.EmbedRequest`,
``encode`` writes the answer in its shape. A target whose provider type serves no
embeddings is skipped without being charged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from omniroute.errors import EmbeddingsNotSupported, GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.base import Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.routing import Target
from omniroute.storage import RequestRecord
from omniroute.tokens import estimate_text

#: a client body -> the request (raise ``InvalidRequest`` when it is malformed)
Decode = Callable[[dict[str, Any]], c.EmbedRequest]
#: (request, vectors, input tokens, elapsed ns) -> the client's JSON answer
Encode = Callable[[c.EmbedRequest, list[list[float]], int, int], Any]


class Embed(Operation):
    """An embeddings request in one client API's shape."""

    name = "embeddings"
    capability = "embeddings"

    def __init__(self, fmt: Format, endpoint: str, decode: Decode, encode: Encode) -> None:
        super().__init__(fmt, endpoint)
        self.decode = decode
        self.encode = encode

    def inspect(self, ctx: RequestContext) -> None:
        ask = ctx.payload = self.decode(ctx.body)
        ctx.model, ctx.stream = ask.model, False

    def unusable(self, target: Target) -> GatewayError | None:
        if self.capability not in target.provider.capabilities:
            return EmbeddingsNotSupported(
                f"Provider type {target.provider.type!r} (connection "
                f"{target.connection.name!r}) does not serve embeddings.", param="model")
        return None

    async def call(self, ctx: RequestContext, target: Target) -> Reply:
        ask: c.EmbedRequest = ctx.payload
        result = await target.provider.embed(target.model, ask.inputs, ask.options)
        tokens = c.token_count(result.prompt_tokens)  # any provider's, plugins' too
        estimated = tokens is None
        if tokens is None:  # the upstream did not count: estimate, as for chat
            tokens = sum(estimate_text(text) for text in ask.inputs)
        elapsed_ns = int((time.perf_counter() - ctx.started) * 1e9)
        return Reply(body=orjson.dumps(self.encode(ask, result.vectors, tokens, elapsed_ns)),
                     on_win=partial(_counted, ctx.record, tokens, estimated))


def _counted(record: RequestRecord, tokens: int, estimated: bool) -> None:
    """The served answer's counts into the record (an embedding has no output tokens)."""
    record.prompt_tokens, record.completion_tokens = tokens, 0
    if estimated:
        record.usage_estimated = 1
