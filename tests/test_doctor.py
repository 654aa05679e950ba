"""``omniroute doctor [--repair]`` and ``POST /api/system/env/repair``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from omniroute import hookimpl
from omniroute.cli import cli
from omniroute.credentials import SIGN_IN_REQUIRED
from omniroute.doctor import check_database, diagnose, repair_oauth_settings
from omniroute.oauth import OAuthService
from omniroute.plugins import load_plugins
from omniroute.providers.base import Provider
from omniroute.startup import open_store
from omniroute.storage.store import Connection, new_id
from omniroute.testing import make_test_config, start_harness

SERVICE = OAuthService(name="acme", provider_type="acme-sub", flow="device", client_id="acme-cli",
                       token_url="https://auth.acme.test/token",
                       device_url="https://auth.acme.test/device",
                       urls={"usage": "https://api.acme.test/usage"})


class AcmeSubscription(Provider):
    type = "acme-sub"
    auth_kind = "oauth"
    credential_fields: ClassVar[tuple[str, ...]] = (
        "access_token", "refresh_token", "expires_at", "refresh_expires_at", SIGN_IN_REQUIRED)


class AcmePlugin:
    @hookimpl
    def register_oauth_services(self, register: Callable[[OAuthService], None]) -> None:
        register(SERVICE)

    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(AcmeSubscription)


def plugins() -> Any:
    return load_plugins(extra=[("acme", AcmePlugin())])


async def add_account(config: Any, name: str, credentials: dict[str, Any],
                      settings: dict[str, Any] | None = None) -> str:
    store = await open_store(config)
    try:
        conn = Connection(id=new_id("conn"), type="acme-sub", name=name, prefix=name,
                          settings=settings or {}, credentials=credentials)
        await store.save_connection(conn)
        return conn.id
    finally:
        await store.db.close()


def by_check(findings: list[Any]) -> dict[str, Any]:
    return {f.check: f for f in findings}


async def test_a_healthy_installation_passes(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    now = time.time()
    await add_account(config, "fresh", {"access_token": "at-1", "refresh_token": "rt-1",
                                        "expires_at": now + 3600})
    await add_account(config, "stale", {"access_token": "at-2", "refresh_token": "rt-2",
                                        "expires_at": now - 60})
    found = by_check(await diagnose(config, plugins(), repair=False, now=now))
    assert found["data_dir"].status == "ok"
    assert found["database"].status == "ok" and "quick_check" in found["database"].detail
    assert found["credentials"].status == "ok" and "2 connection" in found["credentials"].detail
    assert found["account fresh"].status == "ok" and "valid for 60 min" in found[
        "account fresh"].detail
    assert found["account stale"].status == "ok" and "renewed" in found["account stale"].detail
    assert not [f for f in found.values() if f.status in ("fail", "warn")]


async def test_accounts_that_need_a_sign_in_fail_with_the_command_to_run(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    now = time.time()
    await add_account(config, "revoked", {"access_token": "at", "refresh_token": "rt",
                                          SIGN_IN_REQUIRED: {"reason": "invalid_grant"}})
    await add_account(config, "lapsed", {"access_token": "at", "expires_at": now - 5})
    await add_account(config, "soon", {"access_token": "at", "refresh_token": "rt",
                                       "expires_at": now + 600,
                                       "refresh_expires_at": now + 3600})
    found = by_check(await diagnose(config, plugins(), repair=False, now=now))
    revoked = found["account revoked"]
    assert revoked.status == "fail" and "invalid_grant" in revoked.detail
    assert "omniroute login acme --name revoked" in revoked.detail
    assert found["account lapsed"].status == "fail"
    assert "no refresh token" in found["account lapsed"].detail
    assert found["account soon"].status == "warn" and "lapses in 1 h" in found[
        "account soon"].detail


async def test_repair_makes_files_private_and_restores_oauth_defaults(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    cid = await add_account(config, "proxied", {"access_token": "at", "refresh_token": "rt"},
                            {"oauth_token_url": "https://proxy.corp.test/token",
                             "oauth_usage_url": "https://proxy.corp.test/usage",
                             "models": ["m1"]})
    os.chmod(config.data_dir, 0o755)
    os.chmod(config.db_path, 0o644)
    found = by_check(await diagnose(config, plugins(), repair=False))
    assert found["data_dir"].status == "warn" and "755" in found["data_dir"].detail
    settings = found["oauth settings proxied"]
    assert settings.status == "warn"
    assert "oauth_token_url, oauth_usage_url" in settings.detail
    assert stat.S_IMODE(config.db_path.stat().st_mode) == 0o644  # nothing changed yet

    found = by_check(await diagnose(config, plugins(), repair=True))
    assert found["data_dir"].status == "fixed"
    assert stat.S_IMODE(config.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.db_path.stat().st_mode) == 0o600
    fixed = found["oauth settings acme"]
    assert fixed.status == "fixed" and "oauth_token_url, oauth_usage_url" in fixed.detail
    (backup,) = (config.data_dir / "backups").iterdir()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    kept = json.loads(backup.read_text())
    assert kept["connections"][cid]["settings"] == {
        "oauth_token_url": "https://proxy.corp.test/token",
        "oauth_usage_url": "https://proxy.corp.test/usage"}
    store = await open_store(config)
    try:
        conn = await store.get_connection(cid)
    finally:
        await store.db.close()
    assert conn is not None and conn.settings == {"models": ["m1"]}  # the rest is kept
    # a second run has nothing left to repair
    again = await diagnose(config, plugins(), repair=True)
    assert not [f for f in again if f.status in ("fixed", "warn", "fail")]


async def test_an_unusable_override_fails(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    await add_account(config, "bad", {"access_token": "at"}, {"oauth_token_url": "ftp://x"})
    found = by_check(await diagnose(config, plugins(), repair=False))
    assert found["oauth settings bad"].status == "fail"
    assert "http(s) URL" in found["oauth settings bad"].detail


async def test_a_damaged_database_is_reported_and_left_alone(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    config.data_dir.mkdir(mode=0o700)
    config.db_path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    before = config.db_path.read_bytes()
    findings = await diagnose(config, plugins(), repair=True)
    found = by_check(findings)
    assert found["database"].status == "fail"
    assert "credentials" not in found  # nothing more is read from it
    assert config.db_path.read_bytes() == before
    assert check_database(tmp_path / "none.sqlite3").status == "warn"


async def test_a_wrong_key_and_a_broken_plugin_fail(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    await add_account(config, "a", {"access_token": "at"})
    other = dataclasses.replace(config, secret_key=b"z" * 32)

    class Broken:
        @hookimpl
        def register_providers(self, register: Any) -> None:
            raise RuntimeError("plugin bug")

    found = by_check(await diagnose(
        other, load_plugins(extra=[("acme", AcmePlugin()), ("broken", Broken())]),
        repair=False))
    assert found["credentials"].status == "fail" and "key" in found["credentials"].detail
    assert found["plugin broken"].status == "fail" and "plugin bug" in found[
        "plugin broken"].detail


def test_cli_doctor_reports_and_exits_by_what_it_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner()
    env = {"OMNIROUTE_SECRET_KEY": "", "INITIAL_PASSWORD": ""}
    result = runner.invoke(cli, ["--data-dir", str(data), "doctor"], env=env)
    assert result.exit_code == 0 and "does not exist yet" in result.output
    assert not data.exists()
    result = runner.invoke(cli, ["--data-dir", str(data), "doctor", "--repair"], env=env)
    assert result.exit_code == 0, result.output
    assert "FIXED data_dir" in result.output and "vault_key" in result.output
    assert "0 failed, 0 warning(s)" in result.output
    os.chmod(data, 0o777)
    result = runner.invoke(cli, ["--data-dir", str(data), "doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"check": "data_dir", "status": "warn"}.items() <= rows[0].items()
    result = runner.invoke(cli, ["--data-dir", str(data), "doctor", "--repair"], env=env)
    assert result.exit_code == 0 and "FIXED data_dir" in result.output
    with contextlib.closing(sqlite3.connect(data / "omniroute.sqlite3")) as db:
        rows = db.execute("SELECT actor, action, address, diff FROM audit_log ORDER BY id"
                          ).fetchall()
    assert [r[1] for r in rows] == ["cli doctor --repair"] * 2  # each repair, on the record
    assert all(r[0].startswith("cli:") and r[2] == "local" for r in rows)
    assert json.loads(rows[1][3])["request"]["fixed"][0]["check"] == "data_dir"
    (data / "secret.key").write_text("not a key\n")
    result = runner.invoke(cli, ["--data-dir", str(data), "doctor"], env=env)
    assert result.exit_code == 1 and "FAIL  vault_key" in result.output


async def test_env_repair_api(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    cid = await add_account(config, "proxied", {"access_token": "at"},
                            {"oauth_client_id": "corp-client"})
    gw = await start_harness(aiohttp_client, config, plugins())
    url = "/api/system/env/repair"
    resp = await gw.client.post(url, json={"provider": "acme-sub"})
    assert resp.status == 401  # the management API always needs an admin
    resp = await gw.client.post(url, json={"provider": "acme-sub"}, headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["success"] is True and body["repaired"] == ["oauth_client_id"]
    backup = Path(body["backupPath"])
    assert backup.parent == config.data_dir / "backups"
    assert json.loads(backup.read_text())["connections"][cid]["settings"] == {
        "oauth_client_id": "corp-client"}
    resp = await gw.client.get(f"/api/providers/{cid}", headers=gw.admin_headers)
    assert "oauth_client_id" not in (await resp.json())["settings"]
    # nothing left: no backup needed
    resp = await gw.client.post(url, json={"provider": "acme"}, headers=gw.admin_headers)
    assert await resp.json() == {"success": True, "repaired": [], "backupPath": None}
    resp = await gw.client.post(url, json={"provider": "nope"}, headers=gw.admin_headers)
    assert resp.status == 404 and "acme" in (await resp.json())["error"]["message"]
    resp = await gw.client.post(url, json={}, headers=gw.admin_headers)
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "provider"


async def test_repair_of_an_unknown_provider_raises(tmp_path: Path) -> None:
    config = make_test_config(tmp_path / "data")
    store = await open_store(config)
    try:
        with pytest.raises(LookupError):
            await repair_oauth_settings(store, {"acme": SERVICE}, "other", config.data_dir)
    finally:
        await store.db.close()
