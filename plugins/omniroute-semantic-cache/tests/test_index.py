"""The per-scope indexes: an exact scan while small, an inverted file from ``large`` on,
finding the same near neighbours with the same (exact) similarities."""

from __future__ import annotations

import numpy as np
import pytest
from semantic_testkit import Layers, make_key

from omniroute_semantic_cache.embedders import HashingEmbedder
from omniroute_semantic_cache.index import ScopedIndex

DIM = 384


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def near(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from the unit ``vector``."""
    noise = rng.standard_normal(vector.shape[0]).astype(np.float32)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return (cosine * vector + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return unit(rng.standard_normal((6000, DIM))), np.arange(10, 6010, dtype=np.int64)


def test_a_large_scope_is_an_inverted_file_that_finds_what_the_exact_scan_finds(
        data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = data
    exact, ivf = ScopedIndex(DIM, large=10**9), ScopedIndex(DIM, large=5000)
    exact.add("s", ids, vectors)
    ivf.add("s", ids, vectors)
    assert (exact.kind("s"), ivf.kind("s"), len(ivf)) == ("flat", "ivf", 6000)
    rng = np.random.default_rng(4)
    for row in range(0, 6000, 60):  # 100 questions at cosine 0.95 from a stored one
        query = near(vectors[row], 0.95, rng)
        assert ivf.search("s", query, 4)[0] == pytest.approx(exact.search("s", query, 4)[0])
        found_id, similarity = ivf.search("s", query, 1)[0]
        assert found_id == ids[row] and similarity == pytest.approx(0.95, abs=1e-5)


def test_a_scope_grows_into_an_inverted_file_and_is_trained_again_when_it_doubles(
        data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = data
    index = ScopedIndex(DIM, large=1500)
    for start in range(0, 1400, 200):
        index.add("s", ids[start:start + 200], vectors[start:start + 200])
    assert index.kind("s") == "flat"
    index.add("s", ids[1400:1600], vectors[1400:1600])  # passes 1500: every row moves
    assert index.kind("s") == "ivf" and len(index) == 1600
    assert index._trained["s"] == 1600
    index.add("s", ids[1600:3200], vectors[1600:3200])  # 3200 >= 2 x 1600: new lists
    assert index._trained["s"] == 3200 and len(index) == 3200
    for row in (0, 1599, 1600, 3199):  # rows from before and after both trainings
        assert index.search("s", vectors[row], 1)[0] == (ids[row], pytest.approx(1.0))
    index.remove("s", ids[[0, 3199]])
    assert len(index) == 3198
    assert index.search("s", vectors[0], 1)[0][0] != ids[0]
    index.remove("s", ids[1:3199])
    assert index.kind("s") is None and len(index) == 0


async def test_the_layer_with_large_scopes(layers: Layers) -> None:
    """Rebuilt at start as inverted files, hits, guards and deletes work the same."""
    layer = await layers.make(HashingEmbedder(), large_scope=50)
    stored = [f"What is the population of city number {n} in the list?" for n in range(60)]
    for n, prompt in enumerate(stored):
        await layer.store(make_key(prompt), f"answer {n}".encode(), 3600)
    await layer.store(make_key("convert 100 F to C"), b"37.8 C", 3600)
    assert layer._index is not None and layer._index.kind(layer.scope(make_key("x"))) == "ivf"
    await layer.close()

    again = await layers.make(HashingEmbedder(), large_scope=50)  # rebuilt from the file
    assert again._index is not None and again._index.kind(again.scope(make_key("x"))) == "ivf"
    hit = await again.lookup(make_key("what is the population of city number 7 in the list"))
    assert hit is not None and hit.entry == b"answer 7"
    assert await again.lookup(make_key("What is the population of city number 8 in a list?"
                                       )) is None  # numbers guard or below threshold
    assert await again.lookup(make_key("convert 100 C to F")) is None
    assert await again.delete(make_key(stored[7]).exact)
    assert await again.lookup(make_key("what is the population of city number 7 in the list")
                              ) is None
