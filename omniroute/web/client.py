"""Client API routes (``/v1``): chat and the model list."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from omniroute.proxy import chat_completions
from omniroute.web.keys import GATEWAY


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: combos, aliases, then every active connection's models."""
    gateway = request.app[GATEWAY]
    created = int(gateway.started_at)
    data: list[dict] = []
    seen: set[str] = set()

    def add(model_id: str, owner: str) -> None:
        if model_id not in seen:
            seen.add(model_id)
            data.append({"id": model_id, "object": "model", "created": created, "owned_by": owner})

    for combo in gateway.combos:
        add(combo.name, "combo")
    for alias in gateway.aliases:
        if not any(c in alias for c in "*?["):
            add(alias, "alias")
    providers = list(gateway.providers.values())
    lists = await asyncio.gather(*(gateway.models_of(p) for p in providers))
    for provider, models in zip(providers, lists):
        for model in models:
            add(f"{provider.connection.prefix}/{model}", provider.connection.prefix)
    return web.json_response({"object": "list", "data": data})


async def root(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return web.json_response({
        "name": "omniroute",
        "status": "ok",
        "uptime_s": round(time.time() - gateway.started_at, 1),
    })


def setup_client_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/providers/{provider}/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/", root)  # also answers HEAD
