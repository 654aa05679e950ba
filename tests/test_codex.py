"""The ``codex`` subscription (ChatGPT through the Codex backend): sign-in by loopback
redirect and by paste, import of ``~/.codex/auth.json``, refresh (single-use refresh
tokens), a revoked refresh token, the usage headers and the 429 usage limit, and the
official SDKs through a codex account; against fakes that refuse what the real
services refuse (``fakes.codex_upstream``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anthropic
import openai
import pytest
from fakes.codex_upstream import (
    ACCOUNT_ID,
    FakeCodex,
    FakeOpenAIAuth,
    fake_jwt,
    id_token,
    usage_limit,
)
from fakes.oauth_server import Pair
from fakes.responses_upstream import reply
from test_cli import Cli, ok
from test_pricing import subscription_charges

from omniroute.credentials import SIGN_IN_REQUIRED
from omniroute.oauth import SignIn, TokenClient, read_import, save_account
from omniroute.oauth.jwt import jwt_claims, jwt_expiry
from omniroute.providers.codex import (
    CLIENT_ID,
    REDIRECT_URI,
    SERVICE,
    CodexProvider,
    codex_windows,
)
from omniroute.testing import GatewayHarness, make_test_config, start_harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    auth: FakeOpenAIAuth
    backend: FakeCodex
    gw: GatewayHarness
    sdk: openai.AsyncOpenAI | None = None
    anthropic_sdk: anthropic.AsyncAnthropic | None = None

    def settings(self, **more: Any) -> dict[str, Any]:
        """A connection's settings pointing every endpoint at the fakes."""
        return {"base_url": self.backend.base_url,
                "oauth_token_url": f"{self.auth.base_url}/oauth/token",
                "oauth_authorize_url": f"{self.auth.base_url}/oauth/authorize", **more}

    async def account(self, pair: Pair, *, name: str = "work", priority: int = 0,
                      expires_at: float | None = None) -> dict[str, Any]:
        creds: dict[str, Any] = {
            "access_token": pair.access, "refresh_token": pair.refresh,
            "expires_at": pair.expires_at if expires_at is None else expires_at,
            "id_token": id_token(), "extra": {"account_id": ACCOUNT_ID}}
        return await self.gw.add_provider({"type": "codex", "name": name, "prefix": "codex",
                                           "priority": priority, "settings": self.settings(),
                                           "credentials": creds})

    def client(self) -> openai.AsyncOpenAI:
        """The OpenAI SDK at the gateway (one per world, closed with it)."""
        if self.sdk is None:
            self.sdk = openai.AsyncOpenAI(base_url=f"{self.gw.base_url}/v1", api_key="x",
                                          max_retries=0)
        return self.sdk

    def claude(self) -> anthropic.AsyncAnthropic:
        """The Anthropic SDK at the gateway (one per world, closed with it)."""
        if self.anthropic_sdk is None:
            self.anthropic_sdk = anthropic.AsyncAnthropic(base_url=self.gw.base_url,
                                                          api_key="x", max_retries=0)
        return self.anthropic_sdk

    async def close(self) -> None:
        for sdk in (self.sdk, self.anthropic_sdk):
            if sdk is not None:
                await sdk.close()

    async def ask(self, text: str = "hi", model: str = "codex/gpt-5-codex") -> str:
        answer = await self.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}])
        return str(answer.choices[0].message.content)

    def tokens_seen(self) -> list[str]:
        return [r.headers.get("authorization", "").removeprefix("Bearer ")
                for r in self.backend.seen()]


async def make_world(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
                     **knobs: Any) -> World:
    auth = FakeOpenAIAuth(**knobs)
    auth.base_url = str((await aiohttp_server(auth.app)).make_url("")).rstrip("/")
    backend = FakeCodex(auth)
    backend.base_url = str((await aiohttp_server(backend.app)).make_url("/backend-api/codex"))
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    return World(auth, backend, gw)


@pytest.fixture
async def world(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Any:
    made = await make_world(aiohttp_client, aiohttp_server, tmp_path)
    yield made
    await made.close()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


# ------------------------------------------------------------------ the pieces

def test_the_service_is_the_codex_clis_own() -> None:
    assert SERVICE.client_id == CLIENT_ID == "app_EMoamEEZ73f0CkXaXp7hrann"
    assert REDIRECT_URI == "http://localhost:1455/auth/callback" == SERVICE.redirect_uri
    assert SERVICE.flow == "loopback" and SERVICE.pkce and SERVICE.token_encoding == "form"
    assert SERVICE.token_url == "https://auth.openai.com/oauth/token"
    assert SERVICE.import_path == "~/.codex/auth.json"
    url = SERVICE.authorization_url(SERVICE.endpoints(), "st", None)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["originator"] == "codex_cli_rs" and query["codex_cli_simplified_flow"] == "true"
    assert query["scope"] == "openid profile email offline_access"


def test_jwt_claims_are_read_carefully() -> None:
    token = fake_jwt({"exp": 1767225600, "email": "a@b.c"})
    assert jwt_claims(token) == {"exp": 1767225600, "email": "a@b.c"}
    assert jwt_expiry(token) == 1767225600.0
    for bad in (None, 42, "", "a.b", "a.b.c.d", "x.!!!.y", "x." + "e30" * 3 + ".y",
                "x.W10.y",  # "[]": not an object
                "a." + "A" * 70000 + ".b"):
        assert jwt_claims(bad) is None
    assert jwt_expiry(fake_jwt({"exp": "soon"})) is None


def test_usage_headers_become_windows() -> None:
    windows = codex_windows({"X-Codex-Primary-Used-Percent": "42.5",
                             "x-codex-primary-window-minutes": "300",
                             "x-codex-primary-reset-after-seconds": "600",
                             "x-codex-secondary-used-percent": "7",
                             "x-codex-secondary-reset-at": "1767225600"}, now=1000.0)
    assert [(w.name, w.used_percent, w.window_minutes, w.resets_at) for w in windows] == [
        ("primary", 42.5, 300.0, 1600.0), ("secondary", 7.0, None, 1767225600.0)]
    assert codex_windows({"x-request-id": "r"}, now=0) == []


# ------------------------------------------------------------------ sign-in

async def test_a_loopback_sign_in_reads_the_account_from_the_id_token(
    aiohttp_server: Any, http: aiohttp.ClientSession, world: World,
) -> None:
    redirect = f"http://localhost:{free_port()}/auth/callback"
    auth = FakeOpenAIAuth(mode="redirect", redirect_uri=redirect, required_params={
        "originator": "codex_cli_rs", "codex_cli_simplified_flow": "true",
        "id_token_add_organizations": "true"})
    auth.base_url = str((await aiohttp_server(auth.app)).make_url("")).rstrip("/")
    settings = {"oauth_authorize_url": f"{auth.base_url}/oauth/authorize",
                "oauth_token_url": f"{auth.base_url}/oauth/token",
                "oauth_redirect_uri": redirect, "base_url": world.backend.base_url}
    signin = SignIn(SERVICE, TokenClient(http), settings)
    view = await signin.start()
    try:
        assert view["listening"] is True and view["redirect_uri"] == redirect
        async with http.get(view["url"]) as page:  # the browser, redirected to the listener
            assert page.status == 200 and "close this tab" in await page.text()
        tokens = await signin.poll()
        assert tokens is not None
        account = await signin.account(tokens)
    finally:
        await signin.close()
    exchange = auth.requests[-1]
    assert exchange.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert exchange.json["grant_type"] == "authorization_code"
    assert exchange.json["redirect_uri"] == redirect and exchange.json["code_verifier"]
    creds = account.credentials
    assert creds["extra"]["account_id"] == ACCOUNT_ID and creds["extra"]["plan_type"] == "plus"
    assert account.label == "user@example.com" and creds["id_token"] == id_token()
    assert creds["expires_at"] > time.time() + 3000
    # stored, the account serves requests
    conn, new = await save_account(world.gw.registry.plugins, world.gw.store, SERVICE,
                                   account, settings=settings)
    assert new and conn.name == "user@example.com" and conn.type == "codex"
    await world.gw.gateway.reload()
    world.auth = auth
    world.backend.auth = auth
    assert await world.ask("signed in") == "Hello! You said: signed in"


async def test_a_loopback_sign_in_through_the_management_api(
    aiohttp_server: Any, http: aiohttp.ClientSession, world: World,
) -> None:
    redirect = f"http://localhost:{free_port()}/auth/callback"
    auth = FakeOpenAIAuth(mode="redirect", redirect_uri=redirect)
    auth.base_url = str((await aiohttp_server(auth.app)).make_url("")).rstrip("/")
    world.auth = world.backend.auth = auth
    gw, h = world.gw, world.gw.admin_headers
    settings = {**world.settings(), "oauth_redirect_uri": redirect}
    resp = await gw.client.post("/api/oauth/codex/start", headers=h,
                                json={"name": "work", "settings": settings})
    started = await resp.json()
    assert resp.status == 200, started
    assert started["listening"] is True and started["redirect_uri"] == redirect
    async with http.get(started["url"]) as page:  # the browser comes back to the listener
        assert page.status == 200
    resp = await gw.client.post("/api/oauth/codex/poll", headers=h,
                                json={"state": started["state"]})
    done = await resp.json()
    assert resp.status == 201, done
    assert (done["connection"]["name"], done["connection"]["type"]) == ("work", "codex")
    stored = await gw.store.get_connection(done["connection"]["id"])
    assert stored is not None and stored.credentials["extra"]["account_id"] == ACCOUNT_ID
    assert await world.ask("api sign-in") == "Hello! You said: api sign-in"


async def test_the_paste_fallback_when_the_port_is_taken(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    redirect = f"http://localhost:{port}/auth/callback"
    auth = FakeOpenAIAuth(mode="redirect", redirect_uri=redirect)
    auth.base_url = str((await aiohttp_server(auth.app)).make_url("")).rstrip("/")
    settings = {"oauth_authorize_url": f"{auth.base_url}/oauth/authorize",
                "oauth_token_url": f"{auth.base_url}/oauth/token",
                "oauth_redirect_uri": redirect}
    with socket.socket() as taken:  # the official CLI is listening there
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        signin = SignIn(SERVICE, TokenClient(http), settings)
        view = await signin.start()
        try:
            assert view["listening"] is False and "paste" in view["listen_error"]
            async with http.get(view["url"], allow_redirects=False) as page:
                landed = page.headers["Location"]  # where the browser ends, unreachable

            async def paste() -> str | None:
                return landed

            tokens = await signin.wait(paste, timeout=3.0)
            account = await signin.account(tokens)
        finally:
            await signin.close()
    assert auth.is_valid(account.credentials["access_token"])
    assert account.credentials["extra"]["account_id"] == ACCOUNT_ID


# ------------------------------------------------------------------ requests

async def test_every_sdk_through_a_codex_account_with_what_the_backend_requires(
    world: World,
) -> None:
    await world.account(world.auth.issue())
    client = world.client()
    answer = await client.chat.completions.create(
        model="codex/gpt-5-codex", max_tokens=50, temperature=0.2,
        messages=[{"role": "user", "content": "plain"}])
    assert answer.choices[0].message.content == "Hello! You said: plain"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    parts = []
    stream = await client.chat.completions.create(
        model="codex/gpt-5-codex", stream=True,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "streamed"}])
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert "".join(parts) == "Hello! You said: streamed"
    claude = world.claude()
    message = await claude.messages.create(
        model="codex/gpt-5-codex", max_tokens=64,
        messages=[{"role": "user", "content": "from claude"}])
    texts = [b.text for b in message.content if b.type == "text"]
    assert texts == ["Hello! You said: from claude"]
    assert [b.type for b in message.content] == ["thinking", "text"]  # the reasoning kept
    # a Responses client (Codex itself) passes through, fixed where the backend insists
    response = await client.responses.create(model="codex/gpt-5-codex", input="native",
                                             store=True, max_output_tokens=100)
    assert response.output_text == "Hello! You said: native"
    deltas = []
    async with await client.responses.create(model="codex/gpt-5-codex", input="relayed",
                                             stream=True) as events:
        async for event in events:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert "".join(deltas) == "Hello! You said: relayed"

    sent = world.backend.seen()
    assert len(sent) == 5
    for rec in sent:
        assert rec.headers["chatgpt-account-id"] == ACCOUNT_ID
        assert rec.headers["originator"] == "codex_cli_rs"
        assert rec.headers["user-agent"].startswith("omniroute/")  # not the CLI's
        assert rec.headers["session_id"]
        assert rec.json["store"] is False and rec.json["stream"] is True
        assert rec.json["instructions"].strip()
        assert "reasoning.encrypted_content" in rec.json["include"]
        assert not {"max_output_tokens", "temperature", "metadata"} & set(rec.json)
    assert sent[1].json["instructions"] == "Be brief."


async def test_a_json_answer_is_gathered_from_the_output_items(world: World) -> None:
    world.backend.empty_output = True  # response.completed brings no output items
    await world.account(world.auth.issue())
    world.backend.script.append(reply(text="from items", chunks=3))
    assert await world.ask() == "from items"


async def test_the_model_list_comes_from_the_backend(world: World) -> None:
    view = await world.account(world.auth.issue())
    resp = await world.gw.client.get(f"/api/providers/{view['id']}/models",
                                     headers=world.gw.admin_headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert {"gpt-5-codex", "gpt-5.1-codex", "gpt-5"} <= set(body["models"])
    listed = world.backend.seen("/backend-api/codex/models")
    assert listed and listed[-1].query["client_version"]


# ------------------------------------------------------------------ tokens

async def test_an_expired_token_is_refreshed_as_json_rotated_and_kept(world: World) -> None:
    pair = world.auth.issue(lifetime=-5)
    view = await world.account(pair)
    assert await world.ask("after refresh") == "Hello! You said: after refresh"
    assert world.auth.refresh_calls == 1
    refresh = next(r for r in world.auth.requests if (r.json or {}).get("grant_type")
                   == "refresh_token")
    assert refresh.headers["content-type"].startswith("application/json")
    assert refresh.json == {"client_id": CLIENT_ID, "grant_type": "refresh_token",
                            "refresh_token": pair.refresh}
    assert pair.access not in world.tokens_seen()
    stored = await world.gw.store.get_connection(view["id"])
    assert stored is not None
    assert stored.credentials["refresh_token"] != pair.refresh  # rotated, kept at once
    assert pair.refresh in world.auth.spent
    assert stored.credentials["extra"]["account_id"] == ACCOUNT_ID
    assert stored.credentials["extra"]["email"] == "user@example.com"


async def test_a_401_from_the_backend_refreshes_once_and_retries(world: World) -> None:
    pair = world.auth.issue()  # its expiry looks fine, but the service dropped it
    await world.account(pair)
    world.auth.expire(pair.access)
    assert await world.ask("again") == "Hello! You said: again"
    assert world.auth.refresh_calls == 1
    assert world.tokens_seen()[0] == pair.access and len(world.tokens_seen()) == 2


@pytest.mark.parametrize(("how", "code"), [("spent", "refresh_token_reused"),
                                           ("revoked", "refresh_token_invalidated")])
async def test_a_dead_refresh_token_means_sign_in_and_the_next_account(
    world: World, how: str, code: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = world.auth.issue(lifetime=-5)
    if how == "spent":  # another copy of it (the Codex CLI's) was used already
        world.auth.refresh.pop(str(dead.refresh))
        world.auth.spent.add(str(dead.refresh))
    else:
        world.auth.revoke(dead.refresh)
    first = await world.account(dead, name="first")
    spare = world.auth.issue()
    await world.account(spare, name="second", priority=1)
    assert await world.ask("moved on") == "Hello! You said: moved on"
    assert world.tokens_seen() == [spare.access]
    stored = await world.gw.store.get_connection(first["id"])
    assert stored is not None
    assert code in stored.credentials[SIGN_IN_REQUIRED]["reason"]
    assert world.auth.refresh_calls == 1  # tried once, then left alone
    shown = await (await world.gw.client.get("/api/providers",
                                             headers=world.gw.admin_headers)).text()
    for secret in (dead.access, dead.refresh, spare.access, spare.refresh, id_token()):
        assert secret and secret not in caplog.text and secret not in shown
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    row = next(r for r in limits["connections"] if r["id"] == first["id"])
    assert row["terminal_reason"] == "needs_sign_in"


# ------------------------------------------------------------------ quota

async def test_the_usage_limit_rests_the_account_until_its_reset(world: World) -> None:
    first = await world.account(world.auth.issue(), name="first")
    spare = world.auth.issue()
    await world.account(spare, name="second", priority=1)
    assert await world.ask("one") == "Hello! You said: one"  # the first, its usage read
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    quota = next(r for r in limits["connections"] if r["id"] == first["id"])["quota"]
    windows = {w["name"]: w for w in quota["windows"]}
    assert windows["primary"]["used_percent"] == 12.0
    assert windows["secondary"]["window_minutes"] == 10080.0
    assert quota["plan"] == "plus" and quota["exhausted"] is False

    world.backend.script.append(usage_limit(resets_in=2))
    assert await world.ask("two") == "Hello! You said: two"  # the second served it
    assert world.tokens_seen()[-1] == spare.access
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    row = next(r for r in limits["connections"] if r["id"] == first["id"])
    assert row["quota"]["exhausted"] is True and "usage limit" in row["quota"]["reason"]
    assert row["quota"]["resets_at"] == pytest.approx(time.time() + 2, abs=1.5)
    assert row["cooldown_left"] > 0
    run = Cli(world.gw.gateway.config.data_dir)
    live = ok(await run.in_thread("rate-limits", "--url", world.gw.base_url,
                                  "--admin-key", world.gw.admin_key)).output
    assert re.search(r"quota \(plus\): primary 100% used resets in \d s; secondary "
                     r"40% used resets in .*; RESTING \d s \(the plus plan's usage "
                     r"limit was reached\)", live), live
    calls = len(world.backend.seen())
    # resting: the first is not asked again, even after an operator reset
    await world.gw.client.post("/api/resilience/reset", headers=world.gw.admin_headers)
    assert await world.ask("three") == "Hello! You said: three"
    assert len(world.backend.seen()) == calls + 1 and world.tokens_seen()[-1] == spare.access
    # nor after an edit of the connection (its provider rebuilt by the reload)
    resp = await world.gw.client.put(f"/api/providers/{first['id']}", json={"rpm": 500},
                                     headers=world.gw.admin_headers)
    assert resp.status == 200
    await world.gw.client.post("/api/resilience/reset", headers=world.gw.admin_headers)
    assert await world.ask("three again") == "Hello! You said: three again"
    assert len(world.backend.seen()) == calls + 2 and world.tokens_seen()[-1] == spare.access
    # the reset time passed (the refusals' cooldowns round up a second): the first serves
    await asyncio.sleep(max(0.0, row["quota"]["resets_at"] - time.time()) + 1.2)
    assert await world.ask("four") == "Hello! You said: four"
    assert world.tokens_seen()[-1] != spare.access


async def test_a_codex_request_costs_nothing_and_records_its_list_price(
    world: World,
) -> None:
    view = await world.account(world.auth.issue())
    assert await world.ask("price me") == "Hello! You said: price me"
    row, usage = await subscription_charges(world.gw, view["id"])
    assert row["prompt_tokens"] and row["cost_usd"] == 0.0 and row["list_cost_usd"] > 0
    assert usage["cost_usd"] == 0.0 and usage["saved_usd"] == pytest.approx(
        row["list_cost_usd"])  # priced as OpenAI's gpt-5 (genai-prices)


# ------------------------------------------------------------------ import

def auth_json(tmp_path: Path, pair: Pair) -> Path:
    path = tmp_path / "auth.json"
    access = fake_jwt({"exp": int(pair.expires_at)})  # the CLI's access tokens are JWTs
    path.write_text(json.dumps({
        "auth_mode": "chatgpt", "OPENAI_API_KEY": None,
        "tokens": {"id_token": id_token(), "access_token": access,
                   "refresh_token": pair.refresh, "account_id": ACCOUNT_ID},
        "last_refresh": "2026-01-01T00:00:00.000000Z"}, indent=2))
    os.chmod(path, 0o600)
    return path


async def test_an_auth_json_is_imported_never_changed(
    world: World, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    pair = world.auth.issue()
    path = auth_json(tmp_path, pair)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    account = await read_import(SERVICE, path, TokenClient(http), world.settings())
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    creds = account.credentials
    assert creds["refresh_token"] == pair.refresh
    assert creds["expires_at"] == int(pair.expires_at)  # from the access token's exp
    assert creds["extra"]["account_id"] == ACCOUNT_ID and account.label == "user@example.com"
    conn, new = await save_account(world.gw.registry.plugins, world.gw.store, SERVICE,
                                   account, settings=world.settings())
    assert new and conn.credentials["refresh_token"] == pair.refresh
    await world.gw.gateway.reload()
    # the imported access token is not one the fake issued: a 401, a refresh, a retry
    assert await world.ask("imported") == "Hello! You said: imported"
    assert world.auth.refresh_calls == 1 and path.read_bytes() == before


@pytest.mark.parametrize(("doc", "why"), [
    ({"OPENAI_API_KEY": "sk-abc"}, "API key"),
    ({"tokens": {}}, "neither"),
    ({"tokens": {"access_token": "a", "id_token": "not-a-jwt"}}, "JSON Web Token"),
    ([], "not a JSON object"),
])
def test_an_unusable_auth_json_says_why(doc: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        SERVICE.parse_import(json.dumps(doc).encode(), time.time())
    with pytest.raises(ValueError, match="not JSON"):
        SERVICE.parse_import(b"{", time.time())


def test_codex_settings_are_checked() -> None:
    creds = {"access_token": "a", "refresh_token": "r"}
    settings, _ = CodexProvider.configure({}, dict(creds), None)
    assert settings["base_url"] == "https://chatgpt.com/backend-api/codex"
    for bad in ({"instructions": ""}, {"client_version": 3}, {"oauth_token_url": "ftp://x"}):
        with pytest.raises(ValueError):
            CodexProvider.configure(bad, dict(creds), None)
