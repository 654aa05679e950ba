"""Embeddings end to end: the openai and ollama SDKs -> the gateway -> fake upstreams.

``gw`` (conftest) has an OpenAI-compatible connection ``up``; ``ol`` adds an Ollama
one (prefix ``ol``), ``gem`` a Gemini one (prefix ``gem``, ``batchEmbedContents``).
Vectors are the fakes' ``fake_vector`` (derived from text length).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import ollama
import openai
import pytest
from fakes.gemini_upstream import FakeGemini
from fakes.gemini_upstream import error as gemini_error
from fakes.ollama_upstream import FakeOllama
from fakes.ollama_upstream import error as ollama_error
from fakes.openai_upstream import error, fake_vector

EMBED = "text-embedding-3-small"


@pytest.fixture
async def ol(gw: Any, aiohttp_server: Any) -> FakeOllama:
    fake = FakeOllama()
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "ollama", "name": "fake-ollama", "prefix": "ol",
                           "base_url": str(server.make_url("")).rstrip("/")})
    return fake


@pytest.fixture
async def gem(gw: Any, aiohttp_server: Any) -> FakeGemini:
    fake = FakeGemini()
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "gemini", "name": "fake-gemini", "prefix": "gem",
                           "base_url": str(server.make_url("")).rstrip("/"),
                           "api_key": "AIza-upstream-test"})
    return fake


@pytest.fixture
async def sdk(gw: Any) -> Any:
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client",
                                max_retries=0, timeout=10)
    yield client
    await client.close()


def embeds(fake: Any) -> list[Any]:
    return [r for r in fake.requests if "embed" in r.path]


async def admin(gw: Any, method: str, path: str, body: Any = None) -> Any:
    resp = await gw.client.request(method, path, json=body, headers=gw.admin_headers)
    assert resp.status < 300, await resp.text()
    return await resp.json()


# ----------------------------------------------------------------------------- OpenAI clients

async def test_openai_sdk_single_and_batch(gw: Any, sdk: Any) -> None:
    one = await sdk.embeddings.create(model=f"up/{EMBED}", input="hello")
    assert one.data[0].embedding == pytest.approx(fake_vector("hello"))  # base64 float32
    assert one.model == f"up/{EMBED}" and one.usage.prompt_tokens == 2
    batch = await sdk.embeddings.create(model=f"up/{EMBED}", input=["a", "bbb", "cc"],
                                        dimensions=4)
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert [d.embedding for d in batch.data] == [
        pytest.approx(fake_vector(t, 4)) for t in ("a", "bbb", "cc")]
    sent = embeds(gw.fake)[-1].json
    assert sent == {"model": EMBED, "input": ["a", "bbb", "cc"], "encoding_format": "float",
                    "dimensions": 4}


async def test_base64_encoding_is_float32(gw: Any) -> None:
    resp = await gw.client.post("/embeddings", json={
        "model": f"up/{EMBED}", "input": "hey", "encoding_format": "base64"})
    raw = base64.b64decode((await resp.json())["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(fake_vector("hey"))


async def test_openai_sdk_to_ollama_upstream(gw: Any, sdk: Any, ol: FakeOllama) -> None:
    done = await sdk.embeddings.create(model="ol/llama3.2", input=["one", "three"])
    assert [d.embedding for d in done.data] == [
        pytest.approx(fake_vector("one")), pytest.approx(fake_vector("three"))]
    assert embeds(ol)[-1].json == {"model": "llama3.2", "input": ["one", "three"]}
    assert done.usage.prompt_tokens == 3  # Ollama's prompt_eval_count


#: one model of each provider type that serves embeddings, and the fake behind it
UPSTREAMS = {"openai": f"up/{EMBED}", "gemini": "gem/gemini-embedding-001",
             "ollama": "ol/llama3.2"}


@pytest.mark.parametrize("kind", sorted(UPSTREAMS))
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_every_provider_type_float_base64_and_dimensions(
    gw: Any, sdk: Any, ol: FakeOllama, gem: FakeGemini, kind: str, encoding: str
) -> None:
    """Both encodings give the fake's vectors (base64: little-endian float32, which the
    SDK hands back undecoded when asked for explicitly); ``dimensions`` reaches each
    upstream in its own field."""
    fake = {"openai": gw.fake, "gemini": gem, "ollama": ol}[kind]
    done = await sdk.embeddings.create(model=UPSTREAMS[kind], input=["one", "three"],
                                       dimensions=5, encoding_format=encoding)

    def floats(embedding: Any) -> list[float]:
        if encoding == "float":
            return list(embedding)
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))

    assert [floats(d.embedding) for d in done.data] == [
        pytest.approx(fake_vector("one", 5)), pytest.approx(fake_vector("three", 5))]
    assert done.model == UPSTREAMS[kind] and done.usage.prompt_tokens > 0
    sent = embeds(fake)[-1].json
    if kind == "gemini":
        assert sent == {"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]},
             "outputDimensionality": 5} for t in ("one", "three")]}
    else:
        assert sent["dimensions"] == 5 and sent["input"] == ["one", "three"]


async def test_raw_base64_from_gemini_is_little_endian_float32(gw: Any, gem: FakeGemini) -> None:
    resp = await gw.client.post("/v1/embeddings", json={
        "model": "gem/gemini-embedding-001", "input": "abcd", "encoding_format": "base64"})
    raw = base64.b64decode((await resp.json())["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == pytest.approx(fake_vector("abcd"))


async def test_gemini_usage_is_estimated_when_the_api_counts_none(
    gw: Any, sdk: Any, gem: FakeGemini
) -> None:
    await sdk.embeddings.create(model="gem/gemini-embedding-001", input="hello there friend")
    await gw.log.flush()
    row = (await gw.log.recent(1))[0]
    assert row["provider"] == "gem" and row["usage_estimated"] and row["prompt_tokens"] > 0


async def test_gemini_takes_250_inputs_in_batches_of_100(gw: Any, sdk: Any,
                                                         gem: FakeGemini) -> None:
    texts = ["w" * (i % 7 + 1) + str(i) for i in range(250)]
    answer = await sdk.embeddings.create(model="gem/gemini-embedding-001", input=texts)
    assert [d.index for d in answer.data] == list(range(250))
    assert [d.embedding for d in answer.data] == [pytest.approx(fake_vector(t, 8))
                                                  for t in texts]
    sent = sorted((r.json["requests"] for r in embeds(gem)), key=lambda part: -len(part))
    assert [len(part) for part in sent] == [100, 100, 50]
    assert sorted(one["content"]["parts"][0]["text"] for part in sent for one in part) \
        == sorted(texts)


async def test_the_gemini_fake_refuses_more_than_100_at_once(aiohttp_client: Any) -> None:
    client = await aiohttp_client(FakeGemini().app)
    resp = await client.post(
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        headers={"x-goog-api-key": "AIza-upstream-test"},
        json={"requests": [{"model": "models/gemini-embedding-001",
                            "content": {"parts": [{"text": "x"}]}}] * 101})
    assert resp.status == 400
    assert "at most 100 requests" in (await resp.json())["error"]["message"]


async def test_pinned_provider_route(gw: Any, gem: FakeGemini) -> None:
    """``/v1/providers/{prefix}/embeddings`` adds the prefix to a bare model."""
    pinned = openai.AsyncOpenAI(base_url=gw.base_url + "/v1/providers/gem", api_key="k",
                                max_retries=0)
    try:
        raw = await pinned.embeddings.with_raw_response.create(
            model="gemini-embedding-001", input="pinned")
    finally:
        await pinned.close()
    assert raw.headers["X-OmniRoute-Provider"] == "gem"
    assert raw.parse().data[0].embedding == pytest.approx(fake_vector("pinned"))
    resp = await gw.client.post("/v1/providers/nope/embeddings",
                                json={"model": "x", "input": "y"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "model_not_found"


async def test_gemini_error_moves_on_to_the_next_provider(
    gw: Any, sdk: Any, gem: FakeGemini
) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "emb", "steps": [
        "gem/gemini-embedding-001", f"up/{EMBED}"]})
    gem.script.append(gemini_error(503))
    raw = await sdk.embeddings.with_raw_response.create(model="emb", input="x")
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    assert raw.headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert len(embeds(gem)) == 1


# ----------------------------------------------------------------------------- Ollama clients

async def test_ollama_client_to_ollama_and_openai_upstreams(gw: Any, ol: FakeOllama) -> None:
    client = ollama.AsyncClient(host=gw.base_url)
    native = await client.embed(model="ol/llama3.2", input=["hi", "there"])
    assert native.embeddings == [fake_vector("hi"), fake_vector("there")]
    assert native.prompt_eval_count == 3 and native.model == "ol/llama3.2"
    cross = await client.embed(model=f"up/{EMBED}", input="bonjour")
    assert cross.embeddings == [fake_vector("bonjour")]
    assert embeds(gw.fake)[-1].json["input"] == ["bonjour"]


async def test_legacy_api_embeddings(gw: Any) -> None:
    resp = await gw.client.post("/api/embeddings", json={"model": f"up/{EMBED}",
                                                         "prompt": "old"})
    assert resp.status == 200
    assert await resp.json() == {"embedding": fake_vector("old")}


# ----------------------------------------------------------------------------- errors

async def test_unknown_model_is_a_400_in_each_clients_shape(gw: Any, sdk: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.embeddings.create(model="nope/none", input="x")
    assert caught.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as ocaught:
        await ollama.AsyncClient(host=gw.base_url).embed(model="nope/none", input="x")
    assert ocaught.value.status_code == 400
    resp = await gw.client.post("/api/embed", json={"model": "nope/none", "input": "x"})
    assert isinstance((await resp.json())["error"], str)  # Ollama's shape: a plain string


@pytest.mark.parametrize(("body", "param"), [
    ({"model": f"up/{EMBED}", "input": ""}, "input"),
    ({"model": f"up/{EMBED}", "input": []}, "input"),
    ({"model": f"up/{EMBED}", "input": ["ok", ""]}, "input"),
    ({"model": f"up/{EMBED}", "input": [1, 2, 3]}, "input"),
    ({"model": f"up/{EMBED}", "input": ["x"] * 2049}, "input"),
    ({"input": "x"}, "model"),
    ({"model": f"up/{EMBED}", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": f"up/{EMBED}", "input": "x", "encoding_format": "int8"}, "encoding_format"),
])
async def test_bad_input_is_a_clear_400(gw: Any, body: dict[str, Any], param: str) -> None:
    resp = await gw.client.post("/v1/embeddings", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert not embeds(gw.fake)


async def test_a_provider_without_embeddings_is_refused_alone(gw: Any) -> None:
    await gw.add_provider({"type": "anthropic", "name": "claude", "prefix": "claude",
                           "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-x"})
    resp = await gw.client.post("/v1/embeddings", json={"model": "claude/c", "input": "x"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "embeddings_not_supported"


# ----------------------------------------------------------------------------- fallback, log

async def test_combo_skips_a_provider_without_embeddings(gw: Any, sdk: Any) -> None:
    await gw.add_provider({"type": "anthropic", "name": "claude", "prefix": "claude",
                           "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-x"})
    await admin(gw, "POST", "/api/combos", {"name": "emb", "steps": [
        "claude/claude-haiku-4-5", f"up/{EMBED}"]})
    raw = await sdk.embeddings.with_raw_response.create(model="emb", input="skip me")
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    assert raw.parse().data[0].embedding == pytest.approx(fake_vector("skip me"))


async def test_upstream_500_moves_on_and_the_log_records_it(
    gw: Any, sdk: Any, ol: FakeOllama
) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "emb", "steps": [
        f"up/{EMBED}", "ol/llama3.2"]})
    gw.fake.script.append(error(500))
    raw = await sdk.embeddings.with_raw_response.create(model="emb", input=["a", "b"])
    assert raw.headers["X-OmniRoute-Provider"] == "ol"
    assert raw.headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert len(embeds(gw.fake)) == 1 and len(embeds(ol)) == 1
    rows = (await admin(gw, "GET", "/api/requests"))["requests"]
    row = next(r for r in rows if r["endpoint"] == "embeddings")
    assert row["status"] == 200 and row["model_requested"] == "emb"
    assert row["provider"] == "ol" and row["prompt_tokens"] == 2 and row["attempts"] == 2


async def test_every_target_failing_is_a_503_naming_them(gw: Any, ol: FakeOllama) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "emb", "steps": [
        f"up/{EMBED}", "ol/llama3.2"]})
    gw.fake.script.append(error(500))
    ol.script.append(ollama_error(503))
    resp = await gw.client.post("/api/embed", json={"model": "emb", "input": "x"})
    assert resp.status == 503
    assert "All 2 targets" in (await resp.json())["error"]



@pytest.mark.parametrize("count", [2**63, -3, 1.5, True])  # 2**63: past int64
async def test_an_absurd_upstream_token_count_is_not_recorded(gw: Any, sdk: Any,
                                                               count: Any) -> None:
    """It would not fit SQLite's integers: estimated instead, and the request log goes on."""
    from fakes.openai_upstream import reply
    gw.fake.script.append(reply(usage={"prompt_tokens": count}))
    await sdk.embeddings.create(model=f"up/{EMBED}", input="hello there")
    await gw.log.flush()
    row = (await gw.log.recent(1))[0]
    assert row["endpoint"] == "embeddings" and row["usage_estimated"]
    assert 0 < row["prompt_tokens"] < 100 and gw.log.dropped == 0 and gw.log.pending == 0
