"""Provider type ``qwen`` and sign-in ``qwen``: qwen-code's device flow with PKCE (pending,
slow_down, expiry, refusal), the API host the token names, renewals, the terminal
"needs sign-in", imports of ``~/.qwen/oauth_creds.json``, a quota 429, and the OpenAI and
Anthropic SDKs through the gateway. Everything runs against ``fakes.qwen_upstream``."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from click.testing import CliRunner
from fakes.openai_upstream import error
from fakes.qwen_upstream import FakeQwen, QwenOAuthServer
from test_pricing import subscription_charges

from omniroute.cli import cli
from omniroute.credentials import SIGN_IN_REQUIRED
from omniroute.oauth import (
    AccessDenied,
    Account,
    ExpiredToken,
    InvalidGrant,
    OAuthUnavailable,
    SignIn,
    TokenClient,
    read_import,
    save_account,
)
from omniroute.oauth.pkce import challenge_of
from omniroute.providers.qwen import QUOTA_REST, QWEN, QwenProvider, api_base
from omniroute.resilience.clock import ManualClock
from omniroute.testing import GatewayHarness, make_test_config, start_harness

MODEL = "qwen3-coder-plus"


@dataclass
class Qwen:
    oauth: QwenOAuthServer
    api: FakeQwen
    host: str  # the fake API's scheme://host:port, as a token's resource_url names it

    def settings(self, **more: Any) -> dict[str, Any]:
        base = self.oauth.base_url
        return {"oauth_device_url": f"{base}/api/v1/oauth2/device/code",
                "oauth_token_url": f"{base}/api/v1/oauth2/token", **more}


async def serve(aiohttp_server: Any, app: Any) -> str:
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


async def second_api(aiohttp_server: Any, oauth: QwenOAuthServer) -> tuple[FakeQwen, str]:
    api = FakeQwen(oauth)
    return api, await serve(aiohttp_server, api.app)


@pytest.fixture
async def qwen(aiohttp_server: Any) -> Qwen:
    oauth = QwenOAuthServer(device_interval=0.05)
    oauth.base_url = await serve(aiohttp_server, oauth.app)
    api, host = await second_api(aiohttp_server, oauth)
    oauth.serve_resource(host)
    return Qwen(oauth, api, host)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def signed_in(qwen: Qwen, http: aiohttp.ClientSession) -> Account:
    signin = SignIn(QWEN, TokenClient(http), qwen.settings())
    view = await signin.start()
    asyncio.get_running_loop().call_later(0.1, qwen.oauth.approve, view["user_code"])
    tokens = await signin.wait(timeout=5.0)
    return await signin.account(tokens)


async def gateway_with(aiohttp_client: Any, tmp_path: Path, qwen: Qwen,
                       *accounts: Account) -> GatewayHarness:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    for i, account in enumerate(accounts):
        conn, _ = await save_account(gw.registry.plugins, gw.store, QWEN, account,
                                     name=f"qwen-{i}", settings=qwen.settings())
        conn.priority = i
        await gw.store.save_connection(conn)
    await gw.gateway.reload()
    return gw


# ------------------------------------------------------------------ the device flow

async def test_the_device_flow_with_pkce_waits_slows_down_and_gets_the_api_host(
    qwen: Qwen, http: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    signin = SignIn(QWEN, TokenClient(http), qwen.settings(), clock=clock.monotonic)
    view = await signin.start()
    assert view["flow"] == "device" and view["user_code"]
    assert view["verification_uri_complete"].endswith(f"user_code={view['user_code']}")
    (asked,) = qwen.oauth.requests
    assert asked.path == "/api/v1/oauth2/device/code"
    assert asked.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert uuid.UUID(asked.headers["x-request-id"])
    assert asked.json["client_id"] == "f0304373b74a44d2b584a3fb70ca9e56"
    assert asked.json["scope"] == "openid profile email model.completion"
    assert asked.json["code_challenge_method"] == "S256"
    challenge = asked.json["code_challenge"]

    def token_calls() -> list[Any]:
        return [r for r in qwen.oauth.requests if r.path.endswith("/token")]

    assert await signin.poll() is None and token_calls() == []  # before the interval
    clock.advance(0.06)
    assert await signin.poll() is None  # authorization_pending (400)
    clock.advance(0.06)
    assert await signin.poll() is None  # polled again at once: slow_down (429)
    assert signin.device is not None and signin.device.interval == pytest.approx(5.05)
    assert len(token_calls()) == 2
    qwen.oauth.approve(view["user_code"])
    clock.advance(1.0)
    assert await signin.poll() is None  # slowed down: not yet
    assert len(token_calls()) == 2
    clock.advance(5.0)
    await asyncio.sleep(0.06)  # and the real server's own clock
    tokens = await signin.poll()
    assert tokens is not None and qwen.oauth.is_valid(tokens.access_token)
    last = token_calls()[-1].json
    assert last["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
    assert challenge_of(last["code_verifier"]) == challenge
    account = await signin.account(tokens)
    assert account.credentials["extra"]["resource_url"] == qwen.host
    assert account.credentials["refresh_token"]


async def test_a_device_sign_in_ends_on_expiry_or_refusal(
    qwen: Qwen, http: aiohttp.ClientSession,
) -> None:
    for end, raised in ((qwen.oauth.expire_device, ExpiredToken),
                        (qwen.oauth.deny, AccessDenied)):
        signin = SignIn(QWEN, TokenClient(http), qwen.settings())
        view = await signin.start()
        end(view["user_code"])
        with pytest.raises(raised):
            await signin.wait(timeout=5.0)
    # and the bound of the wait itself
    signin = SignIn(QWEN, TokenClient(http), qwen.settings())
    await signin.start()
    started = time.monotonic()
    with pytest.raises(ExpiredToken):
        await signin.wait(timeout=0.3)
    assert time.monotonic() - started < 2.0


# ------------------------------------------------------------------ through the gateway

async def test_the_openai_and_anthropic_sdks_through_a_qwen_account(
    aiohttp_client: Any, qwen: Qwen, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(qwen, http)
    gw = await gateway_with(aiohttp_client, tmp_path, qwen, account)
    model = f"qwen/{MODEL}"
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        answer = await oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "ping"}])
        assert answer.choices[0].message.content == "Hello! You said: ping"
        stream = await oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "pong"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello! You said: pong"
    async with anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="x",
                                        max_retries=0) as claude:
        message = await claude.messages.create(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "hey"}])
        assert message.content[0].type == "text"
        assert message.content[0].text == "Hello! You said: hey"
        async with claude.messages.stream(
                model=model, max_tokens=64,
                messages=[{"role": "user", "content": "streamed"}]) as events:
            assert await events.get_final_text() == "Hello! You said: streamed"
    chats = [r for r in qwen.api.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 4
    for call in chats:
        assert call.headers["authorization"] == f"Bearer {account.credentials['access_token']}"
        assert call.headers["x-dashscope-authtype"] == "qwen-oauth"
        assert call.headers["x-dashscope-cachecontrol"] == "enable"
        assert call.headers["user-agent"] == call.headers["x-dashscope-useragent"]
        assert call.headers["user-agent"].startswith("omniroute/")  # not qwen-code's
        assert call.json["model"] == MODEL
    streamed = [c.json for c in chats if c.json.get("stream")]
    assert streamed and all(c["stream_options"]["include_usage"] for c in streamed)


async def test_renewals_keep_the_account_and_follow_a_moved_api_host(
    aiohttp_client: Any, aiohttp_server: Any, qwen: Qwen, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    account = await signed_in(qwen, http)
    lapsed = Account({**account.credentials, "expires_at": time.time() - 5})
    gw = await gateway_with(aiohttp_client, tmp_path, qwen, lapsed)
    moved, moved_host = await second_api(aiohttp_server, qwen.oauth)
    qwen.oauth.serve_resource(moved_host)  # the renewal names another host
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        await oai.chat.completions.create(model=f"qwen/{MODEL}",
                                          messages=[{"role": "user", "content": "a"}])
    assert qwen.oauth.refresh_calls == 1
    assert qwen.api.tokens_seen() == [] and len(moved.tokens_seen()) == 1
    (conn,) = [c for c in await gw.store.list_connections() if c.type == "qwen"]
    assert conn.credentials["extra"]["resource_url"] == moved_host
    assert conn.credentials["refresh_token"] != account.credentials["refresh_token"]  # rotated
    assert moved.tokens_seen() == [conn.credentials["access_token"]]
    refresh = [r for r in qwen.oauth.requests if r.json.get("grant_type") == "refresh_token"]
    assert refresh[0].json == {"grant_type": "refresh_token", "client_id": QWEN.client_id,
                               "refresh_token": account.credentials["refresh_token"]}


async def test_a_revoked_refresh_token_means_a_new_sign_in(
    aiohttp_client: Any, qwen: Qwen, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(qwen, http)
    qwen.oauth.revoke(account.credentials["refresh_token"])
    gw = await gateway_with(aiohttp_client, tmp_path, qwen,
                            Account({**account.credentials, "expires_at": time.time() - 5}))
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        with pytest.raises(openai.APIStatusError) as caught:
            await oai.chat.completions.create(model=f"qwen/{MODEL}",
                                              messages=[{"role": "user", "content": "c"}])
    assert caught.value.status_code == 401 and "login qwen" in caught.value.message
    assert qwen.api.tokens_seen() == []
    (conn,) = [c for c in await gw.store.list_connections() if c.type == "qwen"]
    assert SIGN_IN_REQUIRED in conn.credentials


async def test_an_invalid_request_refusal_of_a_renewal_is_for_good_too(
    qwen: Qwen, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair = qwen.oauth.issue()
    endpoints = QWEN.endpoints(qwen.settings())
    credentials = {"access_token": pair.access, "refresh_token": pair.refresh}
    renewed = await QWEN.renew(credentials, TokenClient(http), endpoints)
    assert qwen.oauth.is_valid(renewed["access_token"])
    monkeypatch.setattr(qwen.oauth, "_refresh_grant", lambda body: qwen.oauth._error(
        "invalid_request", "refresh token expired"))
    with pytest.raises(InvalidGrant):
        await QWEN.renew(renewed, TokenClient(http), endpoints)
    qwen.oauth.fail_next = 1  # a 503 is not a refusal: tried again later
    with pytest.raises(OAuthUnavailable):
        await QWEN.renew(renewed, TokenClient(http), endpoints)


async def test_a_quota_429_rests_the_account_and_the_next_serves(
    aiohttp_client: Any, qwen: Qwen, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    first, second = await signed_in(qwen, http), await signed_in(qwen, http)
    gw = await gateway_with(aiohttp_client, tmp_path, qwen, first, second)
    who = {first.credentials["access_token"]: "first", second.credentials["access_token"]: "second"}
    # qwen-code issues #1742, #3281: "Free allocated quota exceeded"
    qwen.api.script.append(error(429, "Free allocated quota exceeded.",
                                 headers={"Retry-After": "3600"}))
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        for text in ("one", "two"):
            answer = await oai.chat.completions.create(
                model=f"qwen/{MODEL}", messages=[{"role": "user", "content": text}])
            assert answer.choices[0].message.content == f"Hello! You said: {text}"
    assert [who[t] for t in qwen.api.tokens_seen()] == ["first", "second", "second"]
    rows = {r["name"]: r for r in gw.resilience.snapshot(
        gw.catalog.connections.values())["connections"]}
    assert rows["qwen-0"]["cooldown_left"] > 3500 and rows["qwen-0"]["terminal_reason"] is None
    assert rows["qwen-1"]["cooldown_left"] == 0
    limits = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
    quota = {r["name"]: r.get("quota") for r in limits["connections"]}["qwen-0"]
    assert quota["exhausted"] is True and quota["reason"] == "the allocated quota is used up"
    assert quota["resets_at"] == pytest.approx(time.time() + 3600, abs=5)
    # an operator's reset of the cooldowns does not end the rest
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        await oai.chat.completions.create(model=f"qwen/{MODEL}",
                                          messages=[{"role": "user", "content": "three"}])
    assert [who[t] for t in qwen.api.tokens_seen()][-1] == "second"
    assert len(qwen.api.tokens_seen()) == 4


async def test_a_quota_429_without_a_retry_after_rests_an_hour_and_a_rate_limit_less(
    aiohttp_client: Any, qwen: Qwen, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    first, second = await signed_in(qwen, http), await signed_in(qwen, http)
    gw = await gateway_with(aiohttp_client, tmp_path, qwen, first, second)
    qwen.api.script.append(error(429, "Requests rate limit exceeded, please try again later.",
                                 headers={"Retry-After": "20"}))
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        await oai.chat.completions.create(model=f"qwen/{MODEL}",
                                          messages=[{"role": "user", "content": "one"}])
        first_id = next(c.id for c in gw.catalog.connections.values() if c.name == "qwen-0")
        quota = gw.catalog.providers[first_id].quota_view()
        assert quota is not None and quota["exhausted"] is False  # a rate, not the quota
        await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
        qwen.api.script.append(error(429, "Free allocated quota exceeded."))
        await oai.chat.completions.create(model=f"qwen/{MODEL}",
                                          messages=[{"role": "user", "content": "two"}])
    quota = gw.catalog.providers[first_id].quota_view()
    assert quota is not None and quota["exhausted"] is True
    assert quota["resets_at"] == pytest.approx(time.time() + QUOTA_REST, abs=5)


async def test_a_qwen_request_costs_nothing_though_no_list_price_is_known(
    aiohttp_client: Any, qwen: Qwen, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    gw = await gateway_with(aiohttp_client, tmp_path, qwen, await signed_in(qwen, http))
    (conn_id,) = gw.catalog.providers
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        await oai.chat.completions.create(model=f"qwen/{MODEL}",
                                          messages=[{"role": "user", "content": "price"}])
    row, usage = await subscription_charges(gw, conn_id)
    # genai-prices knows no Qwen Code model (it has no Alibaba provider): 0, unlisted
    assert row["prompt_tokens"] and row["cost_usd"] == 0.0 and row["list_cost_usd"] is None
    assert (usage["cost_usd"], usage["list_cost_usd"], usage["saved_usd"]) == (0, 0, 0)


# ------------------------------------------------------------------ import

async def test_an_import_reads_the_qwen_code_file_and_never_changes_it(
    aiohttp_client: Any, qwen: Qwen, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    pair = qwen.oauth.issue()
    path = tmp_path / "home" / ".qwen" / "oauth_creds.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps({
        "access_token": pair.access, "token_type": "Bearer", "refresh_token": pair.refresh,
        "resource_url": qwen.host, "expiry_date": int(pair.expires_at * 1000)},
        option=orjson.OPT_INDENT_2))
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    account = await read_import(QWEN, path, TokenClient(http), qwen.settings())
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    creds = account.credentials
    assert (creds["access_token"], creds["refresh_token"]) == (pair.access, pair.refresh)
    assert abs(creds["expires_at"] - pair.expires_at) < 0.01
    assert creds["extra"] == {"resource_url": qwen.host}
    gw = await gateway_with(aiohttp_client, tmp_path, qwen, account)
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        answer = await oai.chat.completions.create(
            model=f"qwen/{MODEL}", messages=[{"role": "user", "content": "imported"}])
    assert answer.choices[0].message.content == "Hello! You said: imported"
    assert qwen.api.tokens_seen() == [pair.access]
    for bad in (b"{}", b"[1]", b'{"access_token": "a", "resource_url": "://"}'):
        with pytest.raises(ValueError):
            QWEN.parse_import(bad, time.time())


# ------------------------------------------------------------------ the pieces

def test_the_api_base_a_resource_url_names() -> None:
    assert api_base("portal.qwen.ai") == "https://portal.qwen.ai/v1"
    assert api_base("https://portal.qwen.ai/") == "https://portal.qwen.ai/v1"
    assert api_base("https://dashscope.aliyuncs.com/compatible-mode/v1") == (
        "https://dashscope.aliyuncs.com/compatible-mode/v1")
    assert api_base(None) == "https://dashscope.aliyuncs.com/compatible-mode/v1"


def test_the_provider_type_and_its_overrides() -> None:
    assert QwenProvider.auth_kind == "oauth" and QwenProvider.oauth is QWEN
    assert QWEN.flow == "device" and QWEN.pkce and QWEN.token_encoding == "form"
    endpoints = QWEN.endpoints({})
    assert endpoints.device_url == "https://chat.qwen.ai/api/v1/oauth2/device/code"
    assert endpoints.token_url == "https://chat.qwen.ai/api/v1/oauth2/token"
    assert QWEN.device_headers()["x-request-id"] != QWEN.device_headers()["x-request-id"]
    settings, _ = QwenProvider.configure({}, {"access_token": "a"}, None)
    assert "base_url" not in settings  # the token's resource_url decides
    settings, _ = QwenProvider.configure({"base_url": "https://proxy.corp/qwen/v1/"},
                                         {"access_token": "a"}, None)
    assert settings["base_url"] == "https://proxy.corp/qwen/v1"
    for bad in ({"base_url": "ftp://x"}, {"headers": []}, {"oauth_token_url": "nope"}):
        with pytest.raises(ValueError):
            QwenProvider.configure(bad, {"access_token": "a"}, None)


# ------------------------------------------------------------------ the API and the CLI

async def test_sign_in_through_the_management_api(
    aiohttp_client: Any, qwen: Qwen, tmp_path: Path,
) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    h = gw.admin_headers
    resp = await gw.client.post("/api/oauth/qwen/start", headers=h,
                                json={"name": "mine", "settings": qwen.settings()})
    assert resp.status == 200, await resp.text()
    started = await resp.json()
    assert started["flow"] == "device" and started["user_code"]
    assert started["verification_uri_complete"].endswith(started["user_code"])
    pending = await (await gw.client.post("/api/oauth/qwen/poll", headers=h,
                                          json={"state": started["state"]})).json()
    assert pending["status"] == "pending"
    qwen.oauth.approve(started["user_code"])
    done: dict[str, Any] = {}
    for _ in range(100):
        resp = await gw.client.post("/api/oauth/qwen/poll", headers=h,
                                    json={"state": started["state"]})
        done = await resp.json()
        if done.get("status") == "complete":
            assert resp.status == 201
            break
        await asyncio.sleep(0.06)
    assert done["connection"]["name"] == "mine" and done["connection"]["prefix"] == "qwen"
    await gw.gateway.reload()
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        answer = await oai.chat.completions.create(
            model=f"qwen/{MODEL}", messages=[{"role": "user", "content": "api"}])
    assert answer.choices[0].message.content == "Hello! You said: api"


async def test_import_on_the_command_line_from_the_default_path(
    aiohttp_client: Any, qwen: Qwen, tmp_path: Path,
) -> None:
    pair = qwen.oauth.issue()
    home = tmp_path / "home"
    path = home / ".qwen" / "oauth_creds.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps({"access_token": pair.access, "refresh_token": pair.refresh,
                                   "token_type": "Bearer", "resource_url": qwen.host,
                                   "expiry_date": int(pair.expires_at * 1000)}))
    before = path.stat()
    data_dir = tmp_path / "gw"
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OMNIROUTE_")}
    env.update(OMNIROUTE_SECRET_KEY=base64.urlsafe_b64encode(b"k" * 32).decode(),
               HOME=str(home))
    args = [a for k, v in qwen.settings().items() for a in ("--setting", f"{k}={v}")]
    result = await asyncio.to_thread(CliRunner(env=env).invoke, cli, [
        "--data-dir", str(data_dir), "providers", "import", "qwen", *args])
    assert result.exit_code == 0, result.output
    assert "imported: conn_" in result.output and "qwen (qwen) prefix qwen/" in result.output
    assert pair.access not in result.output
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_mode) == (
        before.st_mtime_ns, before.st_size, before.st_mode)
    gw = await start_harness(aiohttp_client, make_test_config(data_dir))
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        answer = await oai.chat.completions.create(
            model=f"qwen/{MODEL}", messages=[{"role": "user", "content": "cli"}])
    assert answer.choices[0].message.content == "Hello! You said: cli"
    assert qwen.api.tokens_seen() == [pair.access]


async def test_the_fake_refuses_what_qwen_would(qwen: Qwen, http: aiohttp.ClientSession) -> None:
    """The fake's own strictness, so the tests above prove something."""
    pair = qwen.oauth.issue()
    needed = {"Authorization": f"Bearer {pair.access}", "X-DashScope-AuthType": "qwen-oauth",
              "X-DashScope-CacheControl": "enable", "X-DashScope-UserAgent": "omniroute/t"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}

    async def status(headers: dict[str, str]) -> int:
        async with http.post(f"{qwen.host}/v1/chat/completions", json=body,
                             headers=headers) as resp:
            return resp.status

    assert await status(needed) == 200
    for name in needed:
        assert await status({k: v for k, v in needed.items() if k != name}) in (400, 401), name
    qwen.oauth.expire(pair.access)
    assert await status(needed) == 401
