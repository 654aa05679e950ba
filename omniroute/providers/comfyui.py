"""Provider type ``comfyui``: a ComfyUI server, driven through its HTTP API.

One generation is a job: ``POST {base_url}/prompt`` with ``{"prompt": <workflow>,
"client_id", "prompt_id"}`` queues it and answers ``{"prompt_id"}`` (the gateway mints
the id, which ``server.py`` keeps, so a job whose answer never came can still be
cancelled; an older server that mints its own is followed by its answer); ``GET /history/{id}``
answers ``{}`` until the job is done, then ``{id: {"outputs": {node: {"images":
[{filename, subfolder, type}]}}, "status": {...}}}``; ``GET /view?filename=
&subfolder=&type=`` gives each image's bytes. (API: ComfyUI's ``server.py``,
https://docs.comfy.org/development/comfyui-server/comms_routes.)

The workflow is the shipped txt2img template or the connection's own
(:mod:`.comfyui_workflow`: placeholders for the prompt, size, seed...). The
request's model is the checkpoint (``GET /object_info/CheckpointLoaderSimple``
lists them). The whole job, submitted, polled every ``poll_interval`` seconds
(connection setting, default 0.5) and fetched, is bounded by the
``image_timeout`` setting; past it, or when the client leaves, the job is taken
off the queue and interrupted (``POST /queue {"delete"}``, ``POST /interrupt
{"prompt_id"}``: a ComfyUI older than targeted interrupts stops whatever it is
running). Credentials: an ``api_key``, sent as a Bearer token, for a server
behind an authenticating proxy. A local server: nothing is priced.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import orjson

from omniroute.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.formats import canonical as c
from omniroute.formats.media import sniff_media_type
from omniroute.hookspecs import hookimpl
from omniroute.providers import comfyui_workflow as workflows
from omniroute.providers.base import Preset, Provider, ProviderContext
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.storage.store import Connection

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8188"
POLL_INTERVAL = 0.5
MIN_POLL_INTERVAL = 0.05
#: seconds the clean-up of an abandoned job may take (off the request's path)
_CLEANUP_WITHIN = 5.0

_PRESETS = [Preset("comfyui-local", DEFAULT_BASE_URL, "comfy", "ComfyUI (local)",
                   needs_api_key=False)]


class ComfyUIProvider(HTTPProvider):
    """ComfyUI's ``/prompt``, ``/history`` and ``/view``: images only."""

    type = "comfyui"
    priced = False  # a local server
    capabilities = frozenset({"images"})
    default_prefix = "comfy"
    description = "ComfyUI (a txt2img workflow: queued, polled, fetched)"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields = ("api_key",)
    requires_credentials = False

    def __init__(self, connection: Connection, context: ProviderContext,
                 rng: random.Random | None = None) -> None:
        super().__init__(connection, context)
        settings = connection.settings
        self.base_url = settings["base_url"].rstrip("/")
        self.workflow: dict[str, Any] = settings.get("workflow") or workflows.default_template()
        self.defaults = {**workflows.DEFAULTS, **(settings.get("defaults") or {})}
        self.poll_interval = float(settings.get("poll_interval", POLL_INTERVAL))
        self.rng = rng or random.Random()
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json"}
        headers.update(settings.get("headers", {}))
        if connection.credentials.get("api_key"):
            headers["Authorization"] = f"Bearer {connection.credentials['api_key']}"
        self._headers = headers
        #: clean-ups of abandoned jobs still running (kept so none is collected unfinished)
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url=DEFAULT_BASE_URL,
                                 type_name="a comfyui")
        if settings.get("workflow") is not None:
            settings["workflow"] = workflows.check_workflow(settings["workflow"])
        defaults = settings.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ValueError("defaults must be an object of placeholder values "
                             "(e.g. {\"steps\": 30, \"cfg\": 6.5})")
        interval = settings.get("poll_interval", POLL_INTERVAL)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or interval < MIN_POLL_INTERVAL:
            raise ValueError(f"poll_interval must be a number of seconds, at least "
                             f"{MIN_POLL_INTERVAL:g}")
        return super().configure(settings, credentials, preset)

    def workflow_for(self, model: str, request: c.ImageRequest) -> dict[str, Any]:
        """The workflow of one request, its placeholders filled."""
        width, height = request.dimensions(default=(self.defaults.get("width", 1024),
                                                    self.defaults.get("height", 1024)))
        values = {**self.defaults,
                  **{k: v for k, v in request.options.items() if k in workflows.CLIENT_FIELDS}}
        values.setdefault("seed", self.rng.randrange(2**32))
        values.update(prompt=request.prompt, model=model, width=width, height=height,
                      batch_size=request.n)
        filled: dict[str, Any] = workflows.fill(self.workflow, values)
        return filled

    async def generate_images(self, model: str, request: c.ImageRequest) -> c.ImageResult:
        """Queue the job, poll its history, fetch its images: within ``image_timeout``."""
        bound = self.context.timeouts.image
        # chosen here, so that a job queued just before the bound fires (its answer not
        # read yet) is known, and cancelled, too
        prompt_id = str(uuid.uuid4())
        try:
            async with asyncio.timeout(bound):
                prompt_id = await self._submit(self.workflow_for(model, request), prompt_id)
                entry = await self._finished(prompt_id)
                images = [await self._fetch(file) for file in workflows.output_files(entry)]
        except TimeoutError:
            self._abandon(prompt_id)
            raise UpstreamTimeout(f"the ComfyUI job did not finish within {bound:g}s") from None
        except asyncio.CancelledError:  # the client left, or the server shuts down
            self._abandon(prompt_id)
            raise
        if not images:
            raise UpstreamError("the ComfyUI job finished without saving any image")
        return c.ImageResult(images)

    async def _submit(self, workflow: dict[str, Any], prompt_id: str) -> str:
        """Queue the job as ``prompt_id``; the id the server answers with (its own, on a
        server that does not take the client's)."""
        body = {"prompt": workflow, "client_id": uuid.uuid4().hex, "prompt_id": prompt_id}
        answer = await self.post_json(f"{self.base_url}/prompt", self._headers,
                                      orjson.dumps(body))
        try:
            queued = orjson.loads(answer.body or b"")["prompt_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            queued = None
        if not isinstance(queued, str) or not queued:
            raise UpstreamError("ComfyUI queued the job without a prompt_id")
        return queued

    async def _finished(self, prompt_id: str) -> dict[str, Any]:
        """The job's history entry once it is done (polled; the caller bounds the wait)."""
        url = f"{self.base_url}/history/{quote(prompt_id, safe='')}"
        while True:
            history = await self.get_json(url, self._headers)
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if isinstance(entry, dict):
                failed = workflows.job_error(entry)
                if failed is not None:
                    raise UpstreamError(f"the ComfyUI job failed: {failed}")
                status = entry.get("status")
                done = not isinstance(status, dict) or status.get("completed", True)
                if done and entry.get("outputs") is not None:
                    return entry
            await asyncio.sleep(self.poll_interval)

    async def _fetch(self, file: dict[str, str]) -> c.GeneratedImage:
        body, content_type = await self.get_bytes(
            f"{self.base_url}/view?{urlencode(file)}", self._headers)
        data = base64.b64encode(body).decode()
        media_type = content_type if content_type.startswith("image/") \
            else sniff_media_type(data)
        return c.GeneratedImage(data=data, media_type=media_type)

    def _abandon(self, prompt_id: str) -> None:
        """Take an abandoned job off the queue and stop it, in the background (bounded)."""
        task = asyncio.get_running_loop().create_task(self._cancel_job(prompt_id))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _cancel_job(self, prompt_id: str) -> None:
        http = self.context.http
        try:
            async with asyncio.timeout(_CLEANUP_WITHIN):
                for path, body in (("/queue", {"delete": [prompt_id]}),
                                   ("/interrupt", {"prompt_id": prompt_id})):
                    async with http.post(f"{self.base_url}{path}", data=orjson.dumps(body),
                                         headers=self._headers) as resp:
                        await resp.read()
        except Exception as exc:  # noqa: BLE001 - best effort: the job may run on, logged
            log.warning("could not cancel ComfyUI job %s on %s: %s", prompt_id,
                        self.connection.name, exc)

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """A refused workflow names the node at fault (ComfyUI's ``node_errors``), which
        the generic reading of ``{"error": {...}}`` would drop."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        message = workflows.refusal(data)
        if message is None:
            return super().error_from(status, body, headers)
        kind = data["error"].get("type")
        return self.status_error(status, body, headers, message,
                                 code=kind if isinstance(kind, str) else None)

    async def list_models(self) -> list[str]:
        """The checkpoints ``CheckpointLoaderSimple`` offers."""
        info = await self.get_json(f"{self.base_url}/object_info/CheckpointLoaderSimple",
                                   self._headers)
        listed = workflows.checkpoints(info)
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    async def close(self) -> None:
        """Let the clean-ups of abandoned jobs finish (each is bounded)."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=_CLEANUP_WITHIN + 1)


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(ComfyUIProvider)
