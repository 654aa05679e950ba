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
        self, fmt: Format, endpoint: str, *, connect_timeout: Callable[[], float]
    ) -> None:
        """
        :param connect_timeout: the current upstream connect timeout (settings change).
        """
        super().__init__(fmt, endpoint)
        self.connect_timeout = connect_timeout

    def inspect(self, ctx: RequestContext) -> None:
        ctx.model, ctx.body = self.fmt.count_request(ctx.body, ctx.path_model)
        ctx.stream = False

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
        canonical = self.fmt.decode_request(ClientRequest(ctx.body, ctx.model, False,
                                                          ctx.headers))
        return Reply(body=orjson.dumps(self.fmt.count_answer(estimate_request(canonical))),
                     headers={"X-OmniRoute-Token-Count": "estimate"})
