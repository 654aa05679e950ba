"""Provider type ``sdwebui``: AUTOMATIC1111's Stable Diffusion web UI (its ``--api``).

``POST {base_url}/sdapi/v1/txt2img`` with ``{prompt, negative_prompt, width,
height, steps, batch_size, seed, cfg_scale, sampler_name, override_settings}``
answers ``{"images": [base64 PNG...], "parameters": {...}, "info": "<JSON
text>"}``; ``GET /sdapi/v1/sd-models`` lists the checkpoints. The model a
request names is the checkpoint (``override_settings.sd_model_checkpoint``; the
web UI matches it by title, name or hash), or ``default`` for the one loaded.
(API: the web UI's ``modules/api/api.py`` and ``models.py``,
https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/API.)

OpenAI's fields map as ``n`` -> ``batch_size``, ``size`` -> ``width`` /
``height``; the txt2img fields a client may add (``negative_prompt``, ``steps``,
``seed``, ``cfg_scale``, ``sampler_name``...) go through as sent, over the
connection's ``txt2img`` setting (defaults for every request, such as
``{"steps": 30}``). Credentials: ``username`` and ``password`` for a web UI
started with ``--api-auth`` (HTTP basic). A local server: nothing is priced.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson

from omniroute.errors import UpstreamError, UpstreamStatusError
from omniroute.formats import canonical as c
from omniroute.formats.media import sniff_media_type
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import Preset, Provider, ProviderContext
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.storage.store import Connection

DEFAULT_BASE_URL = "http://127.0.0.1:7860"
#: the model name that leaves the loaded checkpoint as it is
DEFAULT_MODEL = "default"
#: txt2img fields a client may set beside OpenAI's (the web UI's StableDiffusionProcessing)
TXT2IMG_FIELDS = frozenset({
    "negative_prompt", "steps", "seed", "subseed", "subseed_strength", "cfg_scale",
    "sampler_name", "scheduler", "styles", "denoising_strength", "restore_faces", "tiling",
    "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "clip_skip"})

_PRESETS = [Preset("sdwebui-local", DEFAULT_BASE_URL, "sd", "AUTOMATIC1111 web UI (local)",
                   needs_api_key=False)]


class SDWebUIProvider(HTTPProvider):
    """AUTOMATIC1111's ``/sdapi/v1/txt2img``: images only."""

    type = "sdwebui"
    priced = False  # a local server
    capabilities = frozenset({"images"})
    default_prefix = "sd"
    description = "AUTOMATIC1111 Stable Diffusion web UI (txt2img API)"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields = ("username", "password")
    requires_credentials = False

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        settings, credentials = connection.settings, connection.credentials
        self.base_url = settings["base_url"].rstrip("/")
        self.defaults: dict[str, Any] = dict(settings.get("txt2img") or {})
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json",
                   "Accept": "application/json"}
        headers.update(settings.get("headers", {}))
        if credentials.get("username"):
            pair = f"{credentials['username']}:{credentials.get('password', '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._headers = headers

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url=DEFAULT_BASE_URL,
                                 type_name="an sdwebui")
        defaults = settings.get("txt2img", {})
        if not isinstance(defaults, dict):
            raise ValueError("txt2img must be an object of txt2img fields (e.g. {\"steps\": 30})")
        if credentials.get("password") and not credentials.get("username"):
            raise ValueError("a password needs its username (the web UI's --api-auth user)")
        return super().configure(settings, credentials, preset)

    def txt2img_body(self, model: str, request: c.ImageRequest) -> dict[str, Any]:
        """The txt2img request: the connection's defaults, the client's txt2img fields,
        then what OpenAI's fields say."""
        width, height = request.dimensions(default=(512, 512))
        body: dict[str, Any] = {**self.defaults,
                                **{k: v for k, v in request.options.items()
                                   if k in TXT2IMG_FIELDS}}
        body.update(prompt=request.prompt, width=width, height=height,
                    batch_size=request.n, n_iter=1, send_images=True, save_images=False)
        if model != DEFAULT_MODEL:
            body["override_settings"] = {**(body.get("override_settings") or {}),
                                         "sd_model_checkpoint": model}
        return body

    async def generate_images(self, model: str, request: c.ImageRequest) -> c.ImageResult:
        answer = await self.post_json(
            f"{self.base_url}/sdapi/v1/txt2img", self._headers,
            orjson.dumps(self.txt2img_body(model, request)),
            timeout=self.context.timeouts.images)
        assert answer.body is not None
        return txt2img_answer(answer.body, request.n)

    async def list_models(self) -> list[str]:
        """``GET /sdapi/v1/sd-models``: each checkpoint's ``model_name``."""
        data = await self.get_json(f"{self.base_url}/sdapi/v1/sd-models", self._headers)
        listed = [m["model_name"] for m in data if isinstance(m, dict)
                  and isinstance(m.get("model_name"), str)] if isinstance(data, list) else []
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """``{"error": "<exception class>", "detail": ..., "errors": ...}`` (the web UI's
        handler), or FastAPI's own ``{"detail": ...}``."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return super().error_from(status, body, headers)
        detail = data.get("detail") or data.get("errors") or data.get("error")
        message = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
        return self.status_error(status, body, headers, message)


def txt2img_answer(body: bytes, count: int) -> c.ImageResult:
    """``{"images": [...], "info": "..."}``: the first ``count`` images (a web UI with
    ControlNet and the like appends its detect maps after them)."""
    try:
        data = orjson.loads(body)
        images = data["images"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UpstreamError("upstream sent a malformed txt2img answer") from None
    found = [c.GeneratedImage(data=image, media_type=sniff_media_type(image))
             for image in images if isinstance(image, str) and image][:count] \
        if isinstance(images, list) else []
    if not found:
        raise UpstreamError("upstream sent a txt2img answer without any image")
    return c.ImageResult(found)


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(SDWebUIProvider)
