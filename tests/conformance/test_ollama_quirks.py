"""Ollama clients: ``tools: []`` on every request, ``/api/tags``, ``HEAD /``."""

from __future__ import annotations

import pytest

from conformance.clients.ollama_chat import HI, sdk
from conformance.conftest import cells
from conformance.harness import ECHO, Cell


@pytest.mark.parametrize("cell", cells(["ollama"], ["openai", "anthropic", "gemini",
                                                    "responses"]), indirect=True)
async def test_empty_tools_are_not_forwarded(cell: Cell) -> None:
    """The SDK always sends ``tools`` (OpenAI refuses an empty array; so do others)."""
    cell.script(cell.up.say(None))
    r = await sdk(cell).chat(model=cell.model, messages=HI, tools=[], stream=False)
    assert r.message.content == ECHO
    assert "tools" not in cell.last()


@pytest.mark.parametrize("cell", cells(["ollama"], ["ollama"]), indirect=True)
async def test_tags_list_the_models_and_root_answers_head(cell: Cell) -> None:
    listed = await sdk(cell).list()
    names = [m.model for m in listed.models]
    assert {"ol/llama3.2:latest", "ol/qwen3:8b"} <= set(names)
    head = await cell.gw.client.head("/")
    assert head.status == 200
    version = await cell.gw.client.get("/api/version")
    assert version.status == 200 and (await version.json())["version"]
