"""The shared OAuth core: PKCE, token sets, the token client, the three flows, sign-ins,
and the ``register_oauth_services`` registry, against a fake authorization server."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from fakes.oauth_server import FakeOAuthServer

from omniroute import hookimpl
from omniroute.errors import NotFound, RateLimited
from omniroute.oauth import (
    AccessDenied,
    DeviceCode,
    DevicePoll,
    ExpiredToken,
    InvalidGrant,
    LoopbackListener,
    OAuthError,
    OAuthService,
    OAuthUnavailable,
    Pkce,
    SignIn,
    SignIns,
    StateMismatch,
    TokenClient,
    TokenSet,
    listen_address,
    parse_pasted,
)
from omniroute.oauth.pkce import challenge_of
from omniroute.plugins import load_plugins

CLIENT = "client-1234"


def service(server: FakeOAuthServer, **fields: Any) -> OAuthService:
    base = server.base_url
    values: dict[str, Any] = dict(
        name="acme", provider_type="acme-sub", flow="paste", client_id=CLIENT,
        authorize_url=f"{base}/oauth/authorize", token_url=f"{base}/oauth/token",
        device_url=f"{base}/oauth/device/code", redirect_uri="https://acme.test/callback",
        scopes=("chat", "profile"), token_encoding=server.encoding)
    values.update(fields)
    return OAuthService(**values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(aiohttp_server: Any, fake: FakeOAuthServer) -> FakeOAuthServer:
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ PKCE, tokens, pastes

def test_pkce_matches_the_rfc_7636_example_and_hides_its_verifier() -> None:
    assert (challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
            == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")  # RFC 7636 appendix B
    one, two = Pkce.new(), Pkce.new()
    assert len(one.verifier) == 43 and one.verifier != two.verifier
    assert one.challenge == challenge_of(one.verifier) and one.method == "S256"
    assert one.verifier not in repr(one) and one.challenge not in repr(one)


def test_a_token_answer_becomes_a_token_set_and_credentials() -> None:
    tokens = TokenSet.from_response(
        {"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600,
         "token_type": "Bearer", "scope": "a b", "account": {"email_address": "x@y.z"}},
        now=1000.0)
    assert (tokens.expires_at, tokens.scope, tokens.extra) == (
        4600.0, "a b", {"account": {"email_address": "x@y.z"}})
    assert "at-1" not in repr(tokens) and "rt-1" not in repr(tokens)
    kept = tokens.credentials()
    assert kept == {"access_token": "at-1", "refresh_token": "rt-1", "expires_at": 4600.0,
                    "token_type": "Bearer", "scope": "a b",
                    "extra": {"account": {"email_address": "x@y.z"}}}
    assert TokenSet.from_credentials(kept) == tokens
    # a renewal without a new refresh token keeps the old one, and the old extras
    renewed = TokenSet.from_response({"access_token": "at-2", "expires_in": "60"}, now=2000.0,
                                     previous=tokens)
    assert (renewed.refresh_token, renewed.expires_at, renewed.scope) == ("rt-1", 2060.0, "a b")
    assert renewed.extra == tokens.extra
    with pytest.raises(ValueError):
        TokenSet.from_response({"token_type": "Bearer"}, now=0)


@pytest.mark.parametrize(("pasted", "expected"), [
    ("abc123#st-9", ("abc123", "st-9")),
    ("  abc123  ", ("abc123", None)),
    ("http://localhost:1455/auth/callback?code=c-1&state=s-1", ("c-1", "s-1")),
    ("https://console.example/oauth/code/callback?code=c-2&state=s-2&x=1", ("c-2", "s-2")),
])
def test_a_pasted_code_is_read_in_each_shape(pasted: str, expected: tuple[str, Any]) -> None:
    assert parse_pasted(pasted) == expected


def test_a_pasted_refusal_or_nothing_is_an_error() -> None:
    with pytest.raises(AccessDenied):
        parse_pasted("http://localhost:1/cb?error=access_denied&state=s")
    for nothing in ("", "   ", "#state", "two words"):
        with pytest.raises(OAuthError) as caught:
            parse_pasted(nothing)
        assert caught.value.status == 400


def test_every_endpoint_can_be_overridden_in_the_settings() -> None:
    svc = OAuthService(name="x", provider_type="x-sub", flow="paste", client_id="c",
                       token_url="https://x.test/token", authorize_url="https://x.test/auth",
                       redirect_uri="https://x.test/cb", urls={"quota": "https://x.test/q"})
    default = svc.endpoints({})
    assert (default.client_id, default.token_url, default.url("quota")) == (
        "c", "https://x.test/token", "https://x.test/q")
    moved = svc.endpoints({"oauth_client_id": "c2", "oauth_token_url": "http://127.0.0.1:9/t",
                           "oauth_authorize_url": "http://127.0.0.1:9/a",
                           "oauth_device_url": "http://127.0.0.1:9/d",
                           "oauth_redirect_uri": "http://localhost:9/cb",
                           "oauth_quota_url": "http://127.0.0.1:9/q"})
    assert (moved.client_id, moved.token_url, moved.authorize_url, moved.device_url,
            moved.redirect_uri, moved.url("quota")) == (
        "c2", "http://127.0.0.1:9/t", "http://127.0.0.1:9/a", "http://127.0.0.1:9/d",
        "http://localhost:9/cb", "http://127.0.0.1:9/q")
    svc.check_settings({"oauth_token_url": "https://proxy.corp/token", "other": 1})
    for bad in ({"oauth_token_url": "ftp://x"}, {"oauth_quota_url": "not a url"},
                {"oauth_client_id": ""}):
        with pytest.raises(ValueError):
            svc.check_settings(bad)


def test_the_authorization_url_carries_the_client_pkce_state_and_extras() -> None:
    svc = OAuthService(name="x", provider_type="x-sub", flow="paste", client_id="c-1",
                       token_url="https://x.test/token", authorize_url="https://x.test/auth",
                       redirect_uri="https://x.test/cb", scopes=("a:b", "c"),
                       authorize_params={"code": "true"})
    pkce = Pkce.new()
    url = svc.authorization_url(svc.endpoints(), "st-1", pkce)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://x.test/auth"
    assert query == {"code": "true", "client_id": "c-1", "response_type": "code",
                     "redirect_uri": "https://x.test/cb", "scope": "a:b c",
                     "code_challenge": pkce.challenge, "code_challenge_method": "S256",
                     "state": "st-1"}
    assert pkce.verifier not in url


# ------------------------------------------------------------------ the token client

@pytest.mark.parametrize("encoding", ["json", "form"])
async def test_the_token_client_speaks_json_or_form(
    aiohttp_server: Any, http: aiohttp.ClientSession, encoding: Any,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT, encoding=encoding))
    pair = fake.issue()
    svc = service(fake)
    client = TokenClient(http, clock=lambda: 1000.0)
    tokens = await client.tokens(svc.token_url, svc.refresh_request(svc.endpoints(),
                                                                    str(pair.refresh)),
                                 encoding=encoding)
    assert fake.is_valid(tokens.access_token) and tokens.expires_at == 1000.0 + 3600
    assert tokens.refresh_token in fake.refresh  # rotated: a new live one
    sent = fake.requests[-1]
    assert sent.headers["content-type"].startswith(
        "application/json" if encoding == "json" else "application/x-www-form-urlencoded")
    assert sent.json == {"grant_type": "refresh_token", "refresh_token": pair.refresh,
                         "client_id": CLIENT}
    # the old refresh token was spent: invalid_grant, typed
    with pytest.raises(InvalidGrant) as caught:
        await client.tokens(svc.token_url, svc.refresh_request(svc.endpoints(),
                                                               str(pair.refresh)),
                            encoding=encoding)
    assert caught.value.error == "invalid_grant" and str(pair.refresh) not in str(caught.value)
    with pytest.raises(OAuthError, match="must be"):  # the other encoding is refused
        await client.tokens(svc.token_url, {"grant_type": "refresh_token"},
                            encoding="form" if encoding == "json" else "json")


async def test_token_endpoint_failures_are_typed_and_bounded(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    from aiohttp import web

    async def anthropic_shape(request: web.Request) -> web.Response:
        return web.json_response({"type": "error", "error": {
            "type": "invalid_grant", "message": "token sk-ant-ort01-abcdefghijklmnop revoked"}},
            status=400)

    async def pending_on_200(request: web.Request) -> web.Response:
        return web.json_response({"error": "authorization_pending"})

    async def hangs(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def html(request: web.Request) -> web.Response:
        return web.Response(status=403, text="<html>blocked by a firewall</html>")

    async def no_token(request: web.Request) -> web.Response:
        return web.json_response({"token_type": "Bearer"})

    app = web.Application()
    for path, handler in (("/a", anthropic_shape), ("/p", pending_on_200), ("/h", hangs),
                          ("/x", html), ("/n", no_token)):
        app.router.add_post(path, handler)
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT))
    other = await aiohttp_server(app)
    base = str(other.make_url("")).rstrip("/")
    client = TokenClient(http, timeout=0.3)
    with pytest.raises(InvalidGrant) as caught:
        await client.post(f"{base}/a", {})
    assert "sk-ant-ort01" not in caught.value.message  # scrubbed
    with pytest.raises(OAuthError) as pending:
        await client.post(f"{base}/p", {})
    assert pending.value.code == "authorization_pending"
    with pytest.raises(OAuthUnavailable, match=r"within 0\.3s"):
        await client.post(f"{base}/h", {})
    with pytest.raises(OAuthError, match="HTTP 403: <html>blocked"):
        await client.post(f"{base}/x", {})
    with pytest.raises(OAuthError, match="without an access_token"):
        await client.tokens(f"{base}/n", {})
    fake.fail_next = 1
    with pytest.raises(OAuthUnavailable, match="HTTP 503"):
        await client.post(f"{fake.base_url}/oauth/token", {}, encoding="json")
    with pytest.raises(OAuthUnavailable, match="unreachable"):
        await client.post(f"http://127.0.0.1:{free_port()}/token", {})


# ------------------------------------------------------------------ the device flow

class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_device_polling_waits_slows_down_and_succeeds_with_pkce(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT, encoding="form",
                                                       device_interval=0.2))
    svc = service(fake, flow="device")
    pkce = Pkce.new()
    client, endpoints = TokenClient(http), svc.endpoints()
    from omniroute.oauth import start_device

    code = await start_device(svc, client, endpoints, pkce)
    assert code.interval == 0.2 and code.device_code not in repr(code)
    assert fake.requests[-1].json["code_challenge"] == pkce.challenge
    ticks = Ticks()
    poll = DevicePoll(svc, client, endpoints, code, pkce, clock=ticks)
    assert await poll.poll() is None and poll.polls == 0  # before the first interval: no call
    ticks.now += 0.2
    assert await poll.poll() is None and poll.polls == 1  # authorization_pending
    ticks.now += 0.2
    fake.devices[code.device_code].last_poll = time.monotonic()  # a poll just now: slow_down
    assert await poll.poll() is None and poll.interval == 5.2  # RFC 8628: +5 s
    assert poll.wait_time() == pytest.approx(5.2)
    ticks.now += 5.2
    fake.approve(code.user_code)
    fake.devices[code.device_code].last_poll = 0.0
    tokens = await poll.poll()
    assert tokens is not None and fake.is_valid(tokens.access_token)
    assert fake.requests[-1].json["code_verifier"] == pkce.verifier


async def test_device_polling_ends_on_refusal_expiry_and_its_own_bound(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT, pkce=False,
                                                       device_interval=0.05))
    svc = service(fake, flow="device", pkce=False)
    client, endpoints = TokenClient(http), svc.endpoints()
    from omniroute.oauth import start_device

    denied = await start_device(svc, client, endpoints, None)
    fake.deny(denied.user_code)
    with pytest.raises(AccessDenied):
        await DevicePoll(svc, client, endpoints, denied, None).wait(2.0)
    expired = await start_device(svc, client, endpoints, None)
    fake.expire_device(expired.user_code)
    with pytest.raises(ExpiredToken):
        await DevicePoll(svc, client, endpoints, expired, None).wait(2.0)
    pending = await start_device(svc, client, endpoints, None)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ExpiredToken):
        await DevicePoll(svc, client, endpoints, pending, None).wait(0.3)
    assert asyncio.get_running_loop().time() - started < 1.5
    short = DeviceCode(pending.device_code, pending.user_code, "https://x", None,
                       expires_in=0.1, interval=0.05)
    with pytest.raises(ExpiredToken):  # the code's own life bounds it too
        await DevicePoll(svc, client, endpoints, short, None).wait(30)


# ------------------------------------------------------------------ the loopback listener

async def test_the_loopback_listener_takes_only_its_own_redirect(
    http: aiohttp.ClientSession,
) -> None:
    assert listen_address("http://localhost:1455/auth/callback") == (1455, "/auth/callback")
    for bad in ("https://localhost:1/cb", "http://example.com:1/cb", "http://localhost/cb"):
        with pytest.raises(OAuthError):
            listen_address(bad)
    listener = LoopbackListener(0, "/cb", "st-good")
    await listener.start()
    try:
        base = f"http://127.0.0.1:{listener.port}/cb"
        async with http.get(f"{base}?code=forged&state=st-other") as resp:
            assert resp.status == 400
        assert listener.code() is None
        async with http.get(f"{base}?code=the-code&state=st-good") as resp:
            assert resp.status == 200 and "close this tab" in await resp.text()
        assert await listener.wait(1.0) == "the-code"
    finally:
        await listener.close()
    timing_out = LoopbackListener(0, "/cb", "s")
    await timing_out.start()
    try:
        with pytest.raises(ExpiredToken):
            await timing_out.wait(0.05)
    finally:
        await timing_out.close()


async def test_a_taken_port_or_a_refusal_is_reported(http: aiohttp.ClientSession) -> None:
    first = LoopbackListener(0, "/cb", "s1")
    await first.start()
    try:
        with pytest.raises(OAuthError, match="cannot listen"):
            await LoopbackListener(first.port, "/cb", "s2").start()
        async with http.get(f"http://127.0.0.1:{first.port}/cb?error=access_denied&state=s1"):
            pass
        with pytest.raises(AccessDenied):
            await first.wait(1.0)
    finally:
        await first.close()


# ------------------------------------------------------------------ sign-ins

async def test_a_paste_sign_in_from_url_to_tokens(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(
        client_id=CLIENT, redirect_uri="https://acme.test/callback",
        required_params={"code": "true"}))
    svc = service(fake, authorize_params={"code": "true"})
    signin = SignIn(svc, TokenClient(http))
    view = await signin.start()
    assert view["flow"] == "paste" and view["state"] == signin.state
    async with http.get(view["url"]) as page:  # the user signs in; the page shows CODE#STATE
        pasted = await page.text()
    assert pasted.endswith(f"#{signin.state}")
    with pytest.raises(StateMismatch):
        await signin.complete(pasted.split("#")[0] + "#someone-elses")
    with pytest.raises(InvalidGrant):
        await signin.complete("not-the-code")
    tokens = await signin.complete(pasted)
    assert fake.is_valid(tokens.access_token)
    account = await signin.account(tokens)
    assert account.credentials["refresh_token"] == tokens.refresh_token
    await signin.close()


async def test_a_loopback_sign_in_by_redirect_or_by_paste(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    redirect = f"http://localhost:{port}/auth/callback"
    fake = await serve(aiohttp_server, FakeOAuthServer(
        client_id=CLIENT, encoding="form", mode="redirect", redirect_uri=redirect))
    svc = service(fake, flow="loopback", redirect_uri=redirect)
    signin = SignIn(svc, TokenClient(http))
    view = await signin.start()
    assert view["listening"] is True and view["redirect_uri"] == redirect
    try:
        assert await signin.poll() is None  # nothing yet
        async with http.get(view["url"]) as page:  # the browser follows the redirect
            assert page.status == 200
        tokens = await signin.poll()
        assert tokens is not None and fake.is_valid(tokens.access_token)
    finally:
        await signin.close()
    # the port is taken (the official CLI is listening): the paste still works
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past its TIME_WAIT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        second = SignIn(svc, TokenClient(http))
        view = await second.start()
        assert view["listening"] is False and "cannot listen" in view["listen_error"]
        async with http.get(view["url"], allow_redirects=False) as page:
            location = page.headers["Location"]

        async def paste() -> str | None:
            return location

        tokens = await second.wait(paste, timeout=2.0)
        assert fake.is_valid(tokens.access_token)
        await second.close()


async def test_a_device_sign_in_and_the_cli_style_wait(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT, device_interval=0.05))
    signin = SignIn(service(fake, flow="device"), TokenClient(http))
    view = await signin.start()
    assert view["user_code"] and view["verification_uri"].endswith("/activate")
    with pytest.raises(OAuthError, match="polling"):
        await signin.complete("some-code")
    asyncio.get_running_loop().call_later(0.15, fake.approve, view["user_code"])
    tokens = await signin.wait(timeout=3.0)
    assert fake.is_valid(tokens.access_token)


async def test_a_wait_with_nothing_pasted_is_bounded(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT))
    signin = SignIn(service(fake), TokenClient(http))
    await signin.start()

    async def never() -> str | None:
        await asyncio.sleep(30)
        return None

    async def empty() -> str | None:
        return None

    with pytest.raises(ExpiredToken):
        await signin.wait(never, timeout=0.1)
    with pytest.raises(OAuthError, match="no code was pasted"):
        await signin.wait(empty, timeout=1.0)


async def test_pending_sign_ins_expire_and_are_bounded(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT))
    ticks = Ticks()
    pending = SignIns(max_pending=2)
    svc = service(fake)
    made = [SignIn(svc, TokenClient(http), ttl=10, clock=ticks) for _ in range(3)]
    for signin in made[:2]:
        await signin.start()
        await pending.add(signin)
    with pytest.raises(RateLimited):
        await pending.add(made[2])
    assert pending.get("acme", made[0].state) is made[0]
    with pytest.raises(NotFound):
        pending.get("other-service", made[0].state)
    with pytest.raises(NotFound):  # two under way: a paste without its state is ambiguous
        pending.only("acme")
    ticks.now += 11  # both expired: dropped, and the third fits
    with pytest.raises(NotFound):
        pending.get("acme", made[0].state)
    late = SignIn(svc, TokenClient(http), ttl=10, clock=ticks)
    await pending.add(late)
    assert len(pending) == 1 and pending.only("acme") is late
    await pending.finish(late)
    assert len(pending) == 0


# ------------------------------------------------------------------ the registry

class ServicesPlugin:
    def __init__(self, *found: Any) -> None:
        self.found = found

    @hookimpl
    def register_oauth_services(self, register: Callable[[OAuthService], None]) -> None:
        for item in self.found:
            register(item)


def test_services_register_through_the_hook_each_plugin_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = OAuthService(name="acme", provider_type="acme-sub", flow="device", client_id="c",
                       token_url="https://a.test/t", device_url="https://a.test/d")
    with caplog.at_level(logging.ERROR, "omniroute.plugins"):
        plugins = load_plugins(extra=[
            ("good", ServicesPlugin(svc)),
            ("not-a-service", ServicesPlugin(object())),
            ("same-name", ServicesPlugin(svc)),
        ], entry_points=lambda: [])
    assert plugins.oauth_services == {"acme": svc}
    good, bad, twice = (plugins.info(n) for n in ("good", "not-a-service", "same-name"))
    assert good is not None and good.registered == {"oauth_services": ["acme"]}
    assert bad is not None and "not an omniroute.oauth.OAuthService" in str(bad.error)
    assert twice is not None and "already registered" in str(twice.error)


async def test_a_service_may_encode_its_refresh_unlike_its_code_exchange(
    aiohttp_server: Any, http: aiohttp.ClientSession,
) -> None:
    fake = await serve(aiohttp_server, FakeOAuthServer(client_id=CLIENT, encoding="json"))
    pair = fake.issue()
    svc = service(fake, token_encoding="form", refresh_encoding="json")
    renewed = await svc.renew({"access_token": pair.access, "refresh_token": pair.refresh,
                               "extra": {"plan": "pro"}}, TokenClient(http), svc.endpoints())
    assert fake.requests[-1].headers["content-type"].startswith("application/json")
    assert fake.is_valid(renewed["access_token"]) and renewed["extra"] == {"plan": "pro"}
    with pytest.raises(InvalidGrant, match="no refresh token"):
        await svc.renew({"access_token": "x"}, TokenClient(http), svc.endpoints())
