"""omniroute: one local endpoint for every LLM provider, account and wire format.

This module is the public surface for plugin authors; everything else is private.
"""

# isort: off
from omniroute import lean  # noqa: F401  (first: the choices it makes precede aiohttp)
# isort: on
from omniroute.auth.base import AuthScheme, Principal
from omniroute.cache.base import CacheBackend
from omniroute.cache.layer import CacheKey, CacheLayer, LayerHit
from omniroute.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from omniroute.formats import canonical
from omniroute.formats.base import ClientRequest, Format
from omniroute.hookspecs import hookimpl
from omniroute.oauth import OAuthProvider, OAuthService
from omniroute.pipeline.context import RequestContext
from omniroute.pipeline.stages import Stage, StageRun
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    Timeouts,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.providers.canonical import CanonicalProvider
from omniroute.providers.http import HTTPProvider
from omniroute.sharedstate import Pending, RequestBatch, SharedState
from omniroute.storage.backend import DatabaseBackend
from omniroute.storage.requestlog import RequestRecord
from omniroute.storage.store import Connection
from omniroute.version import __version__

__all__ = [
    "AuthScheme",
    "CacheBackend",
    "CacheKey",
    "CacheLayer",
    "CanonicalProvider",
    "ClientRequest",
    "Connection",
    "DatabaseBackend",
    "Format",
    "GatewayError",
    "HTTPProvider",
    "InvalidRequest",
    "LayerHit",
    "OAuthProvider",
    "OAuthService",
    "Pending",
    "Preset",
    "Principal",
    "Provider",
    "ProviderContext",
    "RequestBatch",
    "RequestContext",
    "RequestRecord",
    "SharedState",
    "Stage",
    "StageRun",
    "Timeouts",
    "UpstreamCall",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "canonical",
    "hookimpl",
]
