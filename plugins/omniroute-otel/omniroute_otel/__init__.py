"""OpenTelemetry traces for omniroute: one span per client request, exported over OTLP.

Install ``omniroute-otel`` and name an OTLP endpoint with the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318``, see :mod:`.config`);
without one the plugin adds nothing. The spans carry the GenAI semantic-convention
attributes (:mod:`.stage`) and never prompt or answer content.

Each gateway gets its own tracer provider when it starts (``register_stages``)
and flushes it when it stops; the process-wide OpenTelemetry globals are left
alone. Tests pass their own span processor: ``OtelPlugin(processor=...)``.

OpenTelemetry's SDK (0.6 MiB of resident memory) is imported only when tracing is
on: installing the plugin costs a gateway that does not trace nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from omniroute import Stage, __version__, hookimpl
from omniroute.appkeys import CATALOG
from omniroute.config import Config

from omniroute_otel import config

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from omniroute_otel.stage import TracingStage

__all__ = ["OtelPlugin", "TracingStage", "plugin"]

#: the tracer provider of a started gateway (when tracing is on)
TRACER_PROVIDER: web.AppKey[TracerProvider] = web.AppKey("otel_tracer_provider")


def __getattr__(name: str) -> Any:
    if name == "TracingStage":  # the public name, without importing OpenTelemetry first
        from omniroute_otel.stage import TracingStage

        return TracingStage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def otlp_exporter(protocol: str) -> SpanExporter:
    """The OTLP span exporter for ``protocol``; it reads its ``OTEL_EXPORTER_OTLP_*`` itself."""
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise RuntimeError("OTLP over gRPC needs: pip install 'omniroute-otel[grpc]'") \
                from exc
        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def resource() -> Resource:
    """``service.name`` omniroute unless ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
    name one, and omniroute's version."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    found = Resource.create({SERVICE_VERSION: __version__})
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: "omniroute"}))
    return found


class OtelPlugin:
    """The plugin's hooks.

    :param processor: makes the span processor of each gateway (tests: a
        ``SimpleSpanProcessor`` over an ``InMemorySpanExporter``); default: from the
        environment, a ``BatchSpanProcessor`` over the OTLP exporter, or nothing
        when OTLP is not configured.
    """

    def __init__(self, processor: Callable[[], SpanProcessor] | None = None) -> None:
        self.processor = processor

    def _processor(self) -> SpanProcessor | None:
        if self.processor is not None:
            return self.processor()
        settings = config.load()
        if not settings.enabled:
            return None
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return BatchSpanProcessor(otlp_exporter(settings.protocol))

    @hookimpl
    def configure_app(self, app: web.Application, config: Config) -> None:
        async def flush(app: web.Application) -> None:
            provider = app.get(TRACER_PROVIDER)
            if provider is not None:  # the last spans go out (bounded by OTEL_BSP_EXPORT_TIMEOUT)
                await asyncio.to_thread(provider.shutdown)

        app.on_cleanup.append(flush)

    @hookimpl
    def register_stages(self, register: Callable[[Stage], None], app: web.Application) -> None:
        processor = self._processor()
        if processor is None:
            return
        from opentelemetry.sdk.trace import TracerProvider

        from omniroute_otel.stage import TracingStage

        provider = TracerProvider(resource=resource())  # sampler: OTEL_TRACES_SAMPLER
        provider.add_span_processor(processor)
        app[TRACER_PROVIDER] = provider
        tracer = provider.get_tracer("omniroute_otel", __version__)
        register(TracingStage(tracer, app[CATALOG]))


#: the object the ``otel`` entry point names
plugin = OtelPlugin()
