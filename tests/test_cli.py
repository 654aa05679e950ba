"""The ``omniroute`` command line: its configuration commands (``serve`` as a process:
test_cli_serve.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from omniroute.cli import cli
from omniroute.testing import make_test_config, start_harness
from omniroute.vault import mask

SECRET_KEY_B64 = base64.urlsafe_b64encode(b"k" * 32).decode()  # make_test_config's key
_ENV_VARS = ("OMNIROUTE_CONFIG", "OMNIROUTE_DATA_DIR", "OMNIROUTE_DISABLE_PLUGINS",
             "OMNIROUTE_PLUGINS", "OMNIROUTE_SECRET_KEY", "INITIAL_PASSWORD",
             "OMNIROUTE_REQUIRE_API_KEY", "REQUIRE_API_KEY", "OMNIROUTE_HOST", "OMNIROUTE_PORT",
             "OMNIROUTE_WORKERS")
GROQ_KEY = "gsk_Zr8q3LkV0bT9xW2mN5pQ7sY4uA6cE1dF"
OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")


class Cli:
    """``omniroute --data-dir <dir> ...`` through click's CliRunner."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        env: dict[str, str | None] = {v: None for v in _ENV_VARS}
        env["OMNIROUTE_SECRET_KEY"] = SECRET_KEY_B64  # the same vault key as the test gateway
        self.runner = CliRunner(env=env)

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(cli, ["--data-dir", str(self.data_dir), *args])

    async def in_thread(self, *args: str) -> Result:
        """For commands that run their own event loop while ours serves something."""
        return await asyncio.to_thread(self, *args)


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "data")


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def failed(result: Result, message: str) -> Result:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert message in result.output, result.output
    return result


def added_id(result: Result) -> str:
    match = re.search(r"added (conn_\w+):", result.output)
    assert match, result.output
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- providers


def test_providers_presets(run: Cli) -> None:
    out = ok(run("providers", "presets")).output
    assert re.search(r"^openai \(openai\): Any OpenAI-compatible Chat Completions API$", out,
                     re.MULTILINE)
    assert re.search(r"^    groq +groq/ +https://api\.groq\.com/openai/v1$", out, re.MULTILINE)
    assert re.search(r"^    ollama .*\(no key needed\)$", out, re.MULTILINE)


def test_providers_add_list_and_remove(run: Cli) -> None:
    conn_id = added_id(ok(run("providers", "add", "--preset", "groq", "--api-key", GROQ_KEY)))
    listing = ok(run("providers", "list")).output
    assert conn_id in listing and "groq/" in listing and "active" in listing
    assert "https://api.groq.com/openai/v1" in listing
    assert GROQ_KEY not in listing
    as_json = ok(run("providers", "list", "--json")).output
    assert GROQ_KEY not in as_json
    (conn,) = json.loads(as_json)
    assert conn["id"] == conn_id and conn["type"] == "openai" and conn["prefix"] == "groq"
    assert conn["credentials"] == {"api_key": mask(GROQ_KEY)}
    assert conn["settings"]["preset"] == "groq"

    local = added_id(ok(run("providers", "add", "--type", "openai", "--base-url",
                            "http://127.0.0.1:1/v1", "--no-key", "--prefix", "local",
                            "--model", "llama-3", "--priority", "5", "--inactive")))
    conns = {c["id"]: c for c in json.loads(ok(run("providers", "list", "--json")).output)}
    assert conns[local]["prefix"] == "local" and conns[local]["credentials"] == {}
    assert conns[local]["settings"]["base_url"] == "http://127.0.0.1:1/v1"
    assert conns[local]["settings"]["models"] == ["llama-3"]
    assert conns[local]["priority"] == 5 and conns[local]["active"] is False

    assert ok(run("providers", "remove", conn_id)).output == f"removed {conn_id}\n"
    failed(run("providers", "remove", conn_id), f"no connection {conn_id!r}")
    ids = [c["id"] for c in json.loads(ok(run("providers", "list", "--json")).output)]
    assert ids == [local]


def test_providers_add_from_environment_variable(run: Cli) -> None:
    run.runner.env["MY_GROQ_KEY"] = GROQ_KEY
    ok(run("providers", "add", "--preset", "groq", "--api-key-env", "MY_GROQ_KEY"))
    (conn,) = json.loads(ok(run("providers", "list", "--json")).output)
    assert conn["credentials"] == {"api_key": mask(GROQ_KEY)}
    failed(run("providers", "add", "--preset", "groq", "--api-key-env", "UNSET_VAR_XYZ"),
           "$UNSET_VAR_XYZ is empty")


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope", "--api-key", "x"], "unknown preset 'nope'; known presets:"),
    (["--type", "openai", "--base-url", "ftp://example.com/v1", "--no-key"],
     "base_url must be an http(s) URL, got 'ftp://example.com/v1'"),
    (["--type", "openai", "--base-url", "not a url", "--no-key"], "base_url must be an http(s)"),
    (["--type", "openai", "--no-key"], "an openai connection needs a base_url (or a preset)"),
    (["--preset", "groq"], "openai connections need: api_key"),
    (["--type", "nosuchtype", "--no-key"], "no provider type 'nosuchtype' is registered"),
    (["--api-key", "x"], "give a provider 'type' or a 'preset'"),
    (["--preset", "groq", "--api-key", "x", "--prefix", "a/b"], "prefix must be 1-64 letters"),
])
def test_providers_add_bad_input(run: Cli, args: list[str], message: str) -> None:
    failed(run("providers", "add", *args), message)
    assert json.loads(ok(run("providers", "list", "--json")).output) == []  # nothing saved


async def test_providers_test_against_fake_upstream(run: Cli, fake_openai: Any) -> None:
    conn_id = added_id(ok(await run.in_thread(
        "providers", "add", "--type", "openai", "--base-url", fake_openai.base_url,
        "--api-key", "sk-upstream-test", "--prefix", "up", "--name", "fake")))
    result = ok(await run.in_thread("providers", "test", conn_id))
    assert re.fullmatch(r"fake: ok in \d+ ms, 2 models\n", result.output), result.output
    assert any(r.path == "/v1/models" and r.headers["authorization"] == "Bearer sk-upstream-test"
               for r in fake_openai.requests)

    wrong = added_id(ok(await run.in_thread(
        "providers", "add", "--type", "openai", "--base-url", fake_openai.base_url,
        "--api-key", "sk-wrong", "--prefix", "wrong", "--name", "wrong-key")))
    failed(await run.in_thread("providers", "test", wrong), "wrong-key: failed:")

    closed = added_id(ok(await run.in_thread(
        "providers", "add", "--type", "openai", "--no-key", "--base-url",
        f"http://127.0.0.1:{free_port()}/v1", "--name", "closed")))
    started = time.monotonic()
    failed(await run.in_thread("providers", "test", closed), "closed: failed:")
    assert time.monotonic() - started < 10
    failed(await run.in_thread("providers", "test", "conn_nope"), "no connection 'conn_nope'")


# ---------------------------------------------------------------------- keys


def test_keys_create_list_revoke(run: Cli) -> None:
    created = ok(run("keys", "create", "--name", "a"))
    secret = created.stdout.strip()
    assert re.fullmatch(r"sk-or-[A-Za-z0-9_-]{40,}", secret), created.stdout
    assert "not shown again" in created.stderr and secret not in created.stderr

    listing = ok(run("keys", "list")).output
    assert secret not in listing
    assert f"{secret[:10]}…" in listing and "active" in listing and " a\n" in listing
    (key,) = json.loads(ok(run("keys", "list", "--json")).output)
    assert key["key_prefix"] == secret[:10] and key["scopes"] == [] and key["name"] == "a"
    assert secret not in json.dumps(key)

    admin = ok(run("keys", "create", "--name", "ops", "--admin"))
    assert "with admin scope" in admin.stderr
    keys = {k["name"]: k for k in json.loads(ok(run("keys", "list", "--json")).output)}
    assert keys["ops"]["scopes"] == ["admin"]
    assert keys["ops"]["key_prefix"] != keys["a"]["key_prefix"]

    ok(run("keys", "revoke", key["id"]))
    assert "revoked" in ok(run("keys", "list")).output
    failed(run("keys", "revoke", key["id"]), f"no active key {key['id']!r}")
    failed(run("keys", "revoke", "key_nope"), "no active key 'key_nope'")
    failed(run("keys", "create"), "Missing option '--name'")


# ---------------------------------------------------------------------- admin


async def test_admin_password_then_login(run: Cli, aiohttp_client: Any) -> None:
    failed(await run.in_thread("admin", "password", "--password", "short"),
           "at least 8 characters")
    ok(await run.in_thread("admin", "password", "--password", "cli-chosen-pass-42"))
    h = await start_harness(aiohttp_client, make_test_config(run.data_dir))
    resp = await h.client.post("/api/auth/login", json={"password": "test-password-123"})
    assert resp.status == 401  # the initial password does not override the CLI's
    resp = await h.client.post("/api/auth/login", json={"password": "cli-chosen-pass-42"})
    assert resp.status == 200
    cookie = resp.cookies["omniroute_session"].value
    h.client.session.cookie_jar.clear()
    resp = await h.client.get("/api/settings", headers={"Cookie": f"omniroute_session={cookie}"})
    assert resp.status == 200


async def _eventually(check: Any, *, within: float) -> float:
    """Poll ``check()`` until it is true; return how long it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.05)


async def test_running_gateway_picks_up_cli_changes(run: Cli, aiohttp_client: Any,
                                                    fake_openai: Any) -> None:
    h = await start_harness(aiohttp_client, make_test_config(run.data_dir, require_api_key=True))

    created = ok(await run.in_thread("keys", "create", "--name", "from-cli"))
    secret = created.stdout.strip()
    headers = {"Authorization": f"Bearer {secret}"}

    async def key_works() -> bool:
        return (await h.client.get("/v1/models", headers=headers)).status == 200

    assert await key_works()  # at once: a refused key makes the gateway check for changes

    ok(await run.in_thread("providers", "add", "--type", "openai", "--base-url",
                           fake_openai.base_url, "--api-key", "sk-upstream-test",
                           "--prefix", "cli"))
    body = {"model": "cli/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def routable() -> bool:
        resp = await h.client.post("/v1/chat/completions", json=body, headers=headers)
        return resp.status == 200

    assert await routable()  # at once: so does an unknown provider prefix

    (key,) = [k for k in json.loads(ok(await run.in_thread("keys", "list", "--json")).output)
              if k["name"] == "from-cli"]
    ok(await run.in_thread("keys", "revoke", key["id"]))

    async def key_refused() -> bool:
        return (await h.client.get("/v1/models", headers=headers)).status == 401

    await _eventually(key_refused, within=1.5)  # a key that works is not checked: the poll

    admin = ok(await run.in_thread("keys", "create", "--name", "ops", "--admin")).stdout.strip()

    async def admin_works() -> bool:
        resp = await h.client.get("/api/settings", headers={"Authorization": f"Bearer {admin}"})
        return resp.status == 200

    assert await admin_works()


def test_providers_add_prompts_for_a_key_only_when_the_type_takes_one() -> None:
    from omniroute.cli.providers import _wants_key
    from omniroute.plugins import load_plugins

    plugins = load_plugins()
    assert _wants_key(plugins, None, "groq") is True
    assert _wants_key(plugins, None, "ollama") is False  # local preset: no key needed
    assert _wants_key(plugins, "openai", None) is True  # custom base URL: may need one
    assert _wants_key(plugins, "example", None) is False  # the example type takes no key
    assert _wants_key(plugins, "no-such-type", None) is False


def test_combos_add_list_remove(tmp_path: Path) -> None:
    run = Cli(tmp_path / "data")
    out = run("combos", "add", "team", "a/m1", '{"provider": "b", "model": "m2", "weight": 2}')
    assert out.exit_code == 0, out.output
    assert "added combo" in out.output
    listed = json.loads(run("combos", "list", "--json").output)
    assert listed[0]["name"] == "team"
    assert listed[0]["steps"] == ["a/m1", {"provider": "b", "model": "m2", "weight": 2}]
    assert "2. {" in run("combos", "list").output
    # replacing keeps the id; a cycle is refused with a readable message
    again = run("combos", "add", "team", "a/m3")
    assert "updated combo" in again.output
    assert json.loads(run("combos", "list", "--json").output)[0]["id"] == listed[0]["id"]
    assert run("combos", "add", "loop", "team").exit_code == 0
    cyc = run("combos", "add", "team", "loop")
    assert cyc.exit_code != 0 and "cycle" in cyc.output
    assert run("combos", "add", "bad", "{not json").exit_code != 0
    assert run("combos", "remove", "team").exit_code == 0
    assert run("combos", "remove", "team").exit_code != 0


async def test_requests_and_rate_limits_show_who_failed_and_why(gw: Any) -> None:
    from fakes.openai_upstream import error

    run = Cli(gw.gateway.config.data_dir)
    hi = {"model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    gw.fake.script.append(error(503, "The engine is currently overloaded."))
    assert (await gw.client.post("/v1/chat/completions", json=hi)).status == 503
    await gw.log.flush()
    out = ok(await run.in_thread("requests", "--failed")).output
    assert "503  up/gpt-4o-mini -> up/gpt-4o-mini  attempts 1" in out
    assert "The engine is currently overloaded." in out
    rows = json.loads(ok(await run.in_thread("requests", "--json")).output)
    assert rows[0]["status"] == 503 and rows[0]["connection_id"] == gw.connection["id"]

    live = ok(await run.in_thread("rate-limits", "--url", gw.base_url,
                                  "--admin-key", gw.admin_key)).output
    assert "down 1" in live  # the account is cooling down after the 503
    assert re.search(r"^down +up/ +fake .*consecutive_failures 1", live, re.MULTILINE), live
    failed(await run.in_thread("rate-limits", "--url", gw.base_url, "--admin-key", "sk-nope"),
           "answered 401")


def test_combos_add_validates_strategy_steps_and_connections(run: Cli) -> None:
    failed(run("combos", "add", "c", "a/m", "--strategy", "fastest"),
           "unknown strategy 'fastest'; expected one of priority, round-robin")
    out = ok(run("combos", "add", "c", "a/m", "--strategy", "Round_Robin")).output
    assert "(round-robin, 1 steps)" in out
    assert json.loads(ok(run("combos", "list", "--json")).output)[0]["strategy"] == "round-robin"
    failed(run("combos", "add", "d", '{"model": "a/m", "weight": 0}'),
           "step 1: weight must be a positive number")
    failed(run("combos", "add", "d", '{"model": "a/m", "connection": "nobody"}'),
           "step 1: no connection 'nobody'")


def test_combos_add_warns_about_steps_the_stored_configuration_cannot_resolve(run: Cli) -> None:
    ok(run("providers", "add", "--type", "openai", "--base-url", "http://127.0.0.1:1/v1",
           "--no-key", "--prefix", "local", "--name", "box", "--model", "llama-3"))
    good = ok(run("combos", "add", "c", "local/anything", "llama-3",
                  '{"model": "local/llama-3", "connection": "box"}'))
    assert "warning" not in good.output
    warned = ok(run("combos", "add", "d", "lcal/llama-3", "llama3", "c"))
    assert "warning: step 1 ('lcal/llama-3'): Model 'lcal/llama-3' is not known." in warned.output
    assert "Did you mean 'local/llama-3'" in warned.output
    assert "warning: step 2 ('llama3')" in warned.output and "step 3" not in warned.output
    assert "added combo" in warned.output  # saved anyway: the gateway may know more models


# ---------------------------------------------------------------------- budgets and key limits


def test_keys_create_with_limits(run: Cli) -> None:
    ok(run("keys", "create", "--name", "capped", "--budget", "daily=5", "--budget", "50",
           "--tokens", "daily=100000", "--models", "openai/*,anthropic/claude-*",
           "--expires", "2030-01-31", "--rpm", "60", "--concurrency", "4", "--no-usage-log"))
    (key,) = json.loads(ok(run("keys", "list", "--json")).output)
    assert key["limits"] == {"daily_usd": 5.0, "monthly_usd": 50.0, "daily_tokens": 100000,
                             "warn_at": 0.8, "reset_time": "00:00", "rpm": 60,
                             "concurrency": 4, "models": ["openai/*", "anthropic/claude-*"]}
    assert key["expires_at"] == 1896048000.0 and key["log_usage"] is False

    failed(run("keys", "create", "--name", "x", "--budget", "yearly=5"),
           "the period must be one of daily, weekly, monthly")
    failed(run("keys", "create", "--name", "x", "--budget", "lots"), "not a number")
    failed(run("keys", "create", "--name", "x", "--rpm", "0"), "rpm must be at least 1")
    failed(run("keys", "create", "--name", "x", "--expires", "someday"), "ISO 8601")
    failed(run("keys", "create", "--name", "x", "--expires", "99999999999d"),
           "between 1970-01-01 and 9999-12-31T23:59:59Z")
    assert len(json.loads(ok(run("keys", "list", "--json")).output)) == 1


def test_budget_set_and_show(run: Cli) -> None:
    ok(run("keys", "create", "--name", "team-a"))
    ok(run("keys", "create", "--name", "team-b"))
    out = ok(run("budget", "set", "team-a", "--daily", "5", "--monthly", "50")).output
    assert "team-a" in out and "daily" in out and "$5.00" in out and "$50.00" in out

    shown = json.loads(ok(run("budget", "show", "--json")).output)
    a = next(v for v in shown if v["name"] == "team-a")
    b = next(v for v in shown if v["name"] == "team-b")
    assert a["period"] == "daily" and a["limit"] == 5.0 and a["spend"] == 0
    assert a["remaining"] == 5.0 and a["reset"].endswith("T00:00:00Z")
    assert [w["period"] for w in a["windows"]] == ["daily", "monthly"]
    assert b["limit"] is None and b["windows"] == []
    table = ok(run("budget", "show")).output
    assert "team-a" in table and "team-b" in table and "RESETS" in table

    key_id = a["keyId"]
    ok(run("budget", "set", key_id, "--weekly", "20", "--reset-time", "06:00", "--warn-at",
           "0.9"))
    one = json.loads(ok(run("budget", "show", key_id, "--json")).output)
    assert [w["period"] for w in one["windows"]] == ["daily", "weekly", "monthly"]
    assert one["resetTime"] == "06:00" and one["warningThreshold"] == 0.9
    assert one["reset"].endswith("T06:00:00Z")
    ok(run("budget", "set", key_id, "--clear", "--monthly", "10"))
    one = json.loads(ok(run("budget", "show", key_id, "--json")).output)
    assert one["monthlyLimitUsd"] == 10 and one["dailyLimitUsd"] is None

    failed(run("budget", "set", "nobody", "--daily", "5"), "no key 'nobody'")
    failed(run("budget", "set", key_id, "--daily", "-1"), "daily_usd must not be negative")
    failed(run("budget", "set", key_id), "Give a limit")
    failed(run("budget", "set", key_id, "--reset-time", "noon"), "HH:MM")


async def test_budget_set_reaches_a_running_gateway(run: Cli, aiohttp_client: Any,
                                                    fake_openai: Any) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(run.data_dir))
    await gw.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                           "base_url": fake_openai.base_url, "api_key": "sk-upstream-test"})
    secret = await gw.create_key("live")
    result = await run.in_thread("budget", "set", "live", "--daily", "0")
    assert result.exit_code == 0, result.output
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 5
    while True:  # the config watcher reloads the key index within about a second
        resp = await gw.client.post("/v1/chat/completions", headers=headers,
                                    json={"model": "up/gpt-4o-mini",
                                          "messages": [{"role": "user", "content": "hi"}]})
        if resp.status == 429 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert resp.status == 429, await resp.text()
    assert (await resp.json())["error"]["code"] == "budget_exceeded"


def test_subcommands_are_imported_when_run_and_a_plugin_command_of_the_same_name_wins(
) -> None:
    """``omniroute serve`` keeps no other command's code: each is imported on first use."""
    import click

    from omniroute.cli.common import LazyGroup

    group = LazyGroup("g", lazy={"doctor": "omniroute.cli.doctor:doctor_command",
                                 "usage": "omniroute.cli.usage:usage_command"})

    @group.command("usage")
    def plugin_usage() -> None:
        """A plugin's own usage command."""
        click.echo("the plugin's")

    runner = CliRunner()
    assert group.list_commands(click.Context(group)) == ["doctor", "usage"]
    assert runner.invoke(group, ["usage"]).output == "the plugin's\n"
    from omniroute.cli.doctor import doctor_command
    assert group.get_command(click.Context(group), "doctor") is doctor_command
    assert group.get_command(click.Context(group), "nope") is None
    names = {name for name in cli.list_commands(click.Context(cli))}
    assert {"serve", "budget", "usage", "doctor", "connect", "login", "plugins"} <= names
    providers = cli.get_command(click.Context(cli), "providers")
    assert isinstance(providers, click.Group)
    assert "import" in providers.list_commands(click.Context(providers))
