"""Response caches: backends (where entries are kept), the exact-cache stage, and the
layers a plugin adds behind it (a semantic cache)."""

from omniroute.cache.base import CacheBackend
from omniroute.cache.layer import CacheKey, CacheLayer, LayerHit

__all__ = ["CacheBackend", "CacheKey", "CacheLayer", "LayerHit"]
