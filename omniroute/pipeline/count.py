"""Token counting: asked upstream when a target can count, else estimated locally.

The model is resolved like a generation request's. The targets are tried in
route order; only those whose provider speaks the client's format and counts
tokens (capability ``"count_tokens"``) are asked, with the body as sent and
the upstream's model name. Counting only asks: no account slot is taken and
nothing is charged. An upstream that cannot count (a compatible vendor without
the endpoint, a rate limit, a network failure, too slow) passes to the next; a
400 about the request itself reaches the client. With no such upstream the
count is :func:`omniroute.tokens.estimate_request` over the decoded request.
``X-OmniRoute-Token-Count`` says which (``upstream`` or ``estimate``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, UpstreamStatusError
from omniroute.formats.base import ClientRequest, Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.routing import Target
from omniroute.tokens import estimate_request

log = logging.getLogger(__name__)

#: seconds an upstream may take to count, past its connect timeout (then the next, or the
#: local estimate: counting must never hold a client as long as a generation may)
COUNT_SECONDS = 5.0
#: upstream statuses that mean the request itself is wrong (no other target would differ)
_CLIENT_MISTAKES = frozenset({400, 413, 422})


class CountTokens(Operation):
    """A token count in the client's format (Anthropic ``count_tokens``, Gemini ``countTokens``)."""

    name = "count_tokens"
    capability = "count_tokens"
    metered = False

    def __init__(
        self, fmt: Format, endpoint: str, answer: Callable[[int], dict[str, Any]],
        *, connect_timeout: Callable[[], float], unwrap: str | None = None,
    ) -> None:
        """
        :param answer: the client's JSON answer for a local estimate of N tokens.
        :param connect_timeout: the current upstream connect timeout (settings change).
        :param unwrap: a body field that may hold the whole request (Gemini's
            ``generateContentRequest``).
        """
        super().__init__(fmt, endpoint)
        self.answer = answer
        self.connect_timeout = connect_timeout
        self.unwrap = unwrap

    def inspect(self, ctx: RequestContext) -> None:
        if self.unwrap is not None and isinstance(ctx.body.get(self.unwrap), dict):
            ctx.body = ctx.body[self.unwrap]
        model = ctx.path_model or ctx.body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model: field required (a non-empty string).", param="model")
        ctx.model, ctx.stream = model, False

    def unusable(self, target: Target) -> GatewayError | None:
        if target.provider.format != self.fmt.name:
            return InvalidRequest(f"{target.label} does not speak {self.fmt.name!r}")
        return super().unusable(target)

    async def call(self, ctx: RequestContext, target: Target) -> Reply | None:
        try:
            async with asyncio.timeout(self.connect_timeout() + COUNT_SECONDS):
                counted = await target.provider.count_tokens(
                    {**ctx.body, "model": target.model}, ctx.headers)
        except TimeoutError:
            log.info("count_tokens: %s did not answer in time; trying the next", target.label)
            return None
        except UpstreamStatusError as err:
            if err.status in _CLIENT_MISTAKES:
                raise
            log.info("count_tokens: %s cannot count (%s); trying the next", target.label, err)
            return None
        except GatewayError as err:
            log.info("count_tokens: %s failed (%s); trying the next", target.label, err)
            return None
        return Reply(body=orjson.dumps(counted), headers={"X-OmniRoute-Token-Count": "upstream"})

    async def unserved(self, ctx: RequestContext, error: GatewayError) -> Reply:
        body = {k: v for k, v in ctx.body.items() if k != "stream"}
        canonical = self.fmt.decode_request(ClientRequest(body, ctx.model, False, ctx.headers))
        return Reply(body=orjson.dumps(self.answer(estimate_request(canonical))),
                     headers={"X-OmniRoute-Token-Count": "estimate"})
