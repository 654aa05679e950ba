"""Fixtures of the postgres plugin's tests: a scratch database on the real PostgreSQL
for the session (``omniroute_test_<random>``, dropped after), a schema of its own per
test, and the project's fake OpenAI upstream."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from omniroute_postgres.testing import fresh_schema, scratch_database

# the project's fakes (tests/fakes): one fake upstream for every test of the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from fakes.openai_upstream import FakeOpenAI
from pg_testkit import Proxy

UPSTREAM_KEY = "sk-upstream-test"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    with scratch_database() as url:
        yield url


@pytest.fixture
async def pg_url(postgres_server: str) -> str:
    """A ``database_url`` of this test's own (a fresh schema in the session's database)."""
    return await fresh_schema(postgres_server)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> FakeOpenAI:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[Proxy]:
    """A TCP proxy in front of the test database, which tests can cut or pause."""
    parts = urlsplit(pg_url)
    made = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await made.start()
    yield made
    await made.close()
