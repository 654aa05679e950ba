"""Each client API's own error shape for a request the gateway refuses itself.

A bad request (no model, broken JSON) and an unknown model never reach an
upstream; the client still gets its API's error body, and its SDK the
exception it raises for that status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import ollama
import openai
import pytest
from google.genai import errors as genai_errors

from conformance.clients import anthropic_messages, gemini_genai, ollama_chat, openai_chat
from conformance.conftest import cells
from conformance.harness import Cell

HI = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession")


def openai_shape(body: Any) -> str:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"]
    return err["message"]


def anthropic_shape(body: Any) -> str:
    assert body["type"] == "error" and body["error"]["type"]
    return body["error"]["message"]


def gemini_shape(body: Any) -> str:
    err = body["error"]
    assert isinstance(err["code"], int) and err["status"].isupper()
    return err["message"]


def ollama_shape(body: Any) -> str:
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


#: client API -> (path for a model, body without a model, body for a model, shape check)
APIS: dict[str, tuple[Callable[[str], str], dict[str, Any], Callable[[str], dict[str, Any]],
                      Callable[[Any], str]]] = {
    "openai": (lambda m: "/v1/chat/completions", {"messages": HI},
               lambda m: {"model": m, "messages": HI}, openai_shape),
    "anthropic": (lambda m: "/v1/messages", {"max_tokens": 5, "messages": HI},
                  lambda m: {"model": m, "max_tokens": 5, "messages": HI}, anthropic_shape),
    "responses": (lambda m: "/v1/responses", {"input": "hi"},
                  lambda m: {"model": m, "input": "hi"}, openai_shape),
    "gemini": (lambda m: f"/v1beta/models/{m}:generateContent",
               {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
               lambda m: {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
               gemini_shape),
    "ollama": (lambda m: "/api/chat", {"messages": HI, "stream": False},
               lambda m: {"model": m, "messages": HI, "stream": False}, ollama_shape),
}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("cell", cells(list(APIS), ["openai"]), indirect=True)
async def test_bad_requests_in_the_clients_shape(cell: Cell) -> None:
    path, no_model, with_model, shape = APIS[cell.client]
    client = cell.gw.client
    # no model (Gemini names it in the URL)
    resp = await client.post(path("") if cell.client == "gemini" else path(cell.model),
                             json=no_model)
    assert resp.status == 400
    assert "model" in shape(await resp.json()).lower()
    # broken JSON
    resp = await client.post(path(cell.model), data=b'{"model": ', headers=JSON)
    assert resp.status == 400
    assert "json" in shape(await resp.json()).lower()
    # an unknown model
    resp = await client.post(path("nope/such-model"), json=with_model("nope/such-model"))
    assert resp.status in (400, 404)
    assert "nope" in shape(await resp.json())
    assert cell.bodies() == [], "nothing reached the upstream"


async def _unknown_model(cell: Cell) -> Any:
    model = "nope/such-model"
    if cell.client == "openai":
        return await openai_chat.sdk(cell).chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
    if cell.client == "anthropic":
        return await anthropic_messages.sdk(cell).messages.create(model=model, max_tokens=5,  # type: ignore[arg-type]
                                                                  messages=HI)  # type: ignore[arg-type]
    if cell.client == "responses":
        return await openai_chat.sdk(cell).responses.create(model=model, input="hi")
    if cell.client == "gemini":
        return await gemini_genai.sdk(cell).aio.models.generate_content(model=model,
                                                                        contents="hi")
    return await ollama_chat.sdk(cell).chat(model=model, messages=HI, stream=False)


BAD_REQUEST = {"openai": openai.BadRequestError, "anthropic": anthropic.BadRequestError,
               "responses": openai.BadRequestError, "gemini": genai_errors.ClientError,
               "ollama": ollama.ResponseError}


@pytest.mark.parametrize("cell", cells(list(APIS), ["openai"]), indirect=True)
async def test_unknown_model_is_the_sdks_bad_request(cell: Cell) -> None:
    # 400 model_not_found, as issues 2 and 4 specify (the model is the request's mistake;
    # providers themselves answer 404, which SDK users may also catch)
    with pytest.raises(BAD_REQUEST[cell.client]) as info:
        await _unknown_model(cell)
    status = getattr(info.value, "status_code", None) or getattr(info.value, "code", None)
    assert status == 400
    assert "nope/such-model" in str(info.value)
