"""gemini-cli's Google sign-in (loopback on any free port, the pasted fallbacks), the Code
Assist project setup with its polled operation, and imports of ``~/.gemini/oauth_creds.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import openai
import pytest
from fakes.code_assist_upstream import (
    CLIENT_SECRET,
)
from test_pricing import subscription_charges

from gemini_cli.support import MODEL, Google, creds_file, gateway_with, make_google, signed_in
from omniroute.errors import GatewayError
from omniroute.oauth import OAuthError, SignIn, TokenClient, read_import
from omniroute.providers import code_assist
from omniroute.providers.code_assist import (
    ProjectRequired,
    SetupError,
)
from omniroute.providers.gemini_cli import GEMINI


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
