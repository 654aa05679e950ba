"""Idempotency: duplicates of a request (one Idempotency-Key per API key) share one call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from fakes.openai_upstream import FakeOpenAI, error, hang_before_headers, mid_stream_error, slow
from google import genai
from google.genai import errors as genai_errors

from omniroute.appkeys import IDEMPOTENCY
from omniroute.errors import IdempotencyUnavailable
from omniroute.idempotency import SharedAnswer
from omniroute.pipeline.context import Reply
from omniroute.testing import make_test_config, start_harness

UPSTREAM_KEY = "sk-upstream-test"
MODEL = "up/gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]
ANSWER = "Hello! You said: hi"


def calls(fake: FakeOpenAI) -> int:
    return len([r for r in fake.requests if r.path.endswith("/chat/completions")])


def stream_text(raw: bytes) -> str:
    """The text of an OpenAI chat stream, checked to be complete."""
    events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]", raw[-200:]
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def post(gw: Any, body: dict[str, Any], key: str | None, **headers: str) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await gw.client.post("/v1/chat/completions", json=body, headers=headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clock(gw: Any) -> Clock:
    moved = Clock()
    gw.client.app[IDEMPOTENCY].clock = moved
    return moved


@pytest.fixture
async def gwc(aiohttp_client: Any, tmp_path: Path, fake_openai: FakeOpenAI) -> Any:
    """A gateway whose handlers are cancelled when their client leaves, as `omniroute serve`
    runs them (``handler_cancellation=True``)."""
    async def client(app: Any) -> Any:
        return await aiohttp_client(TestServer(app, handler_cancellation=True))

    h = await start_harness(client, make_test_config(tmp_path / "gw"))
    await h.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": fake_openai.base_url, "api_key": UPSTREAM_KEY})
    h.fake = fake_openai
    return h


# ----------------------------------------------------------------------------- coalescing

async def test_100_concurrent_duplicates_half_streaming_make_one_upstream_call(gw: Any) -> None:
    gw.fake.latency = 0.3  # every duplicate arrives while the first is in flight
    gw.fake.delay = 0.02

    async def one(i: int) -> tuple[str, str | None, str]:
        stream = i % 2 == 1
        resp = await post(gw, {"model": MODEL, "messages": HI, "stream": stream}, "k-100")
        assert resp.status == 200, await resp.text()
        if stream:
            assert resp.content_type == "text/event-stream"
            text = stream_text(await resp.read())
        else:
            text = (await resp.json())["choices"][0]["message"]["content"]
        return ("stream" if stream else "json", resp.headers.get("X-OmniRoute-Idempotent"), text)

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert calls(gw.fake) == 1
    assert {text for _, _, text in results} == {ANSWER}  # complete and identical, both forms
    marked = [mark for _, mark, _ in results]
    assert marked.count(None) == 1 and marked.count("true") == 99
    assert sum(kind == "stream" for kind, _, _ in results) == 50
    assert gw.client.app[IDEMPOTENCY].stats()["active_keys"] == 1  # kept for the window


async def test_a_streaming_duplicate_gets_the_same_frames_as_they_arrive(gw: Any) -> None:
    gw.fake.script.append(slow(0.15))
    body = {"model": MODEL, "messages": HI, "stream": True}
    first = await post(gw, body, "k-frames")
    head = await first.content.readany()
    assert head.startswith(b"data: ")
    second = await post(gw, body, "k-frames")  # joins mid-stream: the buffer from its start
    assert second.headers["X-OmniRoute-Idempotent"] == "true"
    assert second.headers["X-OmniRoute-Idempotent-Of"] == first.headers["X-OmniRoute-Request-Id"]
    second_head = await second.content.readany()
    assert second_head.startswith(head[:20])  # its first bytes came before the stream ended
    rest_first, rest_second = await asyncio.gather(first.read(), second.read())
    assert head + rest_first == second_head + rest_second
    assert stream_text(head + rest_first) == ANSWER
    assert calls(gw.fake) == 1


async def test_duplicates_of_a_cache_hit_get_the_answer_too(gw: Any) -> None:
    body = {"model": MODEL, "messages": HI, "temperature": 0}
    first = await post(gw, body, None)
    assert first.headers["X-OmniRoute-Cache"] == "MISS"
    text = (await first.json())["choices"][0]["message"]["content"]
    await asyncio.sleep(0.2)  # the cache stores in the background
    answers = await asyncio.gather(*(post(gw, body, "k-hit") for _ in range(5)))
    for resp in answers:
        assert resp.status == 200 and resp.headers["X-OmniRoute-Cache"] == "HIT"
        assert (await resp.json())["choices"][0]["message"]["content"] == text
    assert calls(gw.fake) == 1


async def test_a_finished_answer_is_replayed_within_the_window_then_forgotten(
        gw: Any, clock: Clock) -> None:
    body = {"model": MODEL, "messages": HI}
    first = await post(gw, body, "k-window")
    original = await first.read()
    assert "X-OmniRoute-Idempotent" not in first.headers
    clock.now += 4.9
    again = await post(gw, body, "k-window")
    assert again.status == 200 and await again.read() == original
    assert again.headers["X-OmniRoute-Idempotent"] == "true"
    assert again.headers["X-OmniRoute-Provider"] == "up"
    assert calls(gw.fake) == 1
    # the stream of the same question: converted from the kept JSON answer
    streamed = await post(gw, {**body, "stream": True}, "k-window")
    assert stream_text(await streamed.read()) == ANSWER
    assert calls(gw.fake) == 1
    clock.now += 0.2  # past the 5 s window
    fresh = await post(gw, body, "k-window")
    assert fresh.status == 200 and "X-OmniRoute-Idempotent" not in fresh.headers
    assert calls(gw.fake) == 2


async def test_a_window_shortened_at_run_time_applies_to_the_answers_already_kept(
        gw: Any, clock: Clock) -> None:
    body = {"model": MODEL, "messages": HI}
    await (await post(gw, body, "k-shorter")).read()
    assert calls(gw.fake) == 1
    await gw.set_settings(idempotency_window=1)  # was 5 s when the answer was kept
    clock.now += 1.5
    fresh = await post(gw, body, "k-shorter")
    assert fresh.status == 200 and "X-OmniRoute-Idempotent" not in fresh.headers
    assert calls(gw.fake) == 2
    await gw.set_settings(idempotency_window=0)  # in flight only: nothing is kept at all
    assert gw.client.app[IDEMPOTENCY].stats()["active_keys"] == 0
    again = await post(gw, body, "k-shorter")
    assert "X-OmniRoute-Idempotent" not in again.headers
    assert calls(gw.fake) == 3


async def test_a_finished_stream_is_replayed_whole(gw: Any, clock: Clock) -> None:
    body = {"model": MODEL, "messages": HI, "stream": True}
    original = await (await post(gw, body, "k-replay")).read()
    clock.now += 1
    replay = await post(gw, body, "k-replay", **{"X-OmniRoute-Progress": "false"})
    assert replay.headers["X-OmniRoute-Idempotent"] == "true"
    assert await replay.read() == original
    as_json = await post(gw, {"model": MODEL, "messages": HI}, "k-replay")
    assert (await as_json.json())["choices"][0]["message"]["content"] == ANSWER
    assert calls(gw.fake) == 1


async def test_keys_are_scoped_by_api_key_and_x_request_id_counts(gw: Any) -> None:
    body = {"model": MODEL, "messages": HI}
    other = await gw.create_key("other")
    await post(gw, body, "k-scope")
    theirs = await post(gw, body, "k-scope", Authorization=f"Bearer {other}")
    assert "X-OmniRoute-Idempotent" not in theirs.headers  # another tenant: its own call
    assert calls(gw.fake) == 2
    await post(gw, body, None, **{"X-Request-Id": "r-1"})
    again = await post(gw, body, None, **{"X-Request-Id": "r-1"})
    assert again.headers["X-OmniRoute-Idempotent"] == "true"
    assert calls(gw.fake) == 3
    plain = await post(gw, body, None)
    assert "X-OmniRoute-Idempotent" not in plain.headers
    assert calls(gw.fake) == 4


async def test_the_cache_stats_show_the_keys_in_the_seeds_shape(gw: Any) -> None:
    await post(gw, {"model": MODEL, "messages": HI}, "k-stats")
    resp = await gw.client.get("/api/cache/stats", headers=gw.admin_headers)
    assert (await resp.json())["idempotency"] == {"activeKeys": 1, "windowMs": 5000}


async def test_a_bad_key_is_a_400(gw: Any) -> None:
    resp = await post(gw, {"model": MODEL, "messages": HI}, "x" * 256)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_idempotency_key"
    assert calls(gw.fake) == 0


# ----------------------------------------------------------------------------- 409

async def test_a_different_body_is_a_409_in_every_client_format(gw: Any) -> None:
    base = gw.base_url
    key = {"Idempotency-Key": "k-conflict"}

    oai = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0,
                             default_headers=key)
    await oai.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.ConflictError) as o_err:
        await oai.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                  "content": "bye"}])
    assert o_err.value.code == "idempotency_key_reused"

    resp_key = {"Idempotency-Key": "k-conflict-responses"}
    await oai.responses.create(model=MODEL, input="hi", extra_headers=resp_key)
    with pytest.raises(openai.ConflictError):
        await oai.responses.create(model=MODEL, input="bye", extra_headers=resp_key)

    claude = anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0,
                                      default_headers={"Idempotency-Key": "k-conflict-a"})
    await claude.messages.create(model=MODEL, max_tokens=20, messages=HI)  # type: ignore[arg-type]
    with pytest.raises(anthropic.ConflictError) as a_err:
        await claude.messages.create(model=MODEL, max_tokens=21, messages=HI)  # type: ignore[arg-type]
    assert a_err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]

    google = genai.Client(api_key="x", http_options={
        "base_url": base, "api_version": "v1beta",
        "headers": {"Idempotency-Key": "k-conflict-g"}})
    await google.aio.models.generate_content(model=MODEL, contents="hi")
    with pytest.raises(genai_errors.ClientError) as g_err:
        await google.aio.models.generate_content(model=MODEL, contents="bye")
    assert g_err.value.code == 409

    local = ollama.AsyncClient(host=base, headers={"Idempotency-Key": "k-conflict-o"})
    await local.chat(model=MODEL, messages=HI)
    with pytest.raises(ollama.ResponseError) as l_err:
        await local.chat(model=MODEL, messages=[{"role": "user", "content": "bye"}])
    assert l_err.value.status_code == 409 and "idempotency key" in l_err.value.error
    assert calls(gw.fake) == 5  # each first request once; no 409 reached the upstream


async def test_every_client_format_shares_and_replays(gw: Any) -> None:
    """Each format's duplicate gets the first answer, its own bytes, marked idempotent."""
    base = gw.base_url
    oai = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    headers = {"Idempotency-Key": "k-resp"}
    one = await oai.responses.with_raw_response.create(model=MODEL, input="hi",
                                                       extra_headers=headers)
    two = await oai.responses.with_raw_response.create(model=MODEL, input="hi",
                                                       extra_headers=headers)
    assert two.headers["X-OmniRoute-Idempotent"] == "true"
    assert one.parse().id == two.parse().id and two.parse().output_text == ANSWER

    claude = anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0,
                                      default_headers={"Idempotency-Key": "k-claude"})
    async with claude.messages.stream(model=MODEL, max_tokens=20, messages=HI) as s:  # type: ignore[arg-type]
        first = await s.get_final_message()
    second = await claude.messages.create(model=MODEL, max_tokens=20, messages=HI)  # type: ignore[arg-type]
    assert second.content[0].text == first.content[0].text == ANSWER  # type: ignore[union-attr]

    google = genai.Client(api_key="x", http_options={
        "base_url": base, "api_version": "v1beta", "headers": {"Idempotency-Key": "k-g"}})
    texts = [c.text async for c in await google.aio.models.generate_content_stream(
        model=MODEL, contents="hi")]
    again = [c.text async for c in await google.aio.models.generate_content_stream(
        model=MODEL, contents="hi")]
    assert "".join(t or "" for t in texts) == "".join(t or "" for t in again) == ANSWER

    local = ollama.AsyncClient(host=base, headers={"Idempotency-Key": "k-o"})
    parts = [p.message.content async for p in await local.chat(model=MODEL, messages=HI,
                                                               stream=True)]
    whole = await local.chat(model=MODEL, messages=HI)
    assert "".join(p or "" for p in parts) == whole.message.content == ANSWER
    assert calls(gw.fake) == 4


# ----------------------------------------------------------------------------- failures

async def test_a_failed_first_request_gives_its_duplicates_its_error_and_is_not_kept(
        gw: Any) -> None:
    gw.fake.latency = 0.2
    gw.fake.script.append(error(400, "bad things"))
    body = {"model": MODEL, "messages": HI}
    first, second = await asyncio.gather(post(gw, body, "k-fail"), post(gw, body, "k-fail"))
    assert first.status == second.status == 400
    assert (await first.json())["error"]["message"] == (await second.json())["error"]["message"]
    assert calls(gw.fake) == 1
    retry = await post(gw, body, "k-fail")  # failures are not kept: a retry calls again
    assert retry.status == 200 and "X-OmniRoute-Idempotent" not in retry.headers
    assert calls(gw.fake) == 2


async def test_a_stream_that_breaks_breaks_for_its_duplicates_too(gw: Any) -> None:
    gw.fake.script.append(mid_stream_error(2))
    body = {"model": MODEL, "messages": HI, "stream": True}
    gw.fake.delay = 0.1
    first = await post(gw, body, "k-break")
    second = await post(gw, body, "k-break")
    one, two = await asyncio.gather(first.read(), second.read())
    assert one == two and b"error" in one
    assert calls(gw.fake) == 1
    assert gw.client.app[IDEMPOTENCY].stats()["active_keys"] == 0  # a flawed answer: not kept


# ----------------------------------------------------------------------------- clients leaving

async def test_the_first_client_leaving_mid_stream_keeps_the_upstream_for_a_duplicate(
        gwc: Any) -> None:
    gw = gwc
    gw.fake.script.append(slow(0.1))
    body = {"model": MODEL, "messages": HI, "stream": True}
    first = await post(gw, body, "k-leave")
    assert (await first.content.readany()).startswith(b"data: ")
    second = await post(gw, body, "k-leave")
    assert second.headers["X-OmniRoute-Idempotent"] == "true"
    await second.content.readany()
    first.close()  # the first client leaves; the duplicate still reads
    assert stream_text(await second.read()) == ANSWER
    assert calls(gw.fake) == 1 and gw.fake.closed_streams == 0
    await asyncio.sleep(0.1)  # the first handler ends once the upstream is drained
    resp = await gw.client.get("/api/requests", headers=gw.admin_headers)
    records = {r["request_id"]: r for r in (await resp.json())["requests"]}
    leader = records[first.headers["X-OmniRoute-Request-Id"]]
    assert leader["status"] == 499 and leader["completion_tokens"]  # it made the call


async def test_the_first_client_leaving_before_the_answer_keeps_the_call(gwc: Any) -> None:
    gw = gwc
    gw.fake.script.append(hang_before_headers(0.4))
    body = {"model": MODEL, "messages": HI}
    first = asyncio.ensure_future(post(gw, body, "k-early"))
    await asyncio.sleep(0.15)
    second = asyncio.ensure_future(post(gw, body, "k-early"))
    await asyncio.sleep(0.05)
    first.cancel()  # the first client leaves while the upstream has not answered
    with pytest.raises(asyncio.CancelledError):
        await first
    resp = await second
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == ANSWER
    assert calls(gw.fake) == 1 and gw.fake.closed_streams == 0


async def test_the_upstream_closes_when_every_client_left(gwc: Any) -> None:
    gw = gwc
    gw.fake.script.append(slow(0.2))
    body = {"model": MODEL, "messages": HI, "stream": True}
    first = await post(gw, body, "k-all-left")
    await first.content.readany()
    second = await post(gw, body, "k-all-left")
    await second.content.readany()
    first.close()
    await asyncio.sleep(0.05)
    assert not gw.fake.stream_closed.is_set()
    second.close()
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)
    assert gw.fake.closed_streams == 1
    await asyncio.sleep(0.05)
    assert gw.client.app[IDEMPOTENCY].stats()["active_keys"] == 0  # not kept: a retry calls


async def test_an_answer_past_the_bound_is_shared_in_flight_but_not_kept(gw: Any) -> None:
    await gw.set_settings(idempotency_max_bytes=1200)
    gw.fake.delay = 0.02
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 600}],
            "stream": True}
    first = await post(gw, body, "k-big")
    head = await first.content.readany()
    second = await post(gw, body, "k-big")  # joins while the buffer is still whole
    one, two = await asyncio.gather(first.read(), second.read())
    assert head + one == two and len(two) > 1200
    assert calls(gw.fake) == 1
    late = await post(gw, body, "k-big")  # it outgrew the bound: not kept, a new call
    assert "X-OmniRoute-Idempotent" not in late.headers
    await late.read()
    assert calls(gw.fake) == 2


async def test_a_reader_that_falls_too_far_behind_is_cut() -> None:
    """Memory stays bounded: past ``max_bytes`` what every reader passed is dropped, then
    the slowest reader is cut (its stream ends with an error); the others go on."""
    settled: list[SharedAnswer] = []
    answer = SharedAnswer(b"fp", "req-1", True, 100, settled.append)
    gate = asyncio.Event()

    async def frames() -> AsyncIterator[bytes]:
        for i in range(10):
            if i == 2:
                await gate.wait()
            await asyncio.sleep(0.01)  # the upstream's pace: a reader that reads keeps up
            yield b"%02d" % i + b"." * 28  # 30 bytes each

    fast, slow_reader = answer.reader(1.0, first=True), None
    answer.start(Reply(frames=frames()), {}, owns=False, finish=_no_finish)
    slow_reader = answer.reader(1.0)
    got = [await fast.__anext__(), await fast.__anext__()]
    gate.set()
    got += [chunk async for chunk in fast]
    assert len(got) == 10 and settled == [answer]
    assert not answer.whole and answer.size <= 100
    with pytest.raises(IdempotencyUnavailable):
        await slow_reader.__anext__()
    with pytest.raises(IdempotencyUnavailable):  # nobody new can join it either
        answer.reader(1.0)


async def _no_finish(reply: Reply, error: BaseException | None) -> None:
    raise AssertionError("the pump ends a reply only when it owns it")
