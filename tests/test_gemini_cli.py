"""Provider type ``gemini-cli`` and sign-in ``gemini``: gemini-cli's Google sign-in (loopback
on any free port, the pasted fallbacks), the Code Assist project setup with its polled
operation, imports of ``~/.gemini/oauth_creds.json``, renewals, the daily quota, and the
official SDKs through the gateway. Everything runs against the fakes of
``fakes.code_assist_upstream`` (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anthropic
import openai
import orjson
import pytest
from click.testing import CliRunner
from fakes.code_assist_upstream import (
    CLIENT_SECRET,
    FakeCodeAssist,
    GoogleOAuthServer,
    daily_limit,
)
from google import genai
from test_pricing import subscription_charges

from omniroute.cli import cli
from omniroute.credentials import SIGN_IN_REQUIRED
from omniroute.errors import GatewayError
from omniroute.oauth import OAuthError, SignIn, TokenClient, read_import, save_account
from omniroute.oauth.loopback import is_loopback, with_port
from omniroute.providers import code_assist
from omniroute.providers.code_assist import (
    ProjectRequired,
    SetupError,
    daily_reset_in,
    envelope,
    is_daily_limit,
    quota_windows,
    unwrap_body,
    unwrap_frame,
)
from omniroute.providers.gemini_cli import GEMINI, GeminiCliProvider
from omniroute.testing import GatewayHarness, make_test_config, start_harness

MODEL = "gemini-2.5-flash"


@dataclass
class Google:
    """The fake Google sign-in and Code Assist API, and settings that point at them."""

    oauth: GoogleOAuthServer
    assist: FakeCodeAssist
    api: str

    def settings(self, **more: Any) -> dict[str, Any]:
        base = self.oauth.base_url
        return {"oauth_authorize_url": f"{base}/o/oauth2/v2/auth",
                "oauth_token_url": f"{base}/token",
                "oauth_userinfo_url": f"{base}/oauth2/v2/userinfo",
                "base_url": self.api, **more}

    def calls(self, method: str) -> list[Any]:
        return [r for r in self.assist.requests if r.path.endswith(f":{method}")]

    def tokens_seen(self) -> list[str]:
        return [r.headers["authorization"].removeprefix("Bearer ")
                for r in self.assist.requests if "Content" in r.path]


async def make_google(aiohttp_server: Any, kind: str = "free") -> Google:
    oauth = GoogleOAuthServer()
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    assist = FakeCodeAssist(oauth, kind=kind)
    api = str((await aiohttp_server(assist.app)).make_url("/v1internal"))
    return Google(oauth, assist, api)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_assist, "POLL_INTERVAL", 0.01)  # gemini-cli waits 5 s


@pytest.fixture
async def google(aiohttp_server: Any) -> Google:
    return await make_google(aiohttp_server)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def signed_in(google: Google, http: aiohttp.ClientSession, **settings: Any) -> Any:
    """An account through the loopback sign-in, the browser played by ``http``."""
    signin = SignIn(GEMINI, TokenClient(http), google.settings(**settings))
    view = await signin.start()
    try:
        async with http.get(view["url"]) as page:  # Google redirects to the listener
            assert page.status == 200 and "Signed in" in await page.text()
        tokens = await signin.poll()
        assert tokens is not None
        return await signin.account(tokens)
    finally:
        await signin.close()


async def gateway_with(aiohttp_client: Any, tmp_path: Path, google: Google, *accounts: Any,
                       **settings: Any) -> GatewayHarness:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw", **settings))
    for i, account in enumerate(accounts):
        conn, _ = await save_account(gw.registry.plugins, gw.store, GEMINI, account,
                                     name=f"google-{i}", settings=google.settings())
        conn.priority = i
        await gw.store.save_connection(conn)
    await gw.gateway.reload()
    return gw


# ------------------------------------------------------------------ the sign-in

async def test_the_loopback_sign_in_takes_a_free_port_and_onboards_the_project(
    google: Google, http: aiohttp.ClientSession,
) -> None:
    signin = SignIn(GEMINI, TokenClient(http), google.settings())
    view = await signin.start()
    try:
        redirect = urlsplit(view["redirect_uri"])
        assert view["listening"] is True and view["flow"] == "loopback"
        assert (redirect.scheme, redirect.hostname, redirect.path) == (
            "http", "127.0.0.1", "/oauth2callback")
        assert redirect.port not in (None, 0)
        query = {k: v[0] for k, v in parse_qs(urlsplit(view["url"]).query).items()}
        assert query["client_id"] == GEMINI.client_id and query["redirect_uri"] == (
            view["redirect_uri"])
        assert query["access_type"] == "offline" and query["prompt"] == "consent"
        assert query["code_challenge_method"] == "S256" and query["state"] == view["state"]
        assert query["scope"].split() == list(GEMINI.scopes)
        assert await signin.poll() is None  # no redirect yet
        async with http.get(view["url"]) as page:
            assert page.status == 200
        tokens = await signin.poll()
        assert tokens is not None and google.oauth.is_valid(tokens.access_token)
        account = await signin.account(tokens)
    finally:
        await signin.close()
    exchange = next(r for r in google.oauth.requests if r.path == "/token")
    assert exchange.json["client_secret"] == CLIENT_SECRET
    assert exchange.json["redirect_uri"] == view["redirect_uri"]
    assert exchange.json["code_verifier"] and exchange.json["grant_type"] == "authorization_code"
    # the setup: no tier yet, so onboarded to the default (free) tier, its operation polled
    load, onboard = google.calls("loadCodeAssist"), google.calls("onboardUser")
    assert len(load) == 1 and load[0].json["metadata"]["pluginType"] == "GEMINI"
    assert len(onboard) == 1 and onboard[0].json["tierId"] == "free-tier"
    assert "cloudaicompanionProject" not in onboard[0].json  # free tier: no project
    assert len([r for r in google.assist.requests if "/operations/" in r.path]) == 2
    # the gateway's own User-Agent: nothing of gemini-cli is imitated
    assert all(r.headers["user-agent"].startswith("omniroute/") for r in google.assist.requests)
    extra = account.credentials["extra"]
    assert extra["project"] == google.assist.managed_project and extra["tier"] == "free-tier"
    assert account.label == "someone@example.com"
    assert account.credentials["refresh_token"] and account.credentials["expires_at"] > (
        time.time() + 3000)


async def test_the_paste_fallbacks_no_browser_and_an_unreachable_loopback(
    google: Google, http: aiohttp.ClientSession,
) -> None:
    # no_browser: the redirect goes to Google's page that shows the code; it is pasted
    signin = SignIn(GEMINI, TokenClient(http), google.settings(no_browser=True))
    view = await signin.start()
    assert view["listening"] is False and "listen_error" not in view
    assert view["redirect_uri"] == "https://codeassist.google.com/authcode"
    async with http.get(view["url"], allow_redirects=False) as page:
        shown = parse_qs(urlsplit(page.headers["Location"]).query)["code"][0]
    with pytest.raises(OAuthError):
        await signin.poll()  # nothing to poll: it finishes by pasting
    tokens = await signin.complete(shown)
    assert google.oauth.is_valid(tokens.access_token)
    await signin.close()
    exchange = [r for r in google.oauth.requests if r.path == "/token"][-1]
    assert exchange.json["redirect_uri"] == "https://codeassist.google.com/authcode"

    # the browser is on another machine: it cannot reach the listener; the address it
    # ends on is pasted instead
    signin = SignIn(GEMINI, TokenClient(http), google.settings())
    view = await signin.start()
    try:
        async with http.get(view["url"], allow_redirects=False) as page:
            landed = page.headers["Location"]
        assert landed.startswith(view["redirect_uri"] + "?")

        async def paste() -> str | None:
            return landed

        tokens = await signin.wait(paste, timeout=5.0)
        assert google.oauth.is_valid(tokens.access_token)
    finally:
        await signin.close()


async def test_the_client_secret_is_required_and_sent(
    google: Google, http: aiohttp.ClientSession,
) -> None:
    client = TokenClient(http)
    body = GEMINI.refresh_request(GEMINI.endpoints(google.settings()), "1//0g-unknown")
    assert body["client_secret"] == CLIENT_SECRET
    with pytest.raises(OAuthError, match="client_secret is missing"):
        await client.tokens(f"{google.oauth.base_url}/token",
                            {k: v for k, v in body.items() if k != "client_secret"})


async def test_a_standard_account_needs_its_project_and_others_are_refused(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    standard = await make_google(aiohttp_server, kind="standard")
    with pytest.raises(ProjectRequired, match="'project'") as caught:
        await signed_in(standard, http)
    assert caught.value.status == 400
    account = await signed_in(standard, http, project="my-gcp-project")
    assert account.credentials["extra"] == {"project": "my-gcp-project",
                                            "tier": "standard-tier"}
    assert standard.calls("loadCodeAssist")[-1].json["cloudaicompanionProject"] == (
        "my-gcp-project")
    assert not standard.calls("onboardUser")  # it has its tier already

    ineligible = await make_google(aiohttp_server, kind="ineligible")
    with pytest.raises(SetupError, match="not eligible for Gemini Code Assist"):
        await signed_in(ineligible, http)
    validation = await make_google(aiohttp_server, kind="validation")
    with pytest.raises(SetupError, match=r"accounts\.google\.com/signin/continue") as refused:
        await signed_in(validation, http)
    assert refused.value.code == "validation_required"


async def test_an_onboarding_that_never_ends_is_bounded(
    google: Google, http: aiohttp.ClientSession,
) -> None:
    google.assist.polls_needed = 10_000
    pair = google.oauth.issue()
    ticks = iter(range(0, 1000, 20))  # each clock reading is 20 s later
    assist = code_assist.CodeAssist(http, google.api, pair.access,
                                    onboard_timeout=100, clock=lambda: float(next(ticks)))
    with pytest.raises(GatewayError, match="not done within 100s"):
        await assist.setup()
    assert len([r for r in google.assist.requests if "/operations/" in r.path]) < 10


async def test_a_gemini_cli_request_costs_nothing_and_records_its_list_price(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    gw = await gateway_with(aiohttp_client, tmp_path, google, await signed_in(google, http))
    (conn_id,) = gw.catalog.providers
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        await oai.chat.completions.create(model=f"gemini-cli/{MODEL}",
                                          messages=[{"role": "user", "content": "price"}])
    row, usage = await subscription_charges(gw, conn_id)
    assert row["prompt_tokens"] and row["cost_usd"] == 0.0 and row["list_cost_usd"] > 0
    assert usage["saved_usd"] == pytest.approx(row["list_cost_usd"])


# ------------------------------------------------------------------ import

def creds_file(tmp_path: Path, pair: Any, expiry_ms: float) -> Path:
    path = tmp_path / "home" / ".gemini" / "oauth_creds.json"
    path.parent.mkdir(parents=True)
    path.write_text(orjson.dumps({
        "access_token": pair.access, "refresh_token": pair.refresh,
        "scope": " ".join(GEMINI.scopes) + " openid", "token_type": "Bearer",
        "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.sig", "expiry_date": expiry_ms},
        option=orjson.OPT_INDENT_2).decode())
    os.chmod(path, 0o600)
    return path


async def test_an_import_reads_the_file_renews_a_lapsed_token_and_never_changes_it(
    google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    pair = google.oauth.issue(lifetime=-60)  # gemini-cli last ran a while ago
    path = creds_file(tmp_path, pair, (time.time() - 60) * 1000)
    before, stat = path.read_bytes(), path.stat()
    account = await read_import(GEMINI, path, TokenClient(http), google.settings())
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert google.oauth.refresh_calls == 1  # renewed before the setup needed it
    creds = account.credentials
    assert creds["access_token"] != pair.access and google.oauth.is_valid(creds["access_token"])
    assert creds["refresh_token"] == pair.refresh  # Google does not rotate it
    assert creds["extra"]["project"] == google.assist.managed_project
    assert creds["id_token"].startswith("eyJ") and "openid" in creds["scope"]

    fresh = google.oauth.issue()
    other = creds_file(tmp_path / "b", fresh, (time.time() + 3000) * 1000)
    imported = GEMINI.parse_import(other.read_bytes(), time.time())
    assert imported.access_token == fresh.access
    assert imported.expires_at is not None and abs(imported.expires_at - (time.time() + 3000)) < 5
    for bad in (b"[]", b"{}", b"not json",
                b'{"type": "external_account_authorized_user", "access_token": "x"}'):
        with pytest.raises(ValueError):
            GEMINI.parse_import(bad, time.time())


# ------------------------------------------------------------------ through the gateway

async def test_the_official_sdks_through_a_gemini_cli_account(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    gw = await gateway_with(aiohttp_client, tmp_path, google, account)
    model = f"gemini-cli/{MODEL}"
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    answer = await oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "ping"}])
    assert answer.choices[0].message.content == "Hello! You said: ping"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    stream = await oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "pong"}], stream=True,
        stream_options={"include_usage": True})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! You said: pong"

    google_sdk = genai.Client(api_key="x", http_options={"base_url": gw.base_url,
                                                        "api_version": "v1beta"})
    said = await google_sdk.aio.models.generate_content(model=model, contents="hello")
    assert said.text == "Hello! You said: hello"
    assert said.usage_metadata is not None and said.usage_metadata.prompt_token_count
    chunks = [c.text async for c in await google_sdk.aio.models.generate_content_stream(
        model=model, contents="again")]
    assert len(chunks) > 1 and "".join(t or "" for t in chunks) == "Hello! You said: again"
    counted = await google_sdk.aio.models.count_tokens(model=model, contents="count these")
    assert counted.total_tokens == 3  # the fake: about four characters a token

    claude = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="x", max_retries=0)
    message = await claude.messages.create(model=model, max_tokens=64,
                                           messages=[{"role": "user", "content": "hey"}])
    assert message.content[0].type == "text" and message.content[0].text == (
        "Hello! You said: hey")

    # every generate call went in the envelope, to the onboarded project, with the bearer
    generated = google.calls("generateContent") + google.calls("streamGenerateContent")
    assert len(generated) == 5
    for call in generated:
        assert call.json["project"] == google.assist.managed_project
        assert call.json["model"] == MODEL and "contents" in call.json["request"]
        assert call.headers["authorization"] == f"Bearer {account.credentials['access_token']}"
    assert google.calls("countTokens")[0].json == {"request": {
        "model": f"models/{MODEL}",
        "contents": [{"parts": [{"text": "count these"}], "role": "user"}]}}
    # the project was set up once, at the sign-in
    assert len(google.calls("loadCodeAssist")) == 1


async def test_an_expired_token_is_renewed_before_the_call_and_after_a_401(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    lapsed = {**account.credentials, "expires_at": time.time() - 5}
    gw = await gateway_with(aiohttp_client, tmp_path, google,
                            type(account)(lapsed, label=account.label))
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    model = f"gemini-cli/{MODEL}"
    await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "a"}])
    assert google.oauth.refresh_calls == 1
    assert account.credentials["access_token"] not in google.tokens_seen()  # never sent
    (conn,) = [c for c in await gw.store.list_connections() if c.type == "gemini-cli"]
    assert google.oauth.is_valid(conn.credentials["access_token"])
    assert conn.credentials["refresh_token"] == account.credentials["refresh_token"]
    assert conn.credentials["extra"]["project"] == google.assist.managed_project  # kept

    # elsewhere, the service drops a token before its time: a 401, one renewal, a retry
    other = await signed_in(google, http)
    gw2 = await gateway_with(aiohttp_client, tmp_path / "2", google, other)
    google.oauth.expire(other.credentials["access_token"])
    oai2 = openai.AsyncOpenAI(base_url=gw2.base_url + "/v1", api_key="x", max_retries=0)
    answer = await oai2.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "b"}])
    assert answer.choices[0].message.content == "Hello! You said: b"
    assert google.oauth.refresh_calls == 2
    assert google.tokens_seen()[-2:] == [other.credentials["access_token"],
                                         google.tokens_seen()[-1]]


async def test_a_revoked_refresh_token_means_a_new_sign_in(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    google.oauth.revoke(account.credentials["refresh_token"])
    lapsed = {**account.credentials, "expires_at": time.time() - 5}
    gw = await gateway_with(aiohttp_client, tmp_path, google,
                            type(account)(lapsed, label=account.label))
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await oai.chat.completions.create(model=f"gemini-cli/{MODEL}",
                                          messages=[{"role": "user", "content": "c"}])
    assert caught.value.status_code == 401 and "needs a new sign-in" in caught.value.message
    assert "login gemini" in caught.value.message
    assert google.tokens_seen() == []  # nothing sent with a dead token
    (conn,) = [c for c in await gw.store.list_connections() if c.type == "gemini-cli"]
    assert "revoked" in conn.credentials[SIGN_IN_REQUIRED]["reason"]
    listed = await (await gw.client.get("/api/providers", headers=gw.admin_headers)).json()
    (view,) = [p for p in listed["providers"] if p["id"] == conn.id]
    assert view["oauth"]["status"] == "needs_sign_in"
    assert view["oauth"]["account"] == "someone@example.com"


async def test_the_daily_quota_rests_the_account_until_the_reset_and_the_next_serves(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    first, second = await signed_in(google, http), await signed_in(google, http)
    gw = await gateway_with(aiohttp_client, tmp_path, google, first, second)
    by_token = {first.credentials["access_token"]: "first",
                second.credentials["access_token"]: "second"}
    google.assist.script.append(daily_limit(retry_delay="3600s"))
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    model = f"gemini-cli/{MODEL}"
    answer = await oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one"}])
    assert answer.choices[0].message.content == "Hello! You said: one"
    assert [by_token[t] for t in google.tokens_seen()] == ["first", "second"]
    rows = {r["name"]: r for r in gw.resilience.snapshot(
        gw.catalog.connections.values())["connections"]}
    rest = rows["google-0"]["cooldown_left"]
    assert 3500 <= rest <= 86_400 and rest >= daily_reset_in(time.time()) - 5
    assert rows["google-1"]["cooldown_left"] == 0
    # resting: the next requests go straight to the second account, never retried
    for text in ("two", "three"):
        await oai.chat.completions.create(model=model,
                                          messages=[{"role": "user", "content": text}])
    assert [by_token[t] for t in google.tokens_seen()] == ["first"] + ["second"] * 3
    assert google.oauth.refresh_calls == 0
    limits = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
    quota = {r["name"]: r.get("quota") for r in limits["connections"]}["google-0"]
    assert quota["exhausted"] is True and quota["reason"] == "the daily quota is used up"
    now = time.time()
    assert quota["resets_at"] == pytest.approx(now + max(daily_reset_in(now), 3600), abs=5)
    # neither an operator's reset of the cooldowns nor an edit of the connection (its
    # provider rebuilt) ends the rest
    first_id = next(c.id for c in gw.catalog.connections.values() if c.name == "google-0")
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "4"}])
    old = gw.catalog.providers[first_id]
    resp = await gw.client.put(f"/api/providers/{first_id}", json={"rpm": 500},
                               headers=gw.admin_headers)
    assert resp.status == 200 and gw.catalog.providers[first_id] is not old
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "5"}])
    assert [by_token[t] for t in google.tokens_seen()] == ["first"] + ["second"] * 5
    await oai.close()


async def test_the_models_remaining_allowance_is_read_with_the_model_list(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    gw = await gateway_with(aiohttp_client, tmp_path, google, account)
    (conn_id,) = gw.catalog.providers
    google.assist.buckets[1]["remainingFraction"] = 0.0  # gemini-2.5-pro's day is spent
    google.assist.buckets[1]["remainingAmount"] = "0"
    listed = await (await gw.client.get("/v1/models", headers=gw.admin_headers)).json()
    assert f"gemini-cli/{MODEL}" in {m["id"] for m in listed["data"]}
    (call,) = google.calls("retrieveUserQuota")
    assert call.json == {"project": google.assist.managed_project}
    limits = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
    quota = next(r for r in limits["connections"] if r["id"] == conn_id)["quota"]
    windows = {w["name"]: w for w in quota["windows"]}
    assert windows[MODEL]["used_percent"] == 25.0 and windows[MODEL]["remaining"] == 750
    assert windows["gemini-2.5-pro"]["used_percent"] == 100.0
    assert 0 < windows[MODEL]["resets_at"] - time.time() <= 86_400
    assert quota["plan"] == "free-tier" and quota["exhausted"] is False  # one model only
    # the setting turns the reading off
    resp = await gw.client.put(f"/api/providers/{conn_id}",
                               json={"settings": {"read_quota": False}},
                               headers=gw.admin_headers)
    assert resp.status == 200
    await gw.catalog.models_of(gw.catalog.providers[conn_id], max_age=0)
    assert len(google.calls("retrieveUserQuota")) == 1


async def test_a_connection_added_without_a_project_sets_it_up_once(
    aiohttp_client: Any, google: Google, tmp_path: Path,
) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    pair = google.oauth.issue()
    view = await gw.add_provider({"type": "gemini-cli", "name": "by-hand",
                                  "settings": google.settings(),
                                  "credentials": {"access_token": pair.access,
                                                  "refresh_token": pair.refresh,
                                                  "expires_at": pair.expires_at}})
    assert view["prefix"] == "gemini-cli"
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    asked = [oai.chat.completions.create(model=f"gemini-cli/{MODEL}",
                                         messages=[{"role": "user", "content": f"q{i}"}])
             for i in range(5)]
    await asyncio.gather(*asked)
    assert len(google.calls("onboardUser")) == 1  # five requests, one setup
    stored = await gw.store.get_connection(view["id"])
    assert stored is not None
    assert stored.credentials["extra"]["project"] == google.assist.managed_project


# ------------------------------------------------------------------ the pure pieces

def test_loopback_redirects_on_any_port_and_pasted_ones() -> None:
    assert is_loopback("http://127.0.0.1:0/oauth2callback")
    assert is_loopback("http://localhost:1455/auth/callback")
    assert not is_loopback("https://codeassist.google.com/authcode")
    assert not is_loopback("https://127.0.0.1:8/cb")  # a listener serves http only
    assert with_port("http://127.0.0.1:0/oauth2callback", 51234) == (
        "http://127.0.0.1:51234/oauth2callback")
    assert with_port("http://[::1]:0/cb?x=1", 8) == "http://[::1]:8/cb?x=1"
    endpoints = GEMINI.endpoints({"no_browser": True, "project": "p"})
    assert endpoints.redirect_uri == "https://codeassist.google.com/authcode"
    assert endpoints.settings["project"] == "p"
    assert GEMINI.endpoints({"no_browser": True, "oauth_redirect_uri": "http://localhost:9/c"}
                            ).redirect_uri == "http://localhost:9/c"  # an override wins
    assert GEMINI.endpoints({}).url("api") == "https://cloudcode-pa.googleapis.com/v1internal"


def test_the_envelope_and_its_unwrapping() -> None:
    request = {"model": "gemini-2.5-pro", "contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    assert envelope("models/gemini-2.5-pro", "p-1", request, "r-1") == {
        "model": "gemini-2.5-pro", "project": "p-1", "user_prompt_id": "r-1",
        "request": {"contents": request["contents"]}}
    inner = {"candidates": [], "usageMetadata": {"promptTokenCount": 1}}
    assert orjson.loads(unwrap_body(orjson.dumps({"response": inner, "traceId": "t"}))) == inner
    assert unwrap_body(b'{"error": {"code": 500}}') == b'{"error": {"code": 500}}'
    frame = b'data: {"response": {"candidates": []}, "traceId": "t"}\r\n\r\n'
    assert unwrap_frame(frame) == b'data: {"candidates":[]}\n\n'
    for kept in (b'data: {"error": {"code": 429}}\n\n', b": keep-alive\n\n", b"data: [x\n\n"):
        assert unwrap_frame(kept) == kept


def test_only_the_days_quota_rests_until_the_reset() -> None:
    daily = daily_limit().error["details"]
    assert is_daily_limit(daily)
    per_minute = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                   "reason": "RATE_LIMIT_EXCEEDED"},
                  {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                   "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]
    assert not is_daily_limit(per_minute)
    # 2026-07-01 23:30 in Los Angeles (PDT, UTC-7) is 06:30 UTC: the reset is 30 min away
    assert daily_reset_in(1782887400.0) == pytest.approx(1800.0)
    reset = daily_reset_in(time.time())
    assert 0 < reset <= 86_400


def test_the_quota_buckets_become_windows() -> None:
    windows = quota_windows({"buckets": [
        {"modelId": "gemini-2.5-pro", "tokenType": "REQUESTS", "remainingFraction": 0.75,
         "remainingAmount": "750", "resetTime": "2025-10-22T16:01:15Z"},
        {"modelId": "gemini-2.5-flash", "tokenType": "TOKENS", "remainingFraction": 1},
        {"tokenType": "REQUESTS"}, "not a bucket"]})
    assert [(w.name, w.used_percent, w.remaining, w.resets_at) for w in windows] == [
        ("gemini-2.5-pro", 25.0, 750.0, 1761148875.0),
        ("gemini-2.5-flash TOKENS", 0.0, None, None)]
    assert quota_windows({}) == [] and quota_windows(None) == []


def test_the_provider_type_describes_its_settings() -> None:
    assert GeminiCliProvider.auth_kind == "oauth" and GeminiCliProvider.oauth is GEMINI
    assert "count_tokens" in GeminiCliProvider.capabilities
    settings, _ = GeminiCliProvider.configure({}, {"access_token": "a"}, None)
    assert settings["base_url"] == "https://cloudcode-pa.googleapis.com/v1internal"
    for bad in ({"project": ""}, {"no_browser": "yes"}, {"read_quota": 1},
                {"oauth_token_url": "ftp://x"}):
        with pytest.raises(ValueError):
            GeminiCliProvider.configure(bad, {"access_token": "a"}, None)


# ------------------------------------------------------------------ the API and the CLI

SECRET_KEY_B64 = base64.urlsafe_b64encode(b"k" * 32).decode()  # make_test_config's key
OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")


def cli_env(home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["OMNIROUTE_SECRET_KEY"] = SECRET_KEY_B64
    if home is not None:
        env["HOME"] = str(home)
    return env


def setting_args(settings: dict[str, Any]) -> list[str]:
    return [arg for k, v in settings.items()
            for arg in ("--setting", f"{k}={orjson.dumps(v).decode()}"
                        if isinstance(v, bool) else f"{k}={v}")]


async def test_sign_in_through_the_management_api(
    aiohttp_client: Any, google: Google, tmp_path: Path,
) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    h = gw.admin_headers
    services = await (await gw.client.get("/api/oauth/services", headers=h)).json()
    gemini = next(s for s in services["services"] if s["name"] == "gemini")
    assert (gemini["flow"], gemini["provider_type"], gemini["import_source"]) == (
        "loopback", "gemini-cli", "gemini-cli")
    resp = await gw.client.post("/api/oauth/gemini/start", headers=h,
                                json={"settings": google.settings()})
    assert resp.status == 200, await resp.text()
    started = await resp.json()
    assert started["listening"] is True and urlsplit(started["redirect_uri"]).port
    async with aiohttp.ClientSession() as http, http.get(started["url"]) as page:
        assert page.status == 200  # the browser came back to the gateway's listener
    resp = await gw.client.post("/api/oauth/gemini/poll", headers=h,
                                json={"state": started["state"]})
    assert resp.status == 201, await resp.text()
    connection = (await resp.json())["connection"]
    assert connection["name"] == "someone@example.com" and connection["type"] == "gemini-cli"
    stored = await gw.store.get_connection(connection["id"])
    assert stored is not None
    assert stored.credentials["extra"]["project"] == google.assist.managed_project
    await gw.gateway.reload()
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        answer = await oai.chat.completions.create(
            model=f"gemini-cli/{MODEL}", messages=[{"role": "user", "content": "api"}])
    assert answer.choices[0].message.content == "Hello! You said: api"
    # an ineligible account: the sign-in fails with Google's reason, nothing is stored
    google.assist.kind = "ineligible"
    started = await (await gw.client.post("/api/oauth/gemini/start", headers=h,
                                          json={"settings": google.settings()})).json()
    async with aiohttp.ClientSession() as http, http.get(started["url"]) as page:
        assert page.status == 200
    refused = await gw.client.post("/api/oauth/gemini/poll", headers=h,
                                   json={"state": started["state"]})
    assert refused.status == 403
    assert "not eligible" in (await refused.json())["error"]["message"]
    assert len(await gw.store.list_connections()) == 1


async def test_login_without_a_browser_and_import_on_the_command_line(
    aiohttp_server: Any, tmp_path: Path,
) -> None:
    google = await make_google(aiohttp_server, kind="standard")  # no onboarding wait
    settings = google.settings(no_browser=True, project="my-gcp-project")
    data_dir = tmp_path / "gw"
    proc = await asyncio.create_subprocess_exec(
        OMNIROUTE_BIN, "--data-dir", str(data_dir), "login", "gemini", "--name", "cli",
        *setting_args(settings), "--timeout", "30", env=cli_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    url, prompt = "", b""
    async with asyncio.timeout(20):
        while not url:
            line = await proc.stderr.readline()
            assert line, "the command ended before printing the URL"
            if line.startswith(b"http"):
                url = line.decode().strip()
        prompt = await proc.stderr.read(len(b"Paste the code the page shows:"))
    assert prompt == b"Paste the code the page shows:"
    assert "redirect_uri=https%3A%2F%2Fcodeassist.google.com%2Fauthcode" in url
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as page:
        code = parse_qs(urlsplit(page.headers["Location"]).query)["code"][0]
    proc.stdin.write(code.encode() + b"\n")
    await proc.stdin.drain()
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "signed in: conn_" in out.decode() and "cli (gemini-cli) prefix gemini-cli/" in (
        out.decode())

    # an import from gemini-cli's file at its default place (HOME), read only
    pair = google.oauth.issue()
    path = creds_file(tmp_path, pair, (time.time() + 3000) * 1000)
    before = path.read_bytes()
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OMNIROUTE_")}
    env.update(OMNIROUTE_SECRET_KEY=SECRET_KEY_B64, HOME=str(tmp_path / "home"))
    result = await asyncio.to_thread(CliRunner(env=env).invoke, cli, [
        "--data-dir", str(data_dir), "providers", "import", "gemini-cli",
        *setting_args(google.settings(project="my-gcp-project"))])
    assert result.exit_code == 0, result.output
    assert "imported: conn_" in result.output and "(gemini-cli)" in result.output
    assert path.read_bytes() == before
    assert pair.access not in result.output and str(pair.refresh) not in result.output


async def test_the_fake_refuses_what_code_assist_would(
    google: Google, http: aiohttp.ClientSession,
) -> None:
    """The fake's own strictness, so the tests above prove something."""
    pair = google.oauth.issue()
    google.assist.onboarded = "free-tier"
    good = envelope(MODEL, google.assist.managed_project,
                    {"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    url = f"{google.api}:generateContent"

    async def status(body: Any, token: str = pair.access, **headers: str) -> int:
        sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                **headers}
        async with http.post(url, data=orjson.dumps(body), headers=sent) as resp:
            return resp.status

    assert await status(good) == 200
    assert await status(good, token="ya29-unknown") == 401
    assert await status(good, **{"Content-Type": "text/plain"}) == 400
    assert await status(good["request"]) == 400  # no envelope
    assert await status({**good, "extra": 1}) == 400
    assert await status({**good, "project": "someone-elses"}) == 403
    assert await status({**good, "model": f"models/{MODEL}"}) == 404
    assert await status({**good, "request": {"contents": []}}) == 400
