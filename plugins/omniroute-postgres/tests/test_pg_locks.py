"""Another process's transaction holding the request log writer's lock (an instance that
crashed or hung mid-flush): the writer gives up within its lock timeout and keeps its
records, and the server ends such a transaction by itself."""

from __future__ import annotations

import time

import asyncpg
from omniroute.storage import RequestLog, RequestRecord

from omniroute_postgres import PostgresDatabase
from omniroute_postgres.database import split_url


async def test_a_writer_waits_a_bounded_time_for_the_request_log_lock(pg_url: str) -> None:
    db = await PostgresDatabase.connect(pg_url)
    other = await asyncpg.connect(split_url(pg_url)[0], timeout=5)
    try:
        db.lock_timeout = 0.3
        log = RequestLog(db)
        log.add(RequestRecord(request_id="locked-0", ts=1000.0, endpoint="chat", status=200))
        held = other.transaction()  # left open mid-flush, as by an instance that hung
        await held.start()
        await other.execute("SELECT pg_advisory_xact_lock(hashtext('request_log'))")
        began = time.monotonic()
        assert await log.flush() == 0
        assert time.monotonic() - began < 3.0
        assert log.pending == 1 and log.dropped == 0  # kept for the next turn
        await held.rollback()
        assert await log.flush() == 1
        row = await db.fetchone("SELECT COUNT(*) FROM request_log")
        assert row[0] == 1
        # the lock's bound is the lock's own: the transaction's setting is as it was
        async with db.transaction():
            await db.lock("request_log")
            row = await db.fetchone("SELECT current_setting('lock_timeout')")
            assert row[0] == "0"
    finally:
        await other.close(timeout=5)
        await db.close()


async def test_the_server_ends_what_a_dead_or_hung_client_left_open(pg_url: str) -> None:
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
