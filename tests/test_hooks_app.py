"""The hooks that shape the app and its requests: auth schemes, commands, configure_app,
stages (one ``test_hook_<name>`` each; the meta-test is in test_hooks.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import openai
from aiohttp import web
from click.testing import CliRunner

from omniroute import (
    AuthScheme,
    Principal,
    RequestContext,
    Stage,
    StageRun,
    hookimpl,
)
from omniroute.appkeys import GATEWAY, PIPELINE, PRINCIPAL, STORE
from omniroute.config import Config
from omniroute.errors import AuthenticationFailed
from omniroute.pipeline import Reply
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness


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
