"""The request log's flat buffer: rows of one width as values in one list
(:mod:`omniroute.storage.flat`), as a buffer, as a batch's columns, and written."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

import pytest
from test_storage import T_COLUMNS, spy_statements, stored_rows

from omniroute.storage import Database, RequestLog, RequestRecord
from omniroute.storage import db as db_module
from omniroute.storage.buffered import BufferedLog
from omniroute.storage.flat import FlatRows
from omniroute.storage.requestlog import RARE, ROW_FIELDS, record_inserts, record_row


def _flat(n: int, width: int = 3) -> FlatRows:
    rows = FlatRows(width)
    for i in range(n):
        rows.append((f"r{i}", *range(i, i + width - 1)))
    return rows


def test_rows_are_read_back_as_added() -> None:
    rows = _flat(5)
    assert len(rows) == 5 and rows
    assert list(rows) == [(f"r{i}", i, i + 1) for i in range(5)]
    assert rows[0] == ("r0", 0, 1) and rows[-1] == ("r4", 4, 5)
    assert list(rows[1:3]) == [("r1", 1, 2), ("r2", 2, 3)]
    with pytest.raises(IndexError):
        rows[5]
    with pytest.raises(ValueError):  # a row of another width is refused, whole
        rows.append((1, 2))
    assert len(rows) == 5 and len(rows.values) == 15
    assert not FlatRows(3) and list(FlatRows(3)) == []


def test_dropping_the_oldest_keeps_the_order_and_the_list_small() -> None:
    rows = _flat(10)
    dropped = [rows.popleft() for _ in range(7)]
    assert dropped == [(f"r{i}", i, i + 1) for i in range(7)]
    assert [r[0] for r in rows] == ["r7", "r8", "r9"]
    assert len(rows.values) <= 2 * 3 * len(rows)  # the dropped rows' places given back
    rows.append(("r10", 0, 0))
    assert [r[0] for r in rows] == ["r7", "r8", "r9", "r10"]
    for _ in range(4):
        rows.popleft()
    with pytest.raises(IndexError):
        rows.popleft()


def test_a_batch_taken_and_requeued_goes_back_before_the_newer_rows() -> None:
    rows = _flat(10)
    rows.popleft()  # an offset into the list
    batch = rows.take(4)
    assert [r[0] for r in batch] == ["r1", "r2", "r3", "r4"]
    assert [r[0] for r in rows] == ["r5", "r6", "r7", "r8", "r9"]
    rows.append(("r10", 0, 0))  # arrived while the batch was written
    rows.requeue(batch)  # the write failed
    assert [r[0] for r in rows] == [f"r{i}" for i in range(1, 11)]
    everything = rows.take(100)
    assert len(everything) == 10 and not rows
    rows.append(("r11", 0, 0))
    rows.requeue(everything)
    assert [r[0] for r in rows] == [f"r{i}" for i in range(1, 12)]
    with pytest.raises(ValueError):
        rows.requeue(everything.view(2))  # not whole rows


def test_a_batch_taken_at_load_is_the_buffers_own_list() -> None:
    """The writer takes a multiple of 512 rows while a few more wait: the buffer's list
    goes with the batch (no copy of it, no new list for the collector to walk while the
    flush waits) and the few rows after it start a new one; a backlog's batch (more
    waiting after it than in it) is copied out of the list as before."""
    rows = _flat(10)
    rows.popleft()
    kept = rows.values
    batch = rows.take(6)
    assert batch.values is kept and len(kept) == 7 * 3  # the dropped row's places, the 6
    assert [r[0] for r in batch] == [f"r{i}" for i in range(1, 7)]
    assert [r[0] for r in rows] == ["r7", "r8", "r9"] and rows.values is not kept
    rows.append(("r10", 0, 0))
    rows.requeue(batch)
    assert [r[0] for r in rows] == [f"r{i}" for i in range(1, 11)]
    kept = rows.values
    batch = rows.take(2)  # eight more wait: copied
    assert batch.values is not kept and [r[0] for r in batch] == ["r1", "r2"]
    assert [r[0] for r in rows] == [f"r{i}" for i in range(3, 11)]
    kept = rows.values
    everything = rows.take(100)
    assert everything.values is kept and [r[0] for r in everything] == [
        f"r{i}" for i in range(3, 11)]


def test_a_batchs_columns_are_its_rows_columns() -> None:
    rows = _flat(7, width=4)
    rows.popleft()
    batch = rows.take(5)
    assert batch.columns() == [list(c) for c in zip(*batch, strict=True)]
    assert batch.columns() is batch.columns()  # read once
    view = batch.view(2)  # a statement that leaves the last columns out
    assert list(view) == [row[:2] for row in batch]
    assert view.columns() == batch.columns()[:2]
    part = batch.rows(1, 3)
    assert list(part) == list(batch)[1:3] and part.columns() == [
        list(c) for c in zip(*list(batch)[1:3], strict=True)]
    rows.append(("new", 0, 0, 0))  # a buffer's columns follow what it holds
    before = rows.columns()
    rows.append(("newer", 1, 1, 1))
    assert rows.columns() != before and rows.columns()[0] == ["r6", "new", "newer"]


class _Sized(BufferedLog[tuple[str, str]]):
    """A log of (key, text) rows kept flat, bounded by the texts' bytes."""

    table = "t"

    def buffer(self) -> FlatRows:
        return FlatRows(2)

    def size(self, item: tuple[str, str]) -> int:
        return len(item[1])


def test_a_flat_buffer_keeps_the_count_and_byte_bounds() -> None:
    log = _Sized(None, max_pending=4, max_bytes=100)  # type: ignore[arg-type]
    for i in range(6):
        log.add((f"k{i}", "x" * 10))
    assert log.pending == 4 and log.dropped == 2  # by count: the oldest go
    assert [r[0] for r in log._pending] == ["k2", "k3", "k4", "k5"]
    log.add(("big", "y" * 80))  # 120 bytes: the oldest go until within the bound
    assert [r[0] for r in log._pending] == ["k4", "k5", "big"] and log.dropped == 4
    assert log._bytes == 100
    batch = log._take()
    assert log._bytes == 0 and log.pending == 0
    log.add(("late", "z" * 10))
    log._requeue(batch)  # before the newer row, the oldest dropped past the bound
    assert [r[0] for r in log._pending] == ["k5", "big", "late"] and log._bytes == 100
    assert log.dropped == 5


def _record(i: int, **fields: Any) -> RequestRecord:
    return RequestRecord(request_id=f"r{i:04d}", ts=1000.0 + i, endpoint="chat",
                         status=200, model="m", provider="p", latency_ms=1.0 + i,
                         prompt_tokens=3, **fields)


def test_a_batch_is_split_into_runs_by_its_rare_columns() -> None:
    log = RequestLog(None)  # type: ignore[arg-type]
    records = [_record(i, error="boom" if i in (3, 4, 9) else None) for i in range(12)]
    for r in records:
        log.add(r)
    batch = log._pending.take(100)
    assert isinstance(batch, FlatRows)
    runs = record_inserts(batch)
    common = len(ROW_FIELDS) - len(RARE)
    assert [(len(rows), rows.used) for _, rows in runs] == [
        (3, common), (2, len(ROW_FIELDS)), (4, common), (1, len(ROW_FIELDS)), (2, common)]
    written = [row for _, rows in runs for row in rows]
    assert all(w == record_row(r)[:len(w)] for w, r in zip(written, records, strict=True))
    assert all(len(w) == common for w in written if w[0] not in ("r0003", "r0004", "r0009"))
    plain = FlatRows(len(ROW_FIELDS))
    plain.append(record_row(records[0]))
    [(sql, rows)] = record_inserts(plain)
    assert "error" not in sql and list(rows) == [record_row(records[0])[:common]]


async def test_flat_rows_are_stored_as_their_rows_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``insert_new`` given rows kept flat binds them column by column (a slice each),
    a column of one value through the batch once a chunk, and stores what the same rows
    given as tuples store, chunk sizes, types and order included."""
    columns = T_COLUMNS
    one_row = f"INSERT INTO t({columns}) VALUES (?, ?, ?, ?, ?) ON CONFLICT(k) DO NOTHING"
    rows = [(f"k{i:03d}", "same", 7 if i < 40 else 7.0,  # one value (1 and 1.0 alike)
             i / 4, None if i != 30 else "x") for i in range(53)]  # chunks: 16s, 4, 1
    db = await Database.open(tmp_path / "t.sqlite3")
    try:
        as_rows = await stored_rows(db, one_row, rows)
        flat = FlatRows(5)
        for row in rows:
            flat.append(row)
        sent = spy_statements(monkeypatch, db)
        assert await stored_rows(db, one_row, flat) == as_rows
        assert [sql.count("), (") + 1 for sql, _ in sent] == [16, 16, 16, 4, 1]
        first_sql, [first] = sent[0]
        # a and n bound once, then k's 16 values, r's, z's (z varies in the batch)
        assert first[:2] == ["same", 7] and first[2:18] == [r[0] for r in rows[:16]]
        assert first[18:34] == [r[3] for r in rows[:16]] and len(first) == 2 + 3 * 16
        assert first_sql.count("?1,") == 16
        assert sent[3][1] == [[v for c in zip(*rows[48:52], strict=True) for v in c]]
        # past the bound on shapes every value is bound, the same rows stored
        monkeypatch.setattr(db_module, "SHARED_SHAPES", 0)
        db._columns.clear()
        db._shapes = 0
        del sent[:]
        assert await stored_rows(db, one_row, flat) == as_rows
        assert len(sent[0][1][0]) == 5 * 16
    finally:
        await db.close()


async def test_the_request_log_writes_flat_rows_as_records(db: Database) -> None:
    """Records of served requests and failed ones mixed in one batch: every one written
    once, with its columns, and the totals count them all."""
    log = RequestLog(db)
    records = [_record(i, error="boom" if i % 7 == 3 else None,
                       error_class="E" if i % 7 == 3 else None) for i in range(40)]
    for r in records:
        log.add(dataclasses.replace(r))
    assert await log.flush() == 40
    got = await db.fetchall(f"SELECT {', '.join(ROW_FIELDS)} FROM request_log ORDER BY id")
    assert [tuple(r) for r in got] == [record_row(r) for r in records]
    total = await db.fetchone("SELECT SUM(requests), SUM(requests * failed) FROM usage_rollup "
                              "WHERE period = 3600")
    assert tuple(total) == (40, sum(1 for i in range(40) if i % 7 == 3))


def test_adding_a_record_leaves_no_container_behind() -> None:
    """What waits is one list whatever the count: CPython's youngest generation does not
    count a waiting row (a tuple a record pushed it past its threshold of 700, and each
    collection walked the waiting rows)."""
    log = RequestLog(None)  # type: ignore[arg-type]
    for i in range(1000):  # the list grown once
        log.add(_record(i))
    log._pending.take(10_000)
    collections = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        for i in range(3000):
            log.add(_record(i))
    finally:
        gc.callbacks.remove(count)
    assert log.pending == 3000 and collections == []
