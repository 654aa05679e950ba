"""The vectors in memory: one exact inner-product faiss index per scope.

A request is only ever compared with entries of its own scope (same tenant,
model, system prompt, tools, parameters and embedder), so there is no post-filter
to get wrong, scans stay small, and the nearest neighbour does not creep closer
as the whole cache grows. Vectors are unit length, so inner product is cosine.

faiss is imported on first use (in the layer's worker thread) and told to use
one OpenMP thread. Not thread-safe: only the worker thread touches an index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from omniroute_semantic_cache.embedders import Vectors

Ids = npt.NDArray[np.int64]


def _faiss() -> Any:
    import faiss

    faiss.omp_set_num_threads(1)
    return faiss


class ScopedIndex:
    """``scope -> IndexIDMap2(IndexFlatIP(dim))``; ids are the SQLite row ids."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._faiss = _faiss()
        self._by_scope: dict[str, Any] = {}

    def __len__(self) -> int:
        return sum(index.ntotal for index in self._by_scope.values())

    @property
    def scopes(self) -> int:
        return len(self._by_scope)

    def add(self, scope: str, ids: Ids, vectors: Vectors) -> None:
        index = self._by_scope.get(scope)
        if index is None:
            index = self._by_scope[scope] = self._faiss.IndexIDMap2(
                self._faiss.IndexFlatIP(self.dim))
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                           np.ascontiguousarray(ids, np.int64))

    def remove(self, scope: str, ids: Ids) -> None:
        """Drop ``ids`` from the scope's index (one O(n) pass: batch them)."""
        index = self._by_scope.get(scope)
        if index is None:
            return
        index.remove_ids(np.ascontiguousarray(ids, np.int64))
        if index.ntotal == 0:
            del self._by_scope[scope]

    def search(self, scope: str, vector: Vectors, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest ids of ``scope`` with their cosine, best first."""
        index = self._by_scope.get(scope)
        if index is None or index.ntotal == 0:
            return []
        sims, ids = index.search(np.ascontiguousarray(vector.reshape(1, -1), np.float32),
                                 min(k, index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True) if i >= 0]

    def reset(self) -> None:
        self._by_scope.clear()
