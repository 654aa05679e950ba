"""The command line with ``database_url``: it works on the server's database, as the
gateways do (the plugin found through its entry point, as an installed one is)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from omniroute.cli import cli
from omniroute.plugins import load_plugins
from pg_testkit import start_instances

#: make_test_config's credentials key, as the environment gives it
SECRET = base64.urlsafe_b64encode(b"k" * 32).decode()


@pytest.fixture(autouse=True)
def installed() -> None:
    if "postgres" not in load_plugins().database_backends:
        pytest.fail("the command line finds plugins by their entry point: install this one "
                    "(pip install -e plugins/omniroute-postgres, as requirements-test.txt does)")


def omniroute(tmp_path: Path, url: str, *args: str) -> Any:
    runner = CliRunner(env={"OMNIROUTE_DATABASE_URL": url, "OMNIROUTE_SECRET_KEY": SECRET,
                            "OMNIROUTE_STATE_URL": None, "OMNIROUTE_PLUGINS": None,
                            "OMNIROUTE_DISABLE_PLUGINS": None})
    return runner.invoke(cli, ["--data-dir", str(tmp_path / "cli"), *args])


async def test_a_key_made_on_the_command_line_is_accepted_by_a_gateway(
        aiohttp_client: Any, tmp_path: Path, pg_url: str) -> None:
    made = await asyncio.to_thread(omniroute, tmp_path, pg_url, "keys", "create",
                                   "--name", "from-cli")
    assert made.exit_code == 0, (made.output, made.exception)
    secret = next(w for w in made.output.split() if w.startswith("sk-or-"))
    listed = await asyncio.to_thread(omniroute, tmp_path, pg_url, "keys", "list", "--json")
    assert [k["name"] for k in json.loads(listed.output)] == ["from-cli"]
    assert not (tmp_path / "cli" / "omniroute.sqlite3").exists()
    (gw,) = await start_instances(aiohttp_client, tmp_path, pg_url, count=1)
    resp = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status == 200, await resp.text()


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = omniroute(tmp_path, "postgresql://postgres@127.0.0.1:1/x?connect_timeout=2",
                       "keys", "list")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "cannot use the database postgresql://postgres@127.0.0.1:1/x" in result.output
