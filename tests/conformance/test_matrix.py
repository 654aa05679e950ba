"""The matrix: each client SDK x each provider type, one test per capability.

Test ids read ``test_tool_round_trip[anthropic-client-gemini-upstream]``.
The table of results lives in docs/conformance.md.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from conformance.clients import (
    anthropic_messages,
    gemini_genai,
    ollama_chat,
    openai_chat,
    responses_api,
)
from conformance.conftest import cells
from conformance.harness import Cell

CLIENTS: dict[str, ModuleType] = {
    "openai": openai_chat,
    "anthropic": anthropic_messages,
    "responses": responses_api,
    "gemini": gemini_genai,
    "ollama": ollama_chat,
}

pytestmark = [
    pytest.mark.parametrize("cell", cells(list(CLIENTS)), indirect=True),
    # google-genai's own aiohttp session subclass; nothing to do with the gateway
    pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession"),
]


async def test_text(cell: Cell) -> None:
    await CLIENTS[cell.client].text(cell)


async def test_stream_text(cell: Cell) -> None:
    await CLIENTS[cell.client].stream_text(cell)


async def test_tool_round_trip(cell: Cell) -> None:
    await CLIENTS[cell.client].tool_round_trip(cell)


async def test_image(cell: Cell) -> None:
    await CLIENTS[cell.client].image(cell)


async def test_reasoning(cell: Cell) -> None:
    await CLIENTS[cell.client].reasoning(cell)


async def test_error(cell: Cell) -> None:
    await CLIENTS[cell.client].error(cell)


async def test_stream_error(cell: Cell) -> None:
    await CLIENTS[cell.client].stream_error(cell)
