"""The ``copilot`` subscription: GitHub's device flow (pending and slow_down answered
with a 200), the exchange for the short-lived Copilot token and its renewal before
expiry (one renewal however many requests), a revoked GitHub token, the premium quota
and the 402 quota_exceeded, imports of apps.json / hosts.json, and the official SDKs
through a copilot account; against fakes that refuse what the real services refuse
(``fakes.copilot_upstream``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from fakes.copilot_upstream import FakeCopilot, FakeGitHub, quota_exceeded
from test_cli import Cli, ok
from test_pricing import subscription_charges

from omniroute.credentials import SIGN_IN_REQUIRED
from omniroute.oauth import SignIn, TokenClient, read_import, save_account
from omniroute.providers.copilot import (
    CLIENT_ID,
    EDITOR_HEADERS,
    SERVICE,
    copilot_windows,
    next_month,
)
from omniroute.testing import GatewayHarness, make_test_config, start_harness


@dataclass
class World:
    github: FakeGitHub
    copilot: FakeCopilot
    gw: GatewayHarness
    sdk: openai.AsyncOpenAI | None = None
    anthropic_sdk: anthropic.AsyncAnthropic | None = None

    def settings(self, **more: Any) -> dict[str, Any]:
        """A connection's settings pointing every GitHub endpoint at the fake (the API
        base comes with the Copilot token, as it does from GitHub)."""
        base = self.github.base_url
        return {"oauth_device_url": f"{base}/login/device/code",
                "oauth_token_url": f"{base}/login/oauth/access_token",
                "oauth_copilot_token_url": f"{base}/copilot_internal/v2/token",
                "oauth_copilot_user_url": f"{base}/copilot_internal/user",
                "oauth_user_url": f"{base}/user", **more}

    async def account(self, github_token: str | None = None, *, name: str = "octocat",
                      priority: int = 0, lifetime: float | None = None,
                      ) -> tuple[dict[str, Any], str]:
        """An account as a sign-in leaves it; returns its view and its Copilot token."""
        token, expires = self.github.copilot_token(lifetime)
        creds = {"access_token": token, "expires_at": expires, "token_type": "Bearer",
                 "refresh_token": github_token or self.github.github_token(),
                 "extra": {"api_base": self.copilot.base_url}}
        view = await self.gw.add_provider({"type": "copilot", "name": name, "prefix": "copilot",
                                           "priority": priority, "settings": self.settings(),
                                           "credentials": creds})
        return view, token

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

    async def ask(self, text: str = "hi", model: str = "copilot/gpt-4.1") -> str:
        answer = await self.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}])
        return str(answer.choices[0].message.content)

    def tokens_seen(self) -> list[str]:
        return [r.headers.get("authorization", "").removeprefix("Bearer ")
                for r in self.copilot.seen()]


async def make_world(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
                     **knobs: Any) -> World:
    github = FakeGitHub(**knobs)
    github.base_url = str((await aiohttp_server(github.app)).make_url("")).rstrip("/")
    copilot = FakeCopilot(github)
    copilot.base_url = str((await aiohttp_server(copilot.app)).make_url("")).rstrip("/")
    github.api_url = copilot.base_url
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    return World(github, copilot, gw)


@pytest.fixture
async def world(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Any:
    made = await make_world(aiohttp_client, aiohttp_server, tmp_path)
    yield made
    await made.close()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the pieces

def test_the_service_is_the_copilot_extensions_own() -> None:
    assert SERVICE.client_id == CLIENT_ID == "Iv1.b507a08c87ecfe98"
    assert SERVICE.flow == "device" and not SERVICE.pkce and SERVICE.scopes == ("read:user",)
    assert SERVICE.device_url == "https://github.com/login/device/code"
    assert SERVICE.token_url == "https://github.com/login/oauth/access_token"
    urls = SERVICE.endpoints().urls
    assert urls["copilot_token"] == "https://api.github.com/copilot_internal/v2/token"
    assert urls["copilot_user"] == "https://api.github.com/copilot_internal/user"


def test_quota_snapshots_become_windows() -> None:
    windows, plan = copilot_windows({
        "copilot_plan": "individual", "quota_reset_date_utc": "2026-02-01T00:00:00.000Z",
        "quota_snapshots": {
            "chat": {"entitlement": 0, "remaining": 0, "percent_remaining": 100,
                     "unlimited": True},
            "premium_interactions": {"entitlement": 300, "remaining": -1,
                                     "percent_remaining": -0.33, "unlimited": False},
            "broken": "x"}})
    assert plan == "individual"
    premium = next(w for w in windows if w.name == "premium_interactions")
    assert (premium.remaining, premium.limit, premium.used_percent) == (-1.0, 300.0, 100.33)
    assert premium.resets_at == 1769904000.0 and not premium.unlimited
    assert next(w for w in windows if w.name == "chat").unlimited
    assert next_month(1767225600.0 + 86400 * 40) == 1772323200.0  # Feb 10 -> Mar 1 2026
    assert next_month(1767225600.0 - 86400) == 1767225600.0  # Dec 31 2025 -> Jan 1 2026


# ------------------------------------------------------------------ sign-in

async def test_the_device_flow_waits_slows_down_and_exchanges_the_token(
    world: World, http: aiohttp.ClientSession,
) -> None:
    ticks = Ticks()
    signin = SignIn(SERVICE, TokenClient(http), world.settings(), clock=ticks)
    view = await signin.start()
    asked = world.github.requests[-1]
    assert asked.path == "/login/device/code" and asked.json == {
        "client_id": CLIENT_ID, "scope": "read:user"}
    assert view["flow"] == "device" and view["user_code"] and view["verification_uri"]
    ticks.now += view["interval"]
    assert await signin.poll() is None  # authorization_pending, answered with a 200
    polled = world.github.requests[-1]
    assert polled.path == "/login/oauth/access_token"
    assert polled.json["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
    # polled again at once (the fake says too fast): slow_down, the interval grows by 5 s
    device = signin.device
    assert device is not None
    ticks.now += view["interval"]
    world.github.devices[device.code.device_code].last_poll = time.monotonic()
    assert await signin.poll() is None and device.interval == view["interval"] + 5
    assert await signin.poll() is None and device.polls == 2  # not before the new interval
    world.github.approve(view["user_code"])
    world.github.devices[device.code.device_code].last_poll = 0.0
    ticks.now += device.interval
    tokens = await signin.poll()
    assert tokens is not None and tokens.access_token.startswith("ghu-")
    account = await signin.account(tokens)
    await signin.close()
    creds = account.credentials
    assert account.label == "octocat"
    assert world.github.copilot_valid(creds["access_token"])
    assert creds["refresh_token"] == tokens.access_token  # the GitHub token renews it
    assert creds["expires_at"] == pytest.approx(time.time() + 1800, abs=5)
    assert creds["extra"]["api_base"] == world.copilot.base_url
    exchange = world.github.seen("/copilot_internal/v2/token")[-1]
    assert exchange.headers["authorization"] == f"token {tokens.access_token}"
    assert exchange.headers["editor-version"] and exchange.headers["editor-plugin-version"]
    # stored, it serves
    conn, new = await save_account(world.gw.registry.plugins, world.gw.store, SERVICE,
                                   account, settings=world.settings())
    assert new and conn.name == "octocat"
    await world.gw.gateway.reload()
    assert await world.ask("signed in") == "Hello! You said: signed in"


async def test_a_device_sign_in_through_the_management_api(world: World) -> None:
    gw, h = world.gw, world.gw.admin_headers
    resp = await gw.client.post("/api/oauth/copilot/start", headers=h,
                                json={"settings": world.settings()})
    started = await resp.json()
    assert resp.status == 200, started
    assert started["flow"] == "device" and started["user_code"]
    pending = await (await gw.client.post("/api/oauth/copilot/poll", headers=h,
                                          json={"state": started["state"]})).json()
    assert pending["status"] == "pending"
    world.github.approve(started["user_code"])
    done: dict[str, Any] = {}
    for _ in range(100):
        await asyncio.sleep(0.06)  # no faster than the interval: no slow_down
        resp = await gw.client.post("/api/oauth/copilot/poll", headers=h,
                                    json={"state": started["state"]})
        done = await resp.json()
        if done["status"] == "complete":
            assert resp.status == 201
            break
    connection = done["connection"]
    assert (connection["name"], connection["type"]) == ("octocat", "copilot")
    assert connection["oauth"]["status"] == "active"
    assert await world.ask("api sign-in") == "Hello! You said: api sign-in"
    assert world.github.exchanges == 1


async def test_a_refused_device_sign_in_ends(world: World, http: aiohttp.ClientSession) -> None:
    signin = SignIn(SERVICE, TokenClient(http), world.settings())
    view = await signin.start()
    world.github.deny(view["user_code"])
    from omniroute.oauth import AccessDenied

    with pytest.raises(AccessDenied):
        await signin.wait(timeout=3.0)


# ------------------------------------------------------------------ requests

async def test_every_sdk_through_a_copilot_account_with_the_editor_headers(
    world: World,
) -> None:
    _, token = await world.account()
    client = world.client()
    answer = await client.chat.completions.create(
        model="copilot/gpt-4.1", messages=[{"role": "user", "content": "plain"}])
    assert answer.choices[0].message.content == "Hello! You said: plain"
    parts = []
    stream = await client.chat.completions.create(
        model="copilot/claude-sonnet-4", stream=True,
        messages=[{"role": "user", "content": "streamed"}])
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert "".join(parts) == "Hello! You said: streamed"
    claude = world.claude()
    message = await claude.messages.create(
        model="copilot/claude-sonnet-4", max_tokens=64,
        messages=[{"role": "user", "content": "from claude"}])
    assert [b.text for b in message.content if b.type == "text"] == [
        "Hello! You said: from claude"]
    async with claude.messages.stream(
            model="copilot/gpt-4.1", max_tokens=64,
            messages=[{"role": "user", "content": "claude streams"}]) as events:
        assert await events.get_final_text() == "Hello! You said: claude streams"

    sent = world.copilot.seen()
    assert len(sent) == 4 and world.tokens_seen() == [token] * 4
    for rec in sent:
        for name, value in EDITOR_HEADERS.items():
            assert rec.headers[name.lower()] == value
        assert rec.headers["copilot-integration-id"] == "vscode-chat"
        assert rec.headers["openai-intent"] == "conversation-panel"
        assert rec.headers["x-request-id"] and rec.headers["x-initiator"] == "user"
    assert "stream_options" not in sent[1].json  # not asked for by default


async def test_the_model_list_is_the_apis_chat_models(world: World) -> None:
    view, _ = await world.account()
    resp = await world.gw.client.get(f"/api/providers/{view['id']}/models",
                                     headers=world.gw.admin_headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["models"] == ["gpt-4.1", "claude-sonnet-4", "gpt-5-mini"]  # no embeddings
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    quota = next(r for r in limits["connections"] if r["id"] == view["id"])["quota"]
    premium = next(w for w in quota["windows"] if w["name"] == "premium_interactions")
    assert (premium["remaining"], premium["limit"]) == (135.0, 300.0)
    assert quota["plan"] == "individual" and quota["exhausted"] is False


# ------------------------------------------------------------------ the Copilot token

async def test_the_copilot_token_is_renewed_before_it_expires_once_for_all(
    world: World,
) -> None:
    github_token = world.github.github_token()
    view, old = await world.account(github_token, lifetime=120)  # inside the 300 s margin
    asked = [asyncio.create_task(world.ask(f"q{i}")) for i in range(20)]
    answers = await asyncio.gather(*asked)
    assert answers == [f"Hello! You said: q{i}" for i in range(20)]
    assert world.github.exchanges == 1
    seen = world.tokens_seen()
    assert old not in seen and len(set(seen)) == 1
    stored = await world.gw.store.get_connection(view["id"])
    assert stored is not None and stored.credentials["access_token"] == seen[0]
    assert stored.credentials["refresh_token"] == github_token  # the GitHub token stays
    assert stored.credentials["expires_at"] > time.time() + 1500
    assert stored.credentials["extra"]["api_base"] == world.copilot.base_url
    await world.ask("later")  # fresh: nothing renewed
    assert world.github.exchanges == 1


async def test_a_401_from_the_api_renews_the_copilot_token_and_retries(world: World) -> None:
    _, token = await world.account()
    world.github.copilot[token] = 0.0  # dropped early by the service
    assert await world.ask("retried") == "Hello! You said: retried"
    assert world.github.exchanges == 1 and world.tokens_seen()[0] == token
    assert len(world.tokens_seen()) == 2


async def test_a_revoked_github_token_means_sign_in_and_the_next_account(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = world.github.github_token()
    world.github.expire(dead)  # revoked at GitHub
    first, _ = await world.account(dead, name="first", lifetime=10)
    _, spare = await world.account(name="second", priority=1)
    assert await world.ask("moved on") == "Hello! You said: moved on"
    assert world.tokens_seen() == [spare]
    stored = await world.gw.store.get_connection(first["id"])
    assert stored is not None
    assert "GitHub token was refused" in stored.credentials[SIGN_IN_REQUIRED]["reason"]
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    row = next(r for r in limits["connections"] if r["id"] == first["id"])
    assert row["terminal_reason"] == "needs_sign_in"
    shown = await (await world.gw.client.get("/api/providers",
                                             headers=world.gw.admin_headers)).text()
    for secret in (dead, spare):
        assert secret not in caplog.text and secret not in shown


async def test_an_account_without_copilot_needs_sign_in(world: World) -> None:
    lone = world.github.github_token()
    world.github.no_seat.add(lone)
    view, _ = await world.account(lone, lifetime=10)
    with pytest.raises(openai.APIStatusError) as caught:
        await world.ask()
    assert caught.value.status_code == 401
    stored = await world.gw.store.get_connection(view["id"])
    assert stored is not None
    assert "no Copilot access" in stored.credentials[SIGN_IN_REQUIRED]["reason"]


# ------------------------------------------------------------------ quota

async def test_spent_premium_requests_rest_the_account_until_the_reset(world: World) -> None:
    world.github.premium_remaining = 0
    world.github.quota_reset = time.time() + 2
    first, _ = await world.account(name="first")
    _, spare = await world.account(name="second", priority=1)
    world.copilot.script.append(quota_exceeded())
    assert await world.ask("one") == "Hello! You said: one"  # the second served it
    assert world.tokens_seen()[-1] == spare and len(world.tokens_seen()) == 2
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    row = next(r for r in limits["connections"] if r["id"] == first["id"])
    quota = row["quota"]
    assert quota["exhausted"] is True and quota["reason"] == "premium requests used up"
    assert quota["resets_at"] == pytest.approx(world.github.quota_reset, abs=1)
    premium = next(w for w in quota["windows"] if w["name"] == "premium_interactions")
    assert premium["remaining"] == 0.0
    assert row["terminal_reason"] is None and row["cooldown_left"] > 0  # resting, not out
    listed = await world.gw.client.get(f"/api/providers/{first['id']}/models",
                                       headers=world.gw.admin_headers)
    assert listed.status == 200  # other answers of the service do not end the rest
    limits = await (await world.gw.client.get("/api/rate-limits",
                                              headers=world.gw.admin_headers)).json()
    assert next(r for r in limits["connections"]
                if r["id"] == first["id"])["quota"]["exhausted"] is True
    await world.gw.client.post("/api/resilience/reset", headers=world.gw.admin_headers)
    assert await world.ask("two") == "Hello! You said: two"
    assert len(world.tokens_seen()) == 3 and world.tokens_seen()[-1] == spare
    # an edit of the connection rebuilds its provider: the rest is kept
    resp = await world.gw.client.put(f"/api/providers/{first['id']}", json={"rpm": 500},
                                     headers=world.gw.admin_headers)
    assert resp.status == 200
    await world.gw.client.post("/api/resilience/reset", headers=world.gw.admin_headers)
    assert await world.ask("two again") == "Hello! You said: two again"
    assert len(world.tokens_seen()) == 4 and world.tokens_seen()[-1] == spare
    await asyncio.sleep(max(0.0, world.github.quota_reset - time.time()) + 1.2)
    assert await world.ask("three") == "Hello! You said: three"
    assert world.tokens_seen()[-1] != spare


async def test_a_quota_answer_with_only_one_account_says_when(world: World) -> None:
    await world.account()
    world.copilot.script.append(quota_exceeded())
    with pytest.raises(openai.RateLimitError) as caught:
        await world.ask()
    assert "premium requests" in caught.value.message
    retry = int(caught.value.response.headers["retry-after"])
    assert retry == pytest.approx(20 * 86400, abs=5)  # until the allowance resets


async def test_a_copilot_request_costs_nothing_and_records_a_paid_list_price(
    world: World,
) -> None:
    view, _ = await world.account()
    assert await world.ask("price me") == "Hello! You said: price me"
    row, usage = await subscription_charges(world.gw, view["id"])
    # gpt-4.1 is one of Copilot's included models (no price in its own list): its list
    # price is OpenAI's
    assert row["prompt_tokens"] and row["cost_usd"] == 0.0 and row["list_cost_usd"] > 0
    assert usage["saved_usd"] == pytest.approx(row["list_cost_usd"])


# ------------------------------------------------------------------ import

@pytest.mark.parametrize("layout", ["apps", "hosts"])
async def test_the_editors_file_is_imported_never_changed(
    world: World, tmp_path: Path, http: aiohttp.ClientSession, layout: str,
) -> None:
    token = world.github.github_token()
    if layout == "apps":
        doc = {"github.com:Iv1.other": {"user": "someone", "oauth_token": "gho_other"},
               f"github.com:{CLIENT_ID}": {"user": "octocat", "oauth_token": token,
                                           "githubAppId": CLIENT_ID},
               "ghe.corp:Iv1.x": {"user": "corp", "oauth_token": "ghu_corp"}}
    else:
        doc = {"github.com": {"user": "octocat", "oauth_token": token}}
    path = tmp_path / f"{layout}.json"
    path.write_text(json.dumps(doc))
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    account = await read_import(SERVICE, path, TokenClient(http), world.settings())
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert account.credentials["refresh_token"] == token and account.label == "octocat"
    assert world.github.copilot_valid(account.credentials["access_token"])
    await save_account(world.gw.registry.plugins, world.gw.store, SERVICE, account,
                       settings=world.settings())
    await world.gw.gateway.reload()
    assert await world.ask("imported") == "Hello! You said: imported"


async def test_the_command_line_import_falls_back_to_hosts_json(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = world.github.github_token()
    home = tmp_path / "home"
    folder = home / ".config" / "github-copilot"
    folder.mkdir(parents=True)
    hosts = folder / "hosts.json"  # an older editor plugin: no apps.json
    hosts.write_text(json.dumps({"github.com": {"user": "octocat", "oauth_token": token}}))
    before = hosts.read_bytes()
    monkeypatch.setenv("HOME", str(home))
    run = Cli(world.gw.gateway.config.data_dir)
    flags = [f"--setting={k}={v}" for k, v in world.settings().items()]
    out = ok(await run.in_thread("providers", "import", "copilot", *flags)).output
    assert "imported: conn_" in out and "octocat (copilot) prefix copilot/" in out
    assert hosts.read_bytes() == before
    await world.gw.gateway.reload()
    assert await world.ask("from the CLI") == "Hello! You said: from the CLI"
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    missing = await run.in_thread("providers", "import", "copilot", *flags)
    assert missing.exit_code != 0 and "apps.json" in missing.output


@pytest.mark.parametrize(("doc", "why"), [
    ({"ghe.corp": {"oauth_token": "x"}}, "no github.com account"),
    ({"github.com": {"user": "x"}}, "no github.com account"),
    ([1], "not a JSON object"),
])
def test_an_unusable_editors_file_says_why(doc: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        SERVICE.parse_import(json.dumps(doc).encode(), time.time())
