"""The tracing stage: one span per client request, with GenAI semantic-convention attributes.

The span is made when the request is over, from its finished record, with the
request's own start time and duration, so nothing is done on the request's
path before that. Its attributes follow the OpenTelemetry GenAI conventions
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.*``, ``error.type``, ``server.address``),
plus ``omniroute.*`` ones for what only the gateway knows. The span is a CLIENT
span: the gateway is the GenAI client of the upstream it called. A client's
W3C ``traceparent`` header makes it a child of the client's trace.

Never in a span: prompts, answers, error messages (an upstream's may quote the
prompt), keys or credentials.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from omniroute import Connection, RequestContext, Stage, StageRun
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: request-log endpoints whose GenAI operation is not the omniroute operation's name
ENDPOINT_OPERATIONS = {
    "completions": "text_completion",
    "gemini.generateContent": "generate_content",
    "gemini.streamGenerateContent": "generate_content",
}
#: omniroute provider types -> ``gen_ai.provider.name`` well-known values (else the type)
PROVIDER_NAMES = {
    "openai": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "ollama": "ollama",
}


class TracingRun(StageRun):
    """Keeps no per-request state: one run serves every request."""

    def __init__(self, stage: TracingStage) -> None:
        self.stage = stage

    def finished(self, ctx: RequestContext) -> None:
        self.stage.export(ctx)


class TracingStage(Stage):
    """Exports one span per request through ``tracer``.

    :param tracer: from the plugin's tracer provider (OTLP exporter, or a test's).
    :param connections: the live connections by id (the catalog's; read per span).
    """

    name = "otel"

    def __init__(self, tracer: Tracer, catalog: Any) -> None:
        self.tracer = tracer
        self.catalog = catalog
        self._run = TracingRun(self)
        self._operations: dict[str, str] = {}
        self._propagator = TraceContextTextMapPropagator()
        #: connection id -> (the Connection they were read from, its span attributes)
        self._targets: dict[str, tuple[Connection, dict[str, Any]]] = {}

    def enter(self, ctx: RequestContext, operation: Any) -> StageRun:
        endpoint = ctx.record.endpoint
        if endpoint not in self._operations:  # once per endpoint
            self._operations[endpoint] = ENDPOINT_OPERATIONS.get(endpoint, operation.name)
        return self._run

    def export(self, ctx: RequestContext) -> None:
        record = ctx.record
        operation = self._operations.get(record.endpoint, "chat")
        requested = record.model_requested or ""
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "http.response.status_code": record.status,
            "omniroute.request_id": record.request_id,
            "omniroute.endpoint": record.endpoint,
            "omniroute.stream": bool(record.stream),  # a span attribute stays a bool
            "omniroute.attempts": record.attempts,
        }
        if requested:
            attrs["gen_ai.request.model"] = requested
        if record.model:
            attrs["gen_ai.response.model"] = record.model
        if record.provider is not None:
            attrs["omniroute.provider"] = record.provider
        if record.connection_id is not None:
            attrs.update(self._target(record.connection_id))
        for name, count in (("gen_ai.usage.input_tokens", record.prompt_tokens),
                            ("gen_ai.usage.output_tokens", record.completion_tokens),
                            ("gen_ai.usage.cache_read.input_tokens", record.cached_tokens),
                            ("gen_ai.usage.cache_creation.input_tokens",
                             record.cache_write_tokens),
                            ("gen_ai.usage.reasoning.output_tokens", record.reasoning_tokens)):
            if count is not None:
                attrs[name] = count
        if record.ttfb_ms is not None:
            attrs["omniroute.ttfb_ms"] = round(record.ttfb_ms, 3)
        if record.cost_usd is not None:
            attrs["omniroute.cost_usd"] = record.cost_usd
        if record.cache_hit:
            attrs["omniroute.cache_hit"] = True
        if record.usage_estimated:
            attrs["omniroute.usage_estimated"] = True
        failed = record.status >= 400 or record.error_class is not None
        if failed:
            attrs["error.type"] = record.error_class or str(record.status)
        parent = None
        if "traceparent" in ctx.headers:
            parent = self._propagator.extract(ctx.headers)
        start = int(record.ts * 1e9)
        span = self.tracer.start_span(f"{operation} {requested}" if requested else operation,
                                      context=parent, kind=SpanKind.CLIENT, attributes=attrs,
                                      start_time=start)
        if failed:
            span.set_status(Status(StatusCode.ERROR, attrs["error.type"]))
        latency = record.latency_ms
        span.end(end_time=None if latency is None else start + int(latency * 1e6))

    def _target(self, connection_id: str) -> dict[str, Any]:
        """The span attributes of a connection, read again when the catalog replaced it."""
        conn = self.catalog.connections.get(connection_id)
        known = self._targets.get(connection_id)
        if known is not None and known[0] is conn:
            return known[1]
        attrs: dict[str, Any] = {"omniroute.connection_id": connection_id}
        if conn is not None:
            system = PROVIDER_NAMES.get(conn.type, conn.type)
            attrs["gen_ai.provider.name"] = system
            attrs["gen_ai.system"] = system  # the name before semantic conventions 1.37
            base_url = conn.settings.get("base_url")
            if isinstance(base_url, str) and base_url:
                url = urlsplit(base_url)  # the host and port only: never its query or user
                if url.hostname:
                    attrs["server.address"] = url.hostname
                    attrs["server.port"] = url.port or (443 if url.scheme == "https" else 80)
            self._targets[connection_id] = (conn, attrs)
        return attrs
