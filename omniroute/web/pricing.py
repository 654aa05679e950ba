"""``/api/pricing``: the operator's price overrides, and what each target costs.

``GET /api/pricing`` lists the overrides; ``?model=NAME`` also resolves the
model the way a request would and shows, per target, the price in force and
where it came from. ``PUT /api/pricing`` sets one override (or
``{"prices": [...]}`` several): ``model`` (a model name, ``prefix/model``, or
``*`` with a ``connection``), ``input`` and ``output`` in USD per 1M tokens,
optional ``cache_read`` / ``cache_write`` (default: the input price), optional
``image`` in USD per image (an image generation is then priced per image),
``per_second`` (USD per second of audio transcribed or translated) and
``per_character`` (USD per character of speech input); with one of these three
given, ``input`` and ``output`` default to 0. Optional
``connection`` (an id: only that account). ``DELETE /api/pricing`` with
``model`` (and ``connection``) in the query or the body removes one. Changes
apply to requests from now on; recorded costs stay as they were.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from aiohttp import web

from omniroute.appkeys import CATALOG, GATEWAY, PRICES, STORE
from omniroute.bodies import read_object
from omniroute.errors import GatewayError, InvalidRequest, NotFound
from omniroute.pricing import Override

_FIELDS = ("input", "output", "cache_read", "cache_write", "image", "per_second",
           "per_character")
_UNITS = {"image": "USD per image", "per_second": "USD per second of audio",
          "per_character": "USD per character of speech"}


def _price(value: Any, name: str, *, required: bool) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        unit = _UNITS.get(name, "USD per 1M tokens")
        raise InvalidRequest(f"'{name}' must be a non-negative number ({unit}).",
                             param=name, code="invalid_price")
    return float(value)


async def _override(request: web.Request, item: Any) -> Override:
    if not isinstance(item, dict):
        raise InvalidRequest("Each price is an object: {\"model\", \"input\", \"output\", ...}.")
    unknown = set(item) - {"model", "connection", *_FIELDS}
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(sorted(unknown))}.",
                             code="invalid_price")
    model, scope = item.get("model"), item.get("connection") or ""
    if not isinstance(model, str) or not model.strip() or not model.isprintable():
        raise InvalidRequest("'model' must be a model name, 'prefix/model', or '*'.",
                             param="model", code="invalid_price")
    if not isinstance(scope, str):
        raise InvalidRequest("'connection' must be a connection id.", param="connection")
    if model == "*" and not scope:
        raise InvalidRequest("'*' prices every model of one connection: name the "
                             "'connection'.", param="model", code="invalid_price")
    if scope and await request.app[STORE].get_connection(scope) is None:
        raise NotFound(f"No provider connection {scope!r}.")
    image = _price(item.get("image"), "image", required=False)
    per_second = _price(item.get("per_second"), "per_second", required=False)
    per_character = _price(item.get("per_character"), "per_character", required=False)
    by_unit = image is not None or per_second is not None or per_character is not None
    input, output = (_price(item.get(n, 0 if by_unit else None), n, required=True)
                     for n in ("input", "output"))
    assert input is not None and output is not None
    return Override(model.strip(), input, output,
                    _price(item.get("cache_read"), "cache_read", required=False),
                    _price(item.get("cache_write"), "cache_write", required=False), scope,
                    image, per_second, per_character)


def _view(request: web.Request) -> dict[str, Any]:
    return {"source": f"genai-prices {version('genai-prices')}",
            "overrides": [o.public() for o in request.app[PRICES].overrides]}


async def get_pricing(request: web.Request) -> web.Response:
    view = _view(request)
    model = request.query.get("model")
    if model:
        try:
            route = request.app[CATALOG].router.resolve(model)
        except GatewayError as err:
            raise NotFound(err.message) from None
        prices = request.app[PRICES]
        view["model"], view["targets"] = model, []
        for target in route.targets:
            rate = prices.rate(target)
            view["targets"].append({
                "target": target.label, "connection": target.connection.id,
                "subscription": target.provider.auth_kind == "oauth",
                "source": rate.source if rate else None,
                "per_million": rate.per_million() if rate else None,
                "per_image": prices.image_price(target),
                "per_second": rate.per_second if rate and rate.per_second else None,
                "per_character": rate.per_character if rate and rate.per_character else None,
            })
    return web.json_response(view)


async def put_pricing(request: web.Request) -> web.Response:
    body = await read_object(request, 1024 * 1024)
    items = body.get("prices", [body])
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'prices' must be a non-empty list of prices.", param="prices")
    overrides = [await _override(request, item) for item in items]
    store = request.app[STORE]
    for o in overrides:
        await store.put_price_override(o.scope, o.model, o.input, o.output, o.cache_read,
                                       o.cache_write, o.image, o.per_second, o.per_character)
    await request.app[GATEWAY].reload()
    return web.json_response(_view(request))


async def delete_pricing(request: web.Request) -> web.Response:
    where: dict[str, Any] = dict(request.query)
    if not where.get("model") and request.can_read_body:
        where = await read_object(request, 64 * 1024)
    model, scope = where.get("model"), where.get("connection") or ""
    if not isinstance(model, str) or not model or not isinstance(scope, str):
        raise InvalidRequest("Name the override: ?model=NAME (and &connection=ID).",
                             param="model")
    if not await request.app[STORE].delete_price_override(scope, model):
        raise NotFound(f"No price override for {model!r}"
                       + (f" on connection {scope!r}." if scope else "."))
    await request.app[GATEWAY].reload()
    return web.json_response(_view(request))
