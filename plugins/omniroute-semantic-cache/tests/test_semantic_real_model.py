"""The real model, loaded once for the session (5-8 s): its weights, and the layer deciding
with it at the default threshold. Never skipped: the test command installs the model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from semantic_testkit import Layers, make_key

from omniroute_semantic_cache.minilm import (
    WEIGHTS_SHA256,
    MiniLMEmbedder,
    file_sha256,
    model_dir,
)

pytestmark = pytest.mark.real_model

ANSWER = b'{"answer": "Paris"}'


@pytest.fixture(scope="session")
def minilm() -> Iterator[MiniLMEmbedder]:
    embedder = MiniLMEmbedder()
    embedder.load()
    yield embedder


def cosine(embedder: MiniLMEmbedder, a: str, b: str) -> float:
    vecs = embedder.encode([a, b])
    return float(vecs[0] @ vecs[1])


def test_the_weights_are_the_pinned_ones(minilm: MiniLMEmbedder) -> None:
    assert file_sha256(model_dir() / "model.safetensors") == WEIGHTS_SHA256
    vecs = minilm.encode(["hello", "What is the capital of France?"])
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert minilm.max_tokens == 256
    assert minilm.count_tokens("What is the capital of France?") == 9  # [CLS] 7 words ? [SEP]


def test_similarities(minilm: MiniLMEmbedder) -> None:
    assert cosine(minilm, "What is the capital of France?",
                  "Which city is the capital of France?") >= 0.9
    assert cosine(minilm, "What is the capital of France?", "How do volcanoes form?") < 0.3
    # the near miss the threshold alone does not stop (0.95 on this model)
    assert cosine(minilm, "convert 100 F to C", "convert 100 C to F") >= 0.95


async def test_the_layer_with_the_real_model(minilm: MiniLMEmbedder, layers: Layers) -> None:
    layer = await layers.make(minilm)  # the default threshold, 0.95
    assert layer.embedder.name == "all-MiniLM-L6-v2@1110a243"
    await layer.store(make_key("What is the capital of France?"), ANSWER, 3600)
    await layer.store(make_key("convert 100 F to C"), b"37.8 C", 3600)
    await layer.store(make_key("enable 2FA"), b"Settings > Security > Enable", 3600)

    hit = await layer.lookup(make_key("What is France's capital?"))  # a paraphrase
    assert hit is not None and hit.entry == ANSWER
    assert hit.similarity is not None and 0.95 <= hit.similarity < 1.0

    assert await layer.lookup(make_key("convert 100 C to F")) is None
    assert layer.outcomes["guard:units"] == 1  # above the threshold: the guard said no
    assert await layer.lookup(make_key("disable 2FA")) is None

    assert await layer.lookup(make_key("What is France's capital?", tenant="key-2")) is None
    assert await layer.lookup(make_key("What is France's capital?", model="gpt-4o")) is None
    assert layer.outcomes["hit"] == 1
