"""Bugs and broken plugins stay contained: the stream ends well-formed, the model list survives."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from omniroute.config import ConfigError, Settings, load_config

HI = [{"role": "user", "content": "hi there"}]


async def test_a_bug_while_relaying_ends_the_stream_with_an_error_event(gw, monkeypatch):
    calls = {"n": 0}
    fmt = gw.registry.formats["openai"]
    real = fmt.usage_from_frame

    def broken(frame: bytes) -> Any:  # read only for frames that may carry usage
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(frame)

    monkeypatch.setattr(fmt, "usage_from_frame", broken)
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI, stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "Internal error while relaying the stream: RuntimeError" in str(info.value)
    assert "boom" not in str(info.value)  # no internals leak to the client
    # the server is still serving
    monkeypatch.setattr(fmt, "usage_from_frame", real)
    answer = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content


async def test_a_provider_plugin_that_raises_in_list_models_does_not_break_the_list(gw):
    provider = next(iter(gw.catalog.providers.values()))

    async def broken() -> list[str]:
        raise KeyError("plugin bug")

    provider.list_models = broken
    gw.catalog.models.clear()
    resp = await gw.client.get("/v1/models")
    assert resp.status == 200
    assert (await resp.json())["object"] == "list"


async def test_models_listed_later_make_bare_names_resolve(gw):
    gw.catalog.models.clear()
    gw.catalog.rebuild_router()
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": "gpt-4o-mini", "messages": HI})
    assert resp.status == 400  # not known yet: nothing listed
    assert (await gw.client.get("/v1/models")).status == 200  # fills the cache
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": "gpt-4o-mini", "messages": HI})
    assert resp.status == 200, await resp.text()


def test_an_empty_plugin_allow_list_means_unset(tmp_path):
    config = load_config(environ={"OMNIROUTE_PLUGINS": " ", "OMNIROUTE_DATA_DIR": str(tmp_path)})
    assert config.allowed_plugins is None
    config = load_config(environ={"OMNIROUTE_PLUGINS": "openai,api-key",
                                  "OMNIROUTE_DATA_DIR": str(tmp_path)})
    assert config.allowed_plugins == ("openai", "api-key")


@pytest.mark.parametrize("value", [1.5, "1.5", "ten", True, 0, -3])
def test_integer_settings_reject_what_is_not_a_positive_whole_number(value):
    with pytest.raises(ValueError, match="max_body_bytes"):
        Settings.coerce("max_body_bytes", value)
    assert Settings.coerce("max_body_bytes", 2048.0) == 2048


def test_a_bad_integer_in_the_environment_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="max_body_bytes"):
        load_config(environ={"OMNIROUTE_MAX_BODY_BYTES": "1.5",
                             "OMNIROUTE_DATA_DIR": str(tmp_path)})


async def test_a_combo_name_taken_by_a_concurrent_request_is_a_400(gw, monkeypatch):
    body = {"name": "team", "steps": ["up/gpt-4o-mini"]}
    resp = await gw.client.post("/api/combos", json=body, headers=gw.admin_headers)
    assert resp.status == 201
    # the second request checked names before the first one saved: the database decides

    async def nothing() -> list[Any]:
        return []

    monkeypatch.setattr(gw.store, "list_combos", nothing)
    resp = await gw.client.post("/api/combos", json=body, headers=gw.admin_headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "duplicate_name" and "team" in error["message"]


async def test_request_ids_are_unique_and_the_upstream_id_is_passed_on(gw):
    ids = set()
    for stream in (False, True, False):
        resp = await gw.client.post("/v1/chat/completions", json={
            "model": "up/gpt-4o-mini", "messages": HI, "stream": stream})
        assert resp.status == 200
        await resp.read()
        ids.add(resp.headers["X-OmniRoute-Request-Id"])
        assert resp.headers["X-Upstream-Request-Id"].startswith("req_")
    assert len(ids) == 3


async def test_a_session_id_with_control_characters_is_hashed_not_echoed(gw):
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI, "x_session_id": "a\r\nSet-Cookie: x=1"})
    assert resp.status == 200
    assert resp.headers["X-OmniRoute-Session-Id"].startswith("h:")
    assert "Set-Cookie" not in resp.headers
    assert "x_session_id" not in gw.fake.requests[-1].json


async def test_an_absurd_usage_number_does_not_stop_the_request_log(gw):
    from fakes.openai_upstream import reply

    gw.fake.script.append(reply(usage={"prompt_tokens": 2**63 + 5, "completion_tokens": 3,
                                       "total_tokens": 2**63 + 8}))
    assert (await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI})).status == 200
    assert await gw.log.flush() == 1
    rows = (await (await gw.client.get("/api/requests", headers=gw.admin_headers)).json())
    last = rows["requests"][0]
    assert last["completion_tokens"] == 3
    # the implausible count is dropped; the record carries the local estimate instead
    assert last["usage_estimated"] == 1 and 0 < last["prompt_tokens"] < 50


async def test_query_keys_are_for_client_routes_only(gw):
    key = await gw.create_key("q")
    await gw.set_settings(require_api_key=True)
    ok_resp = await gw.client.get(f"/v1beta/models?key={key}")
    assert ok_resp.status == 200
    admin_resp = await gw.client.get(f"/api/providers?key={gw.admin_key}")
    assert admin_resp.status == 401  # the management API never reads ?key=


async def test_a_translated_answer_that_cannot_be_decoded_fails_over(gw, aiohttp_server):
    from aiohttp import web as aioweb

    async def empty_answer(request: aioweb.Request) -> aioweb.Response:
        return aioweb.json_response({"id": "chatcmpl-1", "object": "chat.completion"})

    broken = aioweb.Application()
    broken.router.add_post("/v1/chat/completions", empty_answer)
    server = await aiohttp_server(broken)
    await gw.add_provider({"type": "openai", "name": "broken", "prefix": "bad",
                           "base_url": str(server.make_url("/v1")), "api_key": "sk-x"})
    await gw.client.post("/api/combos", headers=gw.admin_headers,
                         json={"name": "pair", "steps": ["bad/m", "up/gpt-4o-mini"]})
    resp = await gw.client.post("/v1/messages", json={
        "model": "pair", "max_tokens": 32, "messages": HI})  # Anthropic client: translated
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-OmniRoute-Provider"] == "up"
    assert resp.headers["X-OmniRoute-Fallback-Attempts"] == "1"
    state = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
    bad = next(c for c in state["connections"] if c["prefix"] == "bad")
    assert bad["failures"] == 1 and bad["successes"] == 0
