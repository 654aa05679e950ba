"""Providers that speak the canonical model: the canonical lane of the chat pipeline.

The test provider's behaviour is picked by the model name (``canon/<behaviour>``)
and, for failover, by its connection's ``fail_status`` setting. Every client
API calls it with its official SDK (or its wire format) and gets the answer in
its own format.
"""

from __future__ import annotations

import asyncio
import re
import types
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import openai
import orjson
import pytest

from omniroute import (
    CanonicalProvider,
    Provider,
    UpstreamError,
    UpstreamStatusError,
    hookimpl,
)
from omniroute import canonical as c
from omniroute.plugins import load_plugins
from omniroute.providers.base import Timeouts
from omniroute.providers.canonical import call_complete, call_stream, collect, events_of
from omniroute.testing import GatewayHarness, make_test_config, start_harness

HI = [{"role": "user", "content": "hello brave world"}]


class Canon(CanonicalProvider):
    """Implements only ``stream``; ``complete`` is collected from it."""

    type = "test-canon"
    default_prefix = "canon"
    requires_credentials = False
    #: the models whose stream generator was closed (its ``finally`` ran), in order
    closed: ClassVar[list[str]] = []

    async def stream(self, request: c.Request) -> AsyncIterator[c.Event]:
        status = self.connection.settings.get("fail_status")
        if status:
            raise UpstreamStatusError(f"told to fail with {status}", status=status)
        model = request.model
        if model == "hang-first":
            await asyncio.sleep(30)
        if model == "empty":
            return
        if model == "no-start":
            yield c.TextDelta(0, "x")
        yield c.Start("canon-1", model, usage=c.Usage(input_tokens=3))
        try:
            yield c.PartStart(0, c.Text(""))
            for word in ("hello ", "brave ", "world"):
                yield c.TextDelta(0, word)
            if model == "break-mid":
                raise UpstreamError("the model broke mid-stream")
            if model == "hang-mid":
                await asyncio.sleep(30)
            if model == "slow":
                for _ in range(600):
                    await asyncio.sleep(0.05)
                    yield c.TextDelta(0, ".")
            yield c.PartStop(0)
            yield c.Finish("end_turn", c.Usage(output_tokens=3))
        finally:
            self.closed.append(model)


class Whole(CanonicalProvider):
    """Implements only ``complete``; its stream is replayed from the answer."""

    type = "test-whole"
    default_prefix = "whole"
    requires_credentials = False

    async def complete(self, request: c.Request) -> c.Response:
        if request.model == "bad-type":
            return {"not": "a response"}  # type: ignore[return-value]
        if request.model == "bad-request":
            raise UpstreamStatusError("no such thing", status=400, param="messages")
        return c.Response("whole-1", request.model, parts=[
            c.Reasoning("thinking it over"),
            c.Text("Let me look."),
            c.ToolCall("call_1", "lookup", '{"q": "weather"}'),
        ], stop_reason="tool_use", usage=c.Usage(input_tokens=7, output_tokens=5))


class TestPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(Canon)
        register(Whole)


@pytest.fixture
async def gw(aiohttp_client: Any, tmp_path: Path) -> GatewayHarness:
    Canon.closed.clear()
    plugins = load_plugins(extra=[("test-canonical", TestPlugin())])
    h = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"), plugins)
    h.canon = await h.add_provider({"type": "test-canon"})  # type: ignore[attr-defined]
    await h.add_provider({"type": "test-whole"})
    return h


def sdk(gw: GatewayHarness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0,
                              timeout=10)


def claude(gw: GatewayHarness) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="x", max_retries=0, timeout=10)


async def last_record(gw: GatewayHarness) -> dict[str, Any]:
    resp = await gw.client.get("/api/requests", headers=gw.admin_headers)
    return (await resp.json())["requests"][0]


# ----------------------------------------------------------------------------- answers

async def test_a_stream_only_provider_answers_json_and_streams(gw):
    async with sdk(gw) as client:
        answer = await client.chat.completions.create(model="canon/echo", messages=HI)
        stream = await client.chat.completions.create(model="canon/echo", messages=HI,
                                                      stream=True)
        chunks = [chunk async for chunk in stream]
    assert answer.choices[0].message.content == "hello brave world"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 3)
    assert [ch.choices[0].delta.content for ch in chunks[1:-1]] == ["hello ", "brave ", "world"]
    record = await last_record(gw)
    assert (record["status"], record["prompt_tokens"], record["completion_tokens"]) == (200, 3, 3)
    assert Canon.closed == ["echo", "echo"]


async def test_a_complete_only_provider_answers_every_client_api(gw):
    async with sdk(gw) as client:
        answer = await client.chat.completions.create(model="whole/x", messages=HI)
    message = answer.choices[0].message
    assert message.content == "Let me look."
    assert [(t.id, t.function.name, t.function.arguments) for t in message.tool_calls] == [
        ("call_1", "lookup", '{"q": "weather"}')]
    assert answer.choices[0].finish_reason == "tool_calls"

    async with claude(gw) as client:
        reply = await client.messages.create(model="whole/x", max_tokens=50, messages=HI)
    kinds = [block.type for block in reply.content]
    assert kinds[-2:] == ["text", "tool_use"]
    assert reply.content[-1].input == {"q": "weather"}
    assert reply.stop_reason == "tool_use"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (7, 5)


async def test_a_complete_only_provider_streams_by_replay(gw):
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(
            model="whole/x", messages=HI, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.content or "" for d in deltas) == "Let me look."
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert calls[0].id == "call_1" and calls[0].function.name == "lookup"
    assert "".join(call.function.arguments or "" for call in calls) == '{"q": "weather"}'
    assert chunks[-1].usage.prompt_tokens == 7

    async with claude(gw) as client, client.messages.stream(
            model="whole/x", max_tokens=50, messages=HI) as claude_stream:
        final = await claude_stream.get_final_message()
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"q": "weather"}


async def test_count_tokens_skips_a_canonical_target_and_estimates(gw):
    resp = await gw.client.post("/v1/messages/count_tokens",
                                json={"model": "canon/echo", "messages": HI})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-OmniRoute-Token-Count"] == "estimate"


# ----------------------------------------------------------------------------- failures

@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_before_the_first_event_moves_on_to_the_next_account(gw, stream):
    failing = await gw.add_provider({"type": "test-canon", "name": "failing",
                                     "priority": -1, "settings": {"fail_status": 503}})
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="canon/echo", messages=HI, stream=stream)
        if stream:
            text = "".join([ch.choices[0].delta.content or "" async for ch in raw.parse()])
        else:
            text = raw.parse().choices[0].message.content
    assert text == "hello brave world"
    assert raw.headers["x-omniroute-fallback-attempts"] == "1"
    record = await last_record(gw)
    assert (record["attempts"], record["connection_id"]) == (2, gw.canon["id"])
    resp = await gw.client.get("/api/rate-limits", headers=gw.admin_headers)
    states = {s["id"]: s for s in (await resp.json())["connections"]}
    assert states[failing["id"]]["consecutive_failures"] == 1  # charged to that account


async def test_the_clients_own_mistake_is_not_retried(gw):
    await gw.add_provider({"type": "test-whole", "name": "second"})  # would answer the same
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="whole/bad-request", messages=HI)
    assert info.value.message.endswith("no such thing") and info.value.param == "messages"
    assert (await last_record(gw))["attempts"] == 1


@pytest.mark.parametrize(("model", "stream", "message"), [
    ("bad-type", False, "answered with a dict, not a canonical Response"),
    ("bad-type", True, "answered with a dict, not a canonical Response"),
    ("empty", True, "sent an empty stream"),
    ("no-start", True, "began its stream with a TextDelta, not a Start event"),
    ("no-start", False, "the stream began with a TextDelta, not a Start event"),
])
async def test_a_malformed_answer_is_the_providers_failure(gw, model, stream, message):
    prefix = "whole" if model == "bad-type" else "canon"
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": f"{prefix}/{model}", "messages": HI, "stream": stream})
    assert resp.status == 502, await resp.text()
    assert message in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_no_first_event_in_time_is_a_timeout(gw, stream):
    await gw.set_settings(first_byte_timeout=0.3, total_timeout=0.3)
    async with asyncio.timeout(5):
        resp = await gw.client.post("/v1/chat/completions", json={
            "model": "canon/hang-first", "messages": HI, "stream": stream})
    assert resp.status == 504, await resp.text()
    assert "test-canon" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(("model", "message"), [
    ("break-mid", "the model broke mid-stream"),
    ("hang-mid", "stream stalled: no event for 0.3s"),
])
async def test_a_failure_after_the_first_event_ends_the_stream_with_an_error(gw, model, message):
    await gw.set_settings(idle_timeout=0.3)
    async with asyncio.timeout(5):
        resp = await gw.client.post("/v1/chat/completions", json={
            "model": f"canon/{model}", "messages": HI, "stream": True})
        assert resp.status == 200
        frames = [f for f in (await resp.read()).split(b"\n\n") if f]
    assert b'"content":"world"' in frames[-2]
    error = orjson.loads(frames[-1].removeprefix(b"data: "))["error"]
    assert message in error["message"]
    assert Canon.closed == [model]
    record = await last_record(gw)
    assert record["status"] in (502, 504) and message in record["error"]
    resp = await gw.client.get("/api/rate-limits", headers=gw.admin_headers)
    states = {s["id"]: s for s in (await resp.json())["connections"]}
    assert states[gw.canon["id"]]["consecutive_failures"] == 1


async def test_a_client_that_leaves_closes_the_providers_stream(gw):
    async with asyncio.timeout(5):
        resp = await gw.client.post("/v1/chat/completions", json={
            "model": "canon/slow", "messages": HI, "stream": True})
        assert resp.status == 200
        await resp.content.readuntil(b'"content":"world"')
        resp.close()
        while "slow" not in Canon.closed:
            await asyncio.sleep(0.02)
        while (await last_record(gw))["status"] != 499:  # logged once the handler ends
            await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- the base class

def test_a_provider_type_must_implement_complete_or_stream():
    with pytest.raises(TypeError, match="must implement complete\\(\\) or stream\\(\\)"):
        class Nothing(CanonicalProvider):
            type = "nothing"


async def test_an_intermediate_base_that_implements_neither_says_so():
    class Base(CanonicalProvider):
        pass

    provider = Base(None, None)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="neither"):
        await provider.complete(c.Request("m"))
    with pytest.raises(NotImplementedError, match="neither"):
        await anext(provider.stream(c.Request("m")))


async def test_events_of_and_collect_are_inverse():
    response = c.Response("r1", "m", parts=[
        c.Reasoning("hmm", signature="sig", summary=["short"], source="anthropic"),
        c.Text("hi", meta={"k": 1}),
        c.ToolCall("call_1", "f", '{"a": 1}'),
    ], stop_reason="tool_use", usage=c.Usage(input_tokens=2, output_tokens=3), created=5)
    events = events_of(response)
    assert isinstance(events[0], c.Start) and isinstance(events[-1], c.Finish)

    async def replay() -> AsyncIterator[c.Event]:
        for event in events:
            yield event

    assert await collect(replay()) == response


async def test_collect_refuses_deltas_of_parts_that_never_started():
    async def bad() -> AsyncIterator[c.Event]:
        yield c.Start("r", "m")
        yield c.TextDelta(3, "x")

    with pytest.raises(UpstreamError, match="did not start"):
        await collect(bad())


async def test_call_stream_waits_for_the_first_event_and_closes_the_provider():
    provider = Canon(_Connection(), None)  # type: ignore[arg-type]
    timeouts = Timeouts(connect=1, first_byte=1, idle=1, total=5)
    events = await call_stream(provider, c.Request("echo"), timeouts)
    async with aclosing(events):  # type: ignore[type-var]
        assert isinstance(await anext(events), c.Start)
        assert isinstance(await anext(events), c.PartStart)
    assert Canon.closed[-1] == "echo"
    response = await call_complete(provider, c.Request("echo"), timeouts)
    assert response.parts == [c.Text("hello brave world")]


class _Connection:
    name = "stand-in"
    settings: ClassVar[dict[str, Any]] = {}


async def test_the_sketch_in_docs_plugins_md_works(aiohttp_client: Any, tmp_path: Path):
    docs = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
    (code,) = re.findall(r"```python\n(.*?)```", docs.read_text(), re.DOTALL)
    module = types.ModuleType("shout_sketch")
    exec(compile(code, str(docs), "exec"), module.__dict__)
    h = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"),
                            load_plugins(extra=[("shout", module)]))
    await h.add_provider({"type": "shout"})
    async with sdk(h) as client:
        answer = await client.chat.completions.create(model="shout/any", messages=HI)
    assert answer.choices[0].message.content == "HELLO BRAVE WORLD"
