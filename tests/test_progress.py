"""Progress frames (X-OmniRoute-Progress: true): SSE comments each official SDK skips."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import anthropic
import openai
import orjson
import pytest
from fakes.openai_upstream import hang_mid_stream, slow
from google import genai

from omniroute.pipeline.progress import ProgressStage

MODEL = "up/gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]
ANSWER = "Hello! You said: hi"
ON = {"X-OmniRoute-Progress": "true"}


def progress_frames(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[len(b": progress "):]) for line in raw.split(b"\n")
            if line.startswith(b": progress ")]


@pytest.fixture
async def slow_gw(gw: Any) -> Any:
    await gw.set_settings(progress_interval=0.1)
    gw.fake.delay = 0.06  # a frame every 60 ms: several progress frames per stream
    return gw


async def raw_stream(gw: Any, path: str, body: dict[str, Any], **headers: str) -> Any:
    resp = await gw.client.post(path, json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return resp, await resp.read()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "stream": True}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}),
    ("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 20, "stream": True}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}),
], ids=["openai", "responses", "anthropic", "completions"])
async def test_the_raw_stream_holds_progress_frames(slow_gw: Any, path: str,
                                                   body: dict[str, Any]) -> None:
    resp, raw = await raw_stream(slow_gw, path, body, **ON)
    assert resp.headers["X-OmniRoute-Progress"] == "enabled"
    frames = progress_frames(raw)
    assert len(frames) >= 3, raw
    assert frames[-1]["done"] is True and not any(f["done"] for f in frames[:-1])
    elapsed = [f["elapsed_ms"] for f in frames]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 100
    assert frames[-1]["tokens"] > 0 and frames[-1]["bytes"] > 0
    assert [f["bytes"] for f in frames] == sorted(f["bytes"] for f in frames)
    assert raw.rstrip().endswith(b'"done":true}')  # the last frame follows the stream's end


async def test_progress_frames_while_the_upstream_stalls(gw: Any) -> None:
    """No chunk for a while: the frames keep coming (the wait on the next chunk times out)."""
    await gw.set_settings(progress_interval=0.1)
    gw.fake.script.append(hang_mid_stream(2, 0.5))
    _, raw = await raw_stream(gw, "/v1/chat/completions",
                              {"model": MODEL, "messages": HI, "stream": True}, **ON)
    frames = progress_frames(raw)
    stalled = [f for f in frames if not f["done"]]
    assert len(stalled) >= 3  # about five in the half second without a chunk
    assert len({f["bytes"] for f in stalled}) < len(stalled)  # same bytes: nothing came


async def test_the_sdks_parse_a_stream_with_progress_frames_unchanged(slow_gw: Any) -> None:
    gw = slow_gw
    base = gw.base_url
    oai = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    plain_count = 0
    for headers in ({}, ON):
        stream = await oai.chat.completions.create(model=MODEL, messages=HI, stream=True,  # type: ignore[arg-type]
                                                   extra_headers=headers)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        if headers:
            assert len(chunks) == plain_count
        plain_count = len(chunks)

        async with oai.responses.stream(model=MODEL, input="hi", extra_headers=headers) as rs:
            events = [e.type async for e in rs]
            final = await rs.get_final_response()
        assert final.output_text == ANSWER and events[-1] == "response.completed"

        claude = anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0)
        async with claude.messages.stream(model=MODEL, max_tokens=20, messages=HI,  # type: ignore[arg-type]
                                          extra_headers=headers) as ms:
            kinds = [e.type async for e in ms]
            message = await ms.get_final_message()
        assert message.content[0].text == ANSWER  # type: ignore[union-attr]
        assert kinds[-1] == "message_stop"

        legacy = await oai.completions.create(model=MODEL, prompt="hi", stream=True,
                                              extra_headers=headers)
        assert "".join([c.choices[0].text async for c in legacy if c.choices]) == ANSWER


async def test_gemini_and_ollama_get_no_progress_frames(slow_gw: Any) -> None:
    """google-genai parses every line of a stream as JSON (a comment or a named event
    breaks it) and NDJSON has no comments: the answer says so and the stream is plain."""
    gw = slow_gw
    resp, raw = await raw_stream(gw, f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
                                 {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                                 **ON)
    assert resp.headers["X-OmniRoute-Progress"] == "unsupported"
    assert b"progress" not in raw and b"\n:" not in raw
    google = genai.Client(api_key="x", http_options={
        "base_url": gw.base_url, "api_version": "v1beta", "headers": ON})
    texts = [c.text async for c in await google.aio.models.generate_content_stream(
        model=MODEL, contents="hi")]
    assert "".join(t or "" for t in texts) == ANSWER

    resp, raw = await raw_stream(gw, "/api/chat", {"model": MODEL, "messages": HI}, **ON)
    assert resp.headers["X-OmniRoute-Progress"] == "unsupported"
    lines = raw.splitlines()
    assert all(orjson.loads(line).get("model") for line in lines) and b"progress" not in raw


async def test_without_the_header_no_progress_and_no_stage_run(gw: Any) -> None:
    gw.fake.script.append(slow(0.05))
    resp, raw = await raw_stream(gw, "/v1/chat/completions",
                                 {"model": MODEL, "messages": HI, "stream": True})
    assert "X-OmniRoute-Progress" not in resp.headers and b": progress" not in raw
    # the stage takes no part: no run, no wrapper, no reply header (one header lookup)
    stage = ProgressStage(lambda: gw.catalog.settings)

    class Ctx:
        stream = True
        binary = False
        headers: ClassVar[dict[str, str]] = {}
        reply_headers = None

    assert stage.enter(Ctx(), None) is None  # type: ignore[arg-type]
    Ctx.headers = {"X-OmniRoute-Progress": "false"}
    assert stage.enter(Ctx(), None) is None  # type: ignore[arg-type]
    Ctx.stream = False  # a JSON answer has no frames to add to
    Ctx.headers = ON
    assert stage.enter(Ctx(), None) is None  # type: ignore[arg-type]
    assert Ctx.reply_headers is None
    Ctx.stream, Ctx.binary = True, True  # speech audio: a comment would corrupt it
    assert stage.enter(Ctx(), None) is None  # type: ignore[arg-type]
    assert Ctx.reply_headers is None


async def test_a_duplicate_gets_its_own_progress_frames(slow_gw: Any) -> None:
    """Progress is per client: it wraps each one's stream, a shared one's too."""
    gw = slow_gw
    body = {"model": MODEL, "messages": HI, "stream": True}
    first = await gw.client.post("/v1/chat/completions", json=body,
                                 headers={"Idempotency-Key": "k-p"})
    second = await gw.client.post("/v1/chat/completions", json=body,
                                  headers={"Idempotency-Key": "k-p", **ON})
    one, two = await first.read(), await second.read()
    assert second.headers["X-OmniRoute-Idempotent"] == "true"
    assert b": progress" not in one and progress_frames(two)[-1]["done"] is True
    assert re.sub(rb": progress [^\n]*\n\n", b"", two) == one  # the same frames besides
