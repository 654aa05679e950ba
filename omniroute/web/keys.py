"""Typed keys for what the aiohttp application and its requests carry."""

from __future__ import annotations

from aiohttp import web

from omniroute.auth.base import Principal
from omniroute.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
#: set on each request by the auth middleware
PRINCIPAL = web.RequestKey("principal", Principal)
#: set once a streamed answer has sent its headers (errors can no longer be a JSON answer)
STREAM_STARTED = web.RequestKey("stream_started", bool)

__all__ = ["GATEWAY", "PRINCIPAL", "STREAM_STARTED", "Principal"]
