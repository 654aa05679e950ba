"""Shared fixtures: a fake OpenAI upstream and a gateway pointed at it; the database
of the storage tests, on each backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fakes.openai_upstream import FakeOpenAI
from storage_support import KEY

from omniroute.storage import Database, DatabaseBackend, Store
from omniroute.storage.migrations import MIGRATIONS
from omniroute.vault import Vault

UPSTREAM_KEY = "sk-upstream-test"

# the agent CLIs scripts/agent-clis.sh installs (the README's test command runs it): the
# real-CLI tests of `omniroute connect` find them on PATH
_AGENT_CLIS = Path(__file__).resolve().parents[1] / ".cache/agent-clis/node_modules/.bin"
if _AGENT_CLIS.is_dir():
    os.environ["PATH"] = f"{_AGENT_CLIS}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture
async def fake_openai(aiohttp_server: Any) -> FakeOpenAI:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def gw(omniroute: Any, fake_openai: FakeOpenAI) -> Any:
    """The gateway with one OpenAI-compatible connection, prefix ``up``."""
    omniroute.connection = await omniroute.add_provider({
        "type": "openai", "name": "fake", "prefix": "up",
        "base_url": fake_openai.base_url, "api_key": UPSTREAM_KEY,
    })
    omniroute.fake = fake_openai
    return omniroute


# ----------------------------------------------------------------------------- databases
# The storage tests take ``db``: each runs on the embedded SQLite and on PostgreSQL
# (plugins/omniroute-postgres, against the real server the test command starts: a
# database of the session's own, a schema of each test's own). Tests of what only
# SQLite has (its file, PRAGMAs, backups) open a ``Database`` themselves.


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A scratch database on the local PostgreSQL for this session (dropped after)."""
    from omniroute_postgres.testing import scratch_database

    with scratch_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def open_db(request: pytest.FixtureRequest, tmp_path: Path,
                  ) -> Callable[..., Awaitable[DatabaseBackend]]:
    """``await open_db(migrations=None)``: the test's database opened (and migrated to
    ``migrations``, default all of them); the same database at every call: SQLite in
    ``tmp_path``, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        path = tmp_path / "omniroute.sqlite3"

        async def sqlite(migrations: Sequence[Sequence[str]] = MIGRATIONS) -> DatabaseBackend:
            return await Database.open(path, migrations=migrations)

        return sqlite
    from omniroute_postgres import PostgresDatabase
    from omniroute_postgres.testing import fresh_schema

    url = await fresh_schema(request.getfixturevalue("postgres_server"))

    async def postgres(migrations: Sequence[Sequence[str]] = MIGRATIONS) -> DatabaseBackend:
        return await PostgresDatabase.connect(url, migrations=migrations)

    return postgres


@pytest.fixture
async def db(open_db: Callable[..., Awaitable[DatabaseBackend]],
             ) -> AsyncIterator[DatabaseBackend]:
    """An empty, migrated database, on each backend (see :func:`open_db`)."""
    database = await open_db()
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> Store:
    """The configuration store on :func:`db`, its credentials sealed with the tests' key."""
    return Store(db, Vault(KEY))


# ----------------------------------------------------------------------------- browser tests
# The dashboard's browser tests drive Debian's Chromium (/usr/bin/chromium) with Playwright
# for Python, never a browser Playwright downloads. When the package is missing, the test
# session installs it with apt-get (the README's test command runs these tests); where
# that cannot be done the tests are skipped with a message naming what is missing.

CHROMIUM = "/usr/bin/chromium"
_APT_TIMEOUT = 900


def _install_chromium() -> str | None:
    """Install Debian's chromium package; None when done, else why it could not be."""
    import os
    import shutil
    import subprocess

    apt = shutil.which("apt-get")
    if apt is None:
        return "apt-get is not available on this machine"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "apt-get needs root to install the chromium package"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "install", "-y", "-q", "chromium"],
                    [apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=_APT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(command)}' did not finish within {_APT_TIMEOUT} s"
        if command[1] == "install" and done.returncode == 0 and os.path.exists(CHROMIUM):
            return None
    return f"apt-get could not install chromium: {done.stderr.strip()[-400:]}"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium's path, installed with apt-get when missing; skips (loudly,
    naming what is missing) when it cannot be had."""
    import importlib.util
    import os
    import warnings

    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = ("the Python package 'playwright' (pip install -r requirements-test.txt)")
    elif not os.path.exists(CHROMIUM):
        why = _install_chromium()
        if why is not None:
            missing = f"{CHROMIUM} (Debian's chromium package): {why}"
    if missing is not None:
        message = f"BROWSER TESTS SKIPPED: missing {missing}"
        warnings.warn(message, stacklevel=1)
        print(f"\n{'!' * 78}\n{message}\n{'!' * 78}", flush=True)
        pytest.skip(message)
    return CHROMIUM
