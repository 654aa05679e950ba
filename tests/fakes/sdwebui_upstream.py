"""Fake AUTOMATIC1111 Stable Diffusion web UI (``--api``) for gateway tests.

Speaks the real wire format of ``POST /sdapi/v1/txt2img`` (``{prompt,
negative_prompt, width, height, steps, batch_size, n_iter, seed, override_settings,
...}`` -> ``{"images": [base64 PNG...], "parameters": {...}, "info": "<JSON text>"}``)
and ``GET /sdapi/v1/sd-models``, from the web UI's ``modules/api/api.py`` and
``models.py``. Usage::

    fake = FakeSDWebUI()
    server = await aiohttp_server(fake.app)

Images are ``fake_image(prompt, i)``, ``batch_size * n_iter`` of them; ``info`` names the
checkpoint used (``override_settings.sd_model_checkpoint``, else the loaded one, the
first of ``models``). An unknown checkpoint, a size that is not a multiple of 8, or a
request without a prompt get the web UI's error shape (``{"error", "detail", "body",
"errors"}``); a missing or wrong HTTP basic login (``auth=("user", "pass")``, as with
``--api-auth``) its 401. ``script`` pops one ``Behaviour`` per txt2img request:
``error(status, detail)``, and the shared faults (``fakes.base``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from fakes import base
from fakes.base import FakeUpstream, Recorded, fake_image, fault_helpers, json_response

__all__ = ["FakeSDWebUI", "error", "garbage", "hang_before_headers"]

Behaviour = base.Behaviour


def _error_body(status: int, detail: str, error_type: str = "HTTPException") -> dict[str, Any]:
    return {"error": error_type, "detail": detail, "body": "",
            "errors": f"{status}: {detail}"}


def error(status: int, detail: str | None = None) -> Behaviour:
    detail = detail or ("CUDA out of memory." if status >= 500 else "Bad request")
    return Behaviour(status=status, error=_error_body(status, detail,
                                                      "OutOfMemoryError" if status >= 500
                                                      else "HTTPException"))


hang_before_headers, _, _, garbage, _ = fault_helpers(Behaviour)


class FakeSDWebUI(FakeUpstream[Behaviour]):
    """In-process fake of the web UI's txt2img API (see module docstring)."""

    behaviour = Behaviour
    key_in = ()

    def __init__(self, *, models: Sequence[str] = ("v1-5-pruned-emaonly", "sd_xl_base_1.0"),
                 auth: tuple[str, str] | None = None, **knobs: Any) -> None:
        super().__init__(api_key=None, models=models, **knobs)
        self.auth = auth
        self.app.router.add_post("/sdapi/v1/txt2img", self._handle)
        self.app.router.add_get("/sdapi/v1/sd-models", self._sd_models)

    def _error_body(self, b: Behaviour) -> Any:
        return b.error

    def _failure(self, status: int) -> Behaviour:
        return error(status)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.auth is None:
            return None
        expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        if request.headers.get("Authorization") == expected:
            return None
        return json_response(401, _error_body(401, "Incorrect username or password"
                                              if "Authorization" in request.headers
                                              else "Not authenticated"),
                             {"WWW-Authenticate": "Basic"})

    async def _sd_models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        return json_response(200, [{
            "title": f"{m}.safetensors [{i:010x}]", "model_name": m, "hash": f"{i:08x}",
            "sha256": f"{i:064x}", "filename": f"/models/Stable-diffusion/{m}.safetensors",
            "config": None} for i, m in enumerate(self.models)])

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        if b.garbage is not None:
            return self._garbage(b, False)
        body = rec.json if isinstance(rec.json, dict) else None
        if body is None:
            return json_response(422, {"detail": [{"loc": ["body"], "msg": "field required",
                                                   "type": "value_error.missing"}]})
        prompt = body.get("prompt", "")
        if not prompt:
            return json_response(422, _error_body(422, "prompt is required"))
        width, height = body.get("width", 512), body.get("height", 512)
        if width % 8 or height % 8:
            return json_response(500, _error_body(
                500, f"Width and height must be multiples of 8, got {width}x{height}",
                "RuntimeError"))
        checkpoint = (body.get("override_settings") or {}).get("sd_model_checkpoint",
                                                              self.models[0])
        if checkpoint not in self.models:
            return json_response(404, _error_body(404, f"Checkpoint {checkpoint!r} not found"))
        count = body.get("batch_size", 1) * body.get("n_iter", 1)
        seed = body.get("seed", -1)
        seed = 1234 if seed in (-1, None) else seed
        info = {"prompt": prompt, "all_prompts": [prompt] * count,
                "negative_prompt": body.get("negative_prompt", ""), "seed": seed,
                "all_seeds": [seed + i for i in range(count)], "width": width, "height": height,
                "steps": body.get("steps", 20), "sd_model_name": checkpoint,
                "infotexts": [f"{prompt}\nSteps: {body.get('steps', 20)}, Seed: {seed + i}"
                              for i in range(count)]}
        payload = orjson.dumps({"images": [fake_image(prompt, i) for i in range(count)],
                                "parameters": body, "info": orjson.dumps(info).decode()})
        return await self._send_whole(request, b, payload)
