"""What an operation is: one kind of request, defined by "call this target".

The pipeline (:func:`omniroute.pipeline.serve`) does everything else: stages,
routing, the attempt loop with its accounting, headers, errors, the stream
relay and the request log. An operation says how to read the request
(:meth:`Operation.read`: a JSON object unless it says otherwise;
:meth:`Operation.inspect`) and what calling one target means
(:meth:`Operation.call`).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from aiohttp import web

from omniroute.bodies import read_sized_object
from omniroute.config import Settings
from omniroute.errors import GatewayError, TargetUnsupported
from omniroute.formats.base import Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.routing import Target


class Prices(Protocol):
    """What an operation asks of the price book for an estimate (a budget's reservation)."""

    def estimate_usd(self, target: Target, input_tokens: int, output_tokens: int, *,
                     images: int = 0, seconds: float = 0.0,
                     characters: int = 0) -> float | None:
        """USD for these token counts (and ``images`` images, ``seconds`` of audio,
        ``characters`` of speech) on ``target``, or None."""


class Operation:
    """Base class of operations (chat, embeddings, token counting, images, audio)."""

    #: the operation's name, which stages look at (``"chat"``)
    name: ClassVar[str]
    #: the provider capability a target needs (:attr:`Provider.capabilities`); a target
    #: without it is skipped and not charged
    capability: ClassVar[str]
    #: metered calls take a slot of the account and charge its failures (cooldown,
    #: breaker); an unmetered one (a token count) only asks, and its :meth:`call`
    #: returns None to move on
    metered: ClassVar[bool] = True
    #: whether the request is pinned to an account (sticky sessions)
    sticky: ClassVar[bool] = False
    #: the answer is generated content (its record has a time to the first content token,
    #: and a budget reserves output tokens for it)
    generates: ClassVar[bool] = False
    #: a call slow to answer may race the next target (:mod:`omniroute.pipeline.hedge`);
    #: False where a second call costs too much to start on a guess (image generation),
    #: or where the whole answer is the first byte and is slow by nature (a long
    #: transcription), so that a race would only pay twice
    hedged: ClassVar[bool] = True

    def __init__(self, fmt: Format, endpoint: str) -> None:
        #: the client's format: it shapes the answer and the errors
        self.fmt = fmt
        #: the request log's name for it (``"chat.completions"``)
        self.endpoint = endpoint

    async def read(self, ctx: RequestContext, request: web.Request, settings: Settings) -> None:
        """Read the client's body into ``ctx.body`` and ``ctx.body_bytes``: by default a JSON
        object (413 past ``max_body_bytes``, 415 for another content type, 400 for bad JSON).
        An operation with another kind of body (a multipart upload) reads it here, keeping
        what it read in ``ctx.payload`` and a JSON-like summary in ``ctx.body``."""
        body, raw = await read_sized_object(request, settings.max_body_bytes)
        ctx.body, ctx.body_bytes, ctx.as_read = body, len(raw), (raw, body)

    def inspect(self, ctx: RequestContext) -> None:
        """Set ``ctx.model`` and ``ctx.stream`` from the request; raise ``InvalidRequest``."""
        raise NotImplementedError

    async def call(self, ctx: RequestContext, target: Target) -> Reply | None:
        """Serve the request with ``target``; raise a ``GatewayError`` when it fails."""
        raise NotImplementedError

    def unusable(self, target: Target) -> GatewayError | None:
        """Why ``target`` cannot serve this operation at all (skipped, not charged), or None."""
        if self.capability not in target.provider.capabilities:
            return TargetUnsupported(f"{target.label} cannot serve {self.name} "
                                     f"(provider type {target.provider.type!r}).")
        return None

    def estimate_usd(self, ctx: RequestContext, prices: Prices, target: Target,
                     tokens_in: int, tokens_out: int) -> float | None:
        """What this request would cost on ``target`` (a budget's reservation), or None
        when its price is not known: by default its estimated tokens at the target's rate."""
        return prices.estimate_usd(target, tokens_in, tokens_out)

    async def unserved(self, ctx: RequestContext, error: GatewayError) -> Reply:
        """The answer when no target served: by default ``error`` itself."""
        raise error
