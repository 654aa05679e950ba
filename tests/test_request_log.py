"""The request log: batched writes, key use, and what happens when a write fails."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from storage_support import holds_a_transaction, outage

from omniroute.storage import (
    Database,
    DatabaseBackend,
    RequestLog,
    RequestRecord,
    Store,
)
from omniroute.storage.requestlog import RARE, ROW_FIELDS, record_row


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


def test_a_records_row_holds_each_column_in_order() -> None:
    """:func:`record_row`, written out attribute by attribute, against the columns it
    stands for: every field a distinct value, or the rare fields all None (the row still
    holds every column: the log's flat buffer keeps rows of one width)."""
    values = {f.name: f"v{i}" for i, f in enumerate(dataclasses.fields(RequestRecord))}
    whole = RequestRecord(**values)
    assert record_row(whole) == tuple(values[name] for name in ROW_FIELDS)
    assert sorted(ROW_FIELDS) == sorted(values)
    plain = RequestRecord(**{**values, **dict.fromkeys(RARE)})
    row = record_row(plain)
    assert row == tuple(None if name in RARE else values[name] for name in ROW_FIELDS)


async def test_the_buffer_holds_each_records_row(db: Database) -> None:
    """:meth:`RequestLog.add` writes :func:`record_row`'s values out itself (two tuples):
    the buffer holds the same row, every field a distinct value, and the rare ones None."""
    values = {f.name: f"v{i}" for i, f in enumerate(dataclasses.fields(RequestRecord))}
    whole = RequestRecord(**values)
    plain = RequestRecord(**{**values, **dict.fromkeys(RARE)})
    log = RequestLog(db)
    log.add(whole)
    log.add(plain)
    assert log._flat.values == [*record_row(whole), *record_row(plain)]


async def test_a_record_changed_after_it_was_queued_is_written_as_it_was(db: Database) -> None:
    """The log keeps the record's row, made when the request ended (and the record is
    freed with its request)."""
    log = RequestLog(db)
    record = _record(0, model="m")
    log.add(record)
    record.model = "changed"
    del record
    assert await log.flush() == 1
    assert [r["model"] for r in await log.recent()] == ["m"]


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

    real_at_commit = store.db.executemany_at_commit

    async def recorded_at_commit(work: Any) -> None:  # SQLite: with the COMMIT, one turn
        for sql, rows in work:
            if sql.startswith("UPDATE api_keys"):
                written.append([tuple(r) for r in rows])
        await real_at_commit(work)

    monkeypatch.setattr(store.db, "executemany", recorded)
    monkeypatch.setattr(store.db, "executemany_each", recorded_each)
    monkeypatch.setattr(store.db, "executemany_at_commit", recorded_at_commit)
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
    assert [row[0] for row in log._pending] == ["r2", "r10", "r11"]
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


async def test_migration_13_keeps_the_records_and_stores_a_retried_one_once(
        tmp_path: Path) -> None:
    """Migration 13 makes the time index unique by time and request id, in place of the
    request ids' own unique index: the records are kept, the time index still serves a
    time range, and a record written again (a retried batch) is stored once."""
    from omniroute.storage.migrations import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    old = await Database.open(path, migrations=MIGRATIONS[:12])
    await old.executemany(
        "INSERT INTO request_log(request_id, ts, endpoint, status) VALUES (?, ?, ?, ?)",
        [(f"r{i}", 1000.0 + i, "chat.completions", 200) for i in range(5)])
    await old.close()
    db = await Database.open(path)
    try:
        assert await db.schema_version() == len(MIGRATIONS) >= 13
        indexes = {r[0]: r[1] for r in await db.fetchall(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'request_log'")}
        assert "request_log_request_id" not in indexes
        assert "UNIQUE INDEX request_log_ts ON request_log(ts, request_id)" in indexes[
            "request_log_ts"]
        plan = " ".join(r[3] for r in await db.fetchall(
            "EXPLAIN QUERY PLAN SELECT * FROM request_log WHERE ts >= ? AND ts < ? "
            "ORDER BY ts DESC, id DESC LIMIT 10", (1001.0, 1003.0)))
        assert "USING INDEX request_log_ts (ts>? AND ts<?)" in plan, plan
        log = RequestLog(db)
        for i in (3, 4, 5):  # two already there (the same time and id), one new
            log.add(_record(i))
        assert await log.flush() == 3
        assert [tuple(r) for r in await db.fetchall(
            "SELECT request_id, ts FROM request_log ORDER BY id")] == [
            (f"r{i}", 1000.0 + i) for i in range(6)]
    finally:
        await db.close()


class _Seen:
    """A sqlite3 connection that notes each ``executemany``'s SQL (C methods cannot be
    patched); everything else is the connection's."""

    def __init__(self, conn: Any, seen: list[str]) -> None:
        self._conn, self._seen = conn, seen

    def executemany(self, sql: str, rows: Any) -> Any:
        self._seen.append(sql)
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_the_writers_statements_are_prepared_at_start_up(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """:meth:`RequestLog.prepare` (the gateway's start) runs, over no rows, the statements
    a flush of one group runs first: the records' small chunks (5 records: 4 and 1), the
    totals' upserts and a key's last use, so no flush prepares them on the data path."""
    db = store.db
    if not isinstance(db, Database):
        pytest.skip("SQLite's statements")
    key, _ = await store.create_key("user")
    seen: list[str] = []
    real = db.conn._execute

    async def noted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if args and args[0] is db.conn._conn:
            args = (_Seen(args[0], seen), *args[1:])
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(db.conn, "_execute", noted)
    log = RequestLog(db)
    await log.prepare()
    prepared, seen[:] = set(seen), []
    for i in range(5):
        log.add(_record(i, api_key_id=key.id, model="m"))
    assert await log.flush() == 5
    assert len(seen) >= 5 and set(seen) <= prepared
    assert await _count(db) == 5
    log.enabled = False  # records off: nothing to prepare
    seen[:] = []
    await log.prepare()
    assert seen == []
