"""Cache layers: lookups the exact cache makes after its backends missed (a semantic cache).

The exact-cache stage (:mod:`omniroute.cache.stage`) computes a :class:`CacheKey`
once for every cacheable request. Its backends are asked for ``key.exact``;
when they miss, each :class:`CacheLayer` (registered by a plugin with the
``register_cache_layers`` hook) is asked in turn with the whole key, and the
first :class:`LayerHit` answers the request. After a cacheable answer the
stage stores the same entry bytes in every layer (``store``), off the
response path.

A layer never sees a request that is not cacheable (errors, truncated answers,
``n > 1``, a bypass header, a non-deterministic request outside a ``cache``
mode), and the entry bytes it keeps are opaque to it: the stage's serialized
canonical response (:mod:`omniroute.cache.entry`), which a hit replays in the
client's own format, JSON or stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What one cacheable request is, for the exact cache and for the layers behind it."""

    #: BLAKE2b (16 bytes, hex) of the tenant and the canonical request (its text form when
    #: it has one: :func:`omniroute.cache.key.text_form`): the exact cache's key by name
    #: (:func:`omniroute.cache.key.key_name`; the ``memory`` backend keeps a short text
    #: request's by its JSON array itself)
    exact: str
    #: BLAKE2b (hex) of everything except the last user message's text: the tenant, the
    #: requested model, system, earlier turns, tools, tool_choice, response format,
    #: sampling parameters, max_tokens, stop and reasoning. Two requests may share an
    #: answer only within one scope.
    scope: str
    #: the last user message's text (its text parts, joined by newlines)
    prompt: str
    #: who asked: the API key id (``""`` without one); tenants never share entries
    tenant: str
    #: the model the client requested (before aliases and combos resolve it)
    model: str
    #: the conversation has turns before the last user message
    multi_turn: bool
    #: the request offers tools, or its conversation holds tool calls or results
    has_tools: bool
    #: a message holds an image or a file
    has_media: bool
    #: estimated prompt tokens of the whole request (:func:`omniroute.tokens.estimate_request`)
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class LayerHit:
    """A layer's answer: the stored entry, and how similar its request was (None: exact)."""

    entry: bytes
    similarity: float | None = None


class CacheLayer:
    """Base class of cache layers; a plugin registers instances (``register_cache_layers``).

    Every method is awaited on the request's path except :meth:`store`, which the
    stage calls from its background writer. A layer that fails raises: the stage
    logs it and carries on as if it missed (a cache never fails a request).
    """

    #: the layer's name (in ``GET /api/cache/stats`` and the logs); unique
    name: ClassVar[str]
    #: the boolean setting that says whether the layer is active, when :meth:`active` reads
    #: that and nothing else: the cache stage then reads it once per settings object (the
    #: gateway makes a new one on every change) instead of calling :meth:`active` on every
    #: request. None: :meth:`active` is asked every time.
    setting: ClassVar[str | None] = None

    def active(self) -> bool:
        """Whether the layer answers lookups now (its setting is on). While no layer is
        active the stage leaves out of the key what only layers read (half the key's cost)
        and asks no layer; such a key's ``scope`` is ``""``, and it is stored in no layer."""
        return True

    async def lookup(self, key: CacheKey) -> LayerHit | None:
        """The entry stored for a request like ``key``, or None."""
        raise NotImplementedError

    async def store(self, key: CacheKey, entry: bytes, ttl: float) -> None:
        """Keep ``entry`` (the answer to ``key``) for ``ttl`` seconds."""
        raise NotImplementedError

    async def delete(self, exact: str) -> bool:
        """Forget the entry stored under the exact key ``exact`` (``DELETE
        /api/cache/entries/{key}``); True when there was one. The default: a layer that
        keeps no entry by exact key has none to forget."""
        return False

    async def clear(self) -> None:
        """Forget every entry."""
        raise NotImplementedError

    async def stats(self) -> dict[str, Any]:
        """Numbers for ``GET /api/cache/stats``: at least ``entries`` and ``bytes`` when known."""
        return {}

    async def close(self) -> None:
        """Release what the layer holds (threads, files); called once at shutdown."""
