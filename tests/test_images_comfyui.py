"""ComfyUI end to end: the openai SDK -> the gateway -> a fake ComfyUI (queue, history,
view), and the workflow template's placeholders on their own."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import openai
import pytest
from fakes.base import fake_image_bytes
from fakes.comfyui_upstream import FakeComfyUI, error, failed, hung, slow_to_queue

from omniroute.providers import comfyui_workflow as workflows

SDXL = "sd_xl_base_1.0.safetensors"


@pytest.fixture
async def sdk(gw: Any) -> Any:
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client",
                                max_retries=0, timeout=20)
    yield client
    await client.close()


async def comfy_server(gw: Any, aiohttp_server: Any, fake: FakeComfyUI, prefix: str = "comfy",
                       **settings: Any) -> FakeComfyUI:
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "comfyui", "name": f"fake-{prefix}", "prefix": prefix,
                           "base_url": str(server.make_url("")).rstrip("/"),
                           "settings": {"poll_interval": 0.05, **settings}})
    return fake


@pytest.fixture
async def comfy(gw: Any, aiohttp_server: Any) -> FakeComfyUI:
    return await comfy_server(gw, aiohttp_server, FakeComfyUI())


def submitted(fake: FakeComfyUI) -> list[dict[str, Any]]:
    return [r.json["prompt"] for r in fake.requests if r.path == "/prompt"]


def decoded(item: Any) -> bytes:
    return base64.b64decode(item.b64_json)


async def last_record(gw: Any) -> dict[str, Any]:
    await gw.log.flush()
    return (await gw.log.recent(1))[0]


# ----------------------------------------------------------------------------- end to end

async def test_a_workflow_is_queued_polled_and_fetched(gw: Any, sdk: Any,
                                                       comfy: FakeComfyUI) -> None:
    raw = await sdk.images.with_raw_response.generate(
        model=f"comfy/{SDXL}", prompt="a misty forest", n=2, size="1024x768",
        extra_body={"seed": 42, "negative_prompt": "people", "steps": 8})
    answer = raw.parse()
    assert [decoded(d) for d in answer.data] == [fake_image_bytes("a misty forest", i)
                                                 for i in range(2)]
    assert raw.headers["X-OmniRoute-Provider"] == "comfy"
    workflow = submitted(comfy)[-1]
    assert workflow["4"]["inputs"] == {"ckpt_name": SDXL}
    assert workflow["5"]["inputs"] == {"width": 1024, "height": 768, "batch_size": 2}
    assert workflow["6"]["inputs"]["text"] == "a misty forest"
    assert workflow["7"]["inputs"]["text"] == "people"
    sampler = workflow["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (
        42, 8, 7.0, "euler")
    paths = [r.path for r in comfy.requests]
    assert paths[0] == "/prompt" and paths.count("/view") == 2
    assert any(p.startswith("/history/") for p in paths)
    record = await last_record(gw)
    assert record["images"] == 2 and record["cost_usd"] == 0.0 and record["status"] == 200


async def test_no_seed_given_is_a_fresh_one_each_time(gw: Any, sdk: Any,
                                                      comfy: FakeComfyUI) -> None:
    for _ in range(2):
        await sdk.images.generate(model=f"comfy/{SDXL}", prompt="waves")
    seeds = [w["3"]["inputs"]["seed"] for w in submitted(comfy)]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds) and seeds[0] != seeds[1]


async def test_a_connections_own_workflow_and_defaults(gw: Any, sdk: Any,
                                                       aiohttp_server: Any) -> None:
    own = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{model}}"}},
        "2": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "masterpiece, {{prompt}}", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "seed": "{{seed}}", "steps": "{{steps}}", "cfg": 5, "sampler_name": "dpmpp_2m",
            "scheduler": "karras", "denoise": 1, "model": ["1", 0], "positive": ["2", 0],
            "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mine",
                                                    "images": ["6", 0]}},
    }
    fake = await comfy_server(gw, aiohttp_server, FakeComfyUI(), "mine", workflow=own,
                              defaults={"steps": 30, "width": 640, "height": 640})
    answer = await sdk.images.generate(model=f"mine/{SDXL}", prompt="a fox")
    assert decoded(answer.data[0]) == fake_image_bytes("masterpiece, a fox")
    workflow = submitted(fake)[-1]
    assert workflow["4"]["inputs"]["width"] == 640 and workflow["5"]["inputs"]["steps"] == 30
    assert workflow["8"]["inputs"]["filename_prefix"] == "mine"


async def test_a_hung_job_is_bounded_by_image_timeout_and_cancelled(
    gw: Any, sdk: Any, comfy: FakeComfyUI,
) -> None:
    await gw.set_settings(image_timeout=0.6)
    comfy.script.append(hung())
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.images.generate(model=f"comfy/{SDXL}", prompt="forever")
    assert time.monotonic() - started < 3
    assert caught.value.status_code == 504
    assert "did not finish within 0.6s" in caught.value.message
    prompt_id = next(iter(comfy.jobs))
    for _ in range(300):  # the clean-up runs beside the answer
        if comfy.interrupted:
            break
        await asyncio.sleep(0.01)
    assert comfy.deleted == [prompt_id] and comfy.interrupted == [prompt_id]
    polls = [r for r in comfy.requests if r.path.startswith("/history/")]
    assert 3 <= len(polls) <= 20  # polled every 0.05s, and no longer than the bound


@pytest.mark.parametrize("honours", [True, False], ids=["supplied-id", "older-server"])
async def test_a_job_queued_as_the_bound_fires_is_cancelled_too(
    gw: Any, sdk: Any, aiohttp_server: Any, honours: bool,
) -> None:
    """The bound fires while ComfyUI has queued the job but not yet answered: the
    gateway chose the job's id, so it still takes it off the queue and interrupts it
    (an older server that mints its own ids leaves the gateway nothing to cancel)."""
    comfy = FakeComfyUI(honours_prompt_id=honours)
    await comfy_server(gw, aiohttp_server, comfy, "late")
    await gw.set_settings(image_timeout=0.3)
    comfy.script.append(slow_to_queue(2.0))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.images.generate(model=f"late/{SDXL}", prompt="just in time")
    assert caught.value.status_code == 504
    (job_id,) = comfy.jobs
    (sent_id,) = [r.json["prompt_id"] for r in comfy.requests if r.path == "/prompt"]
    for _ in range(300):  # the clean-up runs beside the answer
        if comfy.interrupted:
            break
        await asyncio.sleep(0.01)
    assert comfy.deleted == [sent_id] and comfy.interrupted == [sent_id]
    # the job's id is the one sent; an older server's own is unknown until it answers
    assert (sent_id == job_id) is honours


async def test_a_hung_job_falls_back_to_the_next_target(
    gw: Any, sdk: Any, comfy: FakeComfyUI, aiohttp_server: Any,
) -> None:
    spare = await comfy_server(gw, aiohttp_server, FakeComfyUI(), "spare")
    await gw.set_settings(image_timeout=0.4)
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers, json={
        "name": "pics", "steps": [f"comfy/{SDXL}", f"spare/{SDXL}"]})
    assert resp.status == 201, await resp.text()
    comfy.script.append(hung())
    raw = await sdk.images.with_raw_response.generate(model="pics", prompt="relay")
    assert raw.headers["X-OmniRoute-Provider"] == "spare"
    assert decoded(raw.parse().data[0]) == fake_image_bytes("relay")
    assert len(submitted(spare)) == 1


async def test_a_failed_job_and_a_refused_workflow(gw: Any, sdk: Any,
                                                   comfy: FakeComfyUI) -> None:
    comfy.script.append(failed("Allocation on device 0 would exceed allowed memory."))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.images.generate(model=f"comfy/{SDXL}", prompt="big")
    assert caught.value.status_code == 502
    assert "KSampler failed: Allocation on device 0" in caught.value.message

    with pytest.raises(openai.BadRequestError) as refused:  # ComfyUI's own validation
        await sdk.images.generate(model="comfy/missing.safetensors", prompt="x")
    assert "Prompt outputs failed validation" in refused.value.message
    # ComfyUI's node_errors say which node and why
    assert "node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: " \
        "'missing.safetensors' not in" in refused.value.message
    assert refused.value.code == "prompt_outputs_failed_validation"

    comfy.script.append(error(500))
    with pytest.raises(openai.APIStatusError) as broken:
        await sdk.images.generate(model=f"comfy/{SDXL}", prompt="y")
    assert broken.value.status_code == 500


async def test_the_checkpoints_are_listed_as_image_models(gw: Any, comfy: FakeComfyUI) -> None:
    body = await (await gw.client.get("/v1/images/generations")).json()
    ids = {m["id"]: m["type"] for m in body["data"]}
    assert ids[f"comfy/{SDXL}"] == "image"
    assert ids["comfy/v1-5-pruned-emaonly.safetensors"] == "image"
    assert "up/gpt-4o" not in ids


# ----------------------------------------------------------------------------- the template

def test_the_template_fills_typed_values_and_text() -> None:
    filled = workflows.fill(workflows.default_template(), {
        "prompt": "a {{b}} cat", "negative_prompt": "", "model": "m.safetensors", "width": 512,
        "height": 768, "batch_size": 3, "seed": 5, "steps": 9, "cfg": 6.5,
        "sampler_name": "euler", "scheduler": "normal"})
    assert filled["5"]["inputs"] == {"width": 512, "height": 768, "batch_size": 3}
    assert filled["6"]["inputs"]["text"] == "a {{b}} cat"  # values are not filled again
    assert filled["3"]["inputs"]["cfg"] == 6.5 and filled["3"]["inputs"]["seed"] == 5
    assert workflows.fill({"t": "w={{width}}px {{other}}"}, {"width": 4}) == {
        "t": "w=4px {{other}}"}


def test_a_refusal_names_the_first_node_error() -> None:
    body = {"error": {"type": "prompt_outputs_failed_validation",
                      "message": "Prompt outputs failed validation", "details": ""},
            "node_errors": {"12": {"errors": [{"message": "Later", "details": "x"}]},
                            "7": {"class_type": "KSampler", "errors": [
                                {"message": "Required input is missing", "details": "model"},
                                {"message": "Second", "details": ""}]}}}
    assert workflows.refusal(body) == ("Prompt outputs failed validation: node 7 (KSampler): "
                                       "Required input is missing: model")
    assert workflows.refusal({"error": {"message": "No prompt provided"},
                              "node_errors": {}}) == "No prompt provided"
    assert workflows.refusal({"detail": "nope"}) is None and workflows.refusal([]) is None


@pytest.mark.parametrize("workflow", [
    [], {}, {"1": {"inputs": {}}}, {"1": {"class_type": "KSampler", "inputs": {"seed": 1}}},
])
def test_a_workflow_without_nodes_or_a_prompt_is_refused(workflow: Any) -> None:
    with pytest.raises(ValueError, match="workflow must"):
        workflows.check_workflow(workflow)


async def test_a_bad_workflow_setting_is_refused_when_added(gw: Any) -> None:
    resp = await gw.client.post("/api/providers", headers=gw.admin_headers, json={
        "type": "comfyui", "prefix": "bad", "base_url": "http://127.0.0.1:8188",
        "settings": {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}})
    assert resp.status == 400 and "{{prompt}}" in (await resp.json())["error"]["message"]
    resp = await gw.client.post("/api/providers", headers=gw.admin_headers, json={
        "type": "comfyui", "prefix": "bad", "settings": {"poll_interval": 0}})
    assert resp.status == 400 and "poll_interval" in (await resp.json())["error"]["message"]


def test_outputs_and_errors_are_read_from_history() -> None:
    entry = {"outputs": {
        "10": {"images": [{"filename": "b.png", "subfolder": "x", "type": "output"}]},
        "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"},
                         {"filename": "p.png", "subfolder": "", "type": "temp"}]},
        "11": {"text": ["not an image"]}},
        "status": {"status_str": "success", "completed": True, "messages": []}}
    assert [f["filename"] for f in workflows.output_files(entry)] == ["a.png", "b.png"]
    previews = {"outputs": {"7": {"images": [{"filename": "p.png", "type": "temp"}]}}}
    assert workflows.output_files(previews) == [{"filename": "p.png", "subfolder": "",
                                                 "type": "temp"}]
    assert workflows.job_error(entry) is None
    assert workflows.job_error({"status": {"status_str": "error", "messages": []}}) == \
        "the job ended with an error"


def test_checkpoints_in_both_object_info_shapes() -> None:
    old = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a", "b"]]}}}}
    new = {"CheckpointLoaderSimple": {"input": {"required": {
        "ckpt_name": ["COMBO", {"options": ["c"], "tooltip": "..."}]}}}}
    assert workflows.checkpoints(old) == ["a", "b"] and workflows.checkpoints(new) == ["c"]
    assert workflows.checkpoints({}) == []
