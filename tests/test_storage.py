"""The database: migrations, concurrent transactions and the health check."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from storage_support import KEY, holds_a_transaction

from omniroute.storage import (
    Database,
    DatabaseBackend,
    StorageError,
    Store,
)
from omniroute.storage.migrations import LATEST, MIGRATIONS
from omniroute.vault import Vault

#: opens the test's database (the same one at each call), with these migrations
OpenDb = Callable[..., Awaitable[DatabaseBackend]]


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


async def test_the_writer_keeps_a_small_page_cache_and_the_reader_a_large_one(
        tmp_path: Path) -> None:
    """Resident memory: the gateway's connection mostly appends (the request log), and
    pages it appended are not read again; a long read gets room for what it revisits."""
    db = await Database.open(tmp_path / "omniroute.sqlite3")
    reader = await db.open_reader()
    assert reader is not None
    try:
        assert (await db.fetchone("PRAGMA cache_size"))[0] == -256  # KiB: 256 KiB
        assert (await reader.fetchone("PRAGMA cache_size"))[0] == -8192
        assert (await db.fetchone("PRAGMA mmap_size") or (0,))[0] == 0  # no mapped file
    finally:
        await reader.close()
        await db.close()


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


async def test_work_at_commit_is_committed_in_order_or_rolled_back(store: Store) -> None:
    """``executemany_at_commit``: run in the order given among the block's statements,
    committed with the block, and rolled back with it when it fails (SQLite runs it with
    the COMMIT, in one turn of its thread)."""
    db = store.db
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    async with db.transaction():
        await db.execute("INSERT INTO t VALUES ('a', 1)")
        await db.executemany_at_commit([("UPDATE t SET v = v + ?", [(10,)]),
                                        ("INSERT INTO t VALUES (?, ?)", [("b", 2)])])
    assert [tuple(r) for r in await db.fetchall("SELECT k, v FROM t ORDER BY k")] == [
        ("a", 11), ("b", 2)]
    with pytest.raises(db.integrity):
        async with db.transaction():
            await db.execute("INSERT INTO t VALUES ('c', 3)")
            await db.executemany_at_commit([("INSERT INTO t VALUES (?, ?)", [("a", 0)])])
    assert not holds_a_transaction(db)
    assert [r[0] for r in await db.fetchall("SELECT k FROM t ORDER BY k")] == ["a", "b"]
    async with db.transaction():  # a statement after it sees it
        await db.executemany_at_commit([("UPDATE t SET v = 0", [()])])
        assert (await db.fetchone("SELECT SUM(v) FROM t"))[0] == 0


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


async def test_work_at_commit_inserts_several_rows_a_statement(tmp_path: Path) -> None:
    """An ``INSERT ... VALUES`` given many rows at commit (the request log's totals) runs
    as statements of 8, 4, 2 and 1 rows for 15 (each a handover of the GIL each way
    fewer), an upsert's rows applied one after the other as before, also when a key
    comes again within a statement; another statement is run as it is."""
    db = await Database.open(tmp_path / "t.sqlite3")
    try:
        await _upserts_at_commit(db)
    finally:
        await db.close()


async def _upserts_at_commit(db: Database) -> None:
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    upsert = ("INSERT INTO t(k, v) VALUES (?, ?) "
              "ON CONFLICT(k) DO UPDATE SET v = t.v * 10 + excluded.v")
    rows = [(f"k{i % 12}", i) for i in range(15)]  # k0..k2 twice: rows 12..14
    async with db.transaction():
        await db.executemany_at_commit([(upsert, rows), ("UPDATE t SET v = v + ?", [(1,)])])
        assert [sql.count("(?") for sql, _ in db._at_commit] == [8, 4, 2, 1, 0]
        assert [len(params[0]) for _, params in db._at_commit[:4]] == [16, 8, 4, 2]
    expected = {f"k{i}": i for i in range(12)}
    for i in range(12, 15):
        expected[f"k{i % 12}"] = expected[f"k{i % 12}"] * 10 + i
    got = {r[0]: r[1] for r in await db.fetchall("SELECT k, v FROM t")}
    assert got == {k: v + 1 for k, v in expected.items()}


def spy_statements(monkeypatch: pytest.MonkeyPatch, db: Database) -> list[Any]:
    """What ``db`` hands its writer thread from here on: its ``executemany_each`` work,
    (statement, rows) by (statement, rows), in a list that grows."""
    sent: list[Any] = []
    each = db.executemany_each

    async def spy(work: Any) -> list[int]:
        sent.extend(work)
        return await each(work)

    monkeypatch.setattr(db, "executemany_each", spy)
    return sent


#: the table the batch-insert tests write (``stored_rows``): one column of each kind
T_COLUMNS = "k, a, n, r, z"


async def stored_rows(db: Database, one_row: str, given: Any) -> list[tuple[Any, ...]]:
    """Write ``given`` (rows, or a batch the writer takes) into a new table ``t`` with
    ``insert_new`` in one transaction; the stored rows, each value's SQLite type beside."""
    await db.execute("DROP TABLE IF EXISTS t")
    await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, "
                     "a TEXT, n INTEGER, r REAL, z TEXT)")
    async with db.transaction():
        assert await db.insert_new(one_row, given, table="t", into="t_new", columns=["k"],
                                   tally=True)
    return [tuple(r) for r in await db.fetchall(
        f"SELECT {T_COLUMNS}, typeof(n), typeof(r), typeof(z) FROM t ORDER BY id")]


# ---------------------------------------------------------------------- batch inserts

async def test_a_batch_insert_prepares_statements_of_64_rows_at_most(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prepared statement's memory grows with its rows (SQLite's, kept for the
    process's life), and each statement hands the GIL over and back: 133 rows go in
    64s, 4s and ones."""
    db = await Database.open(tmp_path / "t.sqlite3")
    try:
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, n INT)")
        sent = spy_statements(monkeypatch, db)
        async with db.transaction():
            assert await db.insert_new("INSERT INTO t(k, n) VALUES (?, ?)",
                                       [(f"k{i}", i % 3) for i in range(133)], table="t",
                                       into="t_new", columns=["k"], tally=True)
        assert [sql.count("(?") for sql, _ in sent] == [64, 64, 4, 1]
        assert (await db.fetchone("SELECT count(*), sum(n) FROM t"))[:] == (
            133, sum(i % 3 for i in range(133)))
    finally:
        await db.close()


async def test_a_batch_insert_tries_each_chunk_with_the_last_chunks_shared_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk is first tried with the columns the last chunk of its statement shared: a
    chunk where they still hold one value each is not counted column by column, one where
    one of them differs is (and its shape is tried next); a column that became shared
    since is bound a value a row until then. The rows stored are the same."""
    from omniroute.storage import db as db_module

    monkeypatch.setattr(db_module, "VALUES_ROWS", (16, 4, 1))  # four chunks of 16
    one_row = "INSERT INTO t(k, a, n, r) VALUES (?, ?, ?, ?) ON CONFLICT(k) DO NOTHING"
    rows = [(f"k{i:03d}", "same",
             7 if i < 32 else i,  # shared in the first two chunks of 16
             i / 4 if i < 48 else 2.5)  # shared in the last chunk only
            for i in range(64)]
    db = await Database.open(tmp_path / "t.sqlite3")
    try:
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, "
                         "a TEXT, n INTEGER, r REAL)")
        counted: list[int] = []
        shape = db._shape

        def spy(sql: str, chunk: Any, n: int) -> Any:
            counted.append(int(chunk[0][0][1:]))
            return shape(sql, chunk, n)

        monkeypatch.setattr(db, "_shape", spy)
        sent = spy_statements(monkeypatch, db)
        async with db.transaction():
            assert await db.insert_new(one_row, rows, table="t", into="t_new",
                                       columns=["k"], tally=True)
        assert counted == [0, 32]  # the first chunk, and the one where n differs
        params = [p for _, [p] in sent]
        assert params[0][:2] == params[1][:2] == ["same", 7]  # a and n bound once
        assert params[2][:1] == params[3][:1] == ["same"]  # n differs: a alone
        assert sent[3][0] == sent[2][0] and 2.5 in params[3][1:]  # r: a value a row
        assert [len(p) for p in params] == [2 + 2 * 16] * 2 + [1 + 3 * 16] * 2
        stored = [tuple(r) for r in await db.fetchall("SELECT k, a, n, r FROM t ORDER BY id")]
        assert stored == rows
    finally:
        await db.close()


async def test_a_batch_insert_binds_a_shared_column_once_and_stores_the_same_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's ``insert_new`` binds a column that holds one value through a chunk of
    rows once (a numbered parameter named in every row); the rows stored are those one
    parameter a value stores, types included (1 and 1.0 alike by the column's affinity),
    and past the bound on statement shapes every value is bound."""
    from omniroute.storage import db as db_module

    columns = T_COLUMNS
    one_row = f"INSERT INTO t({columns}) VALUES (?, ?, ?, ?, ?) ON CONFLICT(k) DO NOTHING"
    rows = [(f"k{i:03d}", "same",
             (7 if i != 10 else 8) if i < 128 else 1.0,  # a chunk with one row apart
             2.5 if i < 64 else i / 4,  # shared in the first chunk only
             None if i != 130 else "x") for i in range(133)]  # chunks of 64, 64, 4, 1
    monkeypatch.setattr(db_module, "VALUES_ROWS", (64, 16, 4, 1))  # (the sizes: below)
    db = await Database.open(tmp_path / "t.sqlite3")
    try:
        async def stored(bound: int) -> list[tuple[Any, ...]]:
            monkeypatch.setattr(db_module, "SHARED_SHAPES", bound)
            db._shared.clear()
            db._last.clear()
            db._shapes = 0
            return await stored_rows(db, one_row, rows)

        sent = spy_statements(monkeypatch, db)
        shared = await stored(db_module.SHARED_SHAPES)
        # the first chunk: k and n vary (n is 8 once), a, r and z are bound once
        first_sql, [first] = sent[0]
        assert len(first) == 3 + 2 * 64 and first[:3] == ["same", 2.5, None]
        assert first_sql.count("?1,") == 64
        second = sent[1][1][0]  # the second: k and r vary
        assert len(second) == 3 + 2 * 64 and second[:3] == ["same", 7, None]
        every = await stored(0)  # no shape of its own: every value bound
        plain = db_module.Database(db.conn, db.path)  # the one-row statement, row by row
        await db.execute("DELETE FROM t")
        await plain.executemany(one_row, rows)
        one_by_one = [tuple(r) for r in await db.fetchall(
            f"SELECT {columns}, typeof(n), typeof(r), typeof(z) FROM t ORDER BY id")]
        assert shared == every == one_by_one
        assert one_by_one[128][2] == 1 and one_by_one[128][5] == "integer"
        assert len(one_by_one) == 133
    finally:
        await db.close()
