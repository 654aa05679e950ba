"""The hourly and daily usage totals: kept by the request log's writer, filled by the
migration, and read by summaries that agree with the records they stand for."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from omniroute.storage import Database, RequestLog, RequestRecord, rollup
from omniroute.storage.migrations import MIGRATIONS
from omniroute.storage.requestlog import record_row
from omniroute.storage.usage import UsageFilter, UsageQueries

DAY, HOUR = 86400.0, 3600.0
#: midnight UTC, 2024-05-01
T0 = 1714521600.0
FIELDS = ("requests", "errors", "tokens_in", "tokens_out", "cache_read_tokens",
          "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds", "characters",
          "cost_usd", "list_cost_usd", "saved_usd", "saved_by_cache_usd",
          "saved_by_subscription_usd", "cache_hits", "avg_latency_ms")


def make_records(n: int, seed: int = 7) -> list[RequestRecord]:
    """``n`` records over five days, every field that a total reads varied (NULLs too)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        status = rng.choice([200] * 8 + [429, 502])
        sub = rng.random() < 0.1
        hit = not sub and rng.random() < 0.1
        cost = None if rng.random() < 0.05 else round(rng.random() / 100, 6)
        records.append(RequestRecord(
            request_id=f"r{i}", ts=T0 + rng.random() * 5 * DAY, endpoint="chat", status=status,
            api_key_id=rng.choice(["key_a", "key_b", None]),
            provider=rng.choice(["up", "other", None]),
            connection_id=rng.choice(["conn_a", "conn_b", None]),
            model=rng.choice(["m1", "m2", "m3"]),
            prompt_tokens=rng.choice([None, rng.randrange(1000)]),
            completion_tokens=rng.randrange(100), cached_tokens=rng.randrange(10),
            cache_write_tokens=rng.choice([None, 3]), reasoning_tokens=rng.randrange(5),
            images=rng.choice([None, None, 1, 4]),
            audio_seconds=rng.choice([None, None, round(rng.random() * 30, 3)]),
            characters=rng.choice([None, None, rng.randrange(2000)]),
            latency_ms=rng.choice([None, float(rng.randrange(1, 900))]),
            cost_usd=0.0 if (sub or hit) else cost,
            list_cost_usd=round(rng.random() / 50, 6) if (sub or hit) else None,
            cache_hit=hit,
            error_class="StreamBroken" if status == 200 and rng.random() < 0.03 else None))
    return records


def expected(records: list[RequestRecord], where: UsageFilter) -> dict[str, Any]:
    """The totals, computed the slow way from the records themselves."""
    def keep(r: RequestRecord) -> bool:
        failed = r.status >= 400 or r.error_class is not None
        return ((where.since is None or r.ts >= where.since)
                and (where.until is None or r.ts < where.until)
                and where.key in (None, r.api_key_id) and where.model in (None, r.model)
                and where.provider in (None, r.provider)
                and where.connection in (None, r.connection_id)
                and (where.status is None or (where.status == "error") == failed))
    chosen = [r for r in records if keep(r)]
    cost = sum(r.cost_usd or 0 for r in chosen)
    listed = sum(r.list_cost_usd if r.list_cost_usd is not None else (r.cost_usd or 0)
                 for r in chosen)
    by_cache = sum((r.list_cost_usd or 0) - (r.cost_usd or 0) for r in chosen if r.cache_hit)
    timed = [r.latency_ms for r in chosen if r.latency_ms is not None]
    return {
        "requests": len(chosen),
        "errors": sum(r.status >= 400 or r.error_class is not None for r in chosen),
        "tokens_in": sum(r.prompt_tokens or 0 for r in chosen),
        "tokens_out": sum(r.completion_tokens or 0 for r in chosen),
        "cache_read_tokens": sum(r.cached_tokens or 0 for r in chosen),
        "cache_write_tokens": sum(r.cache_write_tokens or 0 for r in chosen),
        "reasoning_tokens": sum(r.reasoning_tokens or 0 for r in chosen),
        "images": sum(r.images or 0 for r in chosen),
        "audio_seconds": sum(r.audio_seconds or 0 for r in chosen),
        "characters": sum(r.characters or 0 for r in chosen),
        "cost_usd": cost, "list_cost_usd": listed, "saved_usd": listed - cost,
        "saved_by_cache_usd": by_cache, "saved_by_subscription_usd": listed - cost - by_cache,
        "cache_hits": sum(r.cache_hit for r in chosen),
        "avg_latency_ms": round(sum(timed) / len(timed), 1) if timed else None,
    }


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name in FIELDS:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


@pytest.fixture
async def filled(db: Database) -> tuple[Database, list[RequestRecord]]:
    records = make_records(3000)
    log = RequestLog(db)
    for r in records:
        log.add(r)
    await log.flush()
    return db, records


async def test_the_writer_keeps_hourly_and_daily_totals(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    db, records = filled
    for period in (rollup.HOUR, rollup.DAY):
        rows = await db.fetchall(
            "SELECT start, SUM(requests), SUM(tokens_out) FROM usage_rollup WHERE period = ? "
            "GROUP BY start ORDER BY start", (period,))
        want: dict[int, list[int]] = {}
        for r in records:
            start = int(r.ts // period) * period
            sums = want.setdefault(start, [0, 0])
            sums[0] += 1
            sums[1] += r.completion_tokens or 0
        assert {row[0]: [row[1], row[2]] for row in rows} == want


async def test_the_writer_keeps_per_minute_totals_of_the_last_hours(db: Database) -> None:
    """The overview's requests per minute come from minute rows the writer adds batch by
    batch; they agree with the records and go MINUTE_KEEP seconds later."""
    now = float(int(T0 + 2 * DAY) // 60 * 60) + 30.0
    rng = random.Random(3)
    records = [dataclasses.replace(r, ts=now - rng.random() * 2 * HOUR)
               for r in make_records(900)]
    log = RequestLog(db, clock=lambda: now)
    for batch in range(3):  # minutes spread over batches: each adds to the same rows
        for r in records[batch::3]:
            log.add(r)
        await log.flush()
    got = {m["ts"]: m for m in await UsageQueries(db).per_minute(now - HOUR)}
    first = int(now - HOUR) // 60 * 60
    for start in range(first, int(now), 60):
        chosen = [r for r in records if start <= r.ts < start + 60]
        want = expected(chosen, UsageFilter())
        if not chosen:
            assert start not in got
            continue
        minute = got[start]
        assert (minute["requests"], minute["errors"]) == (want["requests"], want["errors"])
        assert minute["cost_usd"] == pytest.approx(want["cost_usd"], abs=1e-6)
        assert minute["avg_latency_ms"] == want["avg_latency_ms"]
    assert min(got) >= first
    minutes = "SELECT start FROM usage_dims WHERE period = ?"
    before = len(await db.fetchall(minutes, (rollup.MINUTE,)))
    log.clock = lambda: now + rollup.MINUTE_KEEP - HOUR  # the older of the two hours goes
    await log.prune()
    left = [row[0] for row in await db.fetchall(minutes, (rollup.MINUTE,))]
    assert left and min(left) >= now - HOUR and len(left) < before
    summary = await UsageQueries(db).summary(UsageFilter(since=now - 2 * HOUR - 60))
    assert summary["totals"]["requests"] == len(records)  # hours and days are kept


async def test_a_page_of_failures_reads_the_index_of_failed_records(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    """A request log page filtered by a failure (error, a failing class or status), with
    or without another field, walks the index of failed records only (migration 10)."""
    db, records = filled
    for status in ("error", "5xx", "4xx", "429", "502"):
        for model in (None, "m1"):
            where = UsageFilter(since=T0, until=T0 + 5 * DAY, status=status, model=model)
            clauses, params = where.where()
            if isinstance(db, Database):  # SQLite's plan (PostgreSQL's planner chooses by
                # its statistics, which a freshly filled table does not have yet)
                plan = await db.fetchall(
                    f"EXPLAIN QUERY PLAN SELECT * FROM request_log WHERE "
                    f"{' AND '.join(clauses)} ORDER BY ts DESC, id DESC LIMIT 51", params)
                assert "request_log_failed_ts" in str([tuple(row) for row in plan]), (
                    status, model)
            found, cursor = [], None
            while True:  # every page
                page, cursor = await UsageQueries(db).logs(where, cursor=cursor, limit=100)
                found += [r["request_id"] for r in page]
                if cursor is None:
                    break
            assert sorted(found) == sorted(
                r.request_id for r in records
                if T0 <= r.ts < T0 + 5 * DAY and model in (None, r.model)
                and ((r.status >= 400 or r.error_class is not None) if status == "error" else
                     str(r.status).startswith(status[0]) if status.endswith("xx")
                     else r.status == int(status)))
    if isinstance(db, Database):
        ok = UsageFilter(status="ok").where()
        plan = await db.fetchall(f"EXPLAIN QUERY PLAN SELECT * FROM request_log WHERE "
                                 f"{' AND '.join(ok[0])}", ok[1])
        assert "request_log_failed_ts" not in str([tuple(row) for row in plan])


async def test_summaries_over_any_range_agree_with_the_records(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    """Whole days, whole hours and ragged minutes: the rollup and the records meet at
    the bucket edges without counting a record twice or missing one."""
    db, records = filled
    queries = UsageQueries(db)
    rng = random.Random(3)
    ranges: list[tuple[float | None, float | None]] = [
        (None, None), (T0, T0 + 5 * DAY), (T0 + HOUR, T0 + 2 * DAY),
        (T0 + 1234.5, T0 + 3 * DAY + 77.25), (None, T0 + DAY + 59),
        (T0 + 4 * DAY + 10, None), (T0 + 100, T0 + 200),
    ]
    ranges += [tuple(sorted(rng.uniform(T0 - HOUR, T0 + 5 * DAY) for _ in range(2)))  # type: ignore[misc]
               for _ in range(12)]
    filters = [{}, {"key": "key_a"}, {"model": "m2", "status": "error"},
               {"connection": "conn_b", "provider": "up"}, {"status": "ok"}]
    for since, until in ranges:
        for extra in filters:
            where = UsageFilter(since=since, until=until, **extra)
            want = expected(records, where)
            for bucket in ("day", "hour"):
                body = await queries.summary(where, bucket=bucket)  # type: ignore[arg-type]
                same(body["totals"], want)
                assert sum(t["requests"] for t in body["by_time"]) == want["requests"]
                assert sum(m["requests"] for m in body["by_model"]) == want["requests"]
                assert sum(k["cost_usd"] for k in body["by_key"]) == pytest.approx(
                    want["cost_usd"], abs=1e-6)


async def test_time_buckets_and_groups_match_the_records(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    db, records = filled
    where = UsageFilter(since=T0 + 5000.0, until=T0 + 3 * DAY + 100)
    body = await UsageQueries(db).summary(where, bucket="hour", by=["time", "key"])
    want: dict[float, int] = {}
    for r in records:
        if where.since <= r.ts < where.until:  # type: ignore[operator]
            start = r.ts // HOUR * HOUR
            want[start] = want.get(start, 0) + 1
    assert {t["ts"]: t["requests"] for t in body["by_time"]} == want
    keys = {k["key_id"]: k["requests"] for k in body["by_key"]}
    assert keys == {key: sum(1 for r in records if r.api_key_id == key
                             and where.since <= r.ts < where.until)  # type: ignore[operator]
                    for key in ("key_a", "key_b", None)}


async def test_a_failed_batch_leaves_no_totals(db: Database) -> None:
    """The totals are written in the records' transaction: a rollback takes both."""
    log = RequestLog(db)
    log.add(make_records(1)[0])

    async def refuse() -> None:
        raise db.unavailable[0]("disk I/O error")

    log.also_done = lambda: None  # type: ignore[method-assign]
    original = log.also

    async def also_then_fail() -> None:
        await original()
        await refuse()

    log.also = also_then_fail  # type: ignore[method-assign]
    assert await log.flush() == 0 and log.pending == 1  # kept for the next attempt
    assert (await db.fetchone("SELECT count(*) FROM usage_rollup"))[0] == 0
    assert (await db.fetchone("SELECT count(*) FROM request_log"))[0] == 0
    log.also = original  # type: ignore[method-assign]
    assert await log.flush() == 1
    assert (await db.fetchone("SELECT SUM(requests) FROM usage_rollup WHERE period = 3600"))[0] == 1


@pytest.mark.parametrize("after", [0, 1], ids=["before-the-totals", "with-the-totals"])
async def test_the_migration_fills_the_totals_from_existing_records(
        tmp_path: Path, after: int) -> None:
    """From a database before migration 7 (no totals) and one at 7 (totals without audio
    seconds and characters; 8 remakes them): the totals agree with the records."""
    path = tmp_path / "old.sqlite3"
    before = next(i for i, step in enumerate(MIGRATIONS) if rollup.CREATE[0] in step)
    assert before < len(MIGRATIONS) - 1  # 7 makes the totals, 8 remakes them
    old = await Database.open(path, migrations=MIGRATIONS[:before + after])
    records = make_records(500, seed=11)
    # written as an old gateway's writer would: records only (the totals, if any, stale);
    # that schema has no unique request id yet (migration 9): a plain insert
    insert = RequestLog.insert.removesuffix(" ON CONFLICT(ts, request_id) DO NOTHING")
    await old.executemany(insert, [record_row(r) for r in records])
    await old.close()
    db = await Database.open(path)
    try:
        assert await db.schema_version() == len(MIGRATIONS)
        body = await UsageQueries(db).summary(UsageFilter(since=T0 + 999, until=T0 + 4 * DAY))
        same(body["totals"], expected(records, UsageFilter(since=T0 + 999, until=T0 + 4 * DAY)))
    finally:
        await db.close()


def test_plan_covers_a_range_once_coarsest_first() -> None:
    day, hour = int(DAY), int(HOUR)
    segments = rollup.plan(T0 + 90.0, T0 + 2 * DAY + hour + 30)
    assert [(s.since - T0, s.until - T0, s.period) for s in segments] == [
        (90.0, hour, None), (hour, day, hour), (day, 2 * day, day),
        (2 * day, 2 * day + hour, hour), (2 * day + hour, 2 * day + hour + 30, None)]
    assert rollup.plan(T0 + 5, T0 + 10) == [rollup.Segment(T0 + 5, T0 + 10, None)]
    assert rollup.plan(T0, T0) == []
    hourly = rollup.plan(T0, T0 + 2 * DAY, (rollup.HOUR,))
    assert hourly == [rollup.Segment(T0, T0 + 2 * DAY, hour)]


async def test_one_dimension_reads_agree_with_the_records(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    """A read with no filter and one breakdown is served by the per-dimension totals
    (usage_dims); each group agrees with the records it stands for."""
    db, records = filled
    queries = UsageQueries(db)
    columns = {"model": "model", "provider": "provider", "connection": "connection_id",
               "key": "api_key_id"}
    for since, until in ((None, None), (T0 + 1234.5, T0 + 3 * DAY + 77.25),
                         (T0 + HOUR, T0 + 4 * DAY)):
        for dim, field in columns.items():
            body = await queries.summary(UsageFilter(since=since, until=until), by=[dim])
            label = "key_id" if dim == "key" else "connection_id" if dim == "connection" else dim
            got = {row[label]: row for row in body[f"by_{dim}"]}
            values = {getattr(r, field) for r in records}
            assert set(got) == values
            for value in values:
                chosen = [r for r in records if getattr(r, field) == value]
                where = UsageFilter(since=since, until=until)
                want = expected(chosen, where)
                same(got[value], want)


async def test_a_series_has_every_bucket_and_the_top_groups(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    db, records = filled
    where = UsageFilter(since=T0 + 1800.0, until=T0 + 2 * DAY)
    body = await UsageQueries(db).series(where, by="model", metric="requests", bucket="hour",
                                         top=2)
    assert body["buckets"][0] == T0 and body["buckets"][-1] == T0 + 2 * DAY - HOUR
    assert len(body["buckets"]) == 48
    chosen = [r for r in records if where.since <= r.ts < where.until]  # type: ignore[operator]
    counts: dict[str, int] = {}
    for r in chosen:
        counts[r.model or ""] = counts.get(r.model or "", 0) + 1
    top = sorted(counts, key=lambda m: -counts[m])[:2]
    assert [line["key"] for line in body["series"][:2]] == top
    other = body["series"][2]
    assert other["other"] is True and other["total"] == len(chosen) - sum(counts[m] for m in top)
    for line in body["series"][:2]:
        per_hour = [0] * 48
        for r in chosen:
            if r.model == line["key"]:
                per_hour[int((r.ts - T0) // HOUR)] += 1
        assert line["values"] == per_hour
    assert sum(sum(line["values"]) for line in body["series"]) == len(chosen)


async def _every_page(queries: UsageQueries, where: UsageFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page, cursor = await queries.logs(where, cursor=cursor, limit=limit)
        ids += [r["request_id"] for r in page]
        if cursor is None:
            return ids


async def test_filtered_pages_are_narrowed_by_the_hourly_totals_and_miss_nothing(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    """A filter no index serves (model, provider, status) reads only the hours the
    totals say hold matches; paging still returns every match, newest first, once."""
    db, records = filled
    queries = UsageQueries(db)
    for extra in ({"model": "m2"}, {"status": "error"}, {"provider": "other", "status": "429"},
                  {"model": "no-such-model"}, {"status": "5xx"}, {"status": "ok"},
                  {"key": "key_b"}):
        for since, until in ((None, None), (T0 + 5000.5, T0 + 3 * DAY + 17)):
            where = UsageFilter(since=since, until=until, **extra)  # type: ignore[arg-type]
            want = [r for r in sorted(records, key=lambda r: r.ts, reverse=True)
                    if r.request_id and _matches(r, where)]
            for limit in (7, 50):
                assert await _every_page(queries, where, limit) == [r.request_id for r in want]


async def test_a_filtered_page_still_finds_records_when_the_totals_count_pruned_ones(
        filled: tuple[Database, list[RequestRecord]]) -> None:
    db, records = filled
    newest = sorted(records, key=lambda r: r.ts)[-300:]
    # the row bound pruned the others: the hourly totals still count them
    await db.execute("DELETE FROM request_log WHERE ts < ?", (newest[0].ts,))
    where = UsageFilter(model="m2")
    want = [r.request_id for r in sorted(newest, key=lambda r: r.ts, reverse=True)
            if r.model == "m2"]
    assert await _every_page(UsageQueries(db), where, 5) == want


def _matches(r: RequestRecord, where: UsageFilter) -> bool:
    failed = r.status >= 400 or r.error_class is not None
    status = where.status
    status_ok = (status is None or (status == "error" and failed) or (status == "ok" and not failed)
                 or (status.endswith("xx") and r.status // 100 == int(status[0]))
                 or (status.isdigit() and r.status == int(status)))
    return ((where.since is None or r.ts >= where.since)
            and (where.until is None or r.ts < where.until)
            and where.model in (None, r.model) and where.provider in (None, r.provider)
            and where.key in (None, r.api_key_id) and status_ok)


@pytest.mark.parametrize("metric", ["cost_usd", "avg_latency_ms", "saved_usd", "tokens_out"])
async def test_a_series_of_any_metric_agrees_with_the_summary(
        filled: tuple[Database, list[RequestRecord]], metric: str) -> None:
    db, _ = filled
    queries = UsageQueries(db)
    where = UsageFilter(since=T0 + 100.0, until=T0 + 3 * DAY)
    series = await queries.series(where, by="key", metric=metric, bucket="day", top=1)
    summary = await queries.summary(where, bucket="day", by=["time", "key"])
    by_key = {row["key_id"]: row for row in summary["by_key"]}
    top, other = series["series"]
    assert top["total"] == pytest.approx(by_key[top["key"]][metric])
    if metric != "avg_latency_ms":  # sums add up; an average does not
        assert top["total"] + other["total"] == pytest.approx(summary["totals"][metric])
        days = [sum(v or 0 for v in values) for values in zip(top["values"], other["values"],
                                                              strict=True)]
        assert days == pytest.approx([d[metric] for d in summary["by_time"]])


def test_the_writers_fold_adds_to_the_totals_in_key_order() -> None:
    """Writers of several instances fold at once, no lock between them: each upsert takes
    its rows in its conflict key's order, so two writers adding to the same hours lock
    them in one order (in their own orders they could deadlock)."""
    upserts = [s for s in rollup.FOLD if "ON CONFLICT" in s]
    assert len(upserts) == 4  # the days, the hours, the dimensions, the minutes
    for statement in upserts:
        key = statement.split("ON CONFLICT(", 1)[1].split(")", 1)[0].split(", ")
        order = ", ".join(str(i) for i in range(1, len(key) + 1))
        assert f" ORDER BY {order} ON CONFLICT(" in statement, statement
    assert all("request_log " not in s for s in rollup.FOLD)  # only the rows it stored


async def _totals(db: Any) -> dict[str, dict[tuple[Any, ...], list[float]]]:
    out: dict[str, dict[tuple[Any, ...], list[float]]] = {}
    for table, key in (("usage_rollup", 2 + len(rollup.GROUP_COLUMNS)), ("usage_dims", 4)):
        rows = await db.fetchall(f"SELECT * FROM {table}")
        out[table] = {tuple(row)[:key]: list(tuple(row)[key:]) for row in rows}
    return out


def _one_group(records: list[RequestRecord], spacing: float) -> list[RequestRecord]:
    """``records`` as one group's (a served workload's batch), ``spacing`` seconds apart
    from a minute's start."""
    return [dataclasses.replace(r, provider="up", model="m", connection_id="c",
                                api_key_id=None, status=200, cache_hit=0, error=None,
                                error_class=None, ts=T0 + i * spacing)
            for i, r in enumerate(records)]


def _few_groups(records: list[RequestRecord]) -> list[RequestRecord]:
    """``records`` in a few groups (two models, a failure now and then, one with an error
    class), 0.5 s apart: each batch has more than one group and crosses a minute's end."""
    out = []
    for i, r in enumerate(_one_group(records, 0.5)):
        failed = i % 7 == 0
        out.append(dataclasses.replace(
            r, model="m" if i % 2 else "n", status=429 if failed else 200,
            error="busy" if failed else None,
            error_class="RateLimited" if failed and i % 3 == 0 else None))
    return out


@pytest.mark.parametrize("mix", ["varied", "one-group-minutes", "one-group-one-minute",
                                 "few-groups"])
async def test_the_writers_tally_agrees_with_the_fold_in_sql(tmp_path: Path, mix: str) -> None:
    """SQLite's writer adds up the records it stored all of in Python
    (:mod:`omniroute.storage.tally`); the fold in SQL (a retried batch, PostgreSQL) must
    give the same rows, to the last unit: records of many groups, of one group over a
    few minutes a batch, of one group in one minute a batch, and of a few groups over a
    few minutes a batch."""
    records = make_records(2000, seed=11)
    if mix == "few-groups":
        records = _few_groups(records)
    elif mix != "varied":
        records = _one_group(records, 0.5 if mix == "one-group-minutes" else 0.1)
    totals = []
    for tally in (True, False):
        db = await Database.open(tmp_path / f"{tally}.sqlite3")
        insert_new = db.insert_new

        async def forced(*args: Any, _insert: Any = insert_new, _tally: bool = tally,
                         **kwargs: Any) -> bool:
            return bool(await _insert(*args, **{**kwargs, "tally": _tally}))

        db.insert_new = forced  # type: ignore[method-assign]
        log = RequestLog(db)
        for i in range(0, len(records), 300):  # several batches, some runs of plain records
            for r in records[i:i + 300]:
                log.add(dataclasses.replace(r))
            await log.flush()
        totals.append(await _totals(db))
        await db.close()
    tallied, folded = totals
    for table in tallied:
        assert tallied[table].keys() == folded[table].keys()
        for key, sums in tallied[table].items():
            assert sums == pytest.approx(folded[table][key], rel=1e-9, abs=1e-9), (table, key)


async def test_a_batch_partly_stored_already_adds_only_its_new_records(db: Database) -> None:
    """A retried batch whose first commit landed: the rows already there are skipped by the
    insert and not counted again; the new ones are (on SQLite through the fold in SQL)."""
    records = make_records(40, seed=3)
    log = RequestLog(db)
    for r in records[:25]:
        log.add(r)
    await log.flush()
    for r in records:  # 25 again, 15 new
        log.add(dataclasses.replace(r))
    await log.flush()
    row = await db.fetchone("SELECT SUM(requests), SUM(tokens_out) FROM usage_rollup "
                            "WHERE period = ?", (rollup.HOUR,))
    assert row[0] == 40
    assert row[1] == sum(r.completion_tokens or 0 for r in records)
    assert (await db.fetchone("SELECT COUNT(*) FROM request_log"))[0] == 40
