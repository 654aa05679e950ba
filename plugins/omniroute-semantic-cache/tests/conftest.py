"""Fixtures of the semantic cache's tests (the helpers are in semantic_testkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from semantic_testkit import Clock, Layers


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def layers(tmp_path: Path, clock: Clock) -> AsyncIterator[Layers]:
    made = Layers(tmp_path / "semantic-cache.sqlite3", clock)
    yield made
    for layer in made.made:
        await layer.close()
