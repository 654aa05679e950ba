"""Several request log writers on one database (instances of one deployment): no lock
between them, each folds exactly the records it stored into the totals, and none waits
for another's turn. And what the server does with a transaction a hung or dead client
left open."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from omniroute.storage import RequestLog, RequestRecord
from pg_testkit import COMMIT, Proxy, through

from omniroute_postgres import PostgresDatabase

HOUR = 3600.0
#: the records' hours (the same for every writer) and groups
_HOURS = [HOUR * h for h in (100, 101, 102)]
_MODELS = [f"model-{i}" for i in range(8)]
_KEYS = [None, "key-a", "key-b"]

#: (what a summary compares, the records' GROUP BY, the totals' read)
_CHECKS = [
    ("hourly rollup",
     "SELECT CAST(ts / 3600 AS INTEGER) * 3600, COALESCE(model, ''), COALESCE(api_key_id, ''),"
     " status, COUNT(*), SUM(COALESCE(prompt_tokens, 0)), SUM(COALESCE(cost_usd, 0))"
     " FROM request_log GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
     "SELECT start, model, api_key_id, status, SUM(requests), SUM(tokens_in), SUM(cost_usd)"
     " FROM usage_rollup WHERE period = 3600 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"),
    ("daily rollup",
     "SELECT CAST(ts / 86400 AS INTEGER) * 86400, COALESCE(model, ''), COUNT(*),"
     " SUM(COALESCE(prompt_tokens, 0)) FROM request_log GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT start, model, SUM(requests), SUM(tokens_in) FROM usage_rollup"
     " WHERE period = 86400 GROUP BY 1, 2 ORDER BY 1, 2"),
    ("hourly dims by model",
     "SELECT CAST(ts / 3600 AS INTEGER) * 3600, COALESCE(model, ''), COUNT(*),"
     " SUM(COALESCE(prompt_tokens, 0)) FROM request_log GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT start, value, requests, tokens_in FROM usage_dims"
     " WHERE period = 3600 AND dim = 'model' ORDER BY 1, 2"),
    ("minute totals",
     "SELECT CAST(ts / 60 AS INTEGER) * 60, COUNT(*), SUM(COALESCE(prompt_tokens, 0))"
     " FROM request_log GROUP BY 1 ORDER BY 1",
     "SELECT start, requests, tokens_in FROM usage_dims"
     " WHERE period = 60 AND dim = 'total' ORDER BY 1"),
]


def _record(writer: int, n: int, rng: random.Random) -> RequestRecord:
    return RequestRecord(
        request_id=f"w{writer}-{n}", ts=rng.choice(_HOURS) + rng.random() * HOUR,
        endpoint="chat", status=rng.choice([200, 200, 200, 429, 500]),
        model=rng.choice(_MODELS), provider="up", api_key_id=rng.choice(_KEYS),
        prompt_tokens=rng.randint(1, 1000), completion_tokens=rng.randint(0, 50),
        cost_usd=rng.randint(0, 100) / 64, latency_ms=float(rng.randint(1, 900)))


async def _assert_totals_are_the_records(db: PostgresDatabase) -> None:
    for what, records, totals in _CHECKS:
        expected = [tuple(r) for r in await db.fetchall(records)]
        got = [tuple(r) for r in await db.fetchall(totals)]
        assert got == expected, what


@pytest.fixture
async def writers(pg_url: str) -> AsyncIterator[list[PostgresDatabase]]:
    """Four instances' databases (pools of their own) on one schema."""
    made = [await PostgresDatabase.connect(pg_url) for _ in range(4)]
    yield made
    for db in made:
        await db.close()


class _HeldBeforeFold(RequestLog):
    """A writer whose transaction stops after its insert, before its fold, until told."""

    def __init__(self, db: PostgresDatabase) -> None:
        super().__init__(db)
        self.inside = asyncio.Event()
        self.go = asyncio.Event()

    async def also(self) -> None:
        self.inside.set()
        await self.go.wait()
        await super().also()


async def test_a_writer_does_not_wait_for_another_nor_fold_its_records(
        writers: list[PostgresDatabase]) -> None:
    """One writer's transaction is open (records stored, not yet folded) while another
    writes and folds the same hours and commits: the second does not wait for the first,
    the first's fold does not count the second's records, and the totals are the records."""
    rng = random.Random(1)
    first, second = _HeldBeforeFold(writers[0]), RequestLog(writers[1])
    for n in range(300):
        first.add(_record(0, n, rng))
        second.add(_record(1, n, rng))
    held = asyncio.create_task(first.flush())
    try:
        await asyncio.wait_for(first.inside.wait(), 10)
        # an instance holding the old writers' lock no longer holds anyone up either
        async with writers[2].transaction():
            await writers[2].fetchone("SELECT pg_advisory_xact_lock(hashtext('request_log'))")
            assert await asyncio.wait_for(second.flush(), 10) == 300
    finally:
        first.go.set()
    assert await held == 300
    assert first.pending == second.pending == 0
    row = await writers[0].fetchone("SELECT COUNT(*) FROM request_log")
    assert row[0] == 600
    await _assert_totals_are_the_records(writers[0])


async def test_writers_adding_to_the_same_hours_at_once_neither_deadlock_nor_miscount(
        writers: list[PostgresDatabase]) -> None:
    """Four instances flush 500 records each at once, four rounds, into the same hours
    and groups, each its records in its own order: every flush succeeds the first time
    (a deadlock would fail one), and the totals are the records, exactly."""
    rng = random.Random(2)
    logs = [RequestLog(db) for db in writers]
    sent = 0
    for round_ in range(4):
        for w, log in enumerate(logs):
            records = [_record(w, round_ * 1000 + n, rng) for n in range(500)]
            rng.shuffle(records)
            for record in records:
                log.add(record)
        written = await asyncio.gather(*(log.flush() for log in logs))
        sent += 2000
        assert written == [500] * 4, (round_, written)
    assert all(log.pending == 0 and log.dropped == 0 for log in logs)
    row = await writers[0].fetchone("SELECT COUNT(*) FROM request_log")
    assert row[0] == sent
    await _assert_totals_are_the_records(writers[0])


async def test_a_batch_whose_commit_acknowledgement_was_lost_adds_nothing_twice(
        pg_url: str, proxy: Proxy, writers: list[PostgresDatabase]) -> None:
    """The server commits the batch, the answer never arrives (the connection drops):
    the writer keeps the batch and writes it again; neither the records nor the totals
    count it twice, and another writer's batch in between is counted once too."""
    db = await PostgresDatabase.connect(
        through(pg_url, proxy, connect_timeout=2, command_timeout=5))
    try:
        rng = random.Random(3)
        log, other = RequestLog(db), RequestLog(writers[0])
        for n in range(500):
            log.add(_record(0, n, rng))
        proxy.lose_answer_to(COMMIT)
        assert await log.flush() == 0  # as far as it knows, nothing was stored
        assert log.pending == 500 and log.dropped == 0
        row = await writers[0].fetchone("SELECT COUNT(*) FROM request_log")
        assert row[0] == 500  # but the server committed it
        for n in range(200):
            other.add(_record(1, n, rng))
        assert await other.flush() == 200
        assert await log.flush() == 500  # the retry
        row = await writers[0].fetchone("SELECT COUNT(*) FROM request_log")
        assert row[0] == 700
        await _assert_totals_are_the_records(writers[0])
    finally:
        await db.close()


async def test_the_server_ends_what_a_dead_or_hung_client_left_open(pg_url: str) -> None:
    """A writer that hangs mid-transaction holds the totals' rows it added to: the server
    ends its transaction within a minute, and drops a dead host's connection."""
    db = await PostgresDatabase.connect(pg_url)
    try:
        settings = {name: (await db.fetchone(f"SHOW {name}"))[0] for name in (
            "idle_in_transaction_session_timeout", "tcp_keepalives_idle",
            "tcp_keepalives_interval", "tcp_keepalives_count")}
    finally:
        await db.close()
    # (over a unix socket the server reports 0 for the keepalives: the tests use TCP)
    assert settings == {"idle_in_transaction_session_timeout": "1min",
                        "tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10",
                        "tcp_keepalives_count": "3"}
    db = await PostgresDatabase.connect(f"{pg_url}&idle_in_transaction_session_timeout=5s")
    try:  # the URL's own setting wins
        row = await db.fetchone("SHOW idle_in_transaction_session_timeout")
        assert row[0] == "5s"
    finally:
        await db.close()
