"""Formats bring their client API: a format plugin's routes are served with no edit in the core."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from fakes.openai_upstream import FakeOpenAI

from omniroute import hookimpl
from omniroute.errors import GatewayError
from omniroute.formats import canonical
from omniroute.formats.base import ClientRequest, ClientRoute, Format, ModelInfo
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness

UPSTREAM_KEY = "sk-upstream-test"


class ShoutFormat(Format):
    """A toy client API: ``POST /shout/{model}`` with ``{"say": text}``; answers upper-cased."""

    name = "test-shout"
    client_routes = (
        ClientRoute("POST", "/shout/{model:.+}", "chat", "shout"),
        ClientRoute("GET", "/shout-models", "models"),
    )
    path_prefixes = ("/shout/",)

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        if not isinstance(body.get("say"), str):
            raise GatewayError("say what?", status=400, code="nothing_to_say")
        return str(path_model), False

    def decode_request(self, request: ClientRequest) -> canonical.Request:
        say = canonical.Text(str(request.body["say"]))
        return canonical.Request(request.model, [canonical.Message("user", [say])])

    def encode_response(self, response: canonical.Response, request: canonical.Request) -> bytes:
        text = "".join(p.text for p in response.parts if isinstance(p, canonical.Text))
        return orjson.dumps({"shouted": text.upper()})

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps({"shout_error": err.message, "code": err.code})

    def model_list(self, models: Sequence[ModelInfo]) -> dict[str, Any]:
        return {"shoutable": [m.id.upper() for m in models]}


class ShoutPlugin:
    @hookimpl
    def register_formats(self, register: Callable[[type[Format]], None]) -> None:
        register(ShoutFormat)


@pytest.fixture
async def shout(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Any) -> Any:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(fake.app)
    plugins = load_plugins(extra=[("t-shout", ShoutPlugin())])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"), plugins)
    await gw.add_provider({"type": "openai", "name": "fake", "prefix": "up", "models": ["m1"],
                           "base_url": str(server.make_url("/v1")), "api_key": UPSTREAM_KEY})
    gw.fake = fake
    return gw


async def test_a_format_plugin_serves_its_own_routes_through_the_pipeline(shout: Any) -> None:
    resp = await shout.client.post("/shout/up/gpt-4o-mini", json={"say": "hi there"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"shouted": "HELLO! YOU SAID: HI THERE"}
    assert resp.headers["X-OmniRoute-Provider"] == "up"
    assert shout.fake.requests[-1].json["model"] == "gpt-4o-mini"  # translated for the upstream
    resp = await shout.client.get("/shout-models")
    assert "UP/M1" in (await resp.json())["shoutable"]
    await shout.log.flush()
    (row,) = await shout.log.recent(1)
    assert row["endpoint"] == "shout" and row["status"] == 200


async def test_its_errors_and_unknown_routes_take_its_shape(shout: Any) -> None:
    resp = await shout.client.post("/shout/up/gpt-4o-mini", json={"whisper": "hi"})
    assert (resp.status, await resp.json()) == (400, {"shout_error": "say what?",
                                                      "code": "nothing_to_say"})
    resp = await shout.client.post("/shout/nobody/x", json={"say": "hi"})
    assert resp.status == 400 and (await resp.json())["code"] == "model_not_found"
    resp = await shout.client.get("/shout/up/x")  # a path of its API, a method it lacks
    assert resp.status == 405 and "shout_error" in await resp.json()
    await shout.set_settings(require_api_key=True)  # its routes are client API
    resp = await shout.client.post("/shout/up/gpt-4o-mini", json={"say": "hi"})
    assert resp.status == 401 and (await resp.json())["code"] == "missing_api_key"


class ClashFormat(ShoutFormat):
    name = "test-clash"
    client_routes = (ClientRoute("POST", "/v1/chat/completions", "chat", "clash"),)


class ClashPlugin:
    @hookimpl
    def register_formats(self, register: Callable[[type[Format]], None]) -> None:
        register(ClashFormat)


def test_two_formats_claiming_one_route_without_telling_apart_is_refused(tmp_path) -> None:
    from omniroute.app import make_app

    plugins = load_plugins(extra=[("t-clash", ClashPlugin())])
    with pytest.raises(ValueError, match="when_headers"):
        make_app(make_test_config(tmp_path / "gw"), plugins)


async def test_google_clients_get_gemini_model_lists_on_the_shared_path(shout: Any) -> None:
    openai_list = await (await shout.client.get("/v1/models")).json()
    gemini_list = await (await shout.client.get(
        "/v1/models", headers={"x-goog-api-key": "k"})).json()
    assert openai_list["object"] == "list" and "up/m1" in [m["id"] for m in openai_list["data"]]
    assert "models/up/m1" in [m["name"] for m in gemini_list["models"]]
    resp = await shout.client.get("/v1/models/up/m1", headers={"x-goog-api-client": "genai"})
    assert (await resp.json())["name"] == "models/up/m1"
    resp = await shout.client.get("/v1/models/up/m1")
    assert (await resp.json())["id"] == "up/m1"
