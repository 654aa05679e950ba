"""The real model, loaded once for the session (5-8 s): its weights, and the layer deciding
with it at the default threshold. Never skipped: the test command installs the model."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from aiohttp import web
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness
from semantic_testkit import Layers, make_key

from omniroute_semantic_cache import SemanticCachePlugin, SemanticLayer
from omniroute_semantic_cache.encoder import ProcessEmbedder
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


def test_torch_is_the_cpu_build_and_no_cuda_came_in(minilm: MiniLMEmbedder) -> None:
    import importlib.metadata

    import torch

    assert torch.__version__.endswith("+cpu")  # requirements-test.txt pins it beside us
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    assert not {n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"}


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


# ------------------------------------------------------------------ through the gateway


class Upstream:
    """A small OpenAI-compatible upstream: answers every chat request, counting them."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.prompts.append(prompt)
        return web.json_response({
            "id": f"chatcmpl-{len(self.prompts)}", "object": "chat.completion", "created": 1,
            "model": body["model"], "choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": f"answer #{len(self.prompts)}"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})


async def test_semantic_hits_through_the_gateway_with_the_sdk(
        aiohttp_client: Any, aiohttp_server: Any,
        tmp_path: Path) -> None:
    upstream = Upstream()
    server = await aiohttp_server(upstream.app)
    # the plugin as installed: the model loads in the layer's own encoder process
    plugins = load_plugins(blocked=["semantic-cache"], extra=[
        ("semantic-cache-test", SemanticCachePlugin())])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path, semantic_cache=True,
                                                              semantic_cache_timeout=30),
                             plugins=plugins)
    layer = next(layer for layer in gw.cache.layers if isinstance(layer, SemanticLayer))
    assert await layer.ready(600.0), layer.error  # 6 s idle; minutes on a saturated box
    assert isinstance(layer.embedder, ProcessEmbedder) and layer.embedder.pid is not None
    await gw.add_provider({"type": "openai", "prefix": "up", "name": "fake",
                           "base_url": str(server.make_url("/v1")), "api_key": "sk-up"})
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x", max_retries=0)

    async def ask(prompt: str, *, model: str = "up/gpt-4o-mini",
                  sdk: openai.AsyncOpenAI = client) -> tuple[str, Any]:
        raw = await sdk.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0)
        await gw.cache.settled()
        return raw.parse().choices[0].message.content or "", raw.headers

    text, headers = await ask("What is the capital of France?")
    assert (text, headers["X-OmniRoute-Cache"]) == ("answer #1", "MISS")
    text, headers = await ask("What is France's capital?")  # reworded: the semantic layer
    assert (text, headers["X-OmniRoute-Cache"]) == ("answer #1", "HIT")
    assert 0.95 <= float(headers["X-OmniRoute-Cache-Similarity"]) < 1.0

    # the same paraphrase, streamed: the stored answer replayed as chunks
    stream = await client.chat.completions.create(
        model="up/gpt-4o-mini", messages=[{"role": "user", "content": "What is France's capital?"}],
        temperature=0, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream
                    if c.choices]) == "answer #1"

    await ask("convert 100 F to C")
    text, headers = await ask("convert 100 C to F")  # cosine 0.95+, the units guard says no
    assert headers["X-OmniRoute-Cache"] == "MISS" and text == "answer #3"

    text, headers = await ask("What is France's capital?", model="up/gpt-4o")  # another model
    assert headers["X-OmniRoute-Cache"] == "MISS"
    other = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", max_retries=0,
                               api_key=await gw.create_key("tenant-2"))
    text, headers = await ask("What is France's capital?", sdk=other)  # another tenant
    assert headers["X-OmniRoute-Cache"] == "MISS"
    assert upstream.prompts == ["What is the capital of France?", "convert 100 F to C",
                                "convert 100 C to F", "What is France's capital?",
                                "What is France's capital?"]
    stats = (await gw.cache.stats())["layers"]["semantic"]
    assert stats["hits"] == 2 and stats["state"] == "ready"
    assert stats["encoder_process"]["failures"] == 0
    child = layer.embedder.pid
    await gw.client.close()  # the gateway stops: its encoder process with it
    assert child is not None and not Path(f"/proc/{child}").exists()  # ended and reaped


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_the_model_encodes_in_its_own_process(layers: Layers) -> None:
    """The plugin's way: the gateway's process spends next to no CPU on a lookup (no
    torch in it, so no GIL taken from the event loop); the child does the encoding."""
    layers.set(semantic_cache_timeout=30)  # every lookup counted, however loaded the machine
    layer = await layers.make(MiniLMEmbedder(), isolate=True, start=False)
    assert await layer.ready(600.0), layer.error  # loaded in the child (6-150 s: load)
    embedder = layer.embedder
    assert isinstance(embedder, ProcessEmbedder) and embedder.max_tokens == 256
    child = embedder.pid
    assert child is not None
    await layer.store(make_key("What is the capital of France?"), ANSWER, 3600)
    await layer.store(make_key("convert 100 F to C"), b"37.8 C", 3600)
    hit = await layer.lookup(make_key("What is France's capital?"))
    assert hit is not None and hit.entry == ANSWER and 0.95 <= (hit.similarity or 0) < 1.0
    assert await layer.lookup(make_key("convert 100 C to F")) is None
    assert layer.outcomes["guard:units"] == 1

    ours, theirs = time.process_time(), _cpu_seconds(child)
    for n in range(20):
        await layer.lookup(make_key(f"Explain how glaciers shape valley number {n}"))
    ours, theirs = time.process_time() - ours, _cpu_seconds(child) - theirs
    assert layer.outcomes["miss"] == 20
    assert ours < theirs / 4, (ours, theirs)  # measured: about 0.3 ms vs 15-40 ms a lookup
