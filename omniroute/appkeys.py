"""Typed keys for what the aiohttp application and its requests carry.

Each collaborator lives under its own key, so a handler takes exactly what it
uses. The registry, the catalog, resilience and the pipeline exist as soon as
the app is made; the store, the request log, the HTTP session and the auth
schemes once the gateway has started (set by the app's start-up context).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from omniroute.auth.base import Principal

if TYPE_CHECKING:
    from omniroute.auth.base import AuthScheme
    from omniroute.budgets import Budgets
    from omniroute.cache.service import ResponseCache
    from omniroute.catalog import Catalog
    from omniroute.clitools import CliTools
    from omniroute.gateway import Gateway
    from omniroute.idempotency import Idempotency
    from omniroute.oauth.signin import SignIns
    from omniroute.pipeline import Pipeline
    from omniroute.pricing import PriceBook
    from omniroute.registry import Registry
    from omniroute.resilience import Resilience
    from omniroute.storage import RequestLog, Store
    from omniroute.storage.audit import AuditLog
    from omniroute.storage.usage import UsageQueries
    from omniroute.watch import ConfigWatcher

#: the life cycle: start, close, and ``reload()`` after a management API write
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
#: formats, provider types, auth scheme types
REGISTRY: web.AppKey[Registry] = web.AppKey("registry")
#: settings, connections, providers, aliases, combos, router, model lists
CATALOG: web.AppKey[Catalog] = web.AppKey("catalog")
RESILIENCE: web.AppKey[Resilience] = web.AppKey("resilience")
#: what tokens cost: prices a finished request, estimates one, orders ``cost-optimized``
PRICES: web.AppKey[PriceBook] = web.AppKey("prices")
#: the data path every client request takes
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
STORE: web.AppKey[Store] = web.AppKey("store")
REQUEST_LOG: web.AppKey[RequestLog] = web.AppKey("request_log")
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http")
AUTH_SCHEMES: web.AppKey[dict[str, AuthScheme]] = web.AppKey("auth_schemes")
WATCHER: web.AppKey[ConfigWatcher] = web.AppKey("watcher")
#: per-key budgets and limits: live spend, reservations, rates (set once the gateway started)
BUDGETS: web.AppKey[Budgets] = web.AppKey("budgets")
#: the response cache: its backends, the plugins' layers, its writer (set at start-up)
CACHE: web.AppKey[ResponseCache] = web.AppKey("cache")
#: who changed what through the management API, and every login (set at start-up)
AUDIT_LOG: web.AppKey[AuditLog] = web.AppKey("audit_log")
#: usage reads over the request log, on their own read-only connection (set at start-up)
USAGE: web.AppKey[UsageQueries] = web.AppKey("usage")
#: idempotency keys in use: ``stats()`` gives ``active_keys`` and ``window_ms``
IDEMPOTENCY: web.AppKey[Idempotency] = web.AppKey("idempotency")
#: the management API's subscription sign-ins under way (in memory, each for its TTL)
OAUTH_SIGN_INS: web.AppKey[SignIns] = web.AppKey("oauth_sign_ins")
#: the agent CLIs on this machine: detection, configure, restore (/api/cli-tools); empty
#: until the first call of those routes makes them (:func:`omniroute.web.clitools.cli_tools`)
CLI_TOOLS: web.AppKey[list[CliTools]] = web.AppKey("cli_tools")
#: set on each request by the route's guard (omniroute.web.guard)
PRINCIPAL = web.RequestKey("principal", Principal)
#: set once a streamed answer has sent its headers (errors can no longer be a JSON answer)
STREAM_STARTED = web.RequestKey("stream_started", bool)

__all__ = ["AUDIT_LOG", "AUTH_SCHEMES", "BUDGETS", "CACHE", "CATALOG", "CLI_TOOLS", "GATEWAY",
           "HTTP", "IDEMPOTENCY", "OAUTH_SIGN_INS", "PIPELINE", "PRICES", "PRINCIPAL", "REGISTRY",
           "REQUEST_LOG", "RESILIENCE", "STORE", "STREAM_STARTED", "USAGE", "WATCHER",
           "Principal"]
