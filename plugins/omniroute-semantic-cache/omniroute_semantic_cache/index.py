"""The vectors in memory: one faiss index per scope, exact while small, IVF when large.

A request is only ever compared with entries of its own scope (same tenant,
model, system prompt, tools, parameters and embedder), so there is no post-filter
to get wrong, scans stay small, and the nearest neighbour does not creep closer
as the whole cache grows. Vectors are unit length, so inner product is cosine.

A scope below ``large`` entries (20 000) is an exact scan (``IndexFlatIP``: about
1 ms at 20k, but 6-17 ms at 100k, as it reads all 150 MB of vectors per
query). From ``large`` on it becomes an inverted file (``IndexIVFFlat``, 256
lists trained by k-means on a sample, 32 of them searched: an eighth of the
vectors, under 1 ms at 100k). Its similarities are still exact (the vectors are
kept whole, only which are compared is approximate), so it can miss a hit but
never makes one the flat scan would not: a cosine at or above the 0.95 threshold
puts the two vectors so close that they share a list or a neighbouring one
(random 384-d vectors, the worst case: 200 of 200 such neighbours found with 16
lists searched, 194 with 8). The inverted file is trained again when the scope
has doubled since (lists stay balanced), and is rebuilt at start like the rest.

faiss is imported on first use (in the layer's worker thread) and told to use
one OpenMP thread; it releases the GIL while it works. Not thread-safe: only the
worker thread touches an index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from omniroute_semantic_cache.embedders import Vectors

Ids = npt.NDArray[np.int64]

#: entries from which a scope is an inverted file instead of an exact scan
LARGE_SCOPE = 20_000
#: the inverted file's lists, and how many of them a search reads
LISTS = 256
PROBES = 32
#: k-means: training points per list, and iterations (about 0.3 s for 256 lists)
TRAIN_PER_LIST = 40
TRAIN_ITERATIONS = 10


def _faiss() -> Any:
    import faiss

    faiss.omp_set_num_threads(1)
    return faiss


class ScopedIndex:
    """``scope -> index`` (``IndexIDMap2(IndexFlatIP)`` or ``IndexIVFFlat``); ids are the
    SQLite row ids.

    :param dim: the vectors' length.
    :param large: entries from which a scope's index is an inverted file.
    """

    def __init__(self, dim: int, large: int = LARGE_SCOPE) -> None:
        self.dim = dim
        self.large = large
        self._faiss = _faiss()
        self._by_scope: dict[str, Any] = {}
        #: size of each inverted-file scope when its lists were trained
        self._trained: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(index.ntotal for index in self._by_scope.values())

    @property
    def scopes(self) -> int:
        return len(self._by_scope)

    def kind(self, scope: str) -> str | None:
        """``flat``, ``ivf`` or None (no such scope)."""
        if scope not in self._by_scope:
            return None
        return "ivf" if scope in self._trained else "flat"

    def add(self, scope: str, ids: Ids, vectors: Vectors) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        ids = np.ascontiguousarray(ids, np.int64)
        index = self._by_scope.get(scope)
        size = len(ids) + (0 if index is None else index.ntotal)
        trained = self._trained.get(scope)
        if size >= self.large and (trained is None or size >= 2 * trained):
            if index is not None:  # what it holds, with the new ones, in new lists
                old_ids, old_vectors = self._contents(scope, index)
                ids = np.concatenate([old_ids, ids])
                vectors = np.concatenate([old_vectors, vectors])
            self._by_scope[scope] = self._inverted(vectors, ids)
            self._trained[scope] = len(ids)
            return
        if index is None:
            index = self._by_scope[scope] = self._faiss.IndexIDMap2(
                self._faiss.IndexFlatIP(self.dim))
        index.add_with_ids(vectors, ids)

    def remove(self, scope: str, ids: Ids) -> None:
        """Drop ``ids`` from the scope's index (one O(n) pass: batch them)."""
        index = self._by_scope.get(scope)
        if index is None:
            return
        index.remove_ids(np.ascontiguousarray(ids, np.int64))
        if index.ntotal == 0:
            del self._by_scope[scope]
            self._trained.pop(scope, None)

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
        self._trained.clear()

    # ------------------------------------------------------------------ inverted files

    def _inverted(self, vectors: Vectors, ids: Ids) -> Any:
        faiss = self._faiss
        lists = min(LISTS, max(1, len(ids) // TRAIN_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, lists,
                                   faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = TRAIN_ITERATIONS
        index.cp.seed = 1234  # the same lists from the same rows
        sample = min(len(ids), lists * TRAIN_PER_LIST)
        step = max(1, len(ids) // sample)
        index.train(np.ascontiguousarray(vectors[::step][:sample]))
        index.nprobe = min(PROBES, lists)
        index.add_with_ids(vectors, ids)
        return index

    def _contents(self, scope: str, index: Any) -> tuple[Ids, Vectors]:
        """Every id and vector of a scope's index."""
        faiss = self._faiss
        if scope not in self._trained:  # IndexIDMap2 over a flat index
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            return ids, index.index.reconstruct_n(0, index.ntotal)
        lists = index.invlists
        all_ids, all_vectors = [], []
        for no in range(lists.nlist):
            size = lists.list_size(no)
            if size:
                all_ids.append(faiss.rev_swig_ptr(lists.get_ids(no), size).copy())
                codes = faiss.rev_swig_ptr(lists.get_codes(no), size * lists.code_size)
                all_vectors.append(np.frombuffer(codes.copy(), np.float32).reshape(size, -1))
        return (np.concatenate(all_ids).astype(np.int64),
                np.concatenate(all_vectors).astype(np.float32))
