"""What this plugin reads of the environment: the standard ``OTEL_*`` variables, here only.

Tracing is on when an OTLP endpoint is named (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_ENDPOINT``) or ``OTEL_TRACES_EXPORTER`` names ``otlp``, and
neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none`` turns it off.
Installed but not configured, the plugin adds nothing. Everything else (headers,
timeouts, compression, sampler, batch sizes, resource attributes, service name) is
read by the OpenTelemetry SDK itself, from the same standard variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class OtelConfig:
    enabled: bool
    #: ``http/protobuf`` (the default) or ``grpc`` (needs the ``grpc`` extra)
    protocol: str = "http/protobuf"


def load(environ: Mapping[str, str] | None = None) -> OtelConfig:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OtelConfig(enabled=False)
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")
                 if e.strip()}
    if exporters == {"none"}:
        return OtelConfig(enabled=False)
    endpoint = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
    if not endpoint and "otlp" not in exporters:
        return OtelConfig(enabled=False)
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "http/protobuf")
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not one of "
                         f"{', '.join(PROTOCOLS)}")
    return OtelConfig(enabled=True, protocol=protocol)
