"""Browser-facing protection: the Host check against DNS rebinding, and CORS.

Every request goes through the real app (aiohttp test client) with the
headers a browser would send: a rebinding page's ``Host``, an ``Origin``, and
real preflights (``OPTIONS`` with ``Access-Control-Request-Method``/``-Headers``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omniroute.config import ConfigError, load_config
from omniroute.testing import make_test_config, start_harness
from omniroute.web.security import HostCheck

UPSTREAM_KEY = "sk-upstream-test"
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "up/gpt-4o-mini", "messages": HI}
APP = "https://app.example"


async def _gateway(aiohttp_client: Any, tmp_path: Path, fake_openai: Any, **config: Any) -> Any:
    """A gateway on ``tmp_path`` with the fake OpenAI upstream as prefix ``up``."""
    h = await start_harness(aiohttp_client,
                            make_test_config(tmp_path / "omniroute").replace(**config))
    await h.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": fake_openai.base_url, "api_key": UPSTREAM_KEY})
    return h


# ----------------------------------------------------------------------------- Host check

#: (path, body, how the client's own error format names the refusal)
CLIENT_APIS = [
    ("/v1/chat/completions", CHAT,
     lambda b: b["error"]["type"] == "permission_error"
     and b["error"]["code"] == "host_not_allowed"),
    ("/v1/messages", {"model": "up/gpt-4o-mini", "max_tokens": 5, "messages": HI},
     lambda b: b["type"] == "error" and b["error"]["type"] == "permission_error"),
    ("/v1beta/models/up/gpt-4o-mini:generateContent",
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
     lambda b: b["error"]["code"] == 403 and b["error"]["status"] == "PERMISSION_DENIED"),
    ("/api/chat", {"model": "up/gpt-4o-mini", "messages": HI, "stream": False},
     lambda b: set(b) == {"error"} and isinstance(b["error"], str)),
    ("/v1/responses", {"model": "up/gpt-4o-mini", "input": "hi"},
     lambda b: b["error"]["type"] == "permission_error"),
]


@pytest.mark.parametrize("path, body, in_client_format", CLIENT_APIS,
                         ids=[p for p, _, _ in CLIENT_APIS])
async def test_a_rebinding_host_is_refused_in_the_clients_format(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any, path: str, body: Any,
        in_client_format: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai)
    resp = await h.client.post(path, json=body, headers={"Host": "evil.example"})
    assert resp.status == 403
    answer = await resp.json()
    assert in_client_format(answer), answer
    assert "evil.example" in str(answer) and "allowed_hosts" in str(answer)
    assert [r for r in fake_openai.requests if r.path.endswith("/chat/completions")] == []
    ok = await h.client.post(path, json=body)  # the same request by its loopback name
    assert ok.status == 200, await ok.text()


async def test_every_route_checks_the_host(aiohttp_client: Any, tmp_path: Path,
                                           fake_openai: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai)
    evil = {"Host": "evil.example:20128"}
    for method, path in [("GET", "/v1/models"), ("GET", "/api/tags"), ("GET", "/"),
                         ("GET", "/api/monitoring/health"), ("GET", "/api/settings"),
                         ("POST", "/api/auth/login"), ("GET", "/no/such/route")]:
        resp = await h.client.request(method, path, headers={**evil, **h.admin_headers})
        assert resp.status == 403, (path, resp.status)
        assert "evil.example" in await resp.text()  # the client's shape (Ollama's for /api/tags)


@pytest.mark.parametrize("host", [
    "localhost", "localhost:20128", "LOCALHOST:1", "localhost.", "127.0.0.1", "127.0.0.1:9",
    "[::1]", "[::1]:20128", "app.localhost", "a.b.localhost:3000",
])
async def test_loopback_names_are_served(aiohttp_client: Any, tmp_path: Path, fake_openai: Any,
                                         host: str) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai)
    resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("host", [
    "evil.example", "localhost.evil.example", "127.0.0.1.evil.example", "evillocalhost",
    "192.168.1.10:20128", "[::2]", "0.0.0.0",
])
async def test_other_names_are_refused(aiohttp_client: Any, tmp_path: Path, fake_openai: Any,
                                       host: str) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai)
    resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert resp.status == 403, await resp.text()


async def test_allowed_hosts_adds_names(aiohttp_client: Any, tmp_path: Path,
                                        fake_openai: Any) -> None:
    config = load_config(environ={"OMNIROUTE_ALLOWED_HOSTS": "gw.lan, *.corp.example"})
    h = await _gateway(aiohttp_client, tmp_path, fake_openai,
                       allowed_hosts=config.allowed_hosts)
    for host, status in [("gw.lan", 200), ("GW.LAN:8080", 200), ("api.corp.example", 200),
                         ("a.b.corp.example:1", 200), ("corp.example", 403),
                         ("gw.lan.evil.example", 403), ("localhost", 200)]:
        resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
        assert resp.status == status, (host, await resp.text())


async def test_bound_to_all_addresses_the_check_needs_allowed_hosts(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, host="0.0.0.0")
    resp = await h.client.post("/v1/chat/completions", json=CHAT,
                               headers={"Host": "gateway.corp.example"})
    assert resp.status == 200  # reached over the network under any name, as configured

    h = await _gateway(aiohttp_client, tmp_path / "2", fake_openai, host="0.0.0.0",
                       allowed_hosts=("gateway.corp.example",))
    for host, status in [("gateway.corp.example", 200), ("evil.example", 403),
                         ("127.0.0.1", 200)]:
        resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
        assert resp.status == status, host


def test_the_check_is_decided_at_start_up() -> None:
    config = make_test_config(Path("/nonexistent"))
    assert HostCheck.from_config(config.replace(host="0.0.0.0")) is None
    assert HostCheck.from_config(config.replace(allowed_hosts=("*",))) is None
    check = HostCheck.from_config(config.replace(port=20128))
    assert check is not None
    assert "127.0.0.1:20128" in check.with_port and "localhost:20128" in check.with_port
    assert check.allows(None)  # no Host header: HTTP/1.0, not a browser
    lan = HostCheck.from_config(config.replace(host="192.168.1.5", allowed_hosts=("gw",)))
    assert lan is not None and lan.allows("192.168.1.5:20128") and not lan.allows("evil")
    v6 = HostCheck.from_config(config.replace(host="fd00::5", allowed_hosts=("gw",)))
    assert v6 is not None and v6.allows("[fd00::5]:1") and not v6.allows("[fd00::6]")


@pytest.mark.parametrize("given, expected", [
    (["GW.lan", "*.Corp.Example", "::1", "[fd00::1]", "host."],
     ("gw.lan", "*.corp.example", "[::1]", "[fd00::1]", "host")),
    ("a, b", ("a", "b")),
])
def test_allowed_hosts_are_normalised(given: Any, expected: tuple[str, ...]) -> None:
    assert load_config(environ={}, allowed_hosts=given).allowed_hosts == expected


@pytest.mark.parametrize("bad", [["gw.lan:80"], ["http://gw.lan"], ["a b"], [1], "*.*.x"])
def test_bad_allowed_hosts_are_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        load_config(environ={}, allowed_hosts=bad)


# ----------------------------------------------------------------------------- CORS


def preflight(origin: str, method: str = "POST",
              headers: str | None = "authorization, content-type") -> dict[str, str]:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        out["Access-Control-Request-Headers"] = headers
    return out


def cors_headers(resp: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("access-control")}


async def test_no_cors_by_default(aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai)
    resp = await h.client.options("/v1/chat/completions", headers=preflight(APP))
    assert resp.status == 405 and cors_headers(resp) == {}
    resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP})
    assert resp.status == 200 and cors_headers(resp) == {}
    assert "Vary" not in resp.headers


@pytest.mark.parametrize("path, method", [
    ("/v1/chat/completions", "POST"), ("/v1/messages", "POST"), ("/v1/responses", "POST"),
    ("/v1beta/models/up/x:streamGenerateContent", "POST"), ("/v1/models", "GET"),
    ("/api/chat", "POST"), ("/api/tags", "GET"), ("/v1/embeddings", "POST"),
])
async def test_preflight_of_a_listed_origin(aiohttp_client: Any, tmp_path: Path,
                                            fake_openai: Any, path: str, method: str) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=(APP,))
    await h.set_settings(require_api_key=True)  # a preflight carries no key, and needs none
    asked = ("authorization, content-type, x-api-key, anthropic-version, x-goog-api-key, "
             "anthropic-dangerous-direct-browser-access, x-stainless-os")
    resp = await h.client.options(path, headers=preflight(APP, method, asked))
    assert resp.status == 204, await resp.text()
    got = cors_headers(resp)
    assert got["access-control-allow-origin"] == APP
    assert got["access-control-allow-credentials"] == "true"
    assert method in got["access-control-allow-methods"].split(", ")
    assert got["access-control-allow-headers"] == asked
    assert int(got["access-control-max-age"]) > 0
    assert "Origin" in resp.headers["Vary"]
    assert await resp.read() == b""


async def test_preflight_without_requested_headers_lists_the_client_headers(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=(APP,))
    resp = await h.client.options("/v1/messages", headers=preflight(APP, headers=None))
    assert resp.status == 204
    allowed = resp.headers["Access-Control-Allow-Headers"].split(", ")
    for name in ("authorization", "content-type", "x-api-key", "anthropic-version",
                 "x-goog-api-key", "anthropic-dangerous-direct-browser-access"):
        assert name in allowed


async def test_private_network_preflight(aiohttp_client: Any, tmp_path: Path,
                                         fake_openai: Any) -> None:
    """Chrome asks a loopback gateway whether a public site's page may reach it."""
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=(APP,))
    asking = {**preflight(APP), "Access-Control-Request-Private-Network": "true"}
    resp = await h.client.options("/v1/chat/completions", headers=asking)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Private-Network"] == "true"
    resp = await h.client.options("/v1/chat/completions", headers=preflight(APP))
    assert "Access-Control-Allow-Private-Network" not in resp.headers
    asking["Origin"] = "https://other.example"
    resp = await h.client.options("/v1/chat/completions", headers=asking)
    assert cors_headers(resp) == {}


async def test_preflights_that_are_not_allowed(aiohttp_client: Any, tmp_path: Path,
                                               fake_openai: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=(APP,))
    refused = [
        ("/v1/chat/completions", preflight("https://other.example")),  # not listed
        ("/v1/chat/completions", preflight("https://app.example.evil")),
        ("/v1/chat/completions", preflight("null")),
        ("/v1/chat/completions", preflight(APP, "DELETE")),  # not a method of the route
        ("/v1/no-such-route", preflight(APP)),
        ("/api/settings", preflight(APP, "PATCH")),  # the management API, never
        ("/api/providers", preflight(APP)),
        ("/api/keys", preflight(APP)),
        ("/api/auth/login", preflight(APP)),
        ("/api/monitoring/health", preflight(APP, "GET")),
    ]
    for path, headers in refused:
        resp = await h.client.options(path, headers=headers)
        assert resp.status >= 400, (path, resp.status)
        assert "Access-Control-Allow-Origin" not in resp.headers, path
        assert "Access-Control-Allow-Methods" not in resp.headers, path
    resp = await h.client.options("/v1/chat/completions",
                                  headers={**preflight(APP), "Host": "evil.example"})
    assert resp.status == 403 and cors_headers(resp) == {}


async def test_answers_to_a_listed_origin_name_it_and_expose_the_gateway_headers(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=(APP, "http://localhost:3000"))
    resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP})
    assert resp.status == 200
    got = cors_headers(resp)
    assert got["access-control-allow-origin"] == APP
    assert got["access-control-allow-credentials"] == "true"
    exposed = set(got["access-control-expose-headers"].split(", "))
    assert {"X-OmniRoute-Request-Id", "X-OmniRoute-Provider", "X-OmniRoute-Model",
            "X-OmniRoute-Fallback-Attempts"} <= exposed
    assert all(name in resp.headers for name in exposed)
    assert "Origin" in resp.headers["Vary"]

    stream = await h.client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                 headers={"Origin": "http://localhost:3000"})
    assert stream.status == 200
    assert stream.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "X-OmniRoute-Request-Id" in stream.headers["Access-Control-Expose-Headers"]
    assert b"[DONE]" in await stream.read()

    error = await h.client.post("/v1/chat/completions", headers={"Origin": APP},
                                json={**CHAT, "model": "nope/x"})
    assert error.status == 400
    assert error.headers["Access-Control-Allow-Origin"] == APP
    assert "X-OmniRoute-Request-Id" in error.headers["Access-Control-Expose-Headers"]

    other = await h.client.post("/v1/chat/completions", json=CHAT,
                                headers={"Origin": "https://other.example"})
    assert other.status == 200 and cors_headers(other) == {}
    assert "Origin" in other.headers["Vary"]  # the answer differs by Origin


async def test_an_upstream_error_to_a_browser_is_readable(aiohttp_client: Any, tmp_path: Path,
                                                          fake_openai: Any) -> None:
    from fakes.openai_upstream import error

    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=(APP,))
    await h.set_settings(max_attempts=1, wait_for_cooldown_max=0)
    fake_openai.script.append(error(429, "slow down", headers={"Retry-After": "7"}))
    resp = await h.client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP})
    assert resp.status == 429
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    exposed = resp.headers["Access-Control-Expose-Headers"].split(", ")
    assert "Retry-After" in exposed and "X-OmniRoute-Request-Id" in exposed


async def test_wildcard_origin_never_comes_with_credentials(aiohttp_client: Any, tmp_path: Path,
                                                            fake_openai: Any) -> None:
    config = load_config(environ={"OMNIROUTE_CORS_ORIGINS": "*"})
    h = await _gateway(aiohttp_client, tmp_path, fake_openai, cors_origins=config.cors_origins)
    resp = await h.client.options("/v1/chat/completions", headers=preflight(APP))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    resp = await h.client.post("/v1/chat/completions", json=CHAT,
                               headers={"Origin": "https://anyone.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert "X-OmniRoute-Request-Id" in resp.headers["Access-Control-Expose-Headers"]


async def test_the_management_api_never_answers_other_origins(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    for origins in [(APP,), ("*",)]:
        h = await _gateway(aiohttp_client, tmp_path / origins[0][:1], fake_openai,
                           cors_origins=origins)
        for method, path in [("GET", "/api/settings"), ("GET", "/api/providers"),
                             ("GET", "/api/monitoring/health"), ("GET", "/api/init")]:
            resp = await h.client.request(method, path,
                                          headers={"Origin": APP, **h.admin_headers})
            assert resp.status == 200, path
            assert cors_headers(resp) == {}, path
        resp = await h.client.get("/api/tags", headers={"Origin": APP})  # Ollama's: client API
        assert "Access-Control-Allow-Origin" in resp.headers


@pytest.mark.parametrize("given, expected", [
    (["https://App.Example/", "http://localhost:3000", "chrome-extension://abcdef"],
     ("https://app.example", "http://localhost:3000", "chrome-extension://abcdef")),
    ("*", ("*",)),
])
def test_cors_origins_are_normalised(given: Any, expected: tuple[str, ...]) -> None:
    assert load_config(environ={}, cors_origins=given).cors_origins == expected


@pytest.mark.parametrize("bad", [["null"], ["app.example"], ["https://a.example/path"], [3]])
def test_bad_cors_origins_are_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        load_config(environ={}, cors_origins=bad)
