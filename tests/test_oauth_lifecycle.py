"""The token life cycle of subscription accounts, on any wire type: renewal ahead of
expiry and after a 401 (one per account however many requests), persistence, the
terminal "needs sign-in" state and routing around it, and the background keeper.

The provider type here is an OpenAI-compatible subscription (``OAuthProvider`` over
``OpenAIProvider``), so the life cycle is shown to belong to the OAuth base, not to
one service; the fake upstream takes only access tokens the fake authorization server
issued and has not expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest
from aiohttp import web
from fakes.oauth_server import FakeOAuthServer, Pair
from fakes.openai_upstream import FakeOpenAI

from omniroute import hookimpl
from omniroute.credentials import SIGN_IN_REQUIRED, MemoryCredentials, Refresher
from omniroute.gateway import Gateway
from omniroute.oauth import OAuthService
from omniroute.oauth.keeper import TokenKeeper
from omniroute.oauth.provider import OAuthProvider
from omniroute.plugins import load_plugins
from omniroute.providers.base import Provider, ProviderContext, Timeouts
from omniroute.providers.openai import OpenAIProvider
from omniroute.registry import Registry
from omniroute.resilience.clock import ManualClock
from omniroute.storage.store import Connection
from omniroute.testing import GatewayHarness, make_test_config, start_harness

CLIENT = "sub-client"
SERVICE = OAuthService(name="test-sub", provider_type="test-sub", flow="paste",
                       client_id=CLIENT, token_url="https://sub.invalid/oauth/token",
                       authorize_url="https://sub.invalid/oauth/authorize",
                       redirect_uri="https://sub.invalid/callback", token_encoding="json")


class SubOpenAI(OAuthProvider, OpenAIProvider):
    """An OpenAI-compatible subscription: the access token is its bearer key."""

    type = "test-sub"
    oauth = SERVICE
    presets: ClassVar[dict[str, Any]] = {}

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.credentials_changed()

    def credentials_changed(self) -> None:
        bearer = {"Authorization": f"Bearer {self.access_token}"}
        self._json_headers = {**self._json_headers, **bearer}
        self._stream_headers = {**self._stream_headers, **bearer}


class SubPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(SubOpenAI)

    @hookimpl
    def register_oauth_services(self, register: Callable[[OAuthService], None]) -> None:
        register(SERVICE)


class TokenFakeOpenAI(FakeOpenAI):
    """Takes a bearer token only while the fake authorization server says it is valid."""

    def __init__(self, oauth: FakeOAuthServer, **knobs: Any) -> None:
        super().__init__(api_key="unused", **knobs)
        self.oauth = oauth

    def _auth_error(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token:
            return self._auth_missing()
        return None if self.oauth.is_valid(token) else self._auth_wrong(token)

    def tokens_seen(self) -> list[str]:
        return [r.headers.get("authorization", "").removeprefix("Bearer ")
                for r in self.requests if r.path == "/v1/chat/completions"]


class World:
    """A gateway with the test subscription type, a fake authorization server and a
    fake upstream that takes its tokens."""

    def __init__(self, gw: GatewayHarness, oauth: FakeOAuthServer, upstream: TokenFakeOpenAI,
                 upstream_url: str) -> None:
        self.gw, self.oauth, self.upstream, self.upstream_url = gw, oauth, upstream, upstream_url

    async def account(self, pair: Pair, *, name: str = "sub", priority: int = 0,
                      expires_at: float | None = None) -> dict[str, Any]:
        creds: dict[str, Any] = {"access_token": pair.access,
                                 "expires_at": pair.expires_at if expires_at is None
                                 else expires_at}
        if pair.refresh:
            creds["refresh_token"] = pair.refresh
        return await self.gw.add_provider({
            "type": "test-sub", "name": name, "prefix": "sub", "priority": priority,
            "base_url": self.upstream_url, "credentials": creds,
            "settings": {"oauth_token_url": f"{self.oauth.base_url}/oauth/token"}})

    async def ask(self, text: str = "hi") -> str:
        async with openai.AsyncOpenAI(base_url=self.gw.base_url + "/v1", api_key="x",
                                      max_retries=0) as client:
            reply = await client.chat.completions.create(
                model="sub/gpt-4o-mini", messages=[{"role": "user", "content": text}])
        return str(reply.choices[0].message.content)


async def make_world(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
                     **settings: Any) -> World:
    oauth = FakeOAuthServer(client_id=CLIENT)
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    upstream = TokenFakeOpenAI(oauth)
    upstream_url = str((await aiohttp_server(upstream.app)).make_url("/v1"))
    plugins = load_plugins(extra=[("t-sub", SubPlugin())])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw", **settings),
                             plugins)
    return World(gw, oauth, upstream, upstream_url)


@pytest.fixture
async def world(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> World:
    return await make_world(aiohttp_client, aiohttp_server, tmp_path)


# ------------------------------------------------------------------ renewals

async def test_an_expired_access_token_is_renewed_before_the_call_and_kept_encrypted(
    world: World,
) -> None:
    pair = world.oauth.issue(lifetime=-10)  # lapsed ten seconds ago
    view = await world.account(pair)
    assert view["oauth"]["status"] == "expired" and view["oauth"]["renewable"] is True
    assert await world.ask("first") == "Hello! You said: first"
    assert world.oauth.refresh_calls == 1
    assert world.upstream.tokens_seen() != [pair.access]  # the lapsed one was never sent
    stored = await world.gw.store.get_connection(view["id"])
    assert stored is not None
    new = stored.credentials
    assert world.oauth.is_valid(new["access_token"]) and new["refresh_token"] != pair.refresh
    assert new["expires_at"] > time.time() + 3000
    assert world.gw.catalog.providers[view["id"]].connection.credentials == new
    files = [p for p in world.gw.gateway.config.data_dir.iterdir() if "sqlite" in p.name]
    assert files and all(new["access_token"].encode() not in p.read_bytes() for p in files)
    assert all(new["refresh_token"].encode() not in p.read_bytes() for p in files)
    # fresh now: the next request renews nothing
    await world.ask("second")
    assert world.oauth.refresh_calls == 1


async def test_twenty_concurrent_requests_with_a_lapsing_token_share_one_renewal(
    world: World,
) -> None:
    pair = world.oauth.issue(lifetime=-1)
    await world.account(pair)
    world.oauth.refresh_gate = asyncio.Event()
    asked = [asyncio.create_task(world.ask(f"q{i}")) for i in range(20)]
    for _ in range(200):  # until the one renewal is held at the server
        if world.oauth.refresh_calls:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    world.oauth.refresh_gate.set()
    answers = await asyncio.gather(*asked)
    assert answers == [f"Hello! You said: q{i}" for i in range(20)]
    assert world.oauth.refresh_calls == 1


async def test_twenty_requests_refused_401_share_one_renewal_and_are_retried(
    world: World,
) -> None:
    pair = world.oauth.issue()  # its expiry looks fine, but the service dropped it
    await world.account(pair)
    world.oauth.expire(pair.access)
    world.oauth.refresh_gate = asyncio.Event()
    asked = [asyncio.create_task(world.ask(f"q{i}")) for i in range(20)]
    for _ in range(300):
        if world.oauth.refresh_calls and len(world.upstream.tokens_seen()) >= 20:
            break
        await asyncio.sleep(0.01)
    world.oauth.refresh_gate.set()
    answers = await asyncio.gather(*asked)
    assert answers == [f"Hello! You said: q{i}" for i in range(20)]
    assert world.oauth.refresh_calls == 1
    seen = world.upstream.tokens_seen()
    assert seen.count(pair.access) == 20 and len(seen) == 40  # each retried once


# ------------------------------------------------------------------ needs sign-in

async def test_a_revoked_refresh_token_takes_the_account_out_until_signed_in_again(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    gw = world.gw
    dead = world.oauth.issue(lifetime=-5)
    world.oauth.revoke(dead.refresh)
    spare = world.oauth.issue()
    first = await world.account(dead, name="first", priority=0)
    second = await world.account(spare, name="second", priority=1)
    with caplog.at_level(logging.DEBUG):
        assert await world.ask("one") == "Hello! You said: one"  # served by the second
        assert world.upstream.tokens_seen() == [spare.access]  # the dead token never sent
        stored = await gw.store.get_connection(first["id"])
        assert stored is not None and "revoked" in stored.credentials[SIGN_IN_REQUIRED]["reason"]

        resp = await gw.client.get("/api/monitoring/health")
        health = await resp.json()
        assert health["status"] == "degraded"
        assert health["providers"]["needs_sign_in"] == [
            {"id": first["id"], "name": "first", "type": "test-sub"}]
        limits = await (await gw.client.get("/api/rate-limits",
                                            headers=gw.admin_headers)).json()
        rows = {r["id"]: r for r in limits["connections"]}
        assert rows[first["id"]]["terminal_reason"] == "needs_sign_in"
        assert rows[first["id"]]["status"] == "down"
        assert rows[second["id"]]["terminal_reason"] is None
        listed = await (await gw.client.get("/api/providers", headers=gw.admin_headers)).json()
        views = {p["id"]: p for p in listed["providers"]}
        assert views[first["id"]]["oauth"]["status"] == "needs_sign_in"
        assert views[second["id"]]["oauth"]["status"] == "active"

        # routing skips it: no attempt, no renewal; an operator reset does not revive it
        await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
        calls = world.oauth.refresh_calls
        assert await world.ask("two") == "Hello! You said: two"
        assert world.oauth.refresh_calls == calls
        assert world.upstream.tokens_seen() == [spare.access, spare.access]

        # a new sign-in replaces the credentials whole: back in routing at once
        fresh = world.oauth.issue()
        resp = await gw.client.put(f"/api/providers/{first['id']}", headers=gw.admin_headers,
                                   json={"credentials": {"access_token": fresh.access,
                                                         "refresh_token": fresh.refresh,
                                                         "expires_at": fresh.expires_at}})
        assert resp.status == 200, await resp.text()
        assert await world.ask("three") == "Hello! You said: three"
        assert world.upstream.tokens_seen()[-1] == fresh.access
    for secret in (dead.access, dead.refresh, spare.access, fresh.access, fresh.refresh):
        assert secret and secret not in caplog.text
    body = await (await gw.client.get("/api/providers", headers=gw.admin_headers)).text()
    assert fresh.access not in body and fresh.refresh not in body


async def test_no_refresh_token_means_sign_in_once_the_access_token_lapses(
    world: World,
) -> None:
    lone = world.oauth.issue(lifetime=-1, refresh=False)
    view = await world.account(lone)
    with pytest.raises(openai.APIStatusError) as caught:
        await world.ask()
    assert caught.value.status_code == 401 and "needs a new sign-in" in caught.value.message
    assert world.upstream.tokens_seen() == []
    state = world.gw.resilience.snapshot(world.gw.catalog.connections.values())
    row = next(r for r in state["connections"] if r["id"] == view["id"])
    assert row["terminal_reason"] == "needs_sign_in"


async def test_the_mark_survives_a_restart_and_a_login_clears_it(tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("t-sub", SubPlugin())])
    config = make_test_config(tmp_path / "gw")
    conn = Connection(id="conn_sub", type="test-sub", name="sub", prefix="sub",
                      settings={"base_url": "http://127.0.0.1:9/v1"},
                      credentials={"access_token": "at", "refresh_token": "rt",
                                   SIGN_IN_REQUIRED: {"reason": "revoked", "at": 1.0}})
    gw = Gateway(config, Registry(plugins))
    await gw.start()
    try:
        await gw.store.save_connection(conn)
        await gw.reload()
        rows = gw.resilience.snapshot(gw.catalog.connections.values())["connections"]
        assert [r["terminal_reason"] for r in rows] == ["needs_sign_in"]
        plan = gw.resilience.plan(gw.catalog.router.resolve("sub/m").targets)
        assert plan.targets == () and [why for _, why in plan.skipped] == ["terminal"]
        conn.credentials = {"access_token": "at2", "refresh_token": "rt2"}  # signed in again
        await gw.store.save_connection(conn)
        await gw.reload()
        rows = gw.resilience.snapshot(gw.catalog.connections.values())["connections"]
        assert [r["terminal_reason"] for r in rows] == [None]
    finally:
        await gw.close()


# ------------------------------------------------------------------ the background keeper

async def test_an_idle_account_is_renewed_in_the_background(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    world = await make_world(aiohttp_client, aiohttp_server, tmp_path,
                             oauth_refresh_interval=0.1, oauth_refresh_margin=60)
    soon = world.oauth.issue(lifetime=30)  # inside the margin: due
    later = world.oauth.issue(lifetime=3600)  # far: left alone
    soon_view = await world.account(soon, name="soon")
    later_view = await world.account(later, name="later")
    for _ in range(300):
        if world.oauth.refresh_calls:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # a few more sweeps: nothing else is due
    assert world.oauth.refresh_calls == 1
    renewed = await world.gw.store.get_connection(soon_view["id"])
    untouched = await world.gw.store.get_connection(later_view["id"])
    assert renewed is not None and untouched is not None
    assert renewed.credentials["access_token"] != soon.access
    assert world.oauth.is_valid(renewed.credentials["access_token"])
    assert untouched.credentials["access_token"] == later.access
    assert world.upstream.tokens_seen() == []  # no request was needed


def sub_connection(cid: str, **creds: Any) -> Connection:
    return Connection(id=cid, type="test-sub", name=cid, prefix="sub",
                      settings={"base_url": "http://127.0.0.1:9/v1"},
                      credentials={"access_token": f"at-{cid}", "refresh_token": f"rt-{cid}",
                                   **creds})


class CountingRefresher(Refresher):
    def __init__(self, answer: bool) -> None:
        super().__init__(MemoryCredentials())
        self.answer = answer
        self.asked: list[str] = []

    async def refresh(self, provider: Provider) -> bool:
        self.asked.append(provider.connection.id)
        return self.answer


class Settings:
    oauth_refresh_margin = 300.0
    oauth_refresh_interval = 60.0


async def test_the_keeper_renews_lapsing_refresh_tokens_once_and_backs_off_failures() -> None:
    import aiohttp

    clock = ManualClock()
    now = clock.time()
    async with aiohttp.ClientSession() as http:
        context = ProviderContext(http, Timeouts(connect=1, first_byte=1, idle=1, total=1))
        providers = [
            SubOpenAI(sub_connection("due", expires_at=now + 100), context),
            SubOpenAI(sub_connection("lapse", expires_at=now + 7200,
                                     refresh_expires_at=now + 3600), context),
            SubOpenAI(sub_connection("fine", expires_at=now + 7200), context),
            SubOpenAI(sub_connection("dead", expires_at=now - 1,
                                     **{SIGN_IN_REQUIRED: {"reason": "revoked"}}), context),
        ]
        ok = CountingRefresher(True)
        keeper = TokenKeeper(lambda: providers, ok, Settings, clock=clock)
        assert await keeper.sweep() == 2
        assert ok.asked == ["due", "lapse"]
        ok.asked.clear()
        await keeper.sweep()  # "due" still due (nothing changed it); "lapse" not again
        assert ok.asked == ["due"]

        failing = CountingRefresher(False)
        keeper = TokenKeeper(lambda: providers[:1], failing, Settings, clock=clock)
        await keeper.sweep()
        await keeper.sweep()  # paused for one interval after the failure
        assert failing.asked == ["due"]
        clock.advance(61)
        await keeper.sweep()
        await keeper.sweep()
        clock.advance(61)  # the pause doubled: 120 s
        await keeper.sweep()
        assert failing.asked == ["due", "due"]
        clock.advance(60)
        await keeper.sweep()
        assert failing.asked == ["due", "due", "due"]
