"""Every hookspec is a contract: typed, documented, and tested here by name.

The meta-test fails when a hook is added to ``omniroute.hookspecs`` without a
docstring with ``:param:`` lines, type annotations, a ``### `name(`` heading in
docs/plugins.md, or a ``test_hook_<name>`` function in this module.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import click
import openai
import pytest
from aiohttp import web
from click.testing import CliRunner

from omniroute import (
    AuthScheme,
    CacheBackend,
    CacheKey,
    CacheLayer,
    LayerHit,
    Principal,
    Provider,
    RequestContext,
    SharedState,
    Stage,
    StageRun,
    hookimpl,
    hookspecs,
)
from omniroute.app import make_app
from omniroute.appkeys import GATEWAY, PIPELINE, PRINCIPAL, STORE
from omniroute.config import Config, ConfigError
from omniroute.errors import AuthenticationFailed
from omniroute.formats import canonical
from omniroute.formats.base import ClientRequest, Format
from omniroute.pipeline import Reply
from omniroute.plugins import load_plugins
from omniroute.resilience import MemoryState
from omniroute.storage import Database, DatabaseBackend
from omniroute.testing import make_test_config, start_harness
from omniroute.watch import VersionPoll

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def _hookspecs() -> list[Callable[..., Any]]:
    return [
        fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(fn, "omniroute_spec", None) is not None
    ]


def hookspec_problems(fn: Callable[..., Any], docs: str, tests: set[str]) -> list[str]:
    """What is missing from the contract of hookspec ``fn`` (empty when complete)."""
    name = fn.__name__
    problems = []
    doc = inspect.getdoc(fn) or ""
    summary = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if not summary or summary.startswith(":"):
        problems.append(f"{name}: no one-line summary in the docstring")
    sig = inspect.signature(fn)
    for param in sig.parameters.values():
        if not re.search(rf"^:param {re.escape(param.name)}:", doc, re.MULTILINE):
            problems.append(f"{name}: no ':param {param.name}:' line")
        if param.annotation is inspect.Parameter.empty:
            problems.append(f"{name}: parameter {param.name!r} has no type annotation")
    if sig.return_annotation is inspect.Signature.empty:
        problems.append(f"{name}: no return annotation")
    if f"### `{name}(" not in docs:
        problems.append(f"{name}: no '### `{name}(' heading in docs/plugins.md")
    if f"test_hook_{name}" not in tests:
        problems.append(f"{name}: no test_hook_{name} in tests/test_hooks.py")
    return problems


def test_every_hookspec_is_typed_documented_and_tested() -> None:
    specs = _hookspecs()
    # the five hooks of docs/architecture.md, at least (a new one must pass the same checks)
    assert {f.__name__ for f in specs} >= {
        "register_providers", "register_cache_backends", "register_auth_schemes",
        "register_commands", "configure_app", "register_formats", "register_stages",
    }
    docs = DOCS.read_text()
    tests = {n for n, f in vars(sys.modules[__name__]).items() if inspect.isfunction(f)}
    problems = [p for fn in specs for p in hookspec_problems(fn, docs, tests)]
    assert not problems, "\n".join(problems)


def test_meta_check_catches_an_incomplete_hookspec() -> None:
    """The checker itself must notice each kind of gap (or the meta-test proves nothing)."""

    def undocumented_hook(app, count: int):  # type: ignore[no-untyped-def]
        """:param count: how many."""

    problems = hookspec_problems(undocumented_hook, "", set())
    text = "\n".join(problems)
    assert "no one-line summary" in text
    assert "no ':param app:' line" in text
    assert "parameter 'app' has no type annotation" in text
    assert "no return annotation" in text
    assert "no '### `undocumented_hook(' heading" in text
    assert "no test_hook_undocumented_hook" in text
    assert "':param count:'" not in text


# ---------------------------------------------------------------------- one test per hook


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


class DictCache(CacheBackend):
    name = "test-dict"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def clear(self) -> None:
        self.data.clear()


class CachePlugin:
    @hookimpl
    def register_cache_backends(self, register: Callable[[type[CacheBackend]], None]) -> None:
        register(DictCache)


async def test_hook_register_cache_backends() -> None:
    plugins = load_plugins(extra=[("t-cache", CachePlugin())])
    assert plugins.cache_backends["test-dict"] is DictCache
    infos = {i.name: i for i in plugins.infos}
    assert infos["t-cache"].registered == {"cache_backends": ["test-dict"]}
    # the built-in backend is registered the same way
    assert infos["memory-cache"].registered == {"cache_backends": ["memory"]}
    backend = plugins.cache_backends["test-dict"]({"x": 1})
    await backend.set("k", b"v")
    assert await backend.get("k") == b"v"
    assert await backend.delete("k") is True
    assert await backend.get("k") is None


class ToldPoll(VersionPoll):
    """The SQLite poll, remembering what it was told to announce."""

    announced: ClassVar[list[int]] = []

    def announce(self, version: int) -> None:
        self.announced.append(version)


class MemoryShared(SharedState):
    """A shared-state backend that shares nothing: the in-memory tables, announced versions."""

    name = "test-memory"
    schemes = ("test-mem",)
    made: ClassVar[list[MemoryShared]] = []

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.state = MemoryState()
        self.events: list[str] = []
        self.made.append(self)

    def resilience_state(self) -> MemoryState:
        return self.state

    def watcher(self, db: Any, **kwargs: Any) -> ToldPoll:
        return ToldPoll(db, **kwargs)

    async def start(self) -> None:
        self.events.append("start")

    async def close(self) -> None:
        self.events.append("close")

    def health(self) -> dict[str, Any]:
        return {**super().health(), "ok": False}


class StatePlugin:
    @hookimpl
    def register_state_backends(self, register: Callable[[type[SharedState]], None]) -> None:
        register(MemoryShared)


async def test_hook_register_state_backends(aiohttp_client: Any, tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("t-state", StatePlugin())])
    assert plugins.state_backends["test-memory"] is MemoryShared
    assert plugins.info("t-state").registered == {"state_backends": ["test-memory"]}
    # installed, it changes nothing until state_url names its scheme
    plain = await start_harness(aiohttp_client, make_test_config(tmp_path / "a"), plugins)
    assert plain.gateway.shared is None and MemoryShared.made == []
    config = make_test_config(tmp_path / "b").replace(state_url="test-mem://:secret@host/1")
    harness = await start_harness(aiohttp_client, config, plugins)
    shared = harness.gateway.shared
    assert isinstance(shared, MemoryShared) and shared.events == ["start"]
    assert harness.resilience.state is shared.state
    health = await (await harness.client.get("/api/monitoring/health")).json()
    assert health["status"] == "degraded"
    # the backend's kind and state; not where it is (the URL), in this public answer
    assert health["shared_state"] == {"backend": "test-memory", "ok": False}
    resp = await harness.client.post("/api/models/alias", headers=harness.admin_headers,
                                      json={"alias": "fast", "target": "x/y"})
    assert resp.status in (200, 201)
    assert ToldPoll.announced and ToldPoll.announced[-1] == await harness.store.db.config_version()
    metrics = await (await harness.client.get("/metrics")).text()
    assert "omniroute_state_degraded 1.0" in metrics
    with pytest.raises(ConfigError, match="no state backend serves 'nope'"):
        make_app(make_test_config(tmp_path / "c").replace(state_url="nope://x"), plugins)


class FileDatabase(Database):
    """SQLite under a URL scheme of its own (``test-db:///path``), standing in for a
    database server: what ``database_url`` opens is this type's, not the data dir's."""

    name = "test-file-db"
    schemes = ("test-db",)
    opened: ClassVar[list[str]] = []

    @classmethod
    async def connect(cls, url: str, *, migrations: Any = None) -> FileDatabase:
        path = url.split("://", 1)[1]
        cls.opened.append(path)
        db = await cls.open(path)
        assert isinstance(db, FileDatabase)
        return db


class DatabasePlugin:
    @hookimpl
    def register_database_backends(self, register: Callable[[type[DatabaseBackend]], None],
                                   ) -> None:
        register(FileDatabase)


async def test_hook_register_database_backends(aiohttp_client: Any, tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("t-db", DatabasePlugin())])
    assert plugins.database_backends["test-file-db"] is FileDatabase
    assert plugins.info("t-db").registered == {"database_backends": ["test-file-db"]}
    # installed, it changes nothing until database_url names its scheme
    plain = await start_harness(aiohttp_client, make_test_config(tmp_path / "a"), plugins)
    assert type(plain.gateway.db) is Database and FileDatabase.opened == []
    elsewhere = tmp_path / "server" / "shared.sqlite3"
    elsewhere.parent.mkdir()
    config = make_test_config(tmp_path / "b").replace(database_url=f"test-db://{elsewhere}")
    first = await start_harness(aiohttp_client, config, plugins)
    assert isinstance(first.gateway.db, FileDatabase) and FileDatabase.opened == [str(elsewhere)]
    assert not (tmp_path / "b" / "omniroute.sqlite3").exists()  # the data dir keeps no database
    resp = await first.client.post("/api/models/alias", headers=first.admin_headers,
                                   json={"alias": "fast", "target": "x/y"})
    assert resp.status in (200, 201)
    # a second instance with the same database_url sees the same configuration
    second = await start_harness(aiohttp_client, config.replace(data_dir=tmp_path / "c"), plugins)
    assert (await second.store.list_aliases()) == {"fast": "x/y"}
    with pytest.raises(ConfigError, match="no database backend serves 'nope'"):
        make_app(make_test_config(tmp_path / "d").replace(database_url="nope://x"), plugins)


class HeaderScheme(AuthScheme):
    """Authenticates ``x-test-auth: let-me-in``; ignores requests without the header."""

    name = "test-header"
    started = False

    async def start(self) -> None:
        # runs after the database is open
        assert await self.store.get_settings() is not None
        type(self).started = True

    async def authenticate(self, request: web.Request) -> Principal | None:
        value = request.headers.get("x-test-auth")
        if value is None:
            return None  # not my credential
        if value != "let-me-in":
            raise AuthenticationFailed("bad x-test-auth header", code="bad_test_auth")
        return Principal("test-header", "tester", frozenset())


class AuthPlugin:
    @hookimpl
    def register_auth_schemes(self, register: Callable[[type[AuthScheme]], None]) -> None:
        register(HeaderScheme)

    @hookimpl
    def configure_app(self, app: web.Application, config: Config) -> None:
        async def whoami(request: web.Request) -> web.Response:
            principal = request[PRINCIPAL]
            return web.json_response({"kind": principal.kind, "key_id": principal.key_id})

        app.router.add_get("/test/whoami", whoami)


async def test_hook_register_auth_schemes(aiohttp_client: Any, tmp_path: Path) -> None:
    HeaderScheme.started = False
    plugins = load_plugins(extra=[("t-auth", AuthPlugin())])
    assert plugins.auth_schemes["test-header"] is HeaderScheme
    h = await start_harness(aiohttp_client, make_test_config(tmp_path, require_api_key=True),
                            plugins=load_plugins(extra=[("t-auth", AuthPlugin())]))
    assert isinstance(h.auth_schemes["test-header"], HeaderScheme)
    assert HeaderScheme.started

    resp = await h.client.get("/v1/models", headers={"x-test-auth": "let-me-in"})
    assert resp.status == 200, await resp.text()
    resp = await h.client.get("/test/whoami", headers={"x-test-auth": "let-me-in"})
    assert await resp.json() == {"kind": "test-header", "key_id": "tester"}

    resp = await h.client.get("/v1/models")  # no credential at all
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "missing_api_key"
    resp = await h.client.get("/v1/models", headers={"x-test-auth": "wrong"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "bad_test_auth"
    # the principal carries no admin scope, so the management API refuses it
    resp = await h.client.get("/api/settings", headers={"x-test-auth": "let-me-in"})
    assert resp.status == 403


class CommandsPlugin:
    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command("test-greet")
        @click.argument("who")
        def greet(who: str) -> None:
            """Greet someone (added by a test plugin)."""
            click.echo(f"hello {who} from a plugin")


def test_hook_register_commands() -> None:
    @click.group()
    def group() -> None:
        """A stand-in for the omniroute group."""

    plugins = load_plugins(extra=[("t-cmd", CommandsPlugin())])
    assert "register_commands" in plugins.info("t-cmd").hooks  # type: ignore[union-attr]
    plugins.pm.hook.register_commands(cli=group)
    runner = CliRunner()
    result = runner.invoke(group, ["test-greet", "world"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello world from a plugin\n"
    assert "test-greet" in runner.invoke(group, ["--help"]).output


class AppPlugin:
    seen_config: Config | None = None

    @hookimpl
    def configure_app(self, app: web.Application, config: Config) -> None:
        type(self).seen_config = config

        async def hello(request: web.Request) -> web.Response:
            gateway = request.app[GATEWAY]  # the shared state is reachable from a plugin route
            return web.json_response({"hello": "plugin", "data_dir": str(gateway.config.data_dir)})

        app.router.add_get("/plugin/hello", hello)
        app.router.add_get("/api/plugin/secret", hello)


async def test_hook_configure_app(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_test_config(tmp_path)
    h = await start_harness(aiohttp_client, config,
                            plugins=load_plugins(extra=[("t-app", AppPlugin())]))
    assert AppPlugin.seen_config is config
    resp = await h.client.get("/plugin/hello")
    assert resp.status == 200
    assert await resp.json() == {"hello": "plugin", "data_dir": str(tmp_path)}
    # a plugin route under /api/ is admin-only, like every management route (fail closed)
    resp = await h.client.get("/api/plugin/secret")
    assert resp.status == 401
    resp = await h.client.get("/api/plugin/secret", headers=h.admin_headers)
    assert resp.status == 200
    # the built-in admin-session plugin uses the same hook for its login route
    resp = await h.client.post("/api/auth/login", json={"password": "test-password-123"})
    assert resp.status == 200


@pytest.mark.parametrize("spec", _hookspecs(), ids=lambda f: f.__name__)
def test_hookspec_is_exported_from_plugin_manager(spec: Callable[..., Any]) -> None:
    pm = load_plugins(entry_points=lambda: []).pm
    assert getattr(pm.hook, spec.__name__).spec is not None


class CountingRun(StageRun):
    """Sees each request's finished record; per request, so it keeps its own order."""

    def __init__(self, stage: CountingStage) -> None:
        self.stage = stage

    async def before(self, ctx: RequestContext) -> Reply | None:
        self.stage.events.append(f"{self.stage.name}:before")
        return None

    def finished(self, ctx: RequestContext) -> None:
        self.stage.events.append(f"{self.stage.name}:finished")
        self.stage.records.append((ctx.record.status, ctx.record.provider, ctx.record.model))


class CountingStage(Stage):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name  # type: ignore[misc]  # one class, several named instances
        self.events = events
        self.records: list[tuple[int, str | None, str | None]] = []

    def enter(self, ctx: RequestContext, operation: Any) -> StageRun | None:
        return CountingRun(self)


class StagesPlugin:
    """Registers two stages and checks that the app it gets has started."""

    def __init__(self, events: list[str], *names: str) -> None:
        self.events = events
        self.names = names
        self.stages: list[CountingStage] = []

    @hookimpl
    def register_stages(self, register: Callable[[Stage], None], app: web.Application) -> None:
        assert app[STORE] is not None  # collaborators of the started gateway are there
        for name in self.names:
            stage = CountingStage(name, self.events)
            self.stages.append(stage)
            register(stage)


class BrokenStagesPlugin:
    def __init__(self, registered: Any) -> None:
        self.registered = registered

    @hookimpl
    def register_stages(self, register: Callable[[Any], None]) -> None:  # takes fewer args
        register(self.registered)


async def test_hook_register_stages(aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    events: list[str] = []
    first, second = StagesPlugin(events, "t-one", "t-two"), StagesPlugin(events, "t-three")
    plugins = load_plugins(extra=[
        ("t-stages-a", first),
        ("t-bad-type", BrokenStagesPlugin(object())),  # not a Stage
        ("t-bad-name", BrokenStagesPlugin(CountingStage("t-one", events))),  # name taken
        ("t-stages-b", second),
    ])
    h = await start_harness(aiohttp_client, make_test_config(tmp_path), plugins=plugins)
    await h.add_provider({"type": "openai", "prefix": "up", "base_url": fake_openai.base_url,
                          "api_key": "sk-upstream-test"})
    names = [stage.name for stage in h.client.app[PIPELINE].stages]
    # built-ins first (their order is default_stages'), then plugins in load order;
    # the two broken plugins add nothing and the gateway serves all the same
    # (metrics: a built-in plugin)
    assert names[:-3] == ["budgets", "cache", "idempotency", "progress", "responses-state",
                          "metrics"]
    assert names[-3:] == ["t-one", "t-two", "t-three"]
    assert names.count("t-one") == 1

    async with openai.AsyncOpenAI(base_url=h.base_url + "/v1", api_key="x",
                                  max_retries=0) as client:
        answer = await client.chat.completions.create(
            model="up/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello! You said: hi"
    assert events == ["t-one:before", "t-two:before", "t-three:before",
                      "t-one:finished", "t-two:finished", "t-three:finished"]
    assert first.stages[0].records == [(200, "up", "gpt-4o-mini")]


class DictLayer(CacheLayer):
    """A toy layer: answers a stored entry for any request with the same prompt text."""

    name = "t-dict-layer"

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    async def lookup(self, key: CacheKey) -> LayerHit | None:
        entry = self.entries.get(key.prompt)
        return None if entry is None else LayerHit(entry, similarity=0.97)

    async def store(self, key: CacheKey, entry: bytes, ttl: float) -> None:
        self.entries[key.prompt] = entry

    async def clear(self) -> None:
        self.entries.clear()


class LayersPlugin:
    def __init__(self, layer: Any) -> None:
        self.layer = layer

    @hookimpl
    def register_cache_layers(self, register: Callable[[Any], None],
                              app: web.Application) -> None:
        assert app is not None
        register(self.layer)


async def test_hook_register_cache_layers() -> None:
    layer = DictLayer()
    plugins = load_plugins(extra=[
        ("t-layer", LayersPlugin(layer)),
        ("t-not-a-layer", LayersPlugin(object())),  # refused, logged; the rest still load
        ("t-same-name", LayersPlugin(DictLayer())),  # the name is taken
    ])
    app = web.Application()
    assert plugins.cache_layers(app) == [layer]
    info = plugins.info("t-layer")
    assert info is not None and "register_cache_layers" in info.hooks


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
