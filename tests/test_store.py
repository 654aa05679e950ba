"""The configuration store: connections, API keys, aliases, combos, settings, admin sessions."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from pathlib import Path

import orjson
import pytest

from omniroute.routing import Router
from omniroute.storage import (
    Database,
    Store,
)
from omniroute.storage.store import Combo, Connection
from omniroute.vault import VaultError, mask


def _raw_bytes(db_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db_dir.glob("omniroute.sqlite3*"))


async def test_connections(store: Store, tmp_path: Path) -> None:
    version = await store.db.config_version()
    conn = Connection("conn_a", "openai", "A", "up", {"base_url": "http://x/v1"},
                      {"api_key": "sk-live-very-secret-123456"}, priority=2)
    await store.save_connection(conn)
    assert conn.created_at > 0 and conn.updated_at >= conn.created_at
    assert await store.db.config_version() == version + 1
    await store.save_connection(Connection("conn_b", "openai", "B", "up", {}, {}, priority=1))

    row = await store.db.fetchone("SELECT credentials FROM connections WHERE id = 'conn_a'")
    assert b"sk-live-very-secret" not in row["credentials"]
    if isinstance(store.db, Database):  # nor anywhere in the file
        await store.db.execute("PRAGMA wal_checkpoint(FULL)")
        assert b"sk-live-very-secret" not in _raw_bytes(tmp_path)

    got = await store.get_connection("conn_a")
    assert got is not None and got.credentials == {"api_key": "sk-live-very-secret-123456"}
    assert got.settings == {"base_url": "http://x/v1"}
    assert [c.id for c in await store.list_connections()] == ["conn_b", "conn_a"]  # priority
    public = got.public()
    assert "sk-live-very-secret-123456" not in orjson.dumps(public).decode()
    assert public["credentials"]["api_key"] == mask("sk-live-very-secret-123456")

    got.name = "A2"
    await store.save_connection(got)
    again = await store.get_connection("conn_a")
    assert again is not None and again.name == "A2" and again.created_at == conn.created_at

    assert await store.delete_connection("conn_a") is True
    assert await store.get_connection("conn_a") is None
    assert await store.delete_connection("conn_a") is False


async def test_credentials_from_another_row_do_not_decrypt(store: Store) -> None:
    await store.save_connection(Connection("conn_a", "openai", "A", "a", {}, {"api_key": "one"}))
    await store.save_connection(Connection("conn_b", "openai", "B", "b", {}, {"api_key": "two"}))
    blob = (await store.db.fetchone("SELECT credentials FROM connections WHERE id='conn_a'"))[0]
    await store.db.execute("UPDATE connections SET credentials = ? WHERE id = 'conn_b'", (blob,))
    with pytest.raises(VaultError):
        await store.get_connection("conn_b")


async def test_keys(store: Store, tmp_path: Path) -> None:
    key, secret = await store.create_key("ci", {"admin"})
    assert secret.startswith("sk-or-") and len(secret) > 40
    assert key.key_prefix == secret[:10] and key.is_admin
    row = await store.db.fetchone("SELECT * FROM api_keys WHERE id = ?", (key.id,))
    assert row["key_hash"] == hashlib.sha256(secret.encode()).digest()
    assert all(secret not in str(v) for v in tuple(row))
    if isinstance(store.db, Database):  # nor anywhere in the file
        await store.db.execute("PRAGMA wal_checkpoint(FULL)")
        assert secret.encode() not in _raw_bytes(tmp_path)
    assert "key" not in key.public() and secret not in str(key.public())

    plain, _ = await store.create_key("plain")
    assert not plain.is_admin
    assert [k.id for k in await store.list_keys()] == [key.id, plain.id]
    assert await store.revoke_key(key.id) is True
    assert await store.revoke_key(key.id) is False  # already revoked
    assert await store.revoke_key("key_nope") is False
    listed = {k.id: k for k in await store.list_keys()}
    assert listed[key.id].revoked_at is not None and listed[plain.id].revoked_at is None


async def test_aliases_and_combos(store: Store) -> None:
    await store.set_alias("fast", "up/gpt-4o-mini")
    await store.set_alias("gpt-*", "up/gpt-4o")
    await store.set_alias("fast", "up/other")  # replace
    assert await store.list_aliases() == {"fast": "up/other", "gpt-*": "up/gpt-4o"}
    await store.set_alias("fast", None)
    assert await store.list_aliases() == {"gpt-*": "up/gpt-4o"}

    combo = await store.save_combo(Combo("combo_1", "best", ["up/a", {"model": "b",
                                                                       "provider": "up"}]))
    assert combo.created_at > 0
    stored = await store.get_combo("combo_1")
    assert stored is not None and stored.steps == ["up/a", {"model": "b", "provider": "up"}]
    assert (await store.get_combo("best")).id == "combo_1"  # type: ignore[union-attr]
    await store.save_combo(Combo("combo_0", "alpha", ["up/z"]))
    assert [c.name for c in await store.list_combos()] == ["alpha", "best"]
    with pytest.raises(store.db.integrity):  # names are unique...
        await store.save_combo(Combo("combo_2", "best", ["up/x"]))
    # ...and a clash never deletes the combo that holds the name
    assert (await store.get_combo("best")).id == "combo_1"  # type: ignore[union-attr]
    combo.steps = ["up/c"]
    await store.save_combo(combo)  # an update of the same id
    updated = await store.get_combo("combo_1")
    assert updated is not None and updated.steps == ["up/c"]
    assert updated.created_at == combo.created_at
    assert await store.delete_combo("combo_1") is True
    assert await store.delete_combo("combo_1") is False
    assert await store.get_combo("best") is None


async def test_aliases_come_in_code_point_order_whatever_the_collation(store: Store) -> None:
    """The router takes the first wildcard that matches: SQLite and a PostgreSQL database
    created with a locale (here ICU's English, where '-' sorts before '*') route alike."""
    if store.db.remote:
        await store.db.execute(
            'ALTER TABLE aliases ALTER COLUMN alias TYPE TEXT COLLATE "en-x-icu"')
    for alias, target in [("gpt-*", "up/dash"), ("gpt*", "up/star"), ("Gpt*", "up/upper"),
                          ("exact", "up/exact")]:
        await store.set_alias(alias, target)
    aliases = await store.list_aliases()
    assert list(aliases) == ["Gpt*", "exact", "gpt*", "gpt-*"]
    router = Router({}, aliases, [], {})
    assert next(t for a, t in router.patterns if fnmatch.fnmatchcase("gpt-4o", a)) == "up/star"


async def test_settings_put_and_replace(store: Store) -> None:
    await store.put_settings({"_admin_password": "hash", "idle_timeout": 5.0})
    await store.put_settings({"connect_timeout": 3.0})  # PATCH-like: merged
    assert await store.get_settings() == {"_admin_password": "hash", "idle_timeout": 5.0,
                                          "connect_timeout": 3.0}
    await store.put_settings({"request_log": False}, replace=True)  # PUT-like
    assert await store.get_settings() == {"_admin_password": "hash", "request_log": False}


async def test_admin_sessions_expire(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await store.create_session(ttl=3600)
    other = await store.create_session(ttl=3600)
    assert await store.session_valid(token)
    assert not await store.session_valid("not-a-token")
    row = await store.db.fetchone("SELECT token_hash FROM admin_sessions LIMIT 1")
    assert row["token_hash"] != token.encode()  # only a hash is stored
    await store.delete_session(other)
    assert not await store.session_valid(other)

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3601)
    assert not await store.session_valid(token)
    await store.create_session(ttl=60)  # creating a session prunes the expired ones
    assert (await store.db.fetchone("SELECT count(*) FROM admin_sessions"))[0] == 1
