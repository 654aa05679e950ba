"""Fake ComfyUI server for gateway tests: queue a workflow, poll its history, fetch images.

Speaks the real wire format of ComfyUI's ``server.py``:

- ``POST /prompt`` ``{"prompt": <API-format workflow>, "client_id", "prompt_id"?}`` ->
  ``{"prompt_id", "number", "node_errors": {}}`` (the id the client supplied, as
  ``server.py``'s ``json_data.get("prompt_id", uuid.uuid4())`` keeps it; else a new
  one; ``honours_prompt_id=False`` plays an older server that always mints); a
  workflow that does not validate -> 400 ``{"error": {"type", "message", "details",
  "extra_info"}, "node_errors": {...}}`` (an unknown
  checkpoint: ``value_not_in_list``, as ComfyUI answers it);
- ``GET /history/{prompt_id}`` -> ``{}`` while the job waits or runs, then ``{id:
  {"prompt", "outputs": {node: {"images": [{filename, subfolder, type}]}}, "status":
  {"status_str", "completed", "messages"}, "meta"}}``;
- ``GET /view?filename=&subfolder=&type=`` -> the image bytes;
- ``POST /queue`` ``{"delete": [ids]}`` and ``POST /interrupt`` ``{"prompt_id"}`` (recorded
  in ``deleted`` and ``interrupted``);
- ``GET /object_info/CheckpointLoaderSimple`` -> the checkpoints (``models``).

A job "runs" the workflow: each ``SaveImage`` node saves ``batch_size`` images (its
``EmptyLatentImage``), ``fake_image(positive prompt, i)``, after ``job_seconds``.
``script`` pops one ``Behaviour`` per ``POST /prompt``: ``error(...)`` (an HTTP error of
``/prompt``), ``hung()`` (the job never finishes), ``failed(message)`` (the job ends with
an ``execution_error``), ``slow_to_queue(seconds)`` (the job is queued at once, the
answer saying so waits), and the shared faults (``fakes.base``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fakes import base
from fakes.base import FakeUpstream, Recorded, fake_image_bytes, json_response

__all__ = ["Behaviour", "FakeComfyUI", "error", "failed", "hung", "slow_to_queue"]


@dataclass
class Behaviour(base.Behaviour):
    #: the job never finishes
    hangs: bool = False
    #: the job ends with this execution error
    fails: str | None = None
    #: seconds between queuing the job and answering ``POST /prompt``
    answer_after: float = 0.0


def error(status: int, message: str = "Internal server error") -> Behaviour:
    return Behaviour(status=status, error={"type": "server_error", "message": message,
                                           "details": "", "extra_info": {}})


def hung() -> Behaviour:
    return Behaviour(hangs=True)


def failed(message: str = "Allocation on device 0 would exceed allowed memory.") -> Behaviour:
    return Behaviour(fails=message)


def slow_to_queue(seconds: float) -> Behaviour:
    """The job is queued (and never finishes); the answer with its id comes ``seconds``
    later: a client that gives up meanwhile knows the id only if it chose it."""
    return Behaviour(hangs=True, answer_after=seconds)


@dataclass
class Job:
    workflow: dict[str, Any]
    behaviour: Behaviour
    done_at: float
    number: int


class FakeComfyUI(FakeUpstream[Behaviour]):
    """In-process fake of ComfyUI's HTTP API (see module docstring)."""

    behaviour = Behaviour
    key_in = ("bearer",)

    def __init__(self, *, api_key: str | None = None,
                 models: Sequence[str] = ("v1-5-pruned-emaonly.safetensors",
                                          "sd_xl_base_1.0.safetensors"),
                 job_seconds: float = 0.05, honours_prompt_id: bool = True,
                 **knobs: Any) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.job_seconds = job_seconds
        self.honours_prompt_id = honours_prompt_id
        self.jobs: dict[str, Job] = {}
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.files: dict[tuple[str, str], bytes] = {}
        router = self.app.router
        router.add_post("/prompt", self._handle)
        router.add_get("/history/{prompt_id}", self._history)
        router.add_get("/view", self._view)
        router.add_post("/queue", self._queue)
        router.add_post("/interrupt", self._interrupt)
        router.add_get("/object_info/{node_class}", self._object_info)

    def _auth_missing(self) -> web.Response:
        return web.Response(status=401, text="401: Unauthorized")

    def _failure(self, status: int) -> Behaviour:
        return error(status)

    def _error_body(self, b: Behaviour) -> Any:
        return {"error": b.error, "node_errors": {}}

    # ---- the queue ------------------------------------------------------------------
    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        body = rec.json if isinstance(rec.json, dict) else {}
        workflow = body.get("prompt")
        if not isinstance(workflow, dict) or not workflow:
            return json_response(400, {"error": {"type": "no_prompt", "message": "No prompt "
                                                 "provided", "details": "", "extra_info": {}},
                                       "node_errors": {}})
        problem = self._validate(workflow)
        if problem is not None:
            return json_response(400, problem)
        supplied = body.get("prompt_id")
        prompt_id = str(supplied) if supplied and self.honours_prompt_id else str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        self.jobs[prompt_id] = Job(workflow, b, loop.time() + self.job_seconds, len(self.jobs))
        if b.answer_after:
            await asyncio.sleep(b.answer_after)
        return json_response(200, {"prompt_id": prompt_id, "number": len(self.jobs) - 1,
                                   "node_errors": {}})

    def _validate(self, workflow: dict[str, Any]) -> dict[str, Any] | None:
        for node_id, node in workflow.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return {"error": {"type": "invalid_prompt", "message": "Cannot execute because "
                                  f"node {node_id} has no class_type.", "details": "",
                                  "extra_info": {}}, "node_errors": {}}
            if node["class_type"] == "CheckpointLoaderSimple":
                name = node.get("inputs", {}).get("ckpt_name")
                if name not in self.models:
                    detail = f"ckpt_name: '{name}' not in {list(self.models)}"
                    return {"error": {"type": "prompt_outputs_failed_validation",
                                      "message": "Prompt outputs failed validation",
                                      "details": "", "extra_info": {}},
                            "node_errors": {node_id: {"errors": [{
                                "type": "value_not_in_list", "message": "Value not in list",
                                "details": detail, "extra_info": {"input_name": "ckpt_name"}}],
                                "dependent_outputs": ["9"],
                                "class_type": "CheckpointLoaderSimple"}}}
        return None

    async def _history(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        prompt_id = request.match_info["prompt_id"]
        job = self.jobs.get(prompt_id)
        if job is None or job.behaviour.hangs or asyncio.get_running_loop().time() < job.done_at:
            return json_response(200, {})
        return json_response(200, {prompt_id: self._entry(prompt_id, job)})

    def _entry(self, prompt_id: str, job: Job) -> dict[str, Any]:
        outputs = {} if job.behaviour.fails else self._run(prompt_id, job.workflow)
        if job.behaviour.fails:
            status = {"status_str": "error", "completed": False, "messages": [
                ["execution_start", {"prompt_id": prompt_id, "timestamp": 1}],
                ["execution_error", {"prompt_id": prompt_id, "node_id": "3",
                                     "node_type": "KSampler", "executed": ["4", "5"],
                                     "exception_message": job.behaviour.fails,
                                     "exception_type": "torch.OutOfMemoryError",
                                     "traceback": ["..."], "current_inputs": {},
                                     "current_outputs": {}, "timestamp": 2}]]}
        else:
            status = {"status_str": "success", "completed": True, "messages": [
                ["execution_start", {"prompt_id": prompt_id, "timestamp": 1}],
                ["execution_success", {"prompt_id": prompt_id, "timestamp": 2}]]}
        return {"prompt": [job.number, prompt_id, job.workflow, {}, list(outputs)],
                "outputs": outputs, "status": status, "meta": {
                    node: {"node_id": node, "display_node": node, "parent_node": None,
                           "real_node_id": node} for node in outputs}}

    def _run(self, prompt_id: str, workflow: dict[str, Any]) -> dict[str, Any]:
        """The images each SaveImage node saves: its latent's batch, of its positive prompt."""
        outputs: dict[str, Any] = {}
        for node_id, node in workflow.items():
            if node.get("class_type") != "SaveImage":
                continue
            sampler = self._source(workflow, node["inputs"]["images"], "KSampler")
            latent = self._source(workflow, sampler["inputs"]["latent_image"], "EmptyLatentImage")
            text = self._source(workflow, sampler["inputs"]["positive"], "CLIPTextEncode")
            images = []
            for i in range(int(latent["inputs"]["batch_size"])):
                filename = f"{node['inputs'].get('filename_prefix', 'ComfyUI')}_{prompt_id[:8]}" \
                           f"_{i:05}_.png"
                self.files[(filename, "")] = fake_image_bytes(text["inputs"]["text"], i)
                images.append({"filename": filename, "subfolder": "", "type": "output"})
            outputs[node_id] = {"images": images}
        return outputs

    @staticmethod
    def _source(workflow: dict[str, Any], link: Any, class_type: str) -> dict[str, Any]:
        """The node of ``class_type`` a link (``[node id, output]``) leads back to."""
        node = workflow[link[0]]
        while node["class_type"] != class_type:  # through VAEDecode and the like
            upstream = next(v for v in node["inputs"].values() if isinstance(v, list))
            node = workflow[upstream[0]]
        return node

    async def _view(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        key = (request.query.get("filename", ""), request.query.get("subfolder", ""))
        if key not in self.files or request.query.get("type") != "output":
            return web.Response(status=404)
        return web.Response(body=self.files[key], content_type="image/png")

    async def _queue(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        for prompt_id in (rec.json or {}).get("delete", []):
            self.deleted.append(prompt_id)
            self.jobs.pop(prompt_id, None)
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        self.interrupted.append((rec.json or {}).get("prompt_id", "*"))
        return web.Response(status=200)

    async def _object_info(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if request.match_info["node_class"] != "CheckpointLoaderSimple":
            return json_response(200, {})
        return json_response(200, {"CheckpointLoaderSimple": {
            "input": {"required": {"ckpt_name": [list(self.models),
                                                 {"tooltip": "The name of the checkpoint."}]}},
            "output": ["MODEL", "CLIP", "VAE"], "name": "CheckpointLoaderSimple",
            "category": "loaders", "output_node": False}})
