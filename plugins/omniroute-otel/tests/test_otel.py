"""The OpenTelemetry plugin: one span per request through a real gateway, called with the SDK.

The gateway calls a small OpenAI-compatible upstream served by the test (JSON,
SSE with a usage chunk, embeddings, errors), so the spans carry a real server
address and the usage the upstream sent. Spans are read with the SDK's
in-memory exporter; one test runs the real OTLP/HTTP exporter into a fake
collector and decodes what it received.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from aiohttp import web
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from omniroute_otel import OtelPlugin, config

UPSTREAM_KEY = "sk-upstream-secret-otel"
PROMPT = "a secret prompt about zebras"
ANSWER = "a confidential answer about okapis"
USAGE = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
         "prompt_tokens_details": {"cached_tokens": 5},
         "completion_tokens_details": {"reasoning_tokens": 3}}
OTEL_VARS = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
             "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME")


# ------------------------------------------------------------------ a small upstream


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
        return web.json_response({"error": {"message": "bad key", "type": "auth"}}, status=401)
    if body["model"] == "broken":
        return web.json_response({"error": {"message": f"failed on: {PROMPT}",
                                            "type": "server_error"}}, status=500)
    base = {"id": "chatcmpl-1", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": ANSWER},
            "finish_reason": "stop"}], "usage": USAGE})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    for delta, finish in (({"role": "assistant", "content": ""}, None),
                          ({"content": ANSWER}, None), ({}, "stop")):
        event = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        await resp.write(f"data: {json.dumps(event)}\n\n".encode())
    await resp.write(f"data: {json.dumps({**chunk, 'choices': [], 'usage': USAGE})}\n\n"
                     .encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"object": "list", "model": body["model"], "data": [
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4}})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": m, "object": "model", "created": 1, "owned_by": "test"}
        for m in ("gpt-test", "broken", "embed-test")]})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


# ------------------------------------------------------------------ the gateway


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed entry point stays idle: tests give their own span processor."""
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def gateway(aiohttp_client: Any, tmp_path: Path, upstream: str,
                  exporter: InMemorySpanExporter) -> Any:
    plugin = OtelPlugin(processor=lambda: SimpleSpanProcessor(exporter))
    h = await start_harness(aiohttp_client, make_test_config(tmp_path),
                            plugins=load_plugins(extra=[("otel-test", plugin)]))
    await h.add_provider({"type": "openai", "name": "fake", "prefix": "up", "base_url": upstream,
                          "api_key": UPSTREAM_KEY})
    h.upstream = upstream
    return h


def sdk(h: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=h.base_url + "/v1", api_key="sk-client", max_retries=0,
                              timeout=10)


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def assert_no_content(span: ReadableSpan) -> None:
    text = json.dumps({k: str(v) for k, v in (span.attributes or {}).items()})
    text += str(span.status.description) + span.name
    for secret in (PROMPT, "zebras", ANSWER, "okapis", UPSTREAM_KEY, "sk-client"):
        assert secret not in text
    assert not span.events


async def test_a_json_answer_is_one_client_span(gateway: Any, exporter: Any) -> None:
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="up/gpt-test", messages=[{"role": "user", "content": PROMPT}])
    assert raw.parse().choices[0].message.content == ANSWER
    span = only_span(exporter)
    assert span.name == "chat up/gpt-test"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "up/gpt-test",
        "gen_ai.response.model": "gpt-test",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.usage.input_tokens": 21,
        "gen_ai.usage.output_tokens": 9,
        "gen_ai.usage.cache_read.input_tokens": 5,
        "gen_ai.usage.reasoning.output_tokens": 3,
        "server.address": "127.0.0.1",
        "server.port": urlsplit(gateway.upstream).port,
        "http.response.status_code": 200,
        "omniroute.request_id": raw.headers["x-omniroute-request-id"],
        "omniroute.endpoint": "chat.completions",
        "omniroute.stream": False,
        "omniroute.attempts": 1,
        "omniroute.provider": "up",
        "omniroute.connection_id": attrs["omniroute.connection_id"],
        "omniroute.ttfb_ms": attrs["omniroute.ttfb_ms"],
    }
    assert attrs["omniroute.connection_id"] in gateway.catalog.connections
    assert span.end_time is not None and span.start_time is not None
    assert 0 < span.end_time - span.start_time < 10 * 10**9
    assert span.resource.attributes["service.name"] == "omniroute"
    assert span.parent is None
    assert_no_content(span)


async def test_a_stream_and_its_usage(gateway: Any, exporter: Any) -> None:
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="up/gpt-test", messages=[{"role": "user", "content": PROMPT}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == ANSWER
    span = only_span(exporter)
    attrs = span.attributes or {}
    assert attrs["omniroute.stream"] is True
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (21, 9)
    assert attrs["http.response.status_code"] == 200
    assert_no_content(span)


async def test_a_failure_is_an_error_span_without_the_message(gateway: Any,
                                                              exporter: Any) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="up/broken", messages=[{"role": "user", "content": PROMPT}])
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    attrs = span.attributes or {}
    assert attrs["http.response.status_code"] == 500
    assert attrs["error.type"] == span.status.description
    assert attrs["error.type"]  # the error's class, or the status: never the upstream text
    assert attrs["gen_ai.response.model"] == "broken"
    assert_no_content(span)  # the upstream quoted the prompt in its message


async def test_an_unknown_model_is_a_span_without_a_provider(gateway: Any,
                                                             exporter: Any) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="nowhere/x", messages=[
                {"role": "user", "content": PROMPT}])
    attrs = only_span(exporter).attributes or {}
    assert attrs["error.type"] and attrs["http.response.status_code"] == 400
    assert "gen_ai.provider.name" not in attrs and "server.address" not in attrs


async def test_embeddings_name_their_operation(gateway: Any, exporter: Any) -> None:
    async with sdk(gateway) as client:
        answer = await client.embeddings.create(model="up/embed-test", input=PROMPT)
    assert answer.data[0].embedding == pytest.approx([0.1, 0.2])
    span = only_span(exporter)
    assert span.name == "embeddings up/embed-test"
    attrs = span.attributes or {}
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.usage.input_tokens"] == 4
    assert_no_content(span)


async def test_the_span_joins_the_clients_trace(gateway: Any, exporter: Any) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="up/gpt-test", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    span = only_span(exporter)
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == trace_id
    assert f"{span.parent.span_id:016x}" == parent_id and span.parent.is_remote


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("env", "enabled", "protocol"), [
    ({}, False, None),  # installed but not configured: nothing
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True, "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True, "grpc"),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True, "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"},
     False, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
     False, None),
])
def test_configuration_from_the_standard_variables(env: dict[str, str], enabled: bool,
                                                   protocol: str | None) -> None:
    got = config.load(env)
    assert got.enabled is enabled
    if enabled:
        assert got.protocol == protocol


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        config.load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL":
                     "carrier-pigeon"})


async def test_idle_without_configuration(omniroute: Any) -> None:
    """The installed entry point adds no stage until OTLP is configured."""
    from omniroute.appkeys import PIPELINE

    assert "otel" not in [s.name for s in omniroute.client.app[PIPELINE].stages]
    info = omniroute.registry.plugins.info("otel")
    assert info is not None and info.error is None
    assert info.distribution == "omniroute-otel"


async def test_otlp_over_http_reaches_a_collector(aiohttp_client: Any, aiohttp_server: Any,
                                                  tmp_path: Path, upstream: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The real OTLP/HTTP exporter, configured only by the standard variables."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", traces)
    server = await aiohttp_server(collector)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    h = await start_harness(aiohttp_client, make_test_config(tmp_path))  # installed plugins
    await h.add_provider({"type": "openai", "name": "fake", "prefix": "up", "base_url": upstream,
                          "api_key": UPSTREAM_KEY})
    async with sdk(h) as client:
        await client.chat.completions.create(
            model="up/gpt-test", messages=[{"role": "user", "content": PROMPT}])
    for _ in range(100):  # the batch processor's thread exports within its delay
        if received:
            break
        await asyncio.sleep(0.05)
    assert received, "no spans reached the collector"
    (resource_spans,) = received[0].resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "gateway-under-test"
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "chat up/gpt-test"
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["gen_ai.usage.input_tokens"].int_value == 21
    assert attrs["gen_ai.provider.name"].string_value == "openai"
    assert PROMPT.encode() not in received[0].SerializeToString()
