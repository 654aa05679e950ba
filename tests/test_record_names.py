"""The request log's texts stored once (``record_names``, migration 13): records written
before the migration read as they did, records written after it beside them, and the
writer's codes (new texts, a rolled-back transaction, a retried batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from omniroute.storage import RequestLog, RequestRecord, names
from omniroute.storage.backend import DatabaseBackend
from omniroute.storage.migrations import MIGRATIONS
from omniroute.storage.usage import UsageFilter, UsageQueries

OpenDb = Callable[..., Awaitable[DatabaseBackend]]

#: records as a gateway at schema 12 stored them: texts, NULLs, a text used by two
#: columns (a provider named as a model), one text differing from another by case only
_OLD = [
    {"request_id": "old1", "ts": 1000.0, "api_key_id": "key_a", "endpoint": "chat.completions",
     "model_requested": "up/gpt", "provider": "up", "connection_id": "conn_1", "model": "gpt",
     "status": 200, "prompt_tokens": 3, "client_format": "openai", "user_agent": "sdk/1",
     "attempt_log": '[{"target":"up/gpt","failure":null,"status":200,"ms":1.5}]'},
    {"request_id": "old2", "ts": 1001.0, "api_key_id": None, "endpoint": "messages",
     "model_requested": "up", "provider": "up", "connection_id": "conn_2", "model": "GPT",
     "status": 429, "error": "slow down", "error_class": "RateLimited", "combo": "fast",
     "client_format": "anthropic", "user_agent": None},
    {"request_id": "old3", "ts": 1002.0, "api_key_id": "key_b", "endpoint": "embeddings",
     "model_requested": None, "provider": None, "connection_id": None, "model": None,
     "status": 401},
]


async def _old_database(open_db: OpenDb) -> list[dict[str, Any]]:
    """A database at schema 12 holding :data:`_OLD`; its records as they read there."""
    old = await open_db(MIGRATIONS[:12])
    try:
        for record in _OLD:
            await old.execute(
                f"INSERT INTO request_log({', '.join(record)}) "
                f"VALUES ({', '.join('?' for _ in record)})", list(record.values()))
        return [dict(r) for r in await old.fetchall("SELECT * FROM request_log ORDER BY id")]
    finally:
        await old.close()


async def test_migration_13_keeps_every_record_as_it_read(open_db: OpenDb) -> None:
    before = await _old_database(open_db)
    db = await open_db()
    try:
        after = [dict(r) for r in await db.fetchall("SELECT * FROM request_log ORDER BY id")]
        assert after == before  # every column, its order and its value (ids too)
        stored = await db.fetchall("SELECT name FROM record_names ORDER BY name")
        texts = {r[c] for r in _OLD for c in names.CODED if r.get(c) is not None}
        assert [r[0] for r in stored] == sorted(texts)  # each text once
        codes = await db.fetchone(f"SELECT provider, model, api_key_id FROM {names.TABLE} "
                                  "WHERE request_id = 'old3'")
        assert tuple(codes) == (None, None, await _code(db, "key_b"))
    finally:
        await db.close()


async def _code(db: DatabaseBackend, text: str) -> int:
    return (await db.fetchone("SELECT id FROM record_names WHERE name = ?", (text,)))[0]


async def test_records_written_after_the_migration_read_beside_the_old_ones(
        open_db: OpenDb) -> None:
    await _old_database(open_db)
    db = await open_db()
    try:
        log = RequestLog(db)
        # old texts, new ones, and a record with the rare fields (the full insert)
        log.add(RequestRecord(request_id="new1", ts=2000.0, endpoint="chat.completions",
                              status=200, api_key_id="key_a", provider="up", model="gpt",
                              model_requested="up/gpt", connection_id="conn_1",
                              client_format="openai", user_agent="sdk/2", prompt_tokens=5))
        log.add(RequestRecord(request_id="new2", ts=2001.0, endpoint="responses",
                              status=502, api_key_id="key_c", provider="other",
                              model="gpt", connection_id="conn_3", error="bad gateway",
                              error_class="UpstreamStatusError", combo="fast"))
        assert await log.flush() == 2
        ids = [r[0] for r in await db.fetchall("SELECT id FROM request_log ORDER BY id")]
        assert len(ids) == len(set(ids)) == 5  # the new ids follow the old ones
        queries = UsageQueries(db)

        async def found(**where: Any) -> list[str]:
            page, _ = await queries.logs(UsageFilter(**where), limit=50)
            return [r["request_id"] for r in page]

        assert await found(key="key_a") == ["new1", "old1"]
        assert await found(connection="conn_1") == ["new1", "old1"]
        assert await found(model="gpt") == ["new2", "new1", "old1"]
        assert await found(provider="up") == ["new1", "old2", "old1"]
        assert await found(key="key_c") == ["new2"]
        record = (await queries.logs(UsageFilter(key="key_c"), limit=1))[0][0]
        assert (record["provider"], record["connection_id"], record["endpoint"],
                record["error_class"], record["combo"], record["user_agent"]) == (
            "other", "conn_3", "responses", "UpstreamStatusError", "fast", None)
        # the texts written since: once each, beside the old ones
        rows = await db.fetchall("SELECT name, COUNT(*) FROM record_names GROUP BY name")
        assert {r[1] for r in rows} == {1}
        assert {"sdk/2", "key_c", "other", "conn_3", "responses"} <= {r[0] for r in rows}
    finally:
        await db.close()


async def test_a_batch_tried_again_is_stored_once(db: DatabaseBackend) -> None:
    """Two writers given the same record (a batch retried after its commit landed): one
    record, counted once in the totals, whatever names each writer had cached."""
    record = RequestRecord(request_id="same", ts=3000.0, endpoint="chat.completions",
                           status=200, provider="p", model="m", connection_id="c",
                           prompt_tokens=7)
    for _ in range(2):
        log = RequestLog(db)
        log.add(record)
        await log.flush()
    assert (await db.fetchone("SELECT COUNT(*) FROM request_log"))[0] == 1
    totals = await db.fetchone("SELECT SUM(requests), SUM(tokens_in) FROM usage_rollup "
                               "WHERE period = 3600")
    assert tuple(totals) == (1, 7)
    row = await db.fetchone("SELECT provider, model, connection_id FROM request_log")
    assert tuple(row) == ("p", "m", "c")


async def test_a_failed_write_keeps_its_names_and_its_records(
        db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """New names are committed before the batch's transaction (inside it they would hold
    up other instances inserting the same name): a batch that fails leaves them, unused
    until it is written again."""
    log = RequestLog(db)
    log.add(RequestRecord(request_id="r1", ts=1.0, endpoint="e", status=200, model="fresh"))

    async def fail(*_: Any, **__: Any) -> None:
        raise db.unavailable[0]("the database went away")

    monkeypatch.setattr(log, "also", fail)
    assert await log.flush() == 0 and log.pending == 1
    assert (await db.fetchone("SELECT COUNT(*) FROM request_log"))[0] == 0
    assert (await db.fetchone("SELECT COUNT(*) FROM record_names WHERE name = 'fresh'"))[0] == 1
    monkeypatch.undo()
    assert await log.flush() == 1
    row = await db.fetchone("SELECT model FROM request_log")
    assert row[0] == "fresh"


async def test_a_writer_does_not_wait_for_another_holding_new_names(
        db: DatabaseBackend) -> None:
    """A writer whose batch is open (its new names stored) holds up no other writer that
    meets the same new names."""
    first, second = RequestLog(db), RequestLog(db)
    record = {"endpoint": "e", "status": 200, "model": "brand-new", "provider": "p2"}
    first.add(RequestRecord(request_id="a", ts=1.0, **record))  # type: ignore[arg-type]
    second.add(RequestRecord(request_id="b", ts=2.0, **record))  # type: ignore[arg-type]
    await first._rows.prepare(db, list(first._pending))
    assert await asyncio.wait_for(second.flush(), 10) == 1
    assert await first.flush() == 1
    rows = await db.fetchall("SELECT request_id, model FROM request_log ORDER BY request_id")
    assert [tuple(r) for r in rows] == [("a", "brand-new"), ("b", "brand-new")]
