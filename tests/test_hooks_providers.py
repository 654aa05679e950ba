"""The hooks that add what a request is served with: providers, formats, sign-in services,
CLI tools (one ``test_hook_<name>`` each; the meta-test is in test_hooks.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omniroute import (
    Provider,
    hookimpl,
)
from omniroute.formats import canonical
from omniroute.formats.base import ClientRequest, Format
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness


class EchoProvider(Provider):
    type = "test-echo"
    description = "answers nothing; registered by a test plugin"
    requires_credentials = False


class ProvidersPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(EchoProvider)


def test_hook_register_providers(tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("t", ProvidersPlugin())])
    assert plugins.providers["test-echo"] is EchoProvider
    info = plugins.info("t")
    assert info is not None and info.error is None
    assert info.registered == {"providers": ["test-echo"]}
    assert "register_providers" in info.hooks
    # the built-ins are still there beside it
    assert "openai" in plugins.providers
    # and configuration can now create instances of it
    from omniroute.accounts import build_connection

    conn = build_connection(plugins, {"type": "test-echo", "prefix": "echo"})
    assert conn.type == "test-echo" and conn.prefix == "echo"


class ShoutFormat(Format):
    """A toy format: the request is {"say": text}; answers are upper-cased."""

    name = "test-shout"

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        return str(body.get("model", "")), False

    def decode_request(self, request: ClientRequest) -> canonical.Request:
        say = canonical.Text(str(request.body["say"]))
        return canonical.Request(request.model, [canonical.Message("user", [say])])

    def encode_response(self, response: canonical.Response, request: canonical.Request) -> bytes:
        text = "".join(p.text for p in response.parts if isinstance(p, canonical.Text))
        return text.upper().encode()


class FormatsPlugin:
    @hookimpl
    def register_formats(self, register: Callable[[type[Format]], None]) -> None:
        register(ShoutFormat)


def test_hook_register_formats() -> None:
    plugins = load_plugins(extra=[("t-fmt", FormatsPlugin())])
    assert plugins.formats["test-shout"] is ShoutFormat
    info = plugins.info("t-fmt")
    assert info is not None and info.error is None
    assert info.registered == {"formats": ["test-shout"]}
    fmt = plugins.formats["test-shout"]()
    req = fmt.decode_request(ClientRequest({"model": "m", "say": "hi"}, "m", False))
    assert req.messages[0].parts == [canonical.Text("hi")]
    answer = canonical.Response("r1", "m", [canonical.Text("hi there")])
    assert fmt.encode_response(answer, req) == b"HI THERE"
    # a second plugin claiming the same format name is refused whole
    again = load_plugins(extra=[("a", FormatsPlugin()), ("b", FormatsPlugin())])
    assert again.info("b").error == "formats type 'test-shout' is already registered"  # type: ignore[union-attr]


class OAuthServicesPlugin:
    @hookimpl
    def register_oauth_services(self, register: Callable[[Any], None]) -> None:
        from omniroute.oauth import OAuthService

        register(OAuthService(name="test-acme", provider_type="test-echo", flow="device",
                              client_id="c", token_url="https://acme.test/token",
                              device_url="https://acme.test/device"))


def test_hook_register_oauth_services() -> None:
    plugins = load_plugins(extra=[("t-oauth", OAuthServicesPlugin())])
    service = plugins.oauth_services["test-acme"]
    assert (service.provider_type, service.flow) == ("test-echo", "device")
    info = plugins.info("t-oauth")
    assert info is not None and info.error is None
    assert info.registered == {"oauth_services": ["test-acme"]}
    # a second plugin naming the same service is refused whole
    again = load_plugins(extra=[("a", OAuthServicesPlugin()), ("b", OAuthServicesPlugin())])
    assert again.info("b").error == (  # type: ignore[union-attr]
        "oauth_services type 'test-acme' is already registered")


class CliToolsPlugin:
    def __init__(self, *tools: Any) -> None:
        self.tools = tools

    @hookimpl
    def register_cli_tools(self, register: Callable[[Any], None]) -> None:
        for tool in self.tools:
            register(tool)


async def test_hook_register_cli_tools(aiohttp_client: Any, tmp_path: Path) -> None:
    from omniroute.clitools import CliTool, Edits, Places, Reader, Target

    def configure(places: Places, target: Target, read: Reader) -> Edits:
        path = places.home / ".mytool.conf"
        return Edits({path: f"url={target.v1}\nkey={target.key}\nmodel={target.model}\n"},
                     secret_files=frozenset({path}))

    mine = CliTool(id="mytool", name="My Tool", binaries=("mytool",), protocol="openai",
                   config_paths=lambda p: [p.home / ".mytool.conf"], configure=configure)
    plugins = load_plugins(extra=[
        ("t-tool", CliToolsPlugin(mine)),
        ("t-not-a-tool", CliToolsPlugin(object())),  # refused, logged; the rest still load
        ("t-taken", CliToolsPlugin(CliTool(id="claude-code", name="Mine", binaries=("x",),
                                           protocol="openai"))),  # a built-in's id
    ])
    assert plugins.cli_tools(taken=["claude-code"]) == [mine]
    home = tmp_path / "home"
    home.mkdir()
    config = make_test_config(tmp_path / "data").replace(
        tool_env={"HOME": str(home), "PATH": str(tmp_path / "bin")})
    gw = await start_harness(aiohttp_client, config, plugins)
    listing = await (await gw.client.get("/api/cli-tools", headers=gw.admin_headers)).json()
    row = next(r for r in listing["tools"] if r["id"] == "mytool")
    assert row["isCustom"] is False and row["configurable"] is True
    assert [r["id"] for r in listing["tools"]].count("claude-code") == 1
    key = await gw.create_key("tool")
    resp = await gw.client.post("/api/cli-tools/mytool/configure", headers=gw.admin_headers,
                                json={"model": "up/m", "key": key, "base_url": "http://h:1"})
    assert resp.status == 200, await resp.text()
    assert (home / ".mytool.conf").read_text() == f"url=http://h:1/v1\nkey={key}\nmodel=up/m\n"
