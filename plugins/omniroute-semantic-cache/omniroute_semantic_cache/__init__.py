"""A semantic response cache for omniroute (the ``semantic-cache`` plugin).

Installing it adds one cache layer, ``semantic``, behind the exact response
cache; it does nothing until the ``semantic_cache`` setting is turned on
(``PATCH /api/settings {"semantic_cache": true}`` or ``OMNIROUTE_SEMANTIC_CACHE=1``).
Then the model loads in the background (5-8 s; lookups miss until it is ready)
and a single-turn question that was asked before in other words, in the same
scope, with the lexical guards agreeing, is answered from the stored answer.
See README.md and :mod:`.layer`.

Nothing heavy is imported with this module, and torch and sentence-transformers
never load in the gateway's process: the model runs in a process of its own
(:mod:`.encoder`), started with the layer and stopped with the gateway; faiss
loads in the layer's worker thread, only when the setting is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from omniroute import CacheLayer, hookimpl
from omniroute.appkeys import CATALOG

from omniroute_semantic_cache.layer import SemanticLayer

if TYPE_CHECKING:
    from omniroute_semantic_cache.embedders import Embedder

__all__ = ["FILE_NAME", "SemanticCachePlugin", "SemanticLayer", "plugin"]

#: the layer's SQLite file, under the gateway's data directory
FILE_NAME = "semantic-cache.sqlite3"


def minilm() -> Embedder:
    """The default embedder (imported here lazily: the module itself is light)."""
    from omniroute_semantic_cache.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


class SemanticCachePlugin:
    """The plugin's hooks.

    :param embedder: makes each gateway's embedder (default: MiniLM from its package;
        tests pass the deterministic :class:`~.embedders.HashingEmbedder`).
    :param clock: wall-clock seconds for TTL and LRU (tests move it).
    :param isolate: run the embedder in its own process (the default; False: in the
        layer's worker thread, for an embedder that is light or already loaded).
    """

    def __init__(self, embedder: Callable[[], Embedder] = minilm,
                 clock: Callable[[], float] = time.time, isolate: bool = True) -> None:
        self.embedder = embedder
        self.clock = clock
        self.isolate = isolate

    @hookimpl
    def register_cache_layers(self, register: Callable[[CacheLayer], None],
                              app: web.Application) -> None:
        catalog = app[CATALOG]
        layer = SemanticLayer(catalog.config.data_dir / FILE_NAME, lambda: catalog.settings,
                              self.embedder(), clock=self.clock, isolate=self.isolate)
        register(layer)
        if catalog.settings.semantic_cache:
            layer.start()  # in the background: the gateway serves (and misses) meanwhile


#: the object the ``semantic-cache`` entry point names
plugin = SemanticCachePlugin()
