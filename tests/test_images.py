"""Image generation end to end: the openai SDK -> the gateway -> fakes of each provider.

``gw`` (conftest) has an OpenAI-compatible connection ``up``; ``gm`` adds a Gemini one
(Imagen's ``:predict`` and a Gemini image model's ``generateContent``), ``sd`` an
AUTOMATIC1111 web UI. ComfyUI has its own module (``test_images_comfyui.py``). The
fakes' images are ``fake_image(prompt, i)``: PNG's signature, the index, the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import openai
import pytest
from fakes.base import fake_image_bytes
from fakes.gemini_upstream import IMAGE_TOKENS as GEMINI_IMAGE_TOKENS
from fakes.gemini_upstream import FakeGemini, refused
from fakes.openai_upstream import IMAGE_TOKENS, error, hang_before_headers
from fakes.openrouter_upstream import IMAGE_TOKENS as OPENROUTER_IMAGE_TOKENS
from fakes.openrouter_upstream import FakeOpenRouter
from fakes.openrouter_upstream import error as openrouter_error
from fakes.sdwebui_upstream import FakeSDWebUI
from fakes.sdwebui_upstream import error as sd_error

from omniroute.appkeys import BUDGETS

SD_LOGIN = ("painter", "s3cret")


@pytest.fixture
async def sdk(gw: Any) -> Any:
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client",
                                max_retries=0, timeout=20)
    yield client
    await client.close()


@pytest.fixture
async def gm(gw: Any, aiohttp_server: Any) -> FakeGemini:
    fake = FakeGemini()
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "gemini", "name": "fake-gemini", "prefix": "gm",
                           "base_url": str(server.make_url("")).rstrip("/"),
                           "api_key": "AIza-upstream-test"})
    return fake


@pytest.fixture
async def sd(gw: Any, aiohttp_server: Any) -> FakeSDWebUI:
    fake = FakeSDWebUI(auth=SD_LOGIN)
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "sdwebui", "name": "fake-sd", "prefix": "sd",
                           "base_url": str(server.make_url("")).rstrip("/"),
                           "credentials": {"username": SD_LOGIN[0], "password": SD_LOGIN[1]},
                           "settings": {"txt2img": {"steps": 12, "sampler_name": "Euler a"}}})
    return fake


@pytest.fixture
async def orr(gw: Any, aiohttp_server: Any) -> FakeOpenRouter:
    """An OpenRouter connection (prefix ``or``): images through Chat Completions."""
    fake = FakeOpenRouter()
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "openai", "name": "fake-openrouter", "prefix": "or",
                           "base_url": str(server.make_url("/api/v1")),
                           "api_key": "sk-or-v1-fake", "settings": {"images_via_chat": True}})
    return fake


def images_sent(fake: Any) -> list[Any]:
    return [r for r in fake.requests if "image" in r.path or r.path.endswith(":predict")
            or "txt2img" in r.path or r.path.endswith(":generateContent")]


def decoded(item: Any) -> bytes:
    return base64.b64decode(item.b64_json)


async def last_record(gw: Any) -> dict[str, Any]:
    await gw.log.flush()
    return (await gw.log.recent(1))[0]


async def admin(gw: Any, method: str, path: str, body: Any = None) -> Any:
    resp = await gw.client.request(method, path, json=body, headers=gw.admin_headers)
    assert resp.status < 300, await resp.text()
    return await resp.json()


# ----------------------------------------------------------------------------- OpenAI upstream

async def test_dall_e_3_through_the_sdk_urls_and_bytes(gw: Any, sdk: Any) -> None:
    raw = await sdk.images.with_raw_response.generate(
        model="up/dall-e-3", prompt="a red fox in snow", size="1024x1792", quality="hd",
        style="vivid", user="u-1")
    answer = raw.parse()
    assert answer.data[0].url.startswith("https://images.fake.openai/")
    assert answer.data[0].revised_prompt == "A detailed picture of a red fox in snow"
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    assert raw.headers["X-OmniRoute-Model"] == "dall-e-3"
    sent = images_sent(gw.fake)[-1]
    assert sent.path == "/v1/images/generations"
    assert sent.headers["authorization"] == "Bearer sk-upstream-test"
    assert sent.json == {"model": "dall-e-3", "prompt": "a red fox in snow",
                         "size": "1024x1792", "quality": "hd", "style": "vivid", "user": "u-1"}

    b64 = await sdk.images.generate(model="up/dall-e-3", prompt="a fox",
                                    response_format="b64_json")
    assert decoded(b64.data[0]) == fake_image_bytes("a fox")
    assert images_sent(gw.fake)[-1].json["response_format"] == "b64_json"
    record = await last_record(gw)
    assert record["endpoint"] == "images.generations" and record["images"] == 1
    assert record["cost_usd"] is None  # genai-prices has no per-image prices, no override


async def test_gpt_image_tokens_are_recorded_and_priced(gw: Any, sdk: Any) -> None:
    from genai_prices import Usage, calc_price

    raw = await sdk.images.with_raw_response.generate(model="up/gpt-image-1",
                                                      prompt="two cats", n=2)
    answer = raw.parse()
    assert [decoded(d) for d in answer.data] == [fake_image_bytes("two cats", i)
                                                 for i in range(2)]
    assert answer.usage.output_tokens == 2 * IMAGE_TOKENS and answer.quality == "medium"
    record = await last_record(gw)
    assert record["images"] == 2 and record["completion_tokens"] == 2 * IMAGE_TOKENS
    expected = float(calc_price(Usage(input_tokens=record["prompt_tokens"],
                                      output_tokens=2 * IMAGE_TOKENS),
                                model_ref="gpt-image-1", provider_id="openai").total_price)
    assert record["cost_usd"] == pytest.approx(expected) and expected > 0.08
    assert float(raw.headers["X-OmniRoute-Response-Cost"]) == pytest.approx(expected)


async def test_gpt_image_gets_no_response_format_and_the_gateway_shapes_it(
        gw: Any, sdk: Any) -> None:
    # OpenAI refuses response_format for the GPT image models (the fake answers 400)
    b64 = await sdk.images.generate(model="up/gpt-image-1", prompt="a heron",
                                    response_format="b64_json")
    assert decoded(b64.data[0]) == fake_image_bytes("a heron")
    assert "response_format" not in images_sent(gw.fake)[-1].json
    url = await sdk.images.generate(model="up/gpt-image-1", prompt="a crane",
                                    response_format="url")
    assert url.data[0].url == "data:image/png;base64," + base64.b64encode(
        fake_image_bytes("a crane")).decode()
    assert "response_format" not in images_sent(gw.fake)[-1].json


async def test_openrouter_images_come_through_chat_completions(
        gw: Any, sdk: Any, orr: FakeOpenRouter) -> None:
    model = "or/google/gemini-2.5-flash-image"
    answer = await sdk.images.generate(model=model, prompt="a lighthouse", n=2,
                                       size="1792x1024", response_format="b64_json", user="u-7")
    assert [decoded(d) for d in answer.data] == [fake_image_bytes("a lighthouse")] * 2
    sent = [r for r in orr.requests if r.path == "/api/v1/chat/completions"]
    assert len(sent) == 2 and all(r.json == sent[0].json for r in sent)
    assert sent[0].json == {"model": "google/gemini-2.5-flash-image",
                            "messages": [{"role": "user", "content": "a lighthouse"}],
                            "modalities": ["image", "text"],
                            "image_config": {"aspect_ratio": "16:9"}, "user": "u-7"}
    assert sent[0].headers["authorization"] == "Bearer sk-or-v1-fake"
    record = await last_record(gw)
    assert record["images"] == 2 and record["provider"] == "or"
    assert record["completion_tokens"] > 2 * OPENROUTER_IMAGE_TOKENS

    url = await sdk.images.generate(model=model, prompt="a dune", response_format="url")
    assert url.data[0].url == "data:image/png;base64," + base64.b64encode(
        fake_image_bytes("a dune")).decode()


async def test_openrouter_refusals_reach_the_client(gw: Any, sdk: Any,
                                                    orr: FakeOpenRouter) -> None:
    with pytest.raises(openai.APIStatusError) as text_only:  # a model that makes no images
        await sdk.images.generate(model="or/openai/gpt-4o-mini", prompt="x")
    assert text_only.value.status_code == 404
    assert "output modalities" in text_only.value.message
    orr.script.append(openrouter_error(400, "Provider returned error"))
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.images.generate(model="or/google/gemini-2.5-flash-image", prompt="y")
    assert "Provider returned error" in refused.value.message


def test_images_via_chat_is_the_default_for_openrouter_only() -> None:
    from omniroute.providers.openai import images_through_chat

    assert images_through_chat({"base_url": "https://openrouter.ai/api/v1"})
    assert not images_through_chat({"base_url": "https://api.openai.com/v1"})
    assert not images_through_chat({"base_url": "https://openrouter.ai/api/v1",
                                    "images_via_chat": False})
    assert images_through_chat({"base_url": "http://127.0.0.1:9/v1", "images_via_chat": True})


async def test_a_per_image_override_prices_dall_e(gw: Any, sdk: Any) -> None:
    view = await admin(gw, "PUT", "/api/pricing", {"model": "dall-e-3", "image": 0.04})
    assert view["overrides"][0]["image"] == 0.04 and view["overrides"][0]["input"] == 0
    raw = await sdk.images.with_raw_response.generate(model="up/dall-e-3", prompt="a boat")
    assert raw.headers["X-OmniRoute-Response-Cost"] == "0.04"
    assert (await last_record(gw))["cost_usd"] == pytest.approx(0.04)
    looked = await admin(gw, "GET", "/api/pricing?model=up/dall-e-3")
    assert looked["targets"][0]["per_image"] == 0.04
    summary = await admin(gw, "GET", "/api/usage/summary")
    assert summary["totals"]["images"] == 1


async def test_a_usd_budget_reserves_and_charges_images(gw: Any) -> None:
    await admin(gw, "PUT", "/api/pricing", {"model": "dall-e-3", "image": 0.04})
    key = await admin(gw, "POST", "/api/keys", {"name": "artist",
                                                 "limits": {"daily_usd": 0.05}})
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key["key"],
                                max_retries=0, timeout=20)
    await client.images.generate(model="up/dall-e-3", prompt="one")
    windows = gw.client.app[BUDGETS].state(key["id"]).windows
    assert windows["daily"].spent_usd == pytest.approx(0.04)
    await client.images.generate(model="up/dall-e-3", prompt="two")
    assert windows["daily"].spent_usd == pytest.approx(0.08)
    with pytest.raises(openai.RateLimitError) as caught:  # the budget is used up
        await client.images.generate(model="up/dall-e-3", prompt="three")
    assert caught.value.code == "budget_exceeded"
    with pytest.raises(openai.PermissionDeniedError) as unpriced:  # no price: not chargeable
        await client.images.generate(model="up/dall-e-2", prompt="x")
    assert unpriced.value.code == "model_unpriced"
    await client.close()


# ----------------------------------------------------------------------------- Gemini upstream

async def test_imagen_predict_through_the_sdk(gw: Any, sdk: Any, gm: FakeGemini) -> None:
    answer = await sdk.images.generate(model="gm/imagen-4.0-generate-001",
                                       prompt="a lighthouse", n=3, size="1792x1024")
    assert [decoded(d) for d in answer.data] == [fake_image_bytes("a lighthouse", i)
                                                 for i in range(3)]
    sent = images_sent(gm)[-1]
    assert sent.path == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert sent.headers["x-goog-api-key"] == "AIza-upstream-test"
    assert sent.json == {"instances": [{"prompt": "a lighthouse"}],
                         "parameters": {"sampleCount": 3, "aspectRatio": "16:9",
                                        "includeRaiReason": True}}
    as_url = await sdk.images.generate(model="gm/imagen-4.0-generate-001", prompt="dunes",
                                       response_format="url", n=1)
    url = as_url.data[0].url
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.partition(",")[2]) == fake_image_bytes("dunes")
    assert (await last_record(gw))["images"] == 1


async def test_gemini_image_model_makes_n_calls_and_prices_image_tokens(
    gw: Any, sdk: Any, gm: FakeGemini,
) -> None:
    from genai_prices import Usage, calc_price

    answer = await sdk.images.generate(model="gm/gemini-2.5-flash-image", prompt="a kite",
                                       n=2, size="1536x1024")
    assert [decoded(d) for d in answer.data] == [fake_image_bytes("a kite")] * 2
    calls = [r for r in images_sent(gm) if r.path.endswith(":generateContent")]
    assert len(calls) == 2
    assert calls[0].json["generationConfig"] == {"responseModalities": ["IMAGE"],
                                                 "imageConfig": {"aspectRatio": "3:2"}}
    record = await last_record(gw)
    assert record["images"] == 2 and record["completion_tokens"] == 2 * GEMINI_IMAGE_TOKENS
    expected = float(calc_price(
        Usage(input_tokens=record["prompt_tokens"], output_tokens=2 * GEMINI_IMAGE_TOKENS,
              output_image_tokens=2 * GEMINI_IMAGE_TOKENS),
        model_ref="gemini-2.5-flash-image", provider_id="google").total_price)
    assert record["cost_usd"] == pytest.approx(expected)
    assert expected > 0.07  # image tokens at $30/M, not text output's $2.50/M


@pytest.mark.parametrize("model", ["imagen-4.0-generate-001", "gemini-2.5-flash-image"])
async def test_a_refused_prompt_is_the_clients_400(gw: Any, sdk: Any, gm: FakeGemini,
                                                   model: str) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "pics", "steps": [
        f"gm/{model}", "up/gpt-image-1"]})
    gm.script.append(refused())
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="pics", prompt="something forbidden")
    assert caught.value.code == "content_policy_violation"
    assert not images_sent(gw.fake)  # the client's to change: no other target tried


# ----------------------------------------------------------------------------- SD web UI

async def test_sdwebui_txt2img_through_the_sdk(gw: Any, sdk: Any, sd: FakeSDWebUI) -> None:
    raw = await sdk.images.with_raw_response.generate(
        model="sd/sd_xl_base_1.0", prompt="a castle", n=2, size="768x512",
        extra_body={"negative_prompt": "blurry", "seed": 7, "cfg_scale": 6})
    answer = raw.parse()
    assert [decoded(d) for d in answer.data] == [fake_image_bytes("a castle", i)
                                                 for i in range(2)]
    sent = images_sent(sd)[-1]
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(
        b"painter:s3cret").decode()
    assert sent.json == {"steps": 12, "sampler_name": "Euler a", "negative_prompt": "blurry",
                         "seed": 7, "cfg_scale": 6, "prompt": "a castle", "width": 768,
                         "height": 512, "batch_size": 2, "n_iter": 1, "send_images": True,
                         "save_images": False,
                         "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0"}}
    record = await last_record(gw)
    assert record["images"] == 2 and record["cost_usd"] == 0.0  # a local server
    assert raw.headers["X-OmniRoute-Response-Cost"] == "0.0"


async def test_sdwebui_default_model_and_data_urls(gw: Any, sdk: Any, sd: FakeSDWebUI) -> None:
    answer = await sdk.images.generate(model="sd/default", prompt="hills",
                                       response_format="url")
    assert answer.data[0].url == "data:image/png;base64," + base64.b64encode(
        fake_image_bytes("hills")).decode()
    assert "override_settings" not in images_sent(sd)[-1].json
    assert images_sent(sd)[-1].json["width"] == 512  # no size: the web UI's usual 512


async def test_an_sdwebui_error_is_passed_on_in_openais_shape(
    gw: Any, sdk: Any, sd: FakeSDWebUI,
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.images.generate(model="sd/no-such-checkpoint", prompt="x")
    assert "Checkpoint 'no-such-checkpoint' not found" in caught.value.message
    assert caught.value.status_code == 404
    assert caught.value.body["type"] == "not_found_error"  # type: ignore[index]


# ----------------------------------------------------------------------------- fallback

async def test_fallback_across_two_providers(gw: Any, sdk: Any, sd: FakeSDWebUI) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "pics", "steps": [
        "up/dall-e-3", "sd/sd_xl_base_1.0"]})
    gw.fake.script.append(error(500))
    raw = await sdk.images.with_raw_response.generate(model="pics", prompt="a bridge",
                                                      response_format="b64_json")
    assert raw.headers["X-OmniRoute-Provider"] == "sd"
    assert raw.headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert decoded(raw.parse().data[0]) == fake_image_bytes("a bridge")
    record = await last_record(gw)
    assert record["attempts"] == 2 and record["provider"] == "sd"
    assert record["combo"] == "pics" and record["images"] == 1

    await admin(gw, "POST", "/api/resilience/reset")  # ``up`` cools down after its 500
    sd.script.append(sd_error(500))  # and the other way round: the web UI runs out of memory
    await admin(gw, "POST", "/api/combos", {"name": "local-first", "steps": [
        "sd/sd_xl_base_1.0", "up/gpt-image-1"]})
    raw = await sdk.images.with_raw_response.generate(model="local-first", prompt="a road")
    assert raw.headers["X-OmniRoute-Provider"] == "up"


async def test_a_provider_without_images_is_skipped_uncharged(gw: Any, sdk: Any) -> None:
    await gw.add_provider({"type": "anthropic", "name": "claude", "prefix": "claude",
                           "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-x"})
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="claude/claude-haiku-4-5", prompt="x")
    assert caught.value.code == "images_not_supported"
    await admin(gw, "POST", "/api/combos", {"name": "pics", "steps": [
        "claude/claude-haiku-4-5", "up/dall-e-3"]})
    raw = await sdk.images.with_raw_response.generate(model="pics", prompt="y")
    assert raw.headers["X-OmniRoute-Provider"] == "up"


async def test_a_slow_generation_is_not_raced_by_a_second_target(
    gw: Any, sdk: Any, sd: FakeSDWebUI,
) -> None:
    """Hedging would start (and pay for) a second generation; images wait instead."""
    await gw.set_settings(hedge_floor=0.1, hedge_initial=0.1)
    await admin(gw, "POST", "/api/combos", {"name": "pics", "steps": [
        "up/dall-e-3", "sd/sd_xl_base_1.0"]})
    gw.fake.script.append(hang_before_headers(0.6))
    raw = await sdk.images.with_raw_response.generate(model="pics", prompt="slow")
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    assert not images_sent(sd)


async def test_image_timeout_bounds_a_hung_upstream_then_moves_on(
    gw: Any, sdk: Any, sd: FakeSDWebUI,
) -> None:
    await gw.set_settings(image_timeout=0.5)
    await admin(gw, "POST", "/api/combos", {"name": "pics", "steps": [
        "up/dall-e-3", "sd/sd_xl_base_1.0"]})
    gw.fake.script.append(hang_before_headers(5))
    started = time.monotonic()
    raw = await sdk.images.with_raw_response.generate(model="pics", prompt="patience")
    assert time.monotonic() - started < 3
    assert raw.headers["X-OmniRoute-Provider"] == "sd"
    attempts = (await last_record(gw))["attempt_log"]
    assert "UpstreamTimeout" in attempts


# ----------------------------------------------------------------------------- routes, input

async def test_the_provider_route_pins_a_prefix(gw: Any, sd: FakeSDWebUI) -> None:
    resp = await gw.client.post("/v1/providers/sd/images/generations",
                                json={"model": "sd_xl_base_1.0", "prompt": "pinned"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert list(body["data"][0]) == ["b64_json"] and isinstance(body["created"], int)
    resp = await gw.client.post("/v1/providers/nope/images/generations",
                                json={"model": "m", "prompt": "x"})
    assert resp.status == 400


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "up/dall-e-3"}, "prompt"),
    ({"model": "up/dall-e-3", "prompt": "  "}, "prompt"),
    ({"model": "up/dall-e-3", "prompt": 12}, "prompt"),
    ({"prompt": "x"}, "model"),
    ({"model": "up/dall-e-3", "prompt": "x", "n": 0}, "n"),
    ({"model": "up/dall-e-3", "prompt": "x", "n": 11}, "n"),
    ({"model": "up/dall-e-3", "prompt": "x", "n": "2"}, "n"),
    ({"model": "up/dall-e-3", "prompt": "x", "n": True}, "n"),
    ({"model": "up/dall-e-3", "prompt": "x", "size": "big"}, "size"),
    ({"model": "up/dall-e-3", "prompt": "x", "size": "10x10"}, "size"),
    ({"model": "up/dall-e-3", "prompt": "x", "size": "1024*1024"}, "size"),
    ({"model": "up/dall-e-3", "prompt": "x", "size": "9000x1024"}, "size"),
    ({"model": "up/dall-e-3", "prompt": "x", "response_format": "png"}, "response_format"),
    ({"model": "up/dall-e-3", "prompt": "x", "quality": "ultra"}, "quality"),
    ({"model": "up/dall-e-3", "prompt": "x", "stream": True}, "stream"),
])
async def test_bad_input_is_a_clear_400(gw: Any, body: dict[str, Any], param: str) -> None:
    resp = await gw.client.post("/v1/images/generations", json=body)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert not images_sent(gw.fake)


async def test_unknown_model_and_bad_bodies_in_openais_shape(gw: Any, sdk: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="nope/none", prompt="x")
    assert caught.value.status_code == 400 and caught.value.code == "model_not_found"
    resp = await gw.client.post("/v1/images/generations", data=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "error" in await resp.json()
    resp = await gw.client.post("/v1/images/generations", data=b"prompt=x",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    assert not images_sent(gw.fake)


async def test_the_client_leaving_stops_the_upstream_call(gw: Any) -> None:
    gw.fake.script.append(hang_before_headers(5))
    task = asyncio.ensure_future(gw.client.post(
        "/v1/images/generations", json={"model": "up/dall-e-3", "prompt": "never mind"}))
    for _ in range(200):
        if images_sent(gw.fake):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 3)


async def test_duplicates_with_one_idempotency_key_share_one_generation(gw: Any) -> None:
    """A retried request must not pay for a second image."""
    gw.fake.script.append(hang_before_headers(0.3))
    body = {"model": "up/dall-e-3", "prompt": "once", "response_format": "b64_json"}
    headers = {"Idempotency-Key": "img-1"}
    first, second = await asyncio.gather(
        gw.client.post("/v1/images/generations", json=body, headers=headers),
        gw.client.post("/v1/images/generations", json=body, headers=headers))
    assert first.status == second.status == 200
    assert await first.json() == await second.json()
    assert len(images_sent(gw.fake)) == 1
    assert first.headers["X-OmniRoute-Request-Id"] != second.headers["X-OmniRoute-Request-Id"]
