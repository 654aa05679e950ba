"""Helpers of the semantic cache's tests: embedders with known vectors, keys, layers.

(A module of its own, not conftest.py: the repository's tests/conftest.py is also named
``conftest``, and a test importing from it by name could get that one.)
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from omniroute import CacheKey
from omniroute.config import Settings

from omniroute_semantic_cache.embedders import HashingEmbedder, Vectors
from omniroute_semantic_cache.layer import SemanticLayer


class ScriptedEmbedder:
    """Maps given texts to hand-built unit vectors: ``cosines[text]`` is the text's cosine
    with the base vector (the one every other text gets), so a test sets similarities
    exactly (0.949 vs 0.951)."""

    name = "scripted-test-v1"
    dim = 8

    def __init__(self, cosines: dict[str, float], max_tokens: int = 256) -> None:
        self.cosines = cosines
        self.max_tokens = max_tokens
        self.encoded: list[str] = []

    def load(self) -> None:
        """Nothing to load."""

    def encode(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            self.encoded.append(text)
            c = self.cosines.get(text, 1.0)
            out[row, 0], out[row, 1] = c, math.sqrt(max(0.0, 1.0 - c * c))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class SlowEmbedder(HashingEmbedder):
    """The hashing embedder, taking ``delay`` seconds per call (sleeping, GIL released)."""

    name = "slow-test-v1"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def encode(self, texts: list[str]) -> Vectors:
        time.sleep(self.delay)
        return super().encode(texts)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_key(prompt: str, *, tenant: str = "key-1", model: str = "gpt-4o-mini",
             scope: str = "scope-a", **flags: Any) -> CacheKey:
    exact = hashlib.sha256("\x00".join((tenant, model, scope, prompt)).encode()).hexdigest()
    return CacheKey(exact=exact, scope=scope, prompt=prompt, tenant=tenant, model=model,
                    multi_turn=flags.get("multi_turn", False),
                    has_tools=flags.get("has_tools", False),
                    has_media=flags.get("has_media", False),
                    prompt_tokens=flags.get("prompt_tokens", 12))


class Layers:
    """Makes started layers on one file, and closes them after the test."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.settings = Settings(semantic_cache=True)
        self.made: list[SemanticLayer] = []

    def set(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self.settings, name, Settings.coerce(name, value))

    async def make(self, embedder: Any = None, *, start: bool = True,
                   **kwargs: Any) -> SemanticLayer:
        layer = SemanticLayer(self.path, lambda: self.settings, embedder or HashingEmbedder(),
                              clock=self.clock, **kwargs)
        self.made.append(layer)
        if start:
            assert await layer.ready(10.0), layer.error
        return layer



