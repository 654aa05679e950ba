"""Storage, vault, configuration and the memory cache."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from omniroute.cache.memory import MemoryCache
from omniroute.config import Config, ConfigError, Settings, load_config
from omniroute.routing import Router
from omniroute.storage import (
    Database,
    DatabaseBackend,
    RequestLog,
    RequestRecord,
    StorageError,
    Store,
)
from omniroute.storage.migrations import LATEST, MIGRATIONS
from omniroute.storage.store import Combo, Connection
from omniroute.testing import make_test_config, start_harness
from omniroute.vault import KEY_FILE, Vault, VaultError, mask

#: opens the test's database (the same one at each call), with these migrations
OpenDb = Callable[..., Awaitable[DatabaseBackend]]

KEY = b"k" * 32


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db, Vault(KEY))


def outage(db: DatabaseBackend, what: str) -> BaseException:
    """The error ``db`` raises when it cannot be used just now (SQLite: locked, full...;
    PostgreSQL: unreachable), as a test makes it fail."""
    return db.unavailable[0](what)


def holds_a_transaction(db: DatabaseBackend) -> bool:
    """Whether a transaction was left open (SQLite's one connection, or a pooled one)."""
    if isinstance(db, Database):
        return db.conn.in_transaction
    pool = db.pool  # type: ignore[attr-defined]
    return bool(pool.get_size() - pool.get_idle_size())


# ---------------------------------------------------------------------- migrations


async def test_upgrade_from_v1_keeps_rows_and_backs_up(open_db: OpenDb, tmp_path: Path) -> None:
    old = await open_db(MIGRATIONS[:1])
    assert await old.schema_version() == 1
    await old.execute("INSERT INTO connections(id, type, name, prefix, settings, credentials,"
                      " active, priority, created_at, updated_at)"
                      " VALUES ('conn_1', 'openai', 'one', 'up', '{\"base_url\": \"u\"}', NULL,"
                      " 1, 3, 1.0, 2.0)")
    await old.execute("INSERT INTO api_keys(id, name, key_hash, key_prefix, scopes, created_at)"
                      " VALUES ('key_1', 'k', ?, 'sk-or-abcd', 'admin', 5.0)", (b"\x00\xff",))
    await old.execute("INSERT INTO request_log(request_id, ts, endpoint, status, model)"
                      " VALUES ('r1', 7.0, 'chat.completions', 200, 'gpt')")
    await old.execute("INSERT INTO aliases VALUES ('fast', 'up/gpt', 1.0)")
    await old.execute("INSERT INTO combos VALUES ('combo_1', 'c', 'priority', '[\"up/gpt\"]',"
                      " 1.0, 1.0)")
    await old.execute("INSERT INTO settings VALUES ('idle_timeout', '33.0')")
    assert "ttfb_ms" not in set((await old.fetchone("SELECT * FROM request_log")).keys())
    await old.close()

    db = await open_db()
    try:
        assert await db.schema_version() == LATEST
        conn = await db.fetchone("SELECT * FROM connections")
        assert (conn["id"], conn["prefix"], conn["priority"]) == ("conn_1", "up", 3)
        key = await db.fetchone("SELECT * FROM api_keys")
        assert key["key_hash"] == b"\x00\xff" and key["scopes"] == "admin"
        assert key["last_used_at"] is None  # the new column, empty for old rows
        log = await db.fetchone("SELECT * FROM request_log")
        assert (log["request_id"], log["model"], log["attempts"]) == ("r1", "gpt", 1)
        assert log["ttfb_ms"] is None
        assert set(log.keys()) >= {"ttfb_ms", "cached_tokens", "reasoning_tokens", "attempts"}
        assert (await db.fetchone("SELECT target FROM aliases"))["target"] == "up/gpt"
        assert (await db.fetchone("SELECT steps FROM combos"))["steps"] == '["up/gpt"]'
        assert (await db.fetchone("SELECT value FROM settings"))["value"] == "33.0"
        assert (await db.fetchone("SELECT COUNT(*) FROM admin_sessions"))[0] == 0  # made by v2
        # the record the old release wrote is in the totals (migration 7's backfill)
        total = await db.fetchone("SELECT SUM(requests) FROM usage_rollup WHERE period = 3600")
        assert total[0] == 1
        # the store reads the migrated rows
        store = Store(db, Vault(KEY))
        assert (await store.list_aliases()) == {"fast": "up/gpt"}
        assert (await store.get_settings()) == {"idle_timeout": 33.0}
    finally:
        await db.close()
    if not isinstance(db, Database):
        return  # a database server keeps its own backups (pg_dump): nothing is copied

    backup = tmp_path / "omniroute.sqlite3.v1.bak"
    assert backup.exists()
    with sqlite3.connect(backup) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        assert raw.execute("SELECT id FROM connections").fetchall() == [("conn_1",)]


async def test_a_database_migrated_by_a_newer_release_is_refused(open_db: OpenDb) -> None:
    newer = [*MIGRATIONS, ["CREATE TABLE from_the_future (x INTEGER)"]]
    await (await open_db(newer)).close()
    with pytest.raises(StorageError, match=rf"schema v{LATEST + 1}, newer than .*v{LATEST}"):
        await open_db()
    again = await open_db(newer)  # untouched: the newer release still opens it
    try:
        assert await again.schema_version() == LATEST + 1
    finally:
        await again.close()


async def test_two_processes_migrating_at_once_apply_each_migration_once(
        open_db: OpenDb) -> None:
    first, second = await asyncio.gather(open_db(), open_db())
    try:
        for db in (first, second):
            assert await db.schema_version() == LATEST
        await first.execute("INSERT INTO aliases VALUES ('a', 'b/c', 1.0)")
        assert await second.fetchone("SELECT target FROM aliases") is not None
    finally:
        await first.close()
        await second.close()


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "omniroute.sqlite3"
    db = await Database.open(path)
    await db.execute(f"PRAGMA user_version={LATEST + 1}")
    await db.close()
    with pytest.raises(StorageError, match=rf"schema v{LATEST + 1}, newer than .*v{LATEST}"):
        await Database.open(path)
    # it was not touched
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1


async def test_wal_and_idempotent_reopen(tmp_path: Path) -> None:
    path = tmp_path / "omniroute.sqlite3"
    db = await Database.open(path)
    assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
    await db.execute("INSERT INTO aliases VALUES ('a', 'b/c', 1.0)")
    schema = [tuple(r) for r in await db.fetchall("SELECT * FROM sqlite_master ORDER BY name")]
    await db.close()
    for _ in range(2):
        db = await Database.open(path)
        assert await db.schema_version() == LATEST
        assert [tuple(r) for r in await db.fetchall(
            "SELECT * FROM sqlite_master ORDER BY name")] == schema
        assert (await db.fetchone("SELECT count(*) FROM aliases"))[0] == 1
        await db.close()
    assert not list(tmp_path.glob("*.bak"))  # no backup when nothing migrates


async def test_concurrent_transactions_queue_up(store: Store) -> None:
    """One connection is shared by every task: concurrent writes must not collide."""
    results = await asyncio.gather(*(store.create_key(f"k{i}") for i in range(20)),
                                   store.set_alias("x", "up/y"),
                                   store.put_settings({"idle_timeout": 5}))
    assert len(results) == 22
    assert len(await store.list_keys()) == 20
    assert await store.db.config_version() == 22


async def test_cancelled_transaction_leaves_no_transaction_open(store: Store) -> None:
    for spins in range(6):
        task = asyncio.create_task(store.set_alias(f"a{spins}", "up/m"))
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.set_alias("after", "up/m")  # would fail inside a leftover transaction
        assert not holds_a_transaction(store.db)
    assert "after" in await store.list_aliases()


async def test_a_health_check_is_bounded_by_its_own_short_timeout(
        db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that hangs fails the check within ``check_timeout`` (1 s), not within a
    statement's timeout (30 s on PostgreSQL): the health endpoint answers meanwhile."""
    answer = db.fetchone

    async def hung(sql: str, params: Any = ()) -> Any:
        await asyncio.sleep(30)
        return await answer(sql, params)

    monkeypatch.setattr(db, "fetchone", hung)
    began = time.monotonic()
    async with asyncio.timeout(5):
        assert await db.check() is False
    assert time.monotonic() - began < 2.0
    monkeypatch.setattr(db, "fetchone", answer)
    assert await db.check() is True


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
    ("postgresql://app:s3cret@db/omni?sslmode=require",
     "postgresql://app:***@db/omni?sslmode=require"),
    ("postgresql://app@db/omni?password=s3cret", "postgresql://app@db/omni?password=***"),
    ("postgresql://app@db/omni?sslmode=verify-full&SSLPassword=s3cret&pool_size=5",
     "postgresql://app@db/omni?sslmode=verify-full&SSLPassword=***&pool_size=5"),
    ("postgresql://app:a@db/omni?password=s3cret&sslpassword=s3cret#x",
     "postgresql://app:***@db/omni?password=***&sslpassword=***#x"),
])
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    from omniroute.config import redact_url

    assert redact_url(url) == shown


# ---------------------------------------------------------------------- vault


def test_vault_round_trip_and_wrong_key() -> None:
    vault = Vault(KEY)
    blob = vault.encrypt({"api_key": "sk-secret-value", "n": 1}, context="conn_1")
    assert b"sk-secret-value" not in blob
    assert vault.decrypt(blob, context="conn_1") == {"api_key": "sk-secret-value", "n": 1}
    assert vault.encrypt({"a": 1}, context="c") != vault.encrypt({"a": 1}, context="c")  # nonce
    with pytest.raises(VaultError):
        Vault(b"x" * 32).decrypt(blob, context="conn_1")
    with pytest.raises(VaultError):  # the context is authenticated: no swapping rows
        vault.decrypt(blob, context="conn_2")
    with pytest.raises(VaultError):
        vault.decrypt(b"\x09" + blob[1:], context="conn_1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(VaultError):
        vault.decrypt(tampered, context="conn_1")
    assert vault.decrypt(b"", context="conn_1") == {}
    with pytest.raises(ValueError):
        Vault(b"short")


def test_vault_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    vault = Vault.open(data_dir)
    key_file = data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    blob = vault.encrypt({"api_key": "x"}, context="c")
    assert Vault.open(data_dir).decrypt(blob, context="c") == {"api_key": "x"}  # same key
    os.chmod(key_file, 0o644)
    Vault.open(data_dir)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # tightened again
    # another data directory has another key
    with pytest.raises(VaultError):
        Vault.open(tmp_path / "other").decrypt(blob, context="c")


def test_secret_key_from_environment(tmp_path: Path) -> None:
    raw = os.urandom(32)
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    config = load_config(environ={"OMNIROUTE_SECRET_KEY": encoded,
                                  "OMNIROUTE_DATA_DIR": str(tmp_path)})
    assert config.secret_key == raw
    vault = Vault.open(config.data_dir, config.secret_key)
    assert not (tmp_path / KEY_FILE).exists()  # no key file when the env gives the key
    assert Vault(raw).decrypt(vault.encrypt({"a": 1}, context="c"), context="c") == {"a": 1}
    for bad in (base64.urlsafe_b64encode(b"short").decode(), "!!!"):
        with pytest.raises(ConfigError, match="OMNIROUTE_SECRET_KEY"):
            load_config(environ={"OMNIROUTE_SECRET_KEY": bad, "OMNIROUTE_DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize("length", [1, 4, 8, 9, 12, 19, 20, 21, 40, 64, 164])
def test_mask_never_reveals_a_secret(length: int) -> None:
    secret = "".join(chr(ord("a") + i % 26) for i in range(length))
    shown = mask(secret)
    assert shown is not None and shown != secret and secret not in shown
    revealed = len(shown.replace("…", "").replace("*", ""))
    assert revealed <= length // 2
    assert mask(None) is None and mask("") is None


# ---------------------------------------------------------------------- store


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


# ---------------------------------------------------------------------- request log


def _record(i: int, **kw: Any) -> RequestRecord:
    return RequestRecord(request_id=f"r{i}", ts=1000.0 + i, endpoint="chat.completions",
                         status=200, **kw)


async def _count(db: Database) -> int:
    return (await db.fetchone("SELECT count(*) FROM request_log"))[0]


async def test_request_log_writes_in_batches(db: Database) -> None:
    log = RequestLog(db)
    for i in range(5):
        log.add(_record(i, model="m", prompt_tokens=3, attempts=1))
    assert await _count(db) == 0  # add() never touches the database
    assert await log.flush() == 5
    assert await _count(db) == 5
    assert await log.flush() == 0
    rows = await log.recent(2)
    assert [r["request_id"] for r in rows] == ["r4", "r3"]
    assert rows[0]["prompt_tokens"] == 3

    log.enabled = False
    log.add(_record(99))
    assert await log.flush() == 0


async def test_request_log_batch_of_mixed_records_keeps_order_and_values(db: Database) -> None:
    """Records of different shapes (which fields are None) in one batch: each row holds
    exactly the record's values (None as NULL, bools as 0/1), in arrival order."""
    log = RequestLog(db)
    records = [
        _record(0, model="m", prompt_tokens=3, attempts=1, stream=True, cost_usd=0.0012345),
        _record(1, error="upstream said no", error_class="UpstreamError", attempts=2,
                cache_hit=True),
        _record(2, model="m", prompt_tokens=3, attempts=1, usage_estimated=True),
        _record(3, model="m", prompt_tokens=None, attempts=1, latency_ms=12.5),
    ]
    for record in records:
        log.add(record)
    assert await log.flush() == 4
    rows = await db.fetchall("SELECT * FROM request_log ORDER BY id")
    assert [r["request_id"] for r in rows] == ["r0", "r1", "r2", "r3"]
    for record, row in zip(records, rows, strict=True):
        for name in ("model", "prompt_tokens", "error", "error_class", "attempts", "cost_usd",
                     "latency_ms", "api_key_id", "ttfb_ms"):
            assert row[name] == getattr(record, name), name
        for name in ("stream", "cache_hit", "usage_estimated"):
            assert row[name] == int(getattr(record, name)), name
    log.add(_record(4, model="m"))  # the next batch continues the ids
    assert await log.flush() == 1
    newest = await db.fetchone("SELECT id, request_id FROM request_log ORDER BY id DESC")
    assert newest is not None and tuple(newest) == (rows[-1]["id"] + 1, "r4")


async def test_request_log_background_task_and_key_use(store: Store) -> None:
    db = store.db
    key, _ = await store.create_key("user")
    log = RequestLog(db, interval=0.05)
    log.start()
    try:
        log.add(_record(1, api_key_id=key.id))
        # the test shares the writer's connection, so it may read inside the batch's
        # transaction: wait for the whole of it (the record, the totals, the key's use)
        for _ in range(100):
            if await _count(db) == 1 and (await store.list_keys())[0].last_used_at:
                break
            await asyncio.sleep(0.02)
        assert await _count(db) == 1
        assert (await store.list_keys())[0].last_used_at == 1001.0
    finally:
        await log.close()


async def test_the_keys_last_use_is_written_in_one_order(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every instance updates the keys in id order, whatever order they were used in: two
    instances locking the same keys' rows in opposite orders deadlock."""
    keys = [(await store.create_key(f"user{i}"))[0].id for i in range(4)]
    written: list[list[Any]] = []
    real = store.db.executemany

    async def recorded(sql: str, rows: Any) -> None:
        if sql.startswith("UPDATE api_keys"):
            written.append([tuple(r) for r in rows])
        await real(sql, rows)

    real_each = store.db.executemany_each

    async def recorded_each(work: Any) -> list[int]:  # SQLite: with the totals, one turn
        for sql, rows in work:
            if sql.startswith("UPDATE api_keys"):
                written.append([tuple(r) for r in rows])
        return await real_each(work)

    monkeypatch.setattr(store.db, "executemany", recorded)
    monkeypatch.setattr(store.db, "executemany_each", recorded_each)
    log = RequestLog(store.db)
    for i, key_id in enumerate(sorted(keys, reverse=True)):
        log.touch(key_id, 1000.0 + i)
    await log.flush()
    assert [key_id for _, key_id in written[0]] == sorted(keys)
    assert all(k.last_used_at for k in await store.list_keys())


async def test_a_nul_in_a_client_sent_value_does_not_lose_the_record(
        db: DatabaseBackend, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL refuses U+0000 in text: it is stored as U+FFFD there (SQLite keeps it),
    the batch is written as a batch, and nothing is dropped."""
    log = RequestLog(db)
    log.add(_record(0, model="gpt\x00-4o"))
    log.add(_record(1, model="gpt-4o"))
    assert await log.flush() == 2
    assert log.dropped == 0
    assert "one by one" not in caplog.text
    row = await db.fetchone("SELECT model FROM request_log WHERE request_id = ?", ("r0",))
    assert row[0] in ("gpt\x00-4o", "gpt\ufffd-4o")
    assert row[0] == ("gpt\ufffd-4o" if db.remote else "gpt\x00-4o")
    found = await db.fetchone("SELECT COUNT(*) FROM request_log WHERE model = ?",
                              ("gpt\x00-4o",))  # a parameter is read as it is stored
    assert found[0] == 1


async def test_request_log_keeps_records_when_a_write_fails(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = RequestLog(db)
    log.add(_record(1))
    log.add(_record(2))
    real = log.write  # (the batch's insert, whatever the backend runs it as)
    calls = {"n": 0}

    async def fail_once(sql: str, rows: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise outage(db, "disk I/O error (simulated)")
        await real(sql, rows)

    monkeypatch.setattr(log, "write", fail_once)
    assert await log.flush() == 0
    assert await _count(db) == 0
    log.add(_record(3))  # arrives while the first batch waits for a retry
    assert await log.flush() == 3
    assert [r["request_id"] for r in reversed(await log.recent())] == ["r1", "r2", "r3"]
    assert not holds_a_transaction(db)


async def test_request_log_backlog_stays_bounded_when_writes_keep_failing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = RequestLog(db, max_pending=3)

    async def fail(sql: str, rows: Any) -> None:
        raise outage(db, "disk full (simulated)")

    monkeypatch.setattr(log, "write", fail)
    for n in range(3):
        log.add(_record(n))

    async def add_two_while_writing(sql: str, rows: Any) -> None:
        log.add(_record(10))  # records keep arriving during the failed write
        log.add(_record(11))
        raise outage(db, "disk full (simulated)")

    monkeypatch.setattr(log, "write", add_two_while_writing)
    assert await log.flush() == 0
    assert len(log._pending) == 3  # never more than max_pending, the newest kept
    assert [r.request_id for r in log._pending] == ["r2", "r10", "r11"]
    assert log.dropped == 2


async def test_request_log_survives_a_missing_table(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "x.sqlite3")
    try:
        await db.execute("ALTER TABLE request_log RENAME TO request_log_away")
        log = RequestLog(db)
        log.add(_record(1))
        assert await log.flush() == 0
        await db.execute("ALTER TABLE request_log_away RENAME TO request_log")
        assert await log.flush() == 1
        assert await _count(db) == 1
    finally:
        await db.close()


async def test_request_log_close_flushes(db: Database) -> None:
    log = RequestLog(db, interval=60)
    log.start()
    log.add(_record(1))
    log.add(_record(2))
    await log.close()
    assert await _count(db) == 2


# ---------------------------------------------------------------------- configuration


def test_config_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "custom.toml"
    toml.write_text('[server]\nhost = "0.0.0.0"\nport = 1111\nworkers = 2\nlog_level = "DEBUG"\n'
                    '[settings]\nidle_timeout = 30\nrequire_api_key = true\n')
    env_dir = tmp_path / "env-dir"

    defaults = load_config(environ={"OMNIROUTE_DATA_DIR": str(tmp_path / "empty")})
    assert (defaults.host, defaults.port, defaults.workers, defaults.log_level) == (
        "127.0.0.1", 20128, 1, "info")
    assert defaults.settings_defaults == {} and defaults.settings_env == {}

    from_toml = load_config(config_file=toml, environ={})
    assert (from_toml.host, from_toml.port, from_toml.workers, from_toml.log_level) == (
        "0.0.0.0", 1111, 2, "debug")
    assert from_toml.settings_defaults == {"idle_timeout": 30.0, "require_api_key": True}

    env = {"OMNIROUTE_PORT": "2222", "OMNIROUTE_HOST": "::1", "OMNIROUTE_DATA_DIR": str(env_dir),
           "OMNIROUTE_IDLE_TIMEOUT": "45", "REQUIRE_API_KEY": "false"}
    from_env = load_config(config_file=toml, environ=env)
    assert (from_env.host, from_env.port, from_env.workers) == ("::1", 2222, 2)
    assert from_env.data_dir == env_dir
    assert from_env.settings_env == {"idle_timeout": 45.0, "require_api_key": False}

    flags = load_config(config_file=toml, environ=env, port=3333, workers=None,
                        data_dir=str(tmp_path / "flag"))
    assert (flags.port, flags.workers) == (3333, 2)  # None means "not given"
    assert flags.data_dir == tmp_path / "flag"

    # OMNIROUTE_CONFIG and <data dir>/omniroute.toml are found without --config
    assert load_config(environ={"OMNIROUTE_CONFIG": str(toml)}).port == 1111
    (tmp_path / "flag").mkdir()
    (tmp_path / "flag" / "omniroute.toml").write_text("[server]\nport = 4444\n")
    assert load_config(environ={}, data_dir=str(tmp_path / "flag")).port == 4444


@pytest.mark.parametrize("toml, env, message", [
    ("[settings]\nmax_body_bytes = -1\n", {}, "max_body_bytes: expected a positive number"),
    ("[settings]\nno_such_setting = 1\n", {}, "unknown [settings] keys"),
    ("[settings]\nrequire_login = \"maybe\"\n", {}, "require_login: expected a boolean"),
    ("", {"OMNIROUTE_REQUIRE_API_KEY": "perhaps"}, "environment: require_api_key"),
    ("", {"OMNIROUTE_IDLE_TIMEOUT": "soon"}, "idle_timeout"),
    ("", {"OMNIROUTE_PORT": "http"}, "port and workers must be integers"),
    ("", {"OMNIROUTE_PORT": "70000"}, "port must be 0-65535"),
    ("", {"OMNIROUTE_WORKERS": "0"}, "workers at least 1"),
    ("[server\n", {}, "cannot read config file"),
])
def test_invalid_config_is_a_config_error(tmp_path: Path, toml: str, env: dict[str, str],
                                          message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, environ=env)
    assert message in str(info.value)


async def test_settings_precedence_in_a_running_gateway(aiohttp_client: Any,
                                                        tmp_path: Path) -> None:
    config = make_test_config(tmp_path).replace(
        settings_defaults={"idle_timeout": 30.0, "connect_timeout": 3.0, "models_cache_ttl": 5.0},
        settings_env={"models_cache_ttl": 9.0},
    )
    h = await start_harness(aiohttp_client, config)
    gateway = h.catalog
    assert gateway.settings.first_byte_timeout == Settings().first_byte_timeout  # default
    assert gateway.settings.idle_timeout == 30.0  # TOML beats the default
    assert gateway.settings.models_cache_ttl == 9.0  # env beats TOML

    gateway.apply_settings({"idle_timeout": 40, "models_cache_ttl": 1, "unknown": 1})
    assert gateway.settings.idle_timeout == 40.0  # stored beats TOML
    assert gateway.timeouts.idle == 40.0 and h.gateway.context.timeouts.idle == 40.0
    assert gateway.settings.connect_timeout == 3.0
    assert gateway.settings.models_cache_ttl == 9.0  # env pins it
    gateway.apply_settings({"idle_timeout": "not a number"})  # bad stored value: ignored
    assert gateway.settings.idle_timeout == 30.0

    resp = await h.client.patch("/api/settings", json={"idle_timeout": 50, "request_log": "off"},
                                headers=h.admin_headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["settings"]["idle_timeout"] == 50.0
    assert body["settings"]["request_log"] is False and h.log.enabled is False
    assert body["stored"] == {"idle_timeout": 50.0, "request_log": False}
    assert body["pinned_by_environment"] == ["models_cache_ttl"]
    assert gateway.settings.connect_timeout == 3.0  # PATCH keeps what it did not name

    resp = await h.client.put("/api/settings", json={"connect_timeout": 4},
                              headers=h.admin_headers)
    body = await resp.json()
    assert body["stored"] == {"connect_timeout": 4.0}  # PUT replaces
    assert body["settings"]["idle_timeout"] == 30.0  # back to the TOML value
    # the admin password is an internal setting: PUT keeps it, login still works
    resp = await h.client.post("/api/auth/login", json={"password": "test-password-123"})
    assert resp.status == 200


@pytest.mark.parametrize("values, message", [
    ({"max_body_bytes": "lots"}, "max_body_bytes"),
    ({"max_body_bytes": 0}, "positive"),
    ({"require_api_key": "maybe"}, "require_api_key: expected a boolean"),
    ({"idle_timeout": True}, "idle_timeout: expected a number"),
    ({"no_such_setting": 1}, "unknown setting 'no_such_setting'"),
    ({"_admin_password": "scrypt$1$1$1$AA==$AA=="}, "unknown setting '_admin_password'"),
])
async def test_invalid_settings_are_refused(omniroute: Any, values: dict[str, Any],
                                            message: str) -> None:
    before = await omniroute.store.get_settings()
    resp = await omniroute.client.patch("/api/settings", json={"idle_timeout": 7, **values},
                                        headers=omniroute.admin_headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_setting" and message in error["message"]
    assert await omniroute.store.get_settings() == before  # nothing half-applied


# ---------------------------------------------------------------------- memory cache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_memory_cache_lru_by_entries() -> None:
    cache = MemoryCache({"max_entries": 2})
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    assert await cache.get("a") == b"1"  # a is now the most recent
    await cache.set("c", b"3")
    assert await cache.get("b") is None  # the least recently used went
    assert await cache.get("a") == b"1" and await cache.get("c") == b"3"
    stats = await cache.stats()
    assert stats["entries"] == 2 and stats["evictions"] == 1


async def test_memory_cache_lru_by_bytes() -> None:
    cache = MemoryCache({"max_bytes": 10})
    await cache.set("a", b"xxxx")
    await cache.set("b", b"yyyy")
    await cache.set("a", b"zzzz")  # replacing counts the new size only
    assert (await cache.stats())["bytes"] == 8
    await cache.set("c", b"wwww")
    assert await cache.get("b") is None  # b was least recently used
    assert await cache.get("a") == b"zzzz"
    assert (await cache.stats())["bytes"] == 8
    await cache.set("huge", b"h" * 11)  # bigger than the whole cache: not stored, no eviction
    assert await cache.get("huge") is None
    assert (await cache.stats())["entries"] == 2
    assert await cache.delete("a") is True and await cache.delete("a") is False
    assert (await cache.stats())["bytes"] == 4
    await cache.clear()
    assert (await cache.stats())["entries"] == 0 and (await cache.stats())["bytes"] == 0


async def test_memory_cache_ttl_and_stats() -> None:
    clock = Clock()
    cache = MemoryCache({"ttl": 10}, clock=clock)
    await cache.set("default", b"d")
    await cache.set("short", b"s", ttl=1)
    clock.now += 0.999
    assert await cache.get("short") == b"s"
    clock.now += 0.001
    assert await cache.get("short") is None
    clock.now += 8.99
    assert await cache.get("default") == b"d"
    clock.now += 0.01
    assert await cache.get("default") is None
    stats = await cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["bytes"]) == (2, 2, 0, 0)
    assert await cache.get("never") is None
    assert (await cache.stats())["misses"] == 3


@pytest.mark.parametrize("options", [{"max_entries": 0}, {"max_bytes": -1}, {"ttl": 0}])
def test_memory_cache_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MemoryCache(options)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    assert config.replace(port=5).port == 5 and config.port == 20128
    assert config.db_path == tmp_path / "omniroute.sqlite3"
