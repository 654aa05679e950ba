"""What an embedder is, and the deterministic one the tests use.

An embedder turns texts into unit-length float32 rows. Its ``name`` goes into
every scope (and every stored row), so vectors of two embedders never meet in
one index. The real one is :class:`omniroute_semantic_cache.minilm.MiniLMEmbedder`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Texts in, unit rows out. Every method runs in the layer's one worker thread."""

    #: identifies the model and its version (stored with each vector, part of each scope)
    name: str
    #: length of a vector
    dim: int
    #: the longest input, in the model's tokens, that it embeds without truncating
    max_tokens: int

    def load(self) -> None:
        """Get ready (import, load weights); called once, before any other method."""

    def encode(self, texts: list[str]) -> Vectors:
        """One L2-normalised float32 row per text, shape ``(len(texts), dim)``."""

    def count_tokens(self, text: str) -> int:
        """How many of the model's tokens ``text`` is."""


_WORD = re.compile(r"\w+")
_PIECE = re.compile(r"\w+|[^\w\s]")


class HashingEmbedder:
    """A deterministic feature-hashing embedder (words and character trigrams), for tests.

    Uses ``blake2b``, never Python's salted ``hash()``, so vectors are the same in
    every process: case and punctuation variants score 1.0, a one-word change
    about 0.7, unrelated texts about 0.
    """

    name = "hashing-test-v1"
    dim = 384
    max_tokens = 256

    def load(self) -> None:
        """Nothing to load."""

    def encode(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            padded = f" {' '.join(words)} "
            features = [*("w:" + w for w in words),
                        *("c:" + padded[i:i + 3] for i in range(len(padded) - 2))]
            for feature in features:
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(),
                                   "little")
                out[row, h % self.dim] += 1.0 if h >> 63 else -1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] /= norm or 1.0
        return out

    def count_tokens(self, text: str) -> int:
        return len(_PIECE.findall(text))
