"""omniroute: one local endpoint for every LLM provider, account and wire format.

This module is the public surface for plugin authors; everything else is private.
"""

from omniroute.auth.base import AuthScheme, Principal
from omniroute.cache.base import CacheBackend
from omniroute.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.providers.http import HTTPProvider
from omniroute.version import __version__

__all__ = [
    "AuthScheme",
    "CacheBackend",
    "GatewayError",
    "HTTPProvider",
    "InvalidRequest",
    "Preset",
    "Principal",
    "Provider",
    "ProviderContext",
    "UpstreamCall",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "hookimpl",
]
