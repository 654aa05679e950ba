"""The buffered writers (request log, audit log): cancellation, bad rows, bounds, retention."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from omniroute.storage import Database, RequestLog, RequestRecord
from omniroute.storage.audit import AuditEntry, AuditLog
from omniroute.storage.buffered import BufferedLog


def _record(i: int, **fields: Any) -> RequestRecord:
    return RequestRecord(request_id=f"r{i}", ts=1000.0 + i, endpoint="chat", status=200,
                         **fields)


def _entry(i: int, diff: str | None = None) -> AuditEntry:
    return AuditEntry(ts=1000.0 + i, actor="admin_session", action="PATCH /api/settings",
                      diff=diff)


LOGS: dict[str, tuple[Callable[[Database], BufferedLog[Any]], Callable[[int], Any]]] = {
    "request_log": (RequestLog, _record),
    "audit_log": (AuditLog, _entry),
}


async def _rows(db: Database, table: str) -> int:
    return int((await db.fetchone(f"SELECT count(*) FROM {table}"))[0])


def _slow_writes(log: Any, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make every batch write of ``log`` wait 0.2 s (whatever the backend runs it as);
    the event is set when one has started."""
    started = asyncio.Event()
    real = log.write

    async def slow(sql: str, rows: Any) -> None:
        if sql.startswith("INSERT"):
            started.set()
            await asyncio.sleep(0.2)
        await real(sql, rows)

    monkeypatch.setattr(log, "write", slow)
    return started


@pytest.mark.parametrize("table", list(LOGS))
async def test_a_flush_cancelled_mid_write_loses_nothing(
        db: Database, monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    """A read API calls flush; its client disconnects (handler cancelled) mid-write."""
    make, item = LOGS[table]
    log = make(db)
    for i in range(50):
        log.add(item(i))
    started = _slow_writes(log, monkeypatch)
    caller = asyncio.create_task(log.flush())
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    log.add(item(50))
    await log.flush()  # waits for the write in progress, then writes the newer one
    assert await _rows(db, table) == 51 and log.pending == 0 and log.dropped == 0


@pytest.mark.parametrize("table", list(LOGS))
async def test_a_flush_under_steady_load_writes_what_was_waiting_and_ends(
        db: Database, monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    """Rows keep coming while a flush writes (a busy gateway): the flush writes the rows
    that were waiting and returns, instead of chasing the newest; close writes the rest."""
    make, item = LOGS[table]
    log = make(db)
    for i in range(100):
        log.add(item(i))
    _slow_writes(log, monkeypatch)  # each batch takes 0.2 s
    stop = asyncio.Event()

    async def steady() -> None:
        i = 100
        while not stop.is_set():
            log.add(item(i))
            i += 1
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(steady())
    try:
        async with asyncio.timeout(1.0):  # it chased new rows for as long as they came
            written = await log.flush()
        assert 100 <= written <= 102  # (and a row or two the producer added before it began)
        assert log.pending > 0  # the rows that came meanwhile wait for the next turn
    finally:
        stop.set()
        await producer
    waiting = log.pending
    await log.close()
    assert await _rows(db, table) == written + waiting and log.pending == 0


@pytest.mark.parametrize("table", list(LOGS))
async def test_close_waits_for_the_flush_in_progress(
        db: Database, monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    make, item = LOGS[table]
    log = make(db)
    log.interval = 0.01
    log.start()
    started = _slow_writes(log, monkeypatch)
    for i in range(30):
        log.add(item(i))
    await started.wait()  # the background task is writing
    log.add(item(30))
    await log.close()
    assert await _rows(db, table) == 31 and log.pending == 0


async def test_a_write_cancelled_inside_the_writer_puts_its_batch_back(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not through flush's shield: the writing task itself is cancelled (loop shutdown)."""
    log = RequestLog(db)
    for i in range(10):
        log.add(_record(i))
    started = _slow_writes(log, monkeypatch)
    writer = asyncio.create_task(log._flush())
    await started.wait()
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert log.pending == 10 and await _rows(db, "request_log") == 0
    monkeypatch.undo()
    assert await log.flush() == 10


async def test_one_bad_row_is_dropped_and_counted_not_retried_forever(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(db)
    for i in range(5):
        log.add(_record(i))
    log.add(_record(5, prompt_tokens=2**64))  # more than SQLite's 64-bit integers hold
    log.add(_record(6, completion_tokens=2**70))
    for i in range(7, 10):
        log.add(_record(i))
    with caplog.at_level(logging.ERROR):
        assert await log.flush() == 8
    assert log.pending == 0 and log.dropped == 2
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    reason = "OverflowError" if isinstance(db, Database) else "out of int64 range"
    assert len(refused) == 1 and reason in refused[0]
    assert str(2**64) not in caplog.text  # the reason, never the row
    log.add(_record(10))
    assert await log.flush() == 1  # the log goes on
    assert await _rows(db, "request_log") == 9


async def test_a_database_that_is_unavailable_keeps_the_batch(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    log = RequestLog(db)
    for i in range(3):
        log.add(_record(i))

    async def locked(sql: str, rows: Any) -> None:
        raise db.unavailable[0]("database is locked")

    monkeypatch.setattr(log, "write", locked)
    assert await log.flush() == 0
    assert log.pending == 3 and log.dropped == 0  # kept whole, not written row by row
    monkeypatch.undo()
    assert await log.flush() == 3


@pytest.mark.parametrize("table", list(LOGS))
async def test_the_writer_takes_its_turn_once_flush_at_rows_wait(
        db: Database, table: str) -> None:
    """Before its interval is up: what waits is bounded by count, not by the rate. The
    writer then writes whole multiples of ``flush_at`` rows; ``close`` writes the rest."""
    make, item = LOGS[table]
    log = make(db)
    log.interval, log.flush_at = 60.0, 5
    log.start()
    try:
        for i in range(4):
            log.add(item(i))
        await asyncio.sleep(0.05)
        assert log.pending == 4 and await _rows(db, table) == 0  # the interval's turn
        log.add(item(4))
        for _ in range(100):
            if await _rows(db, table) == 5:
                break
            await asyncio.sleep(0.01)
        assert await _rows(db, table) == 5 and log.pending == 0
        for i in range(5, 17):  # past flush_at while nobody waits: its next turn at once,
            log.add(item(i))  # two times flush_at rows written, the other two wait
        for _ in range(100):
            if await _rows(db, table) == 15:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert await _rows(db, table) == 15 and log.pending == 2
        for i in range(17, 20):  # flush_at again, with the two
            log.add(item(i))
        for _ in range(100):
            if await _rows(db, table) == 20:
                break
            await asyncio.sleep(0.01)
        assert await _rows(db, table) == 20 and log.pending == 0
        log.add(item(20))
    finally:
        await log.close()
    assert await _rows(db, table) == 21


def test_the_request_log_is_written_before_512_records_wait(db: Database) -> None:
    assert RequestLog(db).flush_at == 512
    assert AuditLog(db).flush_at == 0  # a few writes a minute: its interval


async def test_a_failing_database_is_not_retried_at_once_whatever_waits(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    log = RequestLog(db)
    log.interval, log.flush_at = 0.2, 3
    tries = 0

    async def locked(sql: str, rows: Any) -> None:
        nonlocal tries
        tries += 1
        raise db.unavailable[0]("database is locked")

    monkeypatch.setattr(log, "write", locked)
    log.start()
    try:
        for i in range(10):
            log.add(_record(i))
        await asyncio.sleep(0.5)
        assert 1 <= tries <= 3 and log.pending == 10  # once an interval, not in a loop
    finally:
        monkeypatch.undo()
        await log.close()
    assert await _rows(db, "request_log") == 10


async def test_the_audit_buffer_is_bounded_by_bytes(db: Database) -> None:
    audit = AuditLog(db, max_bytes=10_000)
    for i in range(10):
        audit.add(_entry(i, diff="x" * 4000))  # as a flood of anonymous calls could
    assert audit.pending == 2 and audit.dropped == 8  # the newest kept
    assert await audit.flush() == 2
    rows = await db.fetchall("SELECT ts FROM audit_log ORDER BY ts")
    assert [r[0] for r in rows] == [1008.0, 1009.0]


async def test_a_row_dropped_by_the_count_bound_takes_its_bytes_off(db: Database) -> None:
    """With both bounds set, a row the count bound drops is counted off the byte total
    too: the total stays that of the rows kept (it grew by each dropped row before, and
    the byte bound then dropped rows it need not have)."""
    audit = AuditLog(db, max_pending=2, max_bytes=10_000)
    for i in range(5):
        audit.add(_entry(i, diff="x" * 1000))
    assert audit.pending == 2 and audit.dropped == 3
    assert audit._bytes == sum(map(audit.size, audit._pending))
    audit.add(_entry(5, diff="x" * 7000))  # within the byte bound with the two kept
    assert [e.ts for e in audit._pending] == [1004.0, 1005.0] and audit.dropped == 4


async def test_audit_retention_by_age_in_small_batches(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from omniroute.storage import buffered
    monkeypatch.setattr(buffered, "PRUNE_BATCH", 3)
    now, days = 400 * 86400.0, [365.0]
    audit = AuditLog(db, retention_days=lambda: days[0], clock=lambda: now)
    for i in range(7):
        audit.add(AuditEntry(ts=now - 366 * 86400 + i, actor="a", action="POST /api/x"))
    audit.add(AuditEntry(ts=now - 10, actor="a", action="POST /api/x"))
    await audit.flush()
    assert await audit.prune() == 7 and await _rows(db, "audit_log") == 1
    days[0] = 0.0  # 0: kept whatever their age
    audit.add(AuditEntry(ts=1.0, actor="a", action="POST /api/x"))
    await audit.flush()
    assert await audit.prune() == 0 and await _rows(db, "audit_log") == 2


async def test_the_row_bound_keeps_the_newest_rows_when_ids_have_gaps(db: Database) -> None:
    """A PostgreSQL sequence skips ids (a rolled-back insert, a crash): the bound is the
    id of the row past the newest ``max_rows``, not the largest id minus ``max_rows``."""
    table, log = "request_log", RequestLog(db)
    for i in range(10):
        log.add(_record(i))
    await log.flush()
    ids = [r[0] for r in await db.fetchall(f"SELECT id FROM {table} ORDER BY id")]
    await db.execute(f"DELETE FROM {table} WHERE id > ? AND id < ?", (ids[1], ids[6]))
    log.retention_days, log.max_rows = 0.0, 5  # 6 rows left, ids 1 2 7 8 9 10
    assert await log.prune() == 1
    kept = [r[0] for r in await db.fetchall(f"SELECT id FROM {table} ORDER BY id")]
    assert kept == [ids[1], *ids[6:]]
    assert await log.prune() == 0  # within the bound: nothing more
