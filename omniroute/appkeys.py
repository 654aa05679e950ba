"""Typed keys for what the aiohttp application and its requests carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from omniroute.auth.base import Principal

if TYPE_CHECKING:
    from omniroute.gateway import Gateway
    from omniroute.pipeline import Pipeline

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
#: the data path every client request takes
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
#: set on each request by the auth middleware
PRINCIPAL = web.RequestKey("principal", Principal)
#: set once a streamed answer has sent its headers (errors can no longer be a JSON answer)
STREAM_STARTED = web.RequestKey("stream_started", bool)

__all__ = ["GATEWAY", "PIPELINE", "PRINCIPAL", "STREAM_STARTED", "Principal"]
