"""The audit log: every management call that changes state, and every login, is recorded."""

from __future__ import annotations

import getpass
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from test_cli import GROQ_KEY, Cli, added_id, failed, ok

from omniroute.appkeys import AUDIT_LOG
from omniroute.redact import is_secret_name as is_secret_field
from omniroute.storage import DatabaseBackend
from omniroute.storage.audit import MAX_DIFF_CHARS, AuditEntry, AuditLog, change_of, diff_of
from omniroute.storage.audit import redact_diff as redact
from omniroute.storage.snapshots import SNAPSHOTS, Snapshot
from omniroute.testing import make_test_config, start_harness
from omniroute.vault import mask
from omniroute.web.tags import MUTATING_METHODS, ROUTE_TAGS, is_management_path

PASSWORD = "test-password-123"
UPSTREAM_SECRET = "sk-upstream-very-secret-0123456789"


async def entries(gw: Any, **params: Any) -> list[dict[str, Any]]:
    resp = await gw.client.get("/api/compliance/audit-log", headers=gw.admin_headers,
                               params={"limit": "500", **{k: str(v) for k, v in params.items()}})
    body = await resp.json()
    assert resp.status == 200, body
    return body["entries"]


async def admin_actor(gw: Any) -> str:
    keys = await gw.store.list_keys()
    return "key:" + next(k.id for k in keys if k.name == "test-admin")


def bare_session(gw: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(gw.base_url, cookie_jar=aiohttp.CookieJar(unsafe=True))


def state_changing_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, pattern) of every route of the management API that changes state, found
    by walking the router: a route added later is covered without editing this test."""
    tags = app[ROUTE_TAGS]
    found = set()
    for route in app.router.routes():
        resource = route.resource
        path = resource.canonical if resource is not None else ""
        if route.method not in MUTATING_METHODS or not path.startswith("/api/"):
            continue
        tag = tags.get(route)
        access = tag.access if tag is not None else (
            "admin" if is_management_path(app, path) else "client")
        if access == "admin":
            found.add((route.method, path))
    return sorted(found)


def fill(pattern: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", pattern)


# ----------------------------------------------------------------------------- coverage

async def test_every_management_route_that_changes_state_leaves_an_entry(gw: Any) -> None:
    routes = state_changing_routes(gw.client.app)
    # the walk finds the routes it must (so an empty walk cannot pass)
    assert ("POST", "/api/providers") in routes and ("DELETE", "/api/keys/{id}") in routes
    assert ("PATCH", "/api/resilience") in routes and ("PUT", "/api/auth/password") in routes
    assert len(routes) >= 15
    before = len(await entries(gw))  # the fixture added a provider through the API
    statuses = {}
    for method, pattern in routes:
        resp = await gw.client.request(method, fill(pattern), json={}, headers=gw.admin_headers)
        statuses[(method, pattern)] = resp.status
    actor = await admin_actor(gw)
    recorded = {e["action"]: e for e in reversed(await entries(gw))}  # the newest wins
    missing = [f"{m} {p}" for m, p in routes if f"{m} {p}" not in recorded]
    assert not missing, f"management routes without an audit entry: {missing}"
    for (method, pattern), status in statuses.items():
        entry = recorded[f"{method} {pattern}"]
        assert entry["actor"] == actor
        assert entry["status"] == status
        assert entry["address"] == "127.0.0.1"
        if "{" in pattern:
            assert entry["target"] == "x1", entry
        assert abs(entry["ts"] - time.time()) < 60
    # reads are not audited; nor are client requests
    await gw.client.get("/api/providers", headers=gw.admin_headers)
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client",
                                max_retries=0, timeout=10)
    await client.chat.completions.create(model="up/gpt-4o-mini",
                                         messages=[{"role": "user", "content": "hi"}])
    after = await entries(gw)
    assert not [e for e in after if not any(e["action"].startswith(m) for m in MUTATING_METHODS)]
    assert len(after) == len(await entries(gw)) == before + len(routes)


async def test_a_plugin_route_under_the_management_api_is_audited(aiohttp_client: Any,
                                                                  tmp_path: Path) -> None:
    """An untagged route (a plugin's) under /api/ is admin-only, and audited when it
    changes state."""
    from omniroute.app import make_app
    from omniroute.testing import GatewayHarness, make_test_config

    app = make_app(make_test_config(tmp_path / "data"))

    async def poke(request: web.Request) -> web.Response:
        return web.json_response({"poked": request.match_info["thing"]})

    app.router.add_post("/api/plugin-thing/{thing}", poke)
    app.router.add_get("/api/plugin-thing/{thing}", poke)
    gw = GatewayHarness(await aiohttp_client(app), "")
    gw.admin_key = await gw.create_key("test-admin", admin=True)
    gw.admin_headers = {"Authorization": f"Bearer {gw.admin_key}"}
    assert ("POST", "/api/plugin-thing/{thing}") in state_changing_routes(app)
    assert (await gw.client.post("/api/plugin-thing/t1", headers=gw.admin_headers)).status == 200
    assert (await gw.client.get("/api/plugin-thing/t1", headers=gw.admin_headers)).status == 200
    assert (await gw.client.post("/api/plugin-thing/t2")).status == 401
    # an unknown path under /api/ is not an action
    assert (await gw.client.post("/api/no-such-thing", headers=gw.admin_headers)).status == 404
    found = [(e["action"], e["target"], e["status"], e["actor"]) for e in await entries(gw)]
    assert found == [("POST /api/plugin-thing/{thing}", "t2", 401, "anonymous"),
                     ("POST /api/plugin-thing/{thing}", "t1", 200, await admin_actor(gw))]


# ----------------------------------------------------------------------------- what is kept

async def test_secrets_never_reach_the_audit_log(gw: Any) -> None:
    resp = await gw.client.post("/api/providers", headers=gw.admin_headers, json={
        "type": "openai", "name": "second", "prefix": "two", "base_url": gw.fake.base_url,
        "api_key": UPSTREAM_SECRET, "headers": {"Authorization": f"Bearer {UPSTREAM_SECRET}"}})
    assert resp.status == 201, await resp.text()
    created_conn = (await resp.json())["id"]
    resp = await gw.client.post("/api/keys", headers=gw.admin_headers,
                                json={"name": "ci", "scopes": []})
    created_key = await resp.json()
    resp = await gw.client.put("/api/auth/password", headers=gw.admin_headers, json={
        "current_password": PASSWORD, "new_password": "another-password-456"})
    assert resp.status == 200
    resp = await gw.client.patch("/api/settings", headers=gw.admin_headers,
                                 json={"max_attempts": 2})
    assert resp.status == 200

    found = {e["action"]: e for e in reversed(await entries(gw))}  # the newest wins
    provider = found["POST /api/providers"]
    assert provider["target"] == created_conn  # the id of what was created
    # a creation: no before, the whole object after (as stored, secrets masked)
    assert provider["diff"]["before"] is None
    created = provider["diff"]["after"]
    assert created["id"] == created_conn and created["name"] == "second"
    assert created["prefix"] == "two" and created["credentials"] == {"api_key": "sk-u…6789"}
    assert created["settings"]["headers"] == {"Authorization": "Bear…6789"}
    key = found["POST /api/keys"]
    assert key["target"] == created_key["id"] and key["diff"]["before"] is None
    assert key["diff"]["after"]["name"] == "ci" and key["diff"]["after"]["scopes"] == []
    # no snapshot of a password: the request, and no password in it
    password = found["PUT /api/auth/password"]
    assert password["diff"] == {"request": {"current_password": "[REDACTED]",
                                            "new_password": "[REDACTED]"}}
    settings = found["PATCH /api/settings"]
    assert settings["diff"] == {"before": {"max_attempts": None}, "after": {"max_attempts": 2}}
    assert settings["target"] == "max_attempts"  # the one setting it changed

    await gw.client.app[AUDIT_LOG].flush()
    dump = "\n".join(str(tuple(row)) for row in await gw.store.db.fetchall(
        "SELECT * FROM audit_log"))
    for secret in (UPSTREAM_SECRET, created_key["key"], PASSWORD, "another-password-456"):
        assert secret not in dump


async def test_a_patch_records_the_fields_it_changed_before_and_after(gw: Any) -> None:
    resp = await gw.client.post("/api/keys", headers=gw.admin_headers,
                                json={"name": "ci", "limits": {"daily_usd": 5, "rpm": 60}})
    key = await resp.json()
    resp = await gw.client.patch(f"/api/keys/{key['id']}", headers=gw.admin_headers,
                                 json={"limits": {"daily_usd": 7}, "log_usage": False})
    assert resp.status == 200, await resp.text()
    (entry,) = await entries(gw, action="PATCH /api/keys/{id}")
    assert entry["target"] == key["id"] and entry["status"] == 200
    # only what changed: not the name, not the rpm, not the limits' other fields
    assert entry["diff"] == {"before": {"limits": {"daily_usd": 5.0}, "log_usage": True},
                             "after": {"limits": {"daily_usd": 7.0}, "log_usage": False}}
    # a table named in the body (a budget): the member that changed is the target
    resp = await gw.client.post("/api/usage/budget", headers=gw.admin_headers,
                                json={"keyId": key["id"], "limit": 9, "period": "daily"})
    assert resp.status == 200, await resp.text()
    (entry,) = await entries(gw, action="POST /api/usage/budget")
    assert entry["target"] == key["id"]
    assert entry["diff"] == {"before": {key["id"]: {"daily_usd": 7.0}},
                             "after": {key["id"]: {"daily_usd": 9.0}}}
    # a refused change has no after: the entry holds what was asked
    resp = await gw.client.patch(f"/api/keys/{key['id']}", headers=gw.admin_headers,
                                 json={"log_usage": "no"})
    assert resp.status == 400
    refused = (await entries(gw, action="PATCH /api/keys/{id}"))[0]
    assert refused["status"] == 400 and refused["diff"] == {"request": {"log_usage": "no"}}


async def test_a_delete_records_the_deleted_objects_redacted_state(gw: Any) -> None:
    resp = await gw.client.post("/api/providers", headers=gw.admin_headers, json={
        "type": "openai", "name": "gone", "prefix": "gone", "base_url": gw.fake.base_url,
        "api_key": UPSTREAM_SECRET})
    conn = (await resp.json())["id"]
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers,
                                json={"name": "duo", "steps": ["up/gpt-4o-mini"]})
    assert resp.status == 201, await resp.text()
    combo = (await resp.json())["id"]
    resp = await gw.client.post("/api/models/alias", headers=gw.admin_headers,
                                json={"alias": "fast", "target": "up/gpt-4o-mini"})
    assert resp.status == 200
    for path in (f"/api/providers/{conn}", f"/api/combos/{combo}", "/api/models/alias/fast"):
        resp = await gw.client.delete(path, headers=gw.admin_headers)
        assert resp.status == 200, await resp.text()
    found = {e["action"]: e for e in await entries(gw)}
    deleted = found["DELETE /api/providers/{id}"]["diff"]
    assert deleted["after"] is None
    assert deleted["before"]["id"] == conn and deleted["before"]["name"] == "gone"
    assert deleted["before"]["credentials"] == {"api_key": "sk-u…6789"}
    assert found["DELETE /api/combos/{id}"]["diff"]["before"]["steps"] == ["up/gpt-4o-mini"]
    assert found["DELETE /api/combos/{id}"]["diff"]["after"] is None
    assert found["POST /api/models/alias"]["target"] == "fast"
    assert found["POST /api/models/alias"]["diff"] == {"before": {"fast": None},
                                                       "after": {"fast": "up/gpt-4o-mini"}}
    assert found["DELETE /api/models/alias/{alias}"]["diff"] == {
        "before": {"fast": "up/gpt-4o-mini"}, "after": {"fast": None}}
    # a price override: a table too, its member named by model
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers,
                               json={"model": "up/gpt-4o-mini", "input": 1, "output": 2})
    assert resp.status == 200, await resp.text()
    (priced,) = await entries(gw, action="PUT /api/pricing")
    assert priced["target"] == "up/gpt-4o-mini" and priced["diff"]["before"] == {
        "up/gpt-4o-mini": None}
    assert priced["diff"]["after"]["up/gpt-4o-mini"]["input"] == 1.0


async def test_a_providers_key_never_appears_in_clear_before_or_after(gw: Any) -> None:
    resp = await gw.client.post("/api/providers", headers=gw.admin_headers, json={
        "type": "openai", "name": "rotated", "prefix": "rot", "base_url": gw.fake.base_url,
        "api_key": UPSTREAM_SECRET})
    conn = (await resp.json())["id"]
    rotated = "sk-rotated-another-secret-9876543210"
    resp = await gw.client.put(f"/api/providers/{conn}", headers=gw.admin_headers,
                               json={"api_key": rotated, "priority": 3})
    assert resp.status == 200, await resp.text()
    (entry,) = await entries(gw, action="PUT /api/providers/{id}")
    diff = entry["diff"]
    assert diff["before"]["credentials"] == {"api_key": "sk-u…6789"}
    assert diff["after"]["credentials"] == {"api_key": "sk-r…3210"}
    assert diff["before"]["priority"] == 0 and diff["after"]["priority"] == 3
    assert "name" not in diff["before"] and "prefix" not in diff["after"]  # unchanged
    await gw.client.app[AUDIT_LOG].flush()
    dump = "\n".join(str(tuple(row)) for row in await gw.store.db.fetchall(
        "SELECT * FROM audit_log"))
    assert UPSTREAM_SECRET not in dump and rotated not in dump


async def test_a_state_that_cannot_be_read_never_stops_the_change(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed read (a credential that no longer opens, a database hiccup) is logged;
    the call goes on and its entry keeps the request body."""
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers,
                                json={"name": "duo", "steps": ["up/gpt-4o-mini"]})
    combo = (await resp.json())["id"]

    async def unreadable(store: Any, target: str | None) -> Any:
        raise ValueError("cannot open")

    monkeypatch.setitem(SNAPSHOTS, "combo", Snapshot(unreadable))  # type: ignore[index]
    resp = await gw.client.put(f"/api/combos/{combo}", headers=gw.admin_headers,
                               json={"steps": ["up/gpt-4o"]})
    assert resp.status == 200, await resp.text()
    assert (await gw.store.get_combo(combo)).steps == ["up/gpt-4o"]  # type: ignore[union-attr]
    (entry,) = await entries(gw, action="PUT /api/combos/{id}")
    assert entry["status"] == 200 and entry["target"] == combo
    assert entry["diff"] == {"request": {"steps": ["up/gpt-4o"]}}


def test_a_change_too_large_is_cut_to_the_names_of_its_fields() -> None:
    before = {"name": "a", "steps": ["x" * 3000]}
    after = {"name": "b", "steps": ["y" * 3000]}
    stored = change_of(before, after)
    assert len(stored) <= MAX_DIFF_CHARS
    shape = orjson.loads(stored)["changed"]
    assert shape["truncated"] is True and shape["bytes"] > MAX_DIFF_CHARS
    assert shape["fields"] == ["name", "steps"]


async def test_logins_and_logouts_succeed_and_fail_on_the_record(omniroute: Any) -> None:
    gw = omniroute  # no provider: the fixture's own API call would be an entry too
    async with bare_session(gw) as s:
        async with s.post("/api/auth/login", json={"password": "wrong-password"}) as resp:
            assert resp.status == 401
        async with s.post("/api/auth/login", json={}) as resp:
            assert resp.status == 400
        async with s.patch("/api/settings", json={"max_attempts": 3}) as resp:
            assert resp.status == 401  # not logged in: refused, and on the record
        async with s.post("/api/auth/login", json={"password": PASSWORD}) as resp:
            assert resp.status == 200
            csrf = {"X-CSRF-Token": (await resp.json())["csrf_token"]}
        async with s.patch("/api/settings", json={"max_attempts": 3}, headers=csrf) as resp:
            assert resp.status == 200
        async with s.post("/api/auth/logout", headers=csrf) as resp:
            assert resp.status == 200
    found = [(e["action"], e["actor"], e["status"]) for e in reversed(await entries(gw))]
    assert found == [
        ("POST /api/auth/login", "anonymous", 401),
        ("POST /api/auth/login", "anonymous", 400),
        ("PATCH /api/settings", "anonymous", 401),
        ("POST /api/auth/login", "admin_session", 200),
        ("PATCH /api/settings", "admin_session", 200),
        ("POST /api/auth/logout", "admin_session", 200),
    ]
    logins = await entries(gw, action="POST /api/auth/login")
    assert [e["diff"] for e in logins] == [None, None, None]  # a login's body is never kept


# ----------------------------------------------------------------------------- the read API

async def test_audit_log_pages_with_a_cursor_and_filters(omniroute: Any) -> None:
    gw = omniroute  # no provider: the fixture's own API call would be an entry too
    for i in range(23):
        await gw.client.patch("/api/settings", headers=gw.admin_headers,
                              json={"max_attempts": 1 + i % 5})
    async with bare_session(gw) as s:
        await s.post("/api/auth/login", json={"password": "nope-nope"})
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        resp = await gw.client.get("/api/compliance/audit-log", params=params,
                                   headers=gw.admin_headers)
        page = await resp.json()
        seen += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 24 and seen == sorted(seen, reverse=True)

    actor = await admin_actor(gw)
    assert len(await entries(gw, actor=actor)) == 23
    assert len(await entries(gw, actor="anonymous")) == 1
    assert len(await entries(gw, action="PATCH /api/settings")) == 23
    assert len(await entries(gw, action="POST /api/auth/*")) == 1
    assert len(await entries(gw, action="POST *")) == 1
    assert len(await entries(gw, **{"from": "1h"})) == 24
    assert await entries(gw, **{"to": "2020-01-01"}) == []
    for params, param in (({"cursor": "zzz"}, "cursor"), ({"from": "later"}, "from"),
                          ({"limit": "0"}, "limit"),
                          ({"from": "2024-02-01", "to": "2024-01-01"}, "from")):
        resp = await gw.client.get("/api/compliance/audit-log", params=params,
                                   headers=gw.admin_headers)
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == param
    # admin only
    async with bare_session(gw) as s, s.get("/api/compliance/audit-log") as resp:
        assert resp.status == 401


# ----------------------------------------------------------------------------- the writer

async def test_the_writer_flushes_on_close(db: DatabaseBackend) -> None:
    audit = AuditLog(db, interval=3600)
    audit.start()
    audit.add(AuditEntry(ts=1.0, actor="admin_session", action="DELETE /api/keys/{id}",
                         target="key_1", address="127.0.0.1", status=200))
    assert audit.pending == 1  # queued, not written on the caller's path
    await audit.close()
    rows = await db.fetchall("SELECT actor, action, target, status FROM audit_log")
    assert [tuple(r) for r in rows] == [("admin_session", "DELETE /api/keys/{id}",
                                         "key_1", 200)]


async def test_pages_filter_by_actor_and_action_prefix(db: DatabaseBackend) -> None:
    audit = AuditLog(db)
    for i, (actor, action) in enumerate([("admin_session", "POST /api/auth/login"),
                                         ("key:k1", "DELETE /api/keys/{id}"),
                                         ("admin_session", "POST /api/auth/logout"),
                                         ("admin_session", "PATCH /api/settings")]):
        audit.add(AuditEntry(ts=100.0 + i, actor=actor, action=action, diff='{"a": 1}'))
    assert await audit.flush() == 4
    entries, cursor = await audit.page(action="POST /api/auth/*")
    assert [e["action"] for e in entries] == ["POST /api/auth/logout", "POST /api/auth/login"]
    assert cursor is None and entries[0]["diff"] == {"a": 1}
    first, cursor = await audit.page(actor="admin_session", limit=2)
    assert [e["ts"] for e in first] == [103.0, 102.0] and cursor is not None
    rest, cursor = await audit.page(actor="admin_session", limit=2, cursor=cursor)
    assert [e["ts"] for e in rest] == [100.0] and cursor is None


class FailingDb:
    def transaction(self) -> Any:
        raise sqlite3.OperationalError("database is locked")


async def test_a_failing_database_keeps_entries_and_counts_what_it_drops() -> None:
    audit = AuditLog(FailingDb(), max_pending=3)  # type: ignore[arg-type]
    for i in range(3):
        audit.add(AuditEntry(ts=float(i), actor="a", action="POST /api/x"))
    assert await audit.flush() == 0
    assert audit.pending == 3 and audit.dropped == 0
    audit.add(AuditEntry(ts=9.0, actor="a", action="POST /api/x"))
    assert audit.pending == 3 and audit.dropped == 1


# ----------------------------------------------------------------------------- redaction

@pytest.mark.parametrize("name", [
    "api_key", "apiKey", "x-api-key", "password", "new_password", "client_secret",
    "secret_key", "access_token", "refresh_token", "id_token", "token", "Authorization",
    "credentials", "cookie", "private_key", "key", "session", "signature"])
def test_secret_fields(name: str) -> None:
    assert is_secret_field(name)


@pytest.mark.parametrize("name", [
    "name", "keyId", "key_id", "max_tokens", "tokens_per_day", "model", "prefix",
    "session_ttl", "scopes", "limit", "base_url"])
def test_fields_that_are_not_secrets(name: str) -> None:
    assert not is_secret_field(name)


def test_redact_masks_nested_secrets_and_keeps_the_rest() -> None:
    body = {"name": "n", "settings": {"api_key": "sk-abcdefghijklmnopqrstuvwxyz",
                                      "models": ["a"], "oauth": {"refresh_token": "short"}},
            "credentials": {"anything": "at all"}, "steps": [{"password": 12345}]}
    assert redact(body) == {
        "name": "n", "settings": {"api_key": "sk-a…wxyz", "models": ["a"],
                                  "oauth": {"refresh_token": "*****"}},
        "credentials": "[REDACTED]", "steps": [{"password": "[REDACTED]"}]}
    assert diff_of(b"") is None and diff_of(b"  ") is None
    assert diff_of(b"not json") == '{"request":{"unparsed_bytes":8}}'
    huge = diff_of(b'{"a": "' + b"x" * 5000 + b'", "password": "p"}')
    assert huge is not None and "x" * 100 not in huge and len(huge) <= MAX_DIFF_CHARS
    assert orjson.loads(huge) == {"request": {"truncated": True, "bytes": 5026,
                                              "fields": ["a", "password"]}}


@pytest.mark.parametrize(("params", "param"), [
    ({"from": "1e20"}, "from"), ({"to": "99999999999w"}, "to"), ({"from": "soon"}, "from")])
async def test_audit_log_times_out_of_range_are_a_400(omniroute: Any, params: dict[str, str],
                                                      param: str) -> None:
    resp = await omniroute.client.get("/api/compliance/audit-log", params=params,
                                      headers=omniroute.admin_headers)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == param


@pytest.mark.parametrize("name", [
    "Ocp-Apim-Subscription-Key", "subscription_key", "X-Custom-Auth", "client_key",
    "access_key", "keys", "X-Goog-Api-Key", "passphrase"])
def test_more_secret_fields(name: str) -> None:
    assert is_secret_field(name)


def test_audit_redaction_finds_secrets_by_their_shape_under_any_name() -> None:
    """A connection's free-form settings (its extra headers) name fields as they like."""
    diff = diff_of(orjson.dumps({"settings": {"headers": {
        "X-Route-To": "Bearer abcdefghijklmnop123", "X-Thing": "sk-proj-ABCDEFGHIJKLMNOP",
        "X-Goog": "AIzaSyA1234567890abcdefghijklmnopqrstu", "X-Plain": "kept"}},
        "keys": ["sk-a-0123456789abcdef"]}))
    assert diff is not None
    for secret in ("abcdefghijklmnop123", "ABCDEFGHIJKLMNOP", "AIzaSyA123", "sk-a-0123"):
        assert secret not in diff, secret
    parsed = orjson.loads(diff)["request"]
    assert parsed["settings"]["headers"]["X-Plain"] == "kept"
    assert parsed["settings"]["headers"]["X-Route-To"] == "Bearer [REDACTED]"


async def test_an_entry_written_again_is_stored_once(db: DatabaseBackend) -> None:
    """A batch tried again after its commit landed (the answer lost) adds nothing: each
    entry carries the id it was made with (migration 11), and readers do not see it."""
    log = AuditLog(db)
    entries = [AuditEntry(ts=1000.0 + i, actor="admin_session", action="POST /api/keys")
               for i in range(2)]
    assert entries[0].uid != entries[1].uid
    for entry in entries:
        log.add(entry)
    assert await log.flush() == 2
    for entry in entries:  # as the writer puts back a batch it believes lost
        log.add(entry)
    log.add(AuditEntry(ts=1002.0, actor="admin_session", action="DELETE /api/keys/{id}"))
    assert await log.flush() == 3
    page, _ = await log.page()
    assert [e["ts"] for e in page] == [1002.0, 1001.0, 1000.0]
    assert "uid" not in page[0]


# ----------------------------------------------------------------------------- the CLI

async def test_cli_changes_leave_entries_the_audit_log_api_returns(
        tmp_path: Path, aiohttp_client: Any) -> None:
    """Each configuration command writes its entry, like the matching route's, into the
    table the running gateway pages: actor ``cli:<user>``, address ``local``."""
    run = Cli(tmp_path / "data")
    gw = await start_harness(aiohttp_client, make_test_config(run.data_dir))
    conn = added_id(ok(await run.in_thread("providers", "add", "--preset", "groq",
                                           "--api-key", GROQ_KEY)))
    ok(await run.in_thread("keys", "create", "--name", "ci", "--budget", "daily=5"))
    key = await gw.store.get_key("ci")
    assert key is not None
    ok(await run.in_thread("budget", "set", "ci", "--daily", "7"))
    ok(await run.in_thread("keys", "revoke", key.id))
    ok(await run.in_thread("combos", "add", "duo", "groq/llama-3.1-8b-instant"))
    ok(await run.in_thread("combos", "add", "duo", "groq/llama-3.3-70b-versatile"))
    combo = (await gw.store.get_combo("duo")).id  # type: ignore[union-attr]
    ok(await run.in_thread("combos", "remove", "duo"))
    ok(await run.in_thread("providers", "remove", conn))
    failed(await run.in_thread("providers", "remove", conn), "no connection")
    ok(await run.in_thread("admin", "password", "--password", "cli-chosen-pass-42"))

    actor = f"cli:{getpass.getuser()}"
    found = list(reversed(await entries(gw, actor=actor)))
    assert [(e["action"], e["target"], e["status"]) for e in found] == [
        ("POST /api/providers", conn, 201),
        ("POST /api/keys", key.id, 201),
        ("POST /api/usage/budget", key.id, 200),
        ("POST /api/keys/{id}/revoke", key.id, 200),
        ("POST /api/combos", combo, 201),
        ("PUT /api/combos/{id}", combo, 200),
        ("DELETE /api/combos/{id}", combo, 200),
        ("DELETE /api/providers/{id}", conn, 200),
        ("DELETE /api/providers/{id}", conn, 404),
        ("PUT /api/auth/password", None, 200)]
    assert {e["address"] for e in found} == {"local"}
    diffs = [e["diff"] for e in found]
    assert diffs[0]["before"] is None and diffs[0]["after"]["prefix"] == "groq"
    assert diffs[0]["after"]["credentials"] == {"api_key": mask(GROQ_KEY)}
    assert diffs[1]["before"] is None and diffs[1]["after"]["limits"]["daily_usd"] == 5.0
    assert diffs[2] == {"before": {key.id: {"daily_usd": 5.0}},
                        "after": {key.id: {"daily_usd": 7.0}}}
    assert diffs[3]["before"] == {"revoked_at": None} and diffs[3]["after"]["revoked_at"] > 0
    assert diffs[5]["before"]["steps"] == ["groq/llama-3.1-8b-instant"]
    assert diffs[5]["after"]["steps"] == ["groq/llama-3.3-70b-versatile"]
    assert diffs[6]["after"] is None and diffs[6]["before"]["name"] == "duo"
    assert diffs[7]["after"] is None and diffs[7]["before"]["id"] == conn
    assert diffs[8] is None  # refused: nothing changed, and no options to keep
    assert diffs[9] == {"request": {"new_password": "[REDACTED]"}}
    # the dashboard's filter by action finds the CLI's entries with the routes'
    assert [e["actor"] for e in await entries(gw, action="POST /api/usage/budget")] == [actor]
    await gw.client.app[AUDIT_LOG].flush()
    dump = "\n".join(str(tuple(row)) for row in await gw.store.db.fetchall(
        "SELECT * FROM audit_log"))
    assert GROQ_KEY not in dump and "cli-chosen-pass-42" not in dump


async def test_a_refused_cli_command_leaves_its_options_masked(tmp_path: Path) -> None:
    run = Cli(tmp_path / "data")
    ok(await run.in_thread("providers", "add", "--preset", "groq", "--api-key", GROQ_KEY))
    failed(await run.in_thread("budget", "set", "nobody", "--daily", "5"), "no key 'nobody'")
    failed(await run.in_thread("keys", "revoke", "key_nope"), "no active key")
    from omniroute.startup import open_store

    store = await open_store(make_test_config(run.data_dir))
    try:
        page, _ = await AuditLog(store.db).page()
    finally:
        await store.db.close()
    assert [(e["action"], e["status"], e["diff"]) for e in page[:2]] == [
        ("POST /api/keys/{id}/revoke", 404, None),
        ("POST /api/usage/budget", 404, {"request": {"keyId": "nobody", "daily_usd": 5.0}})]
    added = page[2]["diff"]["after"]
    assert added["credentials"] == {"api_key": mask(GROQ_KEY)}
    assert all(e["actor"].startswith("cli:") and e["address"] == "local" for e in page)


async def test_record_writes_an_entry_at_once_on_either_backend(db: DatabaseBackend) -> None:
    """The CLI's path (no background writer): SQLite and PostgreSQL alike."""
    audit = AuditLog(db)
    await audit.record(AuditEntry(ts=5.0, actor="cli:me", action="POST /api/keys",
                                  target="key_1", diff=change_of(None, {"id": "key_1"}),
                                  address="local", status=201))
    assert audit.pending == 0 and audit.written == 1
    page, _ = await audit.page(actor="cli:me")
    assert [(e["action"], e["target"], e["diff"], e["address"]) for e in page] == [
        ("POST /api/keys", "key_1", {"before": None, "after": {"id": "key_1"}}, "local")]
