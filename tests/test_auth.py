"""Who may call what: client API keys, the management API, admin sessions, secrets at rest."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

#: client API under /api/ (Ollama's), as the Ollama API documents it
OLLAMA_PATHS = frozenset({"/api/chat", "/api/tags", "/api/version", "/api/embed",
                          "/api/embeddings"})

UPSTREAM_KEY = "sk-upstream-test"
PASSWORD = "test-password-123"
HI = [{"role": "user", "content": "hi there"}]
CHAT = {"model": "up/gpt-4o-mini", "messages": HI}
PUBLIC_API = {"/api/init", "/api/monitoring/health", "/api/auth/login", "/api/auth/logout",
              "/api/auth/session"}


def sdk(gw: Any, api_key: str = "sk-client", **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=api_key, max_retries=0,
                              timeout=10, **kw)


def no_key_sdk(gw: Any) -> openai.AsyncOpenAI:
    """An SDK client that sends no credential at all (empty Authorization header)."""
    return sdk(gw, "unused", default_headers={"Authorization": ""})


def bare_session(gw: Any) -> aiohttp.ClientSession:
    """A client with no cookie jar, so every credential in a request is explicit."""
    return aiohttp.ClientSession(gw.base_url, cookie_jar=aiohttp.DummyCookieJar())


async def create_key(gw: Any, name: str, scopes: list[str] | None = None) -> dict[str, Any]:
    resp = await gw.client.post("/api/keys", headers=gw.admin_headers,
                                json={"name": name, "scopes": scopes or []})
    assert resp.status == 201, await resp.text()
    return await resp.json()


def management_routes(gw: Any) -> list[tuple[str, str]]:
    """(method, path) of every non-public ``/api/`` route, path parameters filled in."""
    routes = []
    for route in gw.client.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if (not path.startswith("/api/") or path in PUBLIC_API or path in OLLAMA_PATHS
                or route.method == "HEAD"):
            continue
        routes.append((route.method, re.sub(r"\{[^}]+\}", "x1", path)))
    return sorted(set(routes))


def assert_error_body(body: Any, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


async def login(session: aiohttp.ClientSession, password: str = PASSWORD):
    return await session.post("/api/auth/login", json={"password": password})


# ----------------------------------------------------------------------------- client API keys

async def test_require_api_key_refuses_a_missing_key(gw):
    await gw.set_settings(require_api_key=True)
    with pytest.raises(openai.AuthenticationError) as info:
        await no_key_sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert info.value.status_code == 401
    assert info.value.code == "missing_api_key"
    async with bare_session(gw) as s, s.post("/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 401
        assert_error_body(await resp.json(), "missing_api_key")
    with pytest.raises(openai.AuthenticationError):
        await no_key_sdk(gw).models.list()
    assert not gw.fake.requests


async def test_require_api_key_refuses_a_wrong_key(gw):
    await gw.set_settings(require_api_key=True)
    with pytest.raises(openai.AuthenticationError) as info:
        await sdk(gw, "sk-or-not-a-real-key").chat.completions.create(
            model="up/gpt-4o-mini", messages=HI)
    assert info.value.code == "invalid_api_key"
    async with bare_session(gw) as s, s.post(
            "/v1/chat/completions", json=CHAT, headers={"x-api-key": "sk-or-wrong"}) as resp:
        assert resp.status == 401
    assert not gw.fake.requests


async def test_require_api_key_refuses_a_revoked_key(gw):
    await gw.set_settings(require_api_key=True)
    created = await create_key(gw, "soon-revoked")
    client = sdk(gw, created["key"])
    assert (await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)).choices
    resp = await gw.client.delete(f"/api/keys/{created['id']}", headers=gw.admin_headers)
    assert resp.status == 200
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    # still refused after the configuration is reloaded from the database
    await gw.gateway.reload()
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    keys = (await (await gw.client.get("/api/keys", headers=gw.admin_headers)).json())["keys"]
    assert next(k for k in keys if k["id"] == created["id"])["revoked_at"]


async def test_require_api_key_accepts_bearer_and_x_api_key(gw):
    await gw.set_settings(require_api_key=True)
    secret = (await create_key(gw, "client"))["key"]
    resp = await sdk(gw, secret).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content == "Hello! You said: hi there"
    stream = await sdk(gw, secret).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    assert [c async for c in stream]
    assert any(m.id == "up/gpt-4o-mini" for m in (await sdk(gw, secret).models.list()).data)
    async with bare_session(gw) as s:
        async with s.post("/v1/chat/completions", json=CHAT,
                          headers={"x-api-key": secret}) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"]
        async with s.post("/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"bearer {secret}"}) as r:
            assert r.status == 200


async def test_keys_optional_when_not_required(gw):
    await gw.set_settings(require_api_key=False)
    resp = await no_key_sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content
    resp = await sdk(gw, "sk-or-wrong-and-ignored").chat.completions.create(
        model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content
    async with bare_session(gw) as s, s.post("/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200


async def test_require_api_key_can_be_turned_on_and_off(gw):
    client = no_key_sdk(gw)
    assert (await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)).choices
    await gw.set_settings(require_api_key=True)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    await gw.set_settings(require_api_key=False)
    assert (await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)).choices


async def test_pinned_require_api_key_cannot_be_turned_off(aiohttp_client, tmp_path):
    from omniroute.testing import make_test_config, start_harness

    harness = await start_harness(
        aiohttp_client, make_test_config(tmp_path / "pinned", require_api_key=True))
    resp = await harness.client.patch("/api/settings", headers=harness.admin_headers,
                                      json={"require_api_key": False})
    assert resp.status == 200
    body = await resp.json()
    assert body["settings"]["require_api_key"] is True
    assert "require_api_key" in body["pinned_by_environment"]
    resp = await harness.client.get("/v1/models")
    assert resp.status == 401


# ----------------------------------------------------------------------------- management API

async def test_every_management_route_needs_a_login(gw):
    routes = management_routes(gw)
    assert len(routes) >= 20
    assert ("GET", "/api/providers") in routes and ("GET", "/api/requests") in routes
    async with bare_session(gw) as s:
        for method, path in routes:
            async with s.request(method, path, json={}) as resp:
                assert resp.status == 401, (method, path, resp.status)
                assert_error_body(await resp.json(), "admin_required")
            async with s.request(method, path, json={},
                                 headers={"Authorization": "Bearer sk-or-wrong"}) as resp:
                assert resp.status == 401, (method, path, resp.status)


async def test_a_client_key_is_not_an_admin(gw):
    secret = (await create_key(gw, "client"))["key"]
    async with bare_session(gw) as s:
        for method, path in management_routes(gw):
            for headers in ({"Authorization": f"Bearer {secret}"}, {"x-api-key": secret}):
                async with s.request(method, path, json={}, headers=headers) as resp:
                    assert resp.status == 403, (method, path, resp.status)
                    assert_error_body(await resp.json(), "permission_denied")


async def test_an_admin_key_is_let_through(gw):
    created = await create_key(gw, "second-admin", ["admin"])
    headers = {"Authorization": f"Bearer {created['key']}"}
    async with bare_session(gw) as s:
        for method, path in management_routes(gw):
            async with s.request(method, path, json={}, headers=headers) as resp:
                assert resp.status not in (401, 403), (method, path, resp.status)
                if method == "GET" and "x1" not in path:
                    assert resp.status == 200, (method, path, await resp.text())


async def test_public_routes_need_nothing(gw):
    async with bare_session(gw) as s:
        async with s.get("/api/init") as resp:
            assert resp.status == 200
            init = await resp.json()
        assert init["password_set"] is True
        assert init["has_providers"] is True
        assert init["require_api_key"] is False
        async with s.get("/api/monitoring/health") as resp:
            assert resp.status == 200
            health = await resp.json()
    from omniroute.version import __version__

    assert health["status"] == "ok"
    assert health["version"] == __version__
    assert health["uptime_s"] >= 0
    assert health["database"] == {"ok": True}
    assert health["providers"]["configured"] == 1
    assert health["providers"]["usable"] == 1
    assert "openai" in health["providers"]["types"]


async def test_public_routes_stay_public_with_keys_required(gw):
    await gw.set_settings(require_api_key=True)
    async with bare_session(gw) as s:
        for path in ("/api/init", "/api/monitoring/health"):
            async with s.get(path) as resp:
                assert resp.status == 200, path
        async with s.get("/api/init") as resp:
            assert (await resp.json())["require_api_key"] is True


# ----------------------------------------------------------------------------- password login

async def test_login_sets_an_http_only_session_cookie(gw):
    async with bare_session(gw) as s:
        resp = await login(s)
        assert resp.status == 200
        assert (await resp.json())["ok"] is True
        morsel = resp.cookies["omniroute_session"]
        assert morsel.value and len(morsel.value) >= 20
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Strict"
        assert morsel["path"] == "/"
        cookie = {"Cookie": f"omniroute_session={morsel.value}"}
        async with s.get("/api/providers", headers=cookie) as r:
            assert r.status == 200
            assert (await r.json())["providers"][0]["prefix"] == "up"
        async with s.get("/api/providers") as r:
            assert r.status == 401  # the cookie is what authorised it


async def test_logout_invalidates_the_session(gw):
    async with bare_session(gw) as s:
        answer = await login(s)
        token = answer.cookies["omniroute_session"].value
        cookie = {"Cookie": f"omniroute_session={token}"}
        async with s.get("/api/settings", headers=cookie) as r:
            assert r.status == 200
        async with s.post("/api/auth/logout", headers=cookie) as r:
            assert r.status == 403  # another site's page cannot end the session
            assert_error_body(await r.json(), "csrf_token_invalid")
        csrf = {"X-CSRF-Token": (await answer.json())["csrf_token"]}
        async with s.post("/api/auth/logout", headers={**cookie, **csrf}) as r:
            assert r.status == 200
            assert r.cookies["omniroute_session"].value == ""  # the browser drops it
        async with s.get("/api/settings", headers=cookie) as r:
            assert r.status == 401
            assert_error_body(await r.json(), "session_expired")


async def test_a_state_change_with_the_session_cookie_needs_its_csrf_token(gw):
    """Reads need the cookie only; a write with the cookie needs the session's CSRF token
    too (403 without it or with another session's), an admin key needs none."""
    async with bare_session(gw) as s:
        first, second = await login(s), await login(s)
        token = first.cookies["omniroute_session"].value
        cookie = {"Cookie": f"omniroute_session={token}"}
        mine = (await first.json())["csrf_token"]
        other = (await second.json())["csrf_token"]
        assert mine != other and token not in mine
        async with s.get("/api/settings", headers=cookie) as r:
            assert r.status == 200
        for headers in (cookie, {**cookie, "X-CSRF-Token": other},
                        {**cookie, "X-CSRF-Token": ""}):
            async with s.patch("/api/settings", json={"max_attempts": 4}, headers=headers) as r:
                assert r.status == 403
                assert_error_body(await r.json(), "csrf_token_invalid")
            async with s.delete("/api/keys/x1", headers=headers) as r:
                assert r.status == 403
        assert gw.catalog.settings.max_attempts != 4
        async with s.patch("/api/settings", json={"max_attempts": 4},
                           headers={**cookie, "X-CSRF-Token": mine}) as r:
            assert r.status == 200
        async with s.patch("/api/settings", json={"max_attempts": 5},
                           headers=gw.admin_headers) as r:
            assert r.status == 200  # an API key is never sent by a browser on its own
        async with s.get("/api/auth/session", headers=cookie) as r:
            assert await r.json() == {"authenticated": True, "csrf_token": mine,
                                      "require_login": True, "password_free": False}
        async with s.get("/api/auth/session") as r:
            assert (await r.json())["authenticated"] is False


async def test_require_login_off_lets_this_machine_in_without_the_password(gw):
    async with bare_session(gw) as s:
        assert (await s.post("/api/auth/login", json={})).status == 400
        await gw.set_settings(require_login=False)
        async with s.get("/api/auth/session") as r:
            state = await r.json()
        assert state["password_free"] is True and state["authenticated"] is False
        async with s.get("/api/providers") as r:
            assert r.status == 401  # the management API still needs a session or a key
        answer = await s.post("/api/auth/login", json={})
        assert answer.status == 200
        cookie = {"Cookie": f"omniroute_session={answer.cookies['omniroute_session'].value}"}
        async with s.get("/api/providers", headers=cookie) as r:
            assert r.status == 200
        assert (await login(s, "wrong-password")).status == 401  # a password given is checked


async def test_require_login_off_is_for_loopback_clients_only(gw):
    from aiohttp.test_utils import make_mocked_request

    from omniroute.auth.admin import password_free

    await gw.set_settings(require_login=False)
    app = gw.client.app
    for peer, expected in (("127.0.0.1", True), ("::1", True), ("192.168.1.20", False),
                           ("10.0.0.1", False)):
        transport = type("T", (), {"get_extra_info": lambda self, name, d=None, p=peer:
                                   (p, 1234) if name == "peername" else d})()
        request = make_mocked_request("POST", "/api/auth/login", app=app, transport=transport)
        assert password_free(request) is expected, peer


async def test_a_forged_session_cookie_is_refused(gw):
    forged = {"Cookie": "omniroute_session=forged-token-value"}
    async with bare_session(gw) as s, s.get("/api/providers", headers=forged) as r:
        assert r.status == 401


async def test_wrong_password_is_refused(gw):
    async with bare_session(gw) as s:
        resp = await login(s, "not-the-password")
        assert resp.status == 401
        assert_error_body(await resp.json(), "invalid_password")
        assert "omniroute_session" not in resp.cookies
        resp = await s.post("/api/auth/login", json={})
        assert resp.status == 400


async def test_repeated_wrong_passwords_are_throttled(gw):
    async with bare_session(gw) as s:
        for _ in range(10):
            assert (await login(s, "wrong-password")).status == 401
        resp = await login(s)  # even the right password, for a while
        assert resp.status == 429
        assert resp.headers["Retry-After"]
        assert_error_body(await resp.json(), "too_many_logins")


async def test_session_cookie_does_not_authorise_the_client_api(gw):
    await gw.set_settings(require_api_key=True)
    async with bare_session(gw) as s:
        token = (await login(s)).cookies["omniroute_session"].value
        cookie = {"Cookie": f"omniroute_session={token}"}
        async with s.post("/v1/chat/completions", json=CHAT, headers=cookie) as r:
            assert r.status == 401
        async with s.get("/v1/models", headers=cookie) as r:
            assert r.status == 401
        async with s.get("/api/providers", headers=cookie) as r:
            assert r.status == 200  # while it does authorise the management API
    assert not gw.fake.requests


async def test_require_login_setting(gw):
    resp = await gw.client.get("/api/settings/require-login", headers=gw.admin_headers)
    assert resp.status == 200
    assert await resp.json() == {"require_login": True}
    resp = await gw.client.put("/api/settings/require-login", headers=gw.admin_headers,
                               json={"require_login": False})
    assert resp.status == 200
    assert await resp.json() == {"require_login": False}
    resp = await gw.client.get("/api/settings/require-login", headers=gw.admin_headers)
    assert await resp.json() == {"require_login": False}
    assert (await (await gw.client.get("/api/init")).json())["require_login"] is False
    resp = await gw.client.put("/api/settings/require-login", headers=gw.admin_headers,
                               json={"require_login": "maybe"})
    assert resp.status == 400
    assert_error_body(await resp.json(), "invalid_setting")
    async with bare_session(gw) as s, s.get("/api/settings/require-login") as r:
        assert r.status == 401


# ----------------------------------------------------------------------------- secrets at rest

def database_bytes(db_path: Path) -> bytes:
    """Every byte SQLite holds for the database: the file, its WAL and a full dump."""
    raw = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    with sqlite3.connect(db_path) as conn:
        dump = "\n".join(conn.iterdump()).encode()
    return raw + dump


async def test_api_keys_are_stored_hashed(gw):
    created = await create_key(gw, "hashed")
    secret = created["key"]
    assert secret.startswith("sk-or-")
    await gw.log.flush()
    data = database_bytes(gw.gateway.config.db_path)
    assert secret.encode() not in data
    assert gw.admin_key.encode() not in data
    with sqlite3.connect(gw.gateway.config.db_path) as conn:
        hashes = [row[0] for row in conn.execute("SELECT key_hash FROM api_keys")]
    assert hashlib.sha256(secret.encode()).digest() in [bytes(h) for h in hashes]
    # and the API never shows it again
    listing = await (await gw.client.get("/api/keys", headers=gw.admin_headers)).text()
    assert secret not in listing


async def test_session_tokens_and_password_are_not_stored_in_clear(gw):
    async with bare_session(gw) as s:
        token = (await login(s)).cookies["omniroute_session"].value
    data = database_bytes(gw.gateway.config.db_path)
    assert token.encode() not in data
    assert PASSWORD.encode() not in data


async def test_provider_credentials_are_encrypted_and_masked(gw):
    secret = "sk-live-Zq8vN3rT5wX1yB7cD9eF2gH4jK6mP0sU"
    created = await gw.add_provider({"type": "openai", "prefix": "enc", "api_key": secret,
                                     "base_url": "http://127.0.0.1:9/v1"})
    data = database_bytes(gw.gateway.config.db_path)
    assert secret.encode() not in data
    assert UPSTREAM_KEY.encode() not in data
    assert secret not in str(created)
    responses = [
        await gw.client.get("/api/providers", headers=gw.admin_headers),
        await gw.client.get(f"/api/providers/{created['id']}", headers=gw.admin_headers),
        await gw.client.get(f"/api/providers/{gw.connection['id']}", headers=gw.admin_headers),
        await gw.client.put(f"/api/providers/{created['id']}", headers=gw.admin_headers,
                            json={"name": "renamed"}),
    ]
    for resp in responses:
        assert resp.status == 200
        text = await resp.text()
        assert secret not in text and UPSTREAM_KEY not in text
    view = (await (await gw.client.get(f"/api/providers/{created['id']}",
                                       headers=gw.admin_headers)).json())
    masked = view["credentials"]["api_key"]
    assert masked and masked != secret and len(masked) <= len(secret) // 3
    # the encrypted credential still works: the upstream receives the real key
    await gw.client.get("/api/providers", headers=gw.admin_headers)
    resp = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content
    assert gw.fake.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_upstream_rejecting_our_credentials_is_explained_without_the_key(
        omniroute, fake_openai):
    """An upstream 401 is about the gateway's provider key, never the client's: the
    message says so and contains no part of the provider key (upstreams quote it)."""
    provider_key = "sk-wrongkey-abcdefghijklmnop1234"
    await omniroute.add_provider({"type": "openai", "name": "badkey", "prefix": "up",
                                  "base_url": fake_openai.base_url, "api_key": provider_key})
    client = openai.AsyncOpenAI(base_url=omniroute.base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(
            model="up/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    error = info.value.body
    assert error["code"] == "upstream_auth_failed"
    assert "badkey" in error["message"] and "gateway's credentials" in error["message"]
    assert "1234" not in error["message"] and "sk-wrong" not in error["message"]
