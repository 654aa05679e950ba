"""Usage records beyond chat: embeddings, token counts, failures and fallbacks, bodies,
keys that keep no records, the bounded buffer and retention.

(Chat token counts across every client API and provider type are in
``tests/conformance/test_usage.py``; SIGTERM under load in ``tests/test_shutdown.py``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
import weakref
from collections.abc import AsyncIterator
from enum import IntEnum
from typing import Any

import orjson
import pytest
from fakes import openai_upstream
from fakes.anthropic_upstream import FakeAnthropic
from fakes.openai_upstream import FakeOpenAI
from storage_support import statements

from omniroute.appkeys import PIPELINE
from omniroute.formats.canonical import token_count
from omniroute.formats.openai import OpenAIFormat
from omniroute.pipeline import RequestContext, Stage, StageRun
from omniroute.pipeline.bodylog import REDACTED, TRUNCATED, BodyLog
from omniroute.pipeline.usage import complete, format_cost, usage_headers
from omniroute.redact import redact_text as redact
from omniroute.storage import Database, RequestLog, RequestRecord, buffered
from omniroute.tokens import estimate_text

HI = [{"role": "user", "content": "hi there"}]


async def last_record(gw: Any) -> dict[str, Any]:
    await gw.log.flush()
    rows = await gw.log.recent(1)
    assert rows, "no record"
    return rows[0]


def attempt_log(record: dict[str, Any]) -> list[tuple[str, str | None, int | None]]:
    return [(t["target"].split(" ")[0], t["failure"], t["status"])
            for t in orjson.loads(record["attempt_log"])]


# ---------------------------------------------------------------------- embeddings, counts


async def test_an_embeddings_request_has_a_record(gw: Any) -> None:
    resp = await gw.client.post("/v1/embeddings", json={
        "model": "up/text-embedding-3-small", "input": ["hello world", "again"]})
    assert resp.status == 200, await resp.text()
    record = await last_record(gw)
    assert record["endpoint"] == "embeddings" and record["client_format"] == "openai"
    assert (record["provider"], record["model"]) == ("up", "text-embedding-3-small")
    assert record["prompt_tokens"] == (await resp.json())["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == 0 and not record["usage_estimated"]
    assert record["ttfc_ms"] is None and record["latency_ms"] > 0
    assert attempt_log(record) == [("up/text-embedding-3-small", None, 200)]


@pytest.fixture
async def claude(gw: Any, aiohttp_server: Any) -> FakeAnthropic:
    fake = FakeAnthropic(api_key="ant-key")
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "anthropic", "name": "fake-anthropic", "prefix": "claude",
                           "base_url": str(server.make_url("")), "api_key": "ant-key"})
    return fake


async def test_a_token_count_has_a_record_counted_or_estimated(gw: Any, claude: Any) -> None:
    resp = await gw.client.post("/v1/messages/count_tokens", json={
        "model": "claude/claude-sonnet-4-6", "messages": HI})
    assert resp.status == 200 and resp.headers["X-OmniRoute-Token-Count"] == "upstream"
    record = await last_record(gw)
    assert record["endpoint"] == "messages.count_tokens"
    assert (record["client_format"], record["provider"], record["status"]) == (
        "anthropic", "claude", 200)
    assert record["prompt_tokens"] is None  # counting spends no tokens
    assert attempt_log(record) == [("claude/claude-sonnet-4-6", None, 200)]

    # an OpenAI-compatible target cannot count in Anthropic's format: the local estimate
    resp = await gw.client.post("/v1/messages/count_tokens", json={
        "model": "up/gpt-4o-mini", "messages": HI})
    assert resp.status == 200 and resp.headers["X-OmniRoute-Token-Count"] == "estimate"
    record = await last_record(gw)
    assert record["status"] == 200 and record["provider"] is None
    assert attempt_log(record) == [("up/gpt-4o-mini", "InvalidRequest", 400)]


# ---------------------------------------------------------------------- failures, fallback


@pytest.fixture
async def second(gw: Any, aiohttp_server: Any) -> FakeOpenAI:
    """A second account under the same prefix: the fallback of the first."""
    fake = FakeOpenAI(api_key="sk-second")
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "openai", "name": "second", "prefix": "up", "priority": 1,
                           "base_url": str(server.make_url("/v1")), "api_key": "sk-second"})
    return fake


async def test_a_fallback_is_in_the_attempt_log(gw: Any, second: Any) -> None:
    gw.fake.script.append(openai_upstream.error(500, "boom"))
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI})
    assert resp.status == 200
    record = await last_record(gw)
    assert record["error_class"] is None and record["attempts"] == 2
    tries = orjson.loads(record["attempt_log"])
    assert [(t["target"], t["failure"], t["status"]) for t in tries] == [
        ("up/gpt-4o-mini (fake)", "UpstreamStatusError", 500),
        ("up/gpt-4o-mini (second)", None, 200)]
    assert all(t["ms"] >= 0 for t in tries)
    assert "boom" in tries[0]["error"] and "error" not in tries[1]  # why the first failed


async def test_a_failed_fallback_has_its_error_class_and_every_attempt(
        gw: Any, second: Any) -> None:
    gw.fake.script.append(openai_upstream.error(500, "boom"))
    second.script.append(openai_upstream.error(503, "busy"))
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI})
    assert resp.status == 503
    record = await last_record(gw)
    assert (record["status"], record["error_class"]) == (503, "ServiceUnavailable")
    assert "All 2 targets" in record["error"]
    assert attempt_log(record) == [("up/gpt-4o-mini", "UpstreamStatusError", 500),
                                   ("up/gpt-4o-mini", "UpstreamStatusError", 503)]
    assert "X-OmniRoute-Tokens-In" not in resp.headers


async def test_a_stream_that_breaks_records_the_upstreams_error(gw: Any) -> None:
    gw.fake.script.append(openai_upstream.mid_stream_error(3))
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI, "stream": True})
    await resp.read()
    record = await last_record(gw)
    assert (record["status"], record["error_class"]) == (502, "UpstreamError")
    assert attempt_log(record) == [("up/gpt-4o-mini", "UpstreamError", 502)]


async def test_a_client_mistake_is_recorded_with_its_class(gw: Any) -> None:
    resp = await gw.client.post("/v1/chat/completions", json={"model": "nope/x", "messages": HI})
    assert resp.status == 400
    record = await last_record(gw)
    assert (record["status"], record["error_class"]) == (400, "ModelNotFound")
    assert record["attempt_log"] is None and record["client_format"] == "openai"


# ---------------------------------------------------------------------- headers


def test_cost_is_written_in_plain_decimals() -> None:
    assert format_cost(0.000123456789) == "0.0001234568"
    assert format_cost(12.5) == "12.5"
    assert format_cost(0.0) == "0.0"
    assert format_cost(3e-7) == "0.0000003"


def test_a_json_answer_carries_cost_tokens_and_latency() -> None:
    record = RequestRecord("r", 0.0, "chat.completions", prompt_tokens=12,
                           completion_tokens=3, ttfb_ms=41.6, cost_usd=0.00042)
    headers: dict[str, str] = {}
    usage_headers(record, headers)
    assert headers == {"X-OmniRoute-Response-Cost": "0.00042", "X-OmniRoute-Tokens-In": "12",
                       "X-OmniRoute-Tokens-Out": "3", "X-OmniRoute-Latency-Ms": "42"}
    headers = {}
    usage_headers(RequestRecord("r", 0.0, "x", ttfb_ms=1.0), headers)
    assert headers == {"X-OmniRoute-Latency-Ms": "1"}  # unknown counts and cost: left out


async def test_a_json_answer_has_the_usage_headers(gw: Any) -> None:
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI})
    usage = (await resp.json())["usage"]
    assert resp.headers["X-OmniRoute-Tokens-In"] == str(usage["prompt_tokens"])
    assert resp.headers["X-OmniRoute-Tokens-Out"] == str(usage["completion_tokens"])
    assert int(resp.headers["X-OmniRoute-Latency-Ms"]) >= 0
    from genai_prices import Usage, calc_price

    listed = calc_price(Usage(input_tokens=usage["prompt_tokens"],
                              output_tokens=usage["completion_tokens"]),
                        "gpt-4o-mini", provider_id="openai").total_price
    assert float(resp.headers["X-OmniRoute-Response-Cost"]) == pytest.approx(float(listed),
                                                                             abs=1e-10)
    gw.fake.models.append("unpriced-model")
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/unpriced-model", "messages": HI})
    assert resp.status == 200 and "X-OmniRoute-Tokens-In" in resp.headers
    assert "X-OmniRoute-Response-Cost" not in resp.headers  # no price known: no header


# ---------------------------------------------------------------------- bodies


def test_redaction_removes_credentials_and_keeps_counts() -> None:
    text = orjson.dumps({
        "api_key": "hunter2-secret", "apiKey": "abc", "x-api-key": "k1", "password": "pw",
        "client_secret": "cs", "access_token": "tok", "key": "kkk", "authorization": "Basic x",
        "max_tokens": 100, "input_tokens": 5, "monkey": "banana", "thoughtSignature": "sig",
        "content": "use sk-proj-ABCDEFGHIJKLMNOP1234 or Bearer abc.def-ghi_123 and "
                   "AIzaSyA1234567890abcdefghijklmnopqrstu and "
                   "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig_nature",
    }).decode()
    out = orjson.loads(redact(text))
    for name in ("api_key", "apiKey", "x-api-key", "password", "client_secret", "access_token",
                 "key", "authorization"):
        assert out[name] == REDACTED, name
    assert (out["max_tokens"], out["input_tokens"], out["monkey"]) == (100, 5, "banana")
    assert out["thoughtSignature"] == REDACTED  # a signature is masked, whatever it signs
    for secret in ("sk-proj", "abc.def", "AIzaSy", "eyJhbGci"):
        assert secret not in out["content"], secret
    assert out["content"].count(REDACTED) == 4 and "Bearer [REDACTED]" in out["content"]


@pytest.mark.parametrize("piece", ['a":"', 'a\\":"', "eyJ-", "Bearer  "])
def test_redacting_an_adversarial_body_is_linear(piece: str) -> None:
    """A prompt of quote-heavy text once made redaction take half a second per body."""
    text = piece * (64 * 1024 // len(piece))
    bodies = (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}),
              text.encode(), b"data: " + orjson.dumps({"x": text}) + b"\n\n")
    log = BodyLog(64 * 1024)
    for raw in bodies:  # CPU time: a busy machine does not make it fail (quadratic: ~500 ms)
        started = time.process_time()
        log.text(raw)
        elapsed = time.process_time() - started
        assert elapsed < 0.15, f"{elapsed * 1000:.0f} ms of CPU for {raw[:30]!r}"


def test_a_body_is_cut_to_the_cap_after_redaction() -> None:
    raw = b'{"messages": "' + b"x" * 95 + b'", "api_key": "sk-' + b"s" * 40 + b'"}'
    text = BodyLog(100).text(raw)
    assert text.endswith(TRUNCATED) and len(text) == 100 + len(TRUNCATED)
    assert "sss" not in text  # the secret straddled the cut: redacted before cutting
    assert BodyLog(1000).text(b'{"a": 1}') == '{"a":1}'  # JSON is parsed, redacted, rewritten


async def test_bodies_are_stored_only_when_asked_and_redacted(gw: Any) -> None:
    body = {"model": "up/gpt-4o-mini", "messages": [
        {"role": "user", "content": "my key is sk-live-0123456789abcdefXYZ, hi there"}]}
    assert (await gw.client.post("/v1/chat/completions", json=body)).status == 200
    record = await last_record(gw)
    assert record["request_body"] is None and record["response_body"] is None  # off by default

    await gw.set_settings(log_bodies=True, log_body_max_bytes=4096)
    assert (await gw.client.post("/v1/chat/completions", json=body)).status == 200
    record = await last_record(gw)
    assert "sk-live" not in record["request_body"] and REDACTED in record["request_body"]
    assert orjson.loads(record["request_body"])["model"] == "up/gpt-4o-mini"
    assert orjson.loads(record["response_body"])["choices"][0]["message"]["content"]

    resp = await gw.client.post("/v1/chat/completions", json={**body, "stream": True})
    streamed = await resp.read()
    record = await last_record(gw)
    assert record["response_body"] == redact(streamed.decode())  # as the client got it


# ---------------------------------------------------------------------- keys without records


class Finished(StageRun):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def finished(self, ctx: RequestContext) -> None:
        self.seen.append(ctx.record.completion_tokens)


class Watching(Stage):
    name = "test-finished"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def enter(self, ctx: RequestContext, operation: Any) -> StageRun:
        return Finished(self.seen)


async def test_a_key_that_keeps_no_records_leaves_none_but_stages_still_see_it(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = Watching()
    gw.client.app[PIPELINE].stages.append(stage)
    key = await gw.create_key("private")
    scheme = gw.auth_schemes["api-key"]
    real = scheme.authenticate

    async def private(request: Any) -> Any:  # the key index sets this from api_keys.log_usage
        principal = await real(request)
        return principal and dataclasses.replace(principal, log_usage=False)

    monkeypatch.setattr(scheme, "authenticate", private)
    before = len(await gw.log.recent(1000))
    resp = await gw.client.post("/v1/chat/completions", headers={
        "Authorization": f"Bearer {key}"}, json={"model": "up/gpt-4o-mini", "messages": HI})
    assert resp.status == 200
    await gw.log.flush()
    assert len(await gw.log.recent(1000)) == before  # no record
    assert stage.seen and stage.seen[-1] > 0  # budgets still count the spend
    used = [k for k in await gw.store.list_keys() if k.name == "private"]
    assert used[0].last_used_at is not None  # the key's last use is still noted


# ---------------------------------------------------------------------- buffer, retention


def _record(i: int, ts: float = 1000.0) -> RequestRecord:
    return RequestRecord(request_id=f"r{i}", ts=ts + i, endpoint="chat.completions", status=200)


def test_a_full_buffer_drops_the_oldest_and_counts_them(db: Database) -> None:
    log = RequestLog(db, max_pending=3)
    for i in range(5):
        log.add(_record(i))
    assert (log.pending, log.dropped) == (3, 2)
    assert [row[0] for row in log._pending] == ["r2", "r3", "r4"]


async def test_ten_thousand_records_are_written_in_batches(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue: records for 10,000 requests written within 2 s, in batches (a few
    transactions of many rows, not one per record)."""
    log = RequestLog(db)
    for i in range(10_000):
        log.add(_record(i))
    batches: list[int] = []
    real = log.write  # (the batch's insert, whatever the backend runs it as)

    async def spy(sql: str, rows: Any) -> None:
        if sql.startswith("INSERT INTO request_log"):
            batches.append(len(rows))
        await real(sql, rows)

    monkeypatch.setattr(log, "write", spy)
    started = time.perf_counter()
    assert await log.flush() == 10_000 and log.pending == 0
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"10,000 records took {elapsed:.2f} s"
    assert batches == [buffered.WRITE_BATCH] * (10_000 // buffered.WRITE_BATCH)
    assert (await db.fetchone("SELECT count(*) FROM request_log"))[0] == 10_000


async def test_retention_by_age_and_by_rows_in_small_batches(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buffered, "PRUNE_BATCH", 4)
    now = 1_000_000.0
    log = RequestLog(db, clock=lambda: now)
    log.retention_days, log.max_rows = 1.0, 0
    for i in range(10):
        log.add(_record(i, ts=now - 3 * 86400))  # three days old
    for i in range(10, 30):
        log.add(_record(i, ts=now - 60))
    await log.flush()
    deletes: list[str] = []
    real = db.execute

    async def spy(sql: str, params: Any = ()) -> int:
        if sql.startswith("DELETE"):
            deletes.append(sql)
        return await real(sql, params)

    monkeypatch.setattr(db, "execute", spy)
    assert await log.prune() == 10
    log_deletes = [sql for sql in deletes if "request_log" in sql]
    assert len(log_deletes) == 3  # 4 + 4 + 2: small batches, never one large DELETE
    # the hourly and daily totals of those three-day-old records went with them
    rolled = await db.fetchall("SELECT period, SUM(requests) FROM usage_rollup GROUP BY 1")
    assert {r[0]: r[1] for r in rolled} == {3600: 20, 86400: 20}
    log.retention_days, log.max_rows = 0.0, 15
    assert await log.prune() == 5
    rows = await db.fetchall("SELECT request_id FROM request_log ORDER BY id")
    assert [r[0] for r in rows] == [f"r{i}" for i in range(15, 30)]  # the newest kept
    assert log.pruned == 15
    # the row bound leaves the totals: they outlive the records it pruned
    rolled = await db.fetchall("SELECT period, SUM(requests) FROM usage_rollup GROUP BY 1")
    assert {r[0]: r[1] for r in rolled} == {3600: 20, 86400: 20}
    log.max_rows = 0  # 0: no bound
    assert await log.prune() == 0


async def test_the_row_bound_is_counted_only_when_the_ids_span_more_than_it(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the bound, prune reads two index ends, not every row (the OFFSET that finds
    the bound reads one index entry a row: a million at the default bound); ids with
    gaps (a PostgreSQL sequence) still keep exactly the newest max_rows."""
    log = RequestLog(db, clock=lambda: 1_000_000.0)
    log.retention_days, log.max_rows = 0.0, 10
    for i in range(8):
        log.add(_record(i, ts=1_000_000.0 - 60))
    await log.flush()
    seen = statements(monkeypatch, db, "fetchone")
    assert await log.prune() == 0
    assert not [sql for sql in seen if "OFFSET" in sql]
    # ids 6..20 with a gap at 12: 14 rows over 15 ids; the newest 10 reach down to id 10
    await db.execute("DELETE FROM request_log WHERE id <= 5")
    for i in range(8, 20):
        log.add(_record(i, ts=1_000_000.0 - 60))
    await log.flush()
    await db.execute("DELETE FROM request_log WHERE request_id = 'r11'")
    assert await log.prune() == 4
    assert [sql for sql in seen if "OFFSET" in sql]
    rows = await db.fetchall("SELECT request_id FROM request_log ORDER BY id")
    assert [r[0] for r in rows] == ["r9", "r10", *(f"r{i}" for i in range(12, 20))]


async def test_retention_runs_in_the_background(db: Database) -> None:
    log = RequestLog(db, interval=0.01, prune_every=0.05, clock=lambda: 100 * 86400.0)
    log.add(_record(1, ts=0.0))
    log.start()
    try:
        for _ in range(200):
            if log.pruned:
                break
            await asyncio.sleep(0.01)
        assert log.pruned == 1
    finally:
        await log.close()


async def test_health_shows_the_buffer(gw: Any) -> None:
    gw.log.dropped = 7
    health = await (await gw.client.get("/api/monitoring/health")).json()
    assert health["request_log"]["dropped"] == 7
    assert {"pending", "written", "enabled", "pruned"} <= set(health["request_log"])


async def test_a_long_stream_without_usage_is_estimated_from_its_kept_start(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    text = " ".join(f"word{i}" for i in range(300))
    no_usage = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    body = {"model": "up/gpt-4o-mini", "messages": HI, "stream": True}
    counts = []
    for keep in (1 << 20, 600):  # everything kept; only about a tenth of the stream kept
        monkeypatch.setattr("omniroute.pipeline.chat.KEEP_BYTES", keep)
        gw.fake.script.append(openai_upstream.reply(text=text, chunks=30, usage=no_usage))
        await (await gw.client.post("/v1/chat/completions", json=body)).read()
        record = await last_record(gw)
        assert record["usage_estimated"] == 1
        counts.append(record["completion_tokens"])
    whole, scaled = counts
    assert whole > 250 and abs(scaled - whole) / whole < 0.3, counts  # scaled by the size


# ---------------------------------------------------------------------- what a stream keeps


def openai_format() -> OpenAIFormat:
    return OpenAIFormat()


async def test_a_translated_stream_keeps_a_bounded_text_for_its_estimate() -> None:
    from omniroute.formats import canonical as c
    from omniroute.pipeline.usage import KEEP_BYTES, StreamOutput
    piece = "word " * 200  # 1000 characters

    async def events() -> AsyncIterator[c.Event]:
        for _ in range(1000):  # a million characters, and no usage
            yield c.TextDelta(index=0, text=piece)

    record = RequestRecord("r", 0.0, "chat")
    output = StreamOutput(record, time.perf_counter(), openai_format(),
                          request=c.Request(model="m", messages=[]))
    async for _ in output.events(events()):
        pass
    assert sum(map(len, output.texts)) <= KEEP_BYTES + len(piece)
    await output.estimate()
    whole = estimate_text(piece) * 1000
    assert record.usage_estimated and abs(record.completion_tokens - whole) <= whole * 0.01


async def test_a_pass_through_stream_lets_its_frames_go_once_usage_came() -> None:
    from omniroute.pipeline.chat import _Passthrough
    from omniroute.pipeline.context import Reply
    from omniroute.pipeline.usage import StreamOutput

    def frame(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    content = frame({"id": "c", "object": "chat.completion.chunk", "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "hi"}}]})
    usage = frame({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})

    async def reads(after_usage: list[bytes]) -> AsyncIterator[bytes]:
        yield content
        yield usage
        for read in after_usage:
            yield read

    record = RequestRecord("r", 0.0, "chat")
    fmt = openai_format()
    output = StreamOutput(record, time.perf_counter(), fmt)
    out = [c async for c in _Passthrough(fmt, Reply(), output, reads([content]), None)]
    assert out == [content, usage, content]  # passed on unchanged
    assert (record.prompt_tokens, record.completion_tokens) == (3, 5)
    assert output.frames == []  # no estimate will be needed: nothing kept

    record = RequestRecord("r", 0.0, "chat")
    output = StreamOutput(record, time.perf_counter(), fmt)

    async def no_usage() -> AsyncIterator[bytes]:
        yield content + content

    _ = [c async for c in _Passthrough(fmt, Reply(), output, no_usage(), None)]
    assert output.frames == [content + content]  # kept for the estimate
    await output.estimate()  # the kept block is cut into its frames and decoded
    assert record.usage_estimated and record.completion_tokens


async def test_a_pass_through_block_is_read_after_it_is_written() -> None:
    """The client does not wait for the side reading: a block is read once the relay
    asks for the next one, or when the stream is closed as it was written."""
    from omniroute.pipeline.chat import _Passthrough
    from omniroute.pipeline.context import Reply
    from omniroute.pipeline.usage import StreamOutput

    def frame(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    usage = frame({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})

    async def reads() -> AsyncIterator[bytes]:
        yield usage
        yield usage

    record = RequestRecord("r", 0.0, "chat")
    fmt = openai_format()
    output = StreamOutput(record, time.perf_counter(), fmt)
    frames = _Passthrough(fmt, Reply(), output, reads(), None)
    assert await frames.__anext__() == usage
    assert record.prompt_tokens is None  # not read yet: it is being written
    await frames.aclose()  # the client left as it was written: its usage still counts
    assert (record.prompt_tokens, record.completion_tokens) == (3, 5)


async def test_a_finished_pass_through_stream_is_freed_without_the_garbage_collector() -> None:
    """The side reading refers to the reply, whose frames are the stream: once the
    stream ends that reference is let go, so no cycle is left for the collector."""
    from omniroute.pipeline.chat import _Passthrough
    from omniroute.pipeline.context import Reply
    from omniroute.pipeline.usage import StreamOutput

    block = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'

    async def reads() -> AsyncIterator[bytes]:
        yield block

    fmt = openai_format()
    gc.collect()
    gc.disable()
    try:
        upstream = reads()
        gone = weakref.ref(upstream)
        reply = Reply()
        output = StreamOutput(RequestRecord("r", 0.0, "chat"), time.perf_counter(), fmt)
        reply.frames = _Passthrough(fmt, reply, output, upstream, None)
        assert [c async for c in reply.frames] == [block]
        await reply.frames.aclose()  # type: ignore[attr-defined]
        del upstream, reply, output
        assert gone() is None  # freed as its last reference went, not by a collection
    finally:
        gc.enable()


@pytest.mark.parametrize(("tokens", "latency", "ttfc", "stream", "rate"), [
    (7, 3.0, None, False, 2333.33),  # 2333.333...
    (1, 0.8, None, False, 1250.0),
    (1, 3.2, None, False, 312.5),  # a half: up
    (200, 1000.0, 200.0, True, 250.0),  # a stream: from its first content token on
    (200, 100.0, 100.0, True, 2000.0),  # no time after it: over the whole request
])
def test_the_output_rate_is_tokens_a_second_to_a_hundredth(
        tokens: int, latency: float, ttfc: float | None, stream: bool, rate: float) -> None:
    from types import SimpleNamespace

    record = RequestRecord(request_id="r", ts=0.0, endpoint="chat.completions", status=200,
                           completion_tokens=tokens, latency_ms=latency, ttfc_ms=ttfc,
                           stream=stream)
    complete(SimpleNamespace(record=record, tries=None), None)  # type: ignore[arg-type]
    assert record.tokens_per_s == rate


@pytest.mark.parametrize(("value", "count"), [
    (0, 0), (27, 27), (2**53 - 1, 2**53 - 1), (2**53, None), (2**64, None), (-1, None),
    (True, None), (False, None), (1.0, None), ("3", None), (None, None)])
def test_only_a_plausible_token_count_is_recorded(value: Any, count: int | None) -> None:
    class Tokens(IntEnum):  # an int of another type is taken as its number
        SOME = 5

    assert token_count(value) == count and type(token_count(value)) is type(count)
    assert token_count(Tokens.SOME) == 5
