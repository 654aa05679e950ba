"""``GET /v1/models`` types every model (chat, embedding, image), combos too, and
``?type=`` filters; ``GET /v1/images/generations`` lists the image models."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fakes.gemini_upstream import FakeGemini
from fakes.sdwebui_upstream import FakeSDWebUI

from omniroute.providers.model_types import guess_model_type


@pytest.fixture
async def many(gw: Any, aiohttp_server: Any) -> Any:
    """``up`` (OpenAI: chat, embedding and image models), ``gm`` (Gemini), ``sd``."""
    gw.fake.models += ["dall-e-3", "text-embedding-3-small"]
    gemini = FakeGemini()
    server = await aiohttp_server(gemini.app)
    await gw.add_provider({"type": "gemini", "prefix": "gm", "api_key": "AIza-upstream-test",
                           "base_url": str(server.make_url("")).rstrip("/")})
    sd = FakeSDWebUI()
    server = await aiohttp_server(sd.app)
    await gw.add_provider({"type": "sdwebui", "prefix": "sd",
                           "base_url": str(server.make_url("")).rstrip("/")})
    for name, steps in (("pics", ["up/dall-e-3", "sd/sd_xl_base_1.0"]),
                        ("talk", ["up/gpt-4o", "gm/gemini-2.5-flash"])):
        resp = await gw.client.post("/api/combos", headers=gw.admin_headers,
                                    json={"name": name, "steps": steps})
        assert resp.status == 201, await resp.text()
    return gw


async def listed(gw: Any, path: str = "/v1/models") -> dict[str, str]:
    resp = await gw.client.get(path)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["object"] == "list"
    return {m["id"]: m["type"] for m in body["data"]}


async def test_every_model_has_its_type(many: Any) -> None:
    types = await listed(many)
    assert types["up/gpt-4o"] == "chat" and types["up/dall-e-3"] == "image"
    assert types["up/text-embedding-3-small"] == "embedding"
    assert types["gm/gemini-2.5-flash"] == "chat"
    assert types["gm/imagen-4.0-generate-001"] == "image"  # Gemini lists it for predict
    assert types["gm/gemini-2.5-flash-image"] == "image"
    assert types["sd/sd_xl_base_1.0"] == "image" and types["sd/v1-5-pruned-emaonly"] == "image"
    assert types["pics"] == "image" and types["talk"] == "chat"  # a combo: its first step's
    assert list(types)[:2] == ["pics", "talk"]  # combos first


async def test_the_openai_sdk_reads_the_list(many: Any) -> None:
    client = openai.AsyncOpenAI(base_url=many.base_url + "/v1", api_key="k", max_retries=0)
    models = [m async for m in client.models.list()]
    dall_e = next(m for m in models if m.id == "up/dall-e-3")
    assert dall_e.owned_by == "up" and dall_e.type == "image"  # type: ignore[attr-defined]
    await client.close()


@pytest.mark.parametrize("kind", ["chat", "embedding", "image"])
async def test_type_filters_the_list(many: Any, kind: str) -> None:
    types = await listed(many, f"/v1/models?type={kind}")
    assert types and set(types.values()) == {kind}
    assert len(types) < len(await listed(many))


async def test_an_unknown_type_is_a_400(many: Any) -> None:
    resp = await many.client.get("/v1/models?type=video")
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["param"] == "type" and "chat, embedding, image" in err["message"]


async def test_the_images_route_lists_image_models_only(many: Any) -> None:
    types = await listed(many, "/v1/images/generations")
    assert set(types.values()) == {"image"}
    assert {"up/dall-e-3", "gm/imagen-4.0-generate-001", "sd/sd_xl_base_1.0", "pics"} <= set(types)
    assert types == await listed(many, "/v1/images/generations?type=chat")  # the route's own


async def test_the_embeddings_route_lists_embedding_models_only(many: Any) -> None:
    types = await listed(many, "/v1/embeddings")
    assert types == {"up/text-embedding-3-small": "embedding",
                     "gm/gemini-embedding-001": "embedding"}  # Gemini's: embedContent


async def test_audio_models_have_their_types(gw: Any, aiohttp_server: Any) -> None:
    """A Deepgram connection serves transcriptions only: its models are typed so; an
    OpenAI-compatible one's audio models by their names."""
    from fakes.deepgram_upstream import FakeDeepgram

    gw.fake.models += ["whisper-1", "tts-1"]
    deepgram = FakeDeepgram()
    server = await aiohttp_server(deepgram.app)
    await gw.add_provider({"type": "deepgram", "prefix": "dg", "api_key": "dg-upstream-test",
                           "base_url": str(server.make_url("")).rstrip("/")})
    types = await listed(gw)
    assert types["dg/nova-3"] == types["dg/whisper-large"] == "transcription"
    assert types["up/whisper-1"] == "transcription" and types["up/tts-1"] == "speech"
    speech = await listed(gw, "/v1/models?type=speech")
    assert speech == {"up/tts-1": "speech"}


async def test_a_connection_names_its_models_types(gw: Any) -> None:
    gw.fake.models.append("house-diffusion")
    resp = await gw.client.put(f"/api/providers/{gw.connection['id']}",
                               headers=gw.admin_headers,
                               json={"settings": {"model_types": {"house-diffusion": "image"}}})
    assert resp.status == 200, await resp.text()
    assert (await listed(gw))["up/house-diffusion"] == "image"
    resp = await gw.client.put(f"/api/providers/{gw.connection['id']}",
                               headers=gw.admin_headers,
                               json={"settings": {"model_types": {"x": "video"}}})
    assert resp.status == 400 and "model_types" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(("name", "kind"), [
    ("gpt-4o", "chat"), ("claude-sonnet-4-5", "chat"), ("llama3.2", "chat"),
    ("dall-e-3", "image"), ("gpt-image-1", "image"), ("imagen-4.0-generate-001", "image"),
    ("black-forest-labs/FLUX.1-schnell", "image"), ("stabilityai/sdxl-turbo", "image"),
    ("gemini-2.5-flash-image-preview", "image"), ("stable-diffusion-3.5-large", "image"),
    ("text-embedding-3-small", "embedding"), ("nomic-embed-text", "embedding"),
    ("Qwen/Qwen3-Embedding-8B", "embedding"), ("BAAI/bge-m3", "embedding"),
    ("gemini-embedding-001", "embedding"), ("intfloat/e5-large-v2", "embedding"),
    ("whisper-1", "transcription"), ("gpt-4o-transcribe", "transcription"),
    ("nova-3", "transcription"), ("whisper-large-v3-turbo", "transcription"),
    ("tts-1", "speech"), ("tts-1-hd", "speech"), ("gpt-4o-mini-tts", "speech"),
    ("canopylabs/orpheus-v1-english", "speech"), ("gpt-4o-audio-preview", "chat"),
])
def test_names_suggest_a_type(name: str, kind: str) -> None:
    assert guess_model_type(name) == kind
