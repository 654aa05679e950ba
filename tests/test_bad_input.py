"""Every failure answers with its status and an OpenAI-shaped error body; the server lives on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from fakes.openai_upstream import error, garbage, hang_before_headers

HI = [{"role": "user", "content": "hi there"}]
CHAT = {"model": "up/gpt-4o-mini", "messages": HI}
JSON = {"Content-Type": "application/json"}


def sdk(gw: Any, api_key: str = "sk-client") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=api_key, max_retries=0,
                              timeout=10)


async def expect_error(resp: Any, status: int, code: str | None = None,
                       type_: str | None = None) -> dict[str, Any]:
    """Check status, an OpenAI error body, and no leaked internals; return body["error"]."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json"
    assert "Traceback" not in text and 'File "' not in text and "omniroute/" not in text
    body = orjson.loads(text)
    assert list(body) == ["error"]
    err = body["error"]
    assert {"message", "type", "code", "param"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code
    if type_ is not None:
        assert err["type"] == type_
    return err


async def assert_still_serving(gw: Any) -> None:
    resp = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content == "Hello! You said: hi there"
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! You said: hi there"


def check_sdk_error(err: openai.APIStatusError, status: int) -> None:
    assert err.status_code == status
    assert isinstance(err.body, dict) and err.body["message"]
    assert "Traceback" not in err.response.text


# ----------------------------------------------------------------------------- 400

@pytest.mark.parametrize("raw", [
    b'{"model": "up/gpt-4o-mini", "messages": [',
    b"not json at all",
    b'{"model": "up/gpt-4o-mini",}',
    b"\xff\xfe\x00garbage",
], ids=["truncated", "text", "trailing-comma", "binary"])
async def test_invalid_json(gw, raw):
    resp = await gw.client.post("/v1/chat/completions", data=raw, headers=JSON)
    err = await expect_error(resp, 400, "invalid_request", "invalid_request_error")
    assert "JSON" in err["message"]
    await assert_still_serving(gw)


@pytest.mark.parametrize("raw", [b"", b"   ", b"[1, 2]", b'"a string"', b"null"],
                         ids=["empty", "blank", "array", "string", "null"])
async def test_body_not_an_object(gw, raw):
    resp = await gw.client.post("/v1/chat/completions", data=raw, headers=JSON)
    await expect_error(resp, 400, "invalid_request")
    await assert_still_serving(gw)


@pytest.mark.parametrize("model", [None, "", "   ", 42, ["up/gpt-4o-mini"]])
async def test_missing_or_bad_model(gw, model):
    body = {"messages": HI} if model is None else {"model": model, "messages": HI}
    resp = await gw.client.post("/v1/chat/completions", json=body)
    err = await expect_error(resp, 400, "missing_model")
    assert err["param"] == "model"
    await assert_still_serving(gw)


@pytest.mark.parametrize("model", ["nope/gpt-4o-mini", "gpt-unknown", "up"])
async def test_unknown_model(gw, model):
    with pytest.raises(openai.BadRequestError) as info:
        await sdk(gw).chat.completions.create(model=model, messages=HI)
    check_sdk_error(info.value, 400)
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert model in info.value.message
    assert not gw.fake.requests
    await assert_still_serving(gw)


@pytest.mark.parametrize("messages", [None, [], "hi", [{"content": "no role"}], ["hi"]],
                         ids=["missing", "empty", "string", "no-role", "not-objects"])
async def test_missing_or_bad_messages(gw, messages):
    body = {"model": "up/gpt-4o-mini"}
    if messages is not None:
        body["messages"] = messages
    resp = await gw.client.post("/v1/chat/completions", json=body)
    err = await expect_error(resp, 400, "invalid_request")
    assert err["param"] == "messages"
    assert not gw.fake.requests
    await assert_still_serving(gw)


@pytest.mark.parametrize("stream", ["yes", 1, "true", {}])
async def test_stream_not_a_bool(gw, stream):
    resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    err = await expect_error(resp, 400, "invalid_request")
    assert err["param"] == "stream"
    await assert_still_serving(gw)


# ----------------------------------------------------------------------------- 401 / 403

async def test_401_missing_and_wrong_key(gw):
    await gw.set_settings(require_api_key=True)
    resp = await gw.client.post("/v1/chat/completions", json=CHAT)
    await expect_error(resp, 401, "missing_api_key", "authentication_error")
    with pytest.raises(openai.AuthenticationError) as info:
        await sdk(gw, "sk-or-wrong").chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    check_sdk_error(info.value, 401)
    assert info.value.code == "invalid_api_key"
    await gw.set_settings(require_api_key=False)
    await assert_still_serving(gw)


async def test_401_management_without_login(gw):
    resp = await gw.client.get("/api/providers")
    await expect_error(resp, 401, "admin_required", "authentication_error")


async def test_403_management_with_a_client_key(gw):
    key = await gw.create_key("client")
    resp = await gw.client.get("/api/providers", headers={"Authorization": f"Bearer {key}"})
    await expect_error(resp, 403, "permission_denied", "permission_error")
    await assert_still_serving(gw)


# ----------------------------------------------------------------------------- 404 / 405

@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/nope"),
    ("POST", "/v1/completions-that-do-not-exist"),
    ("GET", "/api/nope"),
    ("DELETE", "/v1/chat"),
])
async def test_404_unknown_route(gw, method, path):
    resp = await gw.client.request(method, path, headers=gw.admin_headers)
    err = await expect_error(resp, 404, "not_found")
    assert path in err["message"]
    await assert_still_serving(gw)


async def test_404_unknown_management_record(gw):
    resp = await gw.client.get("/api/providers/conn_missing", headers=gw.admin_headers)
    await expect_error(resp, 404, "not_found")


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/chat/completions"),
    ("PUT", "/v1/chat/completions"),
    ("DELETE", "/v1/models"),
    ("GET", "/v1/providers/up/chat/completions"),
])
async def test_405_wrong_method(gw, method, path):
    resp = await gw.client.request(method, path)
    err = await expect_error(resp, 405, "method_not_allowed")
    assert method in err["message"]
    assert resp.headers["Allow"]
    await assert_still_serving(gw)


async def test_405_via_sdk(gw):
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(gw).get("/chat/completions", cast_to=object)
    check_sdk_error(info.value, 405)
    assert "POST" in info.value.response.headers["Allow"]


# ----------------------------------------------------------------------------- 413 / 415

LIMIT = 2048


def big_body(size: int) -> bytes:
    body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * size}]})
    return body


async def test_413_with_content_length(gw):
    await gw.set_settings(max_body_bytes=LIMIT)
    resp = await gw.client.post("/v1/chat/completions", data=big_body(LIMIT * 4), headers=JSON)
    err = await expect_error(resp, 413, "payload_too_large")
    assert str(LIMIT) in err["message"]
    assert not gw.fake.requests
    # just under the limit is fine
    small = big_body(LIMIT - 200)
    assert len(small) <= LIMIT
    resp = await gw.client.post("/v1/chat/completions", data=small, headers=JSON)
    assert resp.status == 200
    await assert_still_serving(gw)


async def test_413_chunked(gw):
    await gw.set_settings(max_body_bytes=LIMIT)
    payload = big_body(LIMIT * 4)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 512):
            yield payload[i:i + 512]

    resp = await gw.client.post("/v1/chat/completions", data=chunks(), headers=JSON)
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    await expect_error(resp, 413, "payload_too_large")
    assert not gw.fake.requests

    small = big_body(LIMIT - 200)

    async def small_chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(small), 256):
            yield small[i:i + 256]

    resp = await gw.client.post("/v1/chat/completions", data=small_chunks(), headers=JSON)
    assert resp.status == 200, await resp.text()
    await assert_still_serving(gw)


async def test_413_via_sdk(gw):
    await gw.set_settings(max_body_bytes=LIMIT)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(gw).chat.completions.create(
            model="up/gpt-4o-mini", messages=[{"role": "user", "content": "x" * LIMIT * 2}])
    check_sdk_error(info.value, 413)
    assert info.value.code == "payload_too_large"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_415_not_json(gw, content_type):
    resp = await gw.client.post("/v1/chat/completions", data=orjson.dumps(CHAT),
                                headers={"Content-Type": content_type})
    err = await expect_error(resp, 415, "unsupported_media_type")
    assert content_type.split(";")[0] in err["message"]
    assert not gw.fake.requests
    await assert_still_serving(gw)


async def test_json_content_type_variants_are_accepted(gw):
    for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
        resp = await gw.client.post("/v1/chat/completions", data=orjson.dumps(CHAT),
                                    headers={"Content-Type": ctype})
        assert resp.status == 200, (ctype, await resp.text())


# ----------------------------------------------------------------------------- 502 / 504

@pytest.mark.parametrize("stream", [False, True])
async def test_502_upstream_garbage(gw, stream):
    gw.fake.script.append(garbage())
    resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    await expect_error(resp, 502, "bad_gateway", "upstream_error")
    assert resp.headers["X-OmniRoute-Request-Id"]
    await assert_still_serving(gw)


async def test_502_upstream_unreachable(gw):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await gw.add_provider({"type": "openai", "prefix": "dead", "api_key": "x",
                           "base_url": f"http://127.0.0.1:{port}/v1"})
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="dead/gpt-4o-mini", messages=HI)
    check_sdk_error(info.value, 502)
    assert info.value.code == "bad_gateway"
    await assert_still_serving(gw)


@pytest.mark.parametrize("stream", [False, True])
async def test_504_upstream_timeout(gw, stream):
    await gw.set_settings(first_byte_timeout=0.3, total_timeout=0.3)
    gw.fake.script.append(hang_before_headers(5))
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                              stream=stream)
    check_sdk_error(info.value, 504)
    assert info.value.code == "upstream_timeout"
    assert info.value.type == "timeout_error"
    await gw.set_settings(first_byte_timeout=30, total_timeout=30)
    await assert_still_serving(gw)


# ----------------------------------------------------------------------------- upstream 4xx

@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_400_passes_through(gw, stream):
    gw.fake.script.append(error(400, "'messages' must contain the word 'json'.",
                                code="invalid_value", param="messages"))
    with pytest.raises(openai.BadRequestError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                              stream=stream)
    check_sdk_error(info.value, 400)
    assert info.value.body["message"] == "'messages' must contain the word 'json'."
    assert info.value.type == "invalid_request_error"
    assert info.value.code == "invalid_value"
    assert info.value.param == "messages"
    await assert_still_serving(gw)


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_404_passes_through(gw, stream):
    with pytest.raises(openai.NotFoundError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-does-not-exist", messages=HI,
                                              stream=stream)
    check_sdk_error(info.value, 404)
    assert info.value.body["message"] == (
        "The model `gpt-does-not-exist` does not exist or you do not have access to it.")
    assert info.value.code == "model_not_found"
    await assert_still_serving(gw)


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_429_passes_through_with_retry_after(gw, stream):
    gw.fake.script.append(error(429, "Rate limit reached for gpt-4o-mini.",
                                headers={"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                              stream=stream)
    check_sdk_error(info.value, 429)
    assert info.value.body["message"] == "Rate limit reached for gpt-4o-mini."
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["Retry-After"] == "7"
    # the account now rests for 7 s: the gateway answers for it at once, without calling it
    calls = len(gw.fake.requests)
    with pytest.raises(openai.RateLimitError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert info.value.response.headers["Retry-After"] in ("6", "7")
    assert "resting" in info.value.message
    assert len(gw.fake.requests) == calls
    # an operator reset puts it back to work
    resp = await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    assert resp.status == 200
    await assert_still_serving(gw)


async def test_upstream_error_without_a_json_body(gw):
    """A misbehaving upstream answers an error status with plain text."""
    original = gw.fake._serve

    async def text_error(request, rec, behaviour):
        return web.Response(status=422, text="Unprocessable: bad things")

    gw.fake._serve = text_error
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    check_sdk_error(info.value, 422)
    assert info.value.message.endswith("Unprocessable: bad things")
    gw.fake._serve = original
    await assert_still_serving(gw)


async def test_many_failures_in_a_row_leave_the_server_serving(gw):
    await gw.set_settings(max_body_bytes=LIMIT)
    for _ in range(3):
        await gw.client.post("/v1/chat/completions", data=b"{", headers=JSON)
        await gw.client.post("/v1/chat/completions", data=big_body(LIMIT * 2), headers=JSON)
        await gw.client.post("/v1/chat/completions", data=b"x",
                             headers={"Content-Type": "text/plain"})
        await gw.client.get("/v1/chat/completions")
        gw.fake.script.append(garbage())
        await gw.client.post("/v1/chat/completions", json=CHAT)
    await assert_still_serving(gw)
    health = await (await gw.client.get("/api/monitoring/health")).json()
    assert health["status"] == "ok"


async def raw_post(gw: Any, parts: list[bytes], pause: float = 0.1) -> bytes:
    """POST a chat body over a bare socket, in ``parts`` a ``pause`` apart; the answer's
    head and whatever of its body came with it."""
    import asyncio
    from urllib.parse import urlsplit

    url = urlsplit(gw.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        body = b"".join(parts)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                     b"Authorization: Bearer sk-client\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % (url.netloc.encode(), len(body)))
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_body_read_as_it_comes_or_whole_is_the_same_request(gw, monkeypatch):
    """A body that is all in with the request's head is taken at once (no read awaited);
    one that comes later is read as it comes: the same answer."""
    from omniroute import bodies

    reads: list[int] = []
    read = bodies._bytes

    def counted(request: web.Request, limit: int) -> Any:
        reads.append(limit)
        return read(request, limit)

    monkeypatch.setattr(bodies, "_bytes", counted)
    body = orjson.dumps(CHAT)
    whole = await raw_post(gw, [body])
    assert reads == []
    later = await raw_post(gw, [body[:10], body[10:]])
    assert len(reads) == 1
    for answer in (whole, later):
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"Hello! You said: hi there" in answer
    assert len(gw.fake.requests) == 2


def test_a_kept_body_is_told_from_the_requests_own_state() -> None:
    """``_keeps_body`` reads aiohttp's ``Request._state`` (the dict behind ``request[key]``)
    instead of ``KEPT_BODY in request``, whose miss raises and catches a ``KeyError``."""
    from aiohttp.test_utils import make_mocked_request

    from omniroute.bodies import KEPT_BODY, _keeps_body

    request = make_mocked_request("POST", "/api/keys")
    assert not _keeps_body(request) and KEPT_BODY not in request
    request[KEPT_BODY] = None  # (what an audited call's middleware sets)
    assert _keeps_body(request) and KEPT_BODY in request
    del request[KEPT_BODY]
    assert not _keeps_body(request)


def test_a_plain_json_content_type_is_taken_without_parsing_it() -> None:
    """``application/json`` as sent (or no Content-Type) is accepted without aiohttp's
    ``content_type``, whose parse sets attributes on the request (its dict, made per
    request in some processes); any other type is parsed and judged as before."""
    from aiohttp.helpers import sentinel
    from aiohttp.test_utils import make_mocked_request

    from omniroute.bodies import _check_json_type
    from omniroute.errors import UnsupportedMediaType

    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "text/json"}, {}):
        request = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
        _check_json_type(request)
        assert request._stored_content_type is sentinel  # never parsed
    for ctype in ("application/json; charset=utf-8", "Application/JSON",
                  "application/vnd.api+json"):
        request = make_mocked_request("POST", "/v1/chat/completions",
                                      headers={"Content-Type": ctype})
        _check_json_type(request)
        assert request._stored_content_type == ctype
    request = make_mocked_request("POST", "/v1/chat/completions",
                                  headers={"Content-Type": "text/plain"})
    with pytest.raises(UnsupportedMediaType):
        _check_json_type(request)
