"""Anthropic ``POST /v1/messages/count_tokens``: asked upstream when it can be, else estimated.

The model is resolved like a messages request. The targets are tried in
route order: the first ``anthropic`` connection whose upstream answers gives
the count (the body goes as sent, with the upstream's model name). An upstream
that cannot count (an Anthropic-compatible vendor without the endpoint, a rate
limit, a network failure) passes to the next target; a 400 about the request
itself reaches the client. With no such upstream, the count is
:func:`omniroute.tokens.estimate_request` over the request decoded by the
Anthropic format. ``X-OmniRoute-Token-Count`` says which (``upstream`` or
``estimate``). Errors are rendered in Anthropic's shape by the middleware.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from omniroute.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    UpstreamStatusError,
)
from omniroute.formats.base import ClientRequest
from omniroute.tokens import estimate_request
from omniroute.watch import after_check
from omniroute.web.body import read_object
from omniroute.web.keys import GATEWAY

log = logging.getLogger(__name__)

#: seconds an upstream may take to count, past its connect timeout (then the next, or the
#: local estimate: counting must never hold a client as long as a generation may)
COUNT_SECONDS = 5.0
#: upstream statuses that mean the request itself is wrong (no other target would differ)
_CLIENT_MISTAKES = frozenset({400, 413, 422})


async def count_tokens(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    fmt = gateway.formats.get("anthropic")
    if fmt is None:
        raise NotFound("The 'anthropic' API is not available: its format plugin is not loaded.")
    body = await read_object(request, gateway.settings.max_body_bytes)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: field required (a non-empty string).", param="model")
    route = await after_check(gateway.watcher, lambda: gateway.router.resolve(model),
                              ModelNotFound)
    # resting accounts (cooling, terminal, breaker open) are not asked; each ask is short
    usable = gateway.resilience.plan(route.targets, strategy="priority").targets
    for target in usable:
        counter = getattr(target.provider, "count_tokens", None)
        if target.provider.format != "anthropic" or counter is None:
            continue
        try:
            async with asyncio.timeout(gateway.timeouts.connect + COUNT_SECONDS):
                counted: dict[str, Any] = await counter({**body, "model": target.model},
                                                         request.headers)
        except TimeoutError:
            log.info("count_tokens: %s did not answer in time; trying the next", target.label)
            continue
        except UpstreamStatusError as err:
            if err.status in _CLIENT_MISTAKES:
                raise
            log.info("count_tokens: %s cannot count (%s); trying the next", target.label, err)
            continue
        except GatewayError as err:
            log.info("count_tokens: %s failed (%s); trying the next", target.label, err)
            continue
        return _answer(counted, "upstream", target.prefix)
    canonical = fmt.decode_request(ClientRequest(
        {k: v for k, v in body.items() if k != "stream"}, model, False, request.headers))
    return _answer({"input_tokens": estimate_request(canonical)}, "estimate")


def _answer(data: dict[str, Any], source: str, provider: str | None = None) -> web.Response:
    headers = {"X-OmniRoute-Token-Count": source}
    if provider is not None:
        headers["X-OmniRoute-Provider"] = provider
    return web.Response(body=orjson.dumps(data), content_type="application/json",
                        headers=headers)


def setup_count_tokens_routes(app: web.Application) -> None:
    for path in ("/v1/messages/count_tokens", "/messages/count_tokens"):
        app.router.add_post(path, count_tokens)
