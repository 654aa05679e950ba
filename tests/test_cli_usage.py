"""``omniroute usage``: the request log as a table by day, model, provider or key."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from test_cli import Cli, failed, ok

from omniroute.storage import Database, RequestLog, RequestRecord

DAY = 86400.0


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "data")


def seed(run: Cli, key_id: str) -> float:
    """Records today, two days ago and ten days ago; returns the time they are relative to."""
    now = time.time()

    def rec(i: int, age: float, **fields: object) -> RequestRecord:
        base: dict[str, object] = dict(
            request_id=f"r{i}", ts=now - age, endpoint="chat", status=200, api_key_id=key_id,
            provider="openai", connection_id="conn_a", model="gpt-4o", prompt_tokens=1000,
            completion_tokens=100, cached_tokens=10, reasoning_tokens=0, cost_usd=0.25)
        base.update(fields)
        return RequestRecord(**base)  # type: ignore[arg-type]

    records = [
        rec(1, 60),
        rec(2, 120, model="gpt-4o-mini", cost_usd=0.01),
        rec(3, 2 * DAY, provider="claude", model="sonnet", cost_usd=0.0, list_cost_usd=1.5,
            api_key_id=None),
        rec(4, 2 * DAY + 60, status=500, error_class="UpstreamError", prompt_tokens=None,
            completion_tokens=None, cost_usd=None),
        rec(5, 10 * DAY, cost_usd=100.0),  # outside the default week
    ]

    async def write() -> None:
        db = await Database.open(Path(run.data_dir) / "omniroute.sqlite3")
        log = RequestLog(db)
        for r in records:
            log.add(r)
        await log.flush()
        await db.close()

    asyncio.run(write())
    return now


def make_key(run: Cli) -> str:
    out = ok(run("keys", "create", "--name", "laptop")).output
    match = re.search(r"created (key_\w+)", out)
    assert match, out
    return match.group(1)


def test_usage_by_day_with_totals(run: Cli) -> None:
    seed(run, make_key(run))
    assert Path(run.data_dir, "omniroute.sqlite3").exists()
    lines = ok(run("usage")).output.splitlines()
    assert lines[0].split() == ["day", "requests", "errors", "tokens", "in", "tokens", "out",
                                "cache", "read", "reasoning", "cost", "saved"]
    body = [line for line in lines[2:] if not line.startswith("-")]
    # two days with requests (up to four when a pair straddles midnight UTC), then the total
    assert 3 <= len(body) <= 5
    total = body[-1].split()
    assert total[:5] == ["total", "4", "1", "3,000", "300"]
    assert total[-2:] == ["$0.2600", "$1.5000"]


def test_usage_by_model_provider_and_key(run: Cli) -> None:
    key_id = make_key(run)
    seed(run, key_id)
    models = {line.split()[0]: line.split() for line in
              ok(run("usage", "--by", "model")).output.splitlines()[2:]}
    assert models["gpt-4o"][1] == "2" and models["gpt-4o"][-2] == "$0.2500"
    assert models["sonnet"][-1] == "$1.5000" and models["gpt-4o-mini"][1] == "1"
    out = ok(run("usage", "--by", "provider", "--since", "30d")).output
    assert re.search(r"^openai +4 +1 ", out, re.MULTILINE), out
    assert re.search(r"^total +5 ", out, re.MULTILINE) and "$100.2600" in out
    out = ok(run("usage", "--by", "key")).output
    assert f"laptop ({key_id})" in out and "(no key)" in out
    out = ok(run("usage", "--by", "model", "--key", key_id)).output
    assert "sonnet" not in out and re.search(r"^total +3 ", out, re.MULTILINE)


def test_usage_json_and_since(run: Cli) -> None:
    seed(run, make_key(run))
    data = json.loads(ok(run("usage", "--by", "model", "--json")).output)
    assert data["by"] == "model" and data["totals"]["requests"] == 4
    assert {g["model"] for g in data["groups"]} == {"gpt-4o", "gpt-4o-mini", "sonnet"}
    assert data["totals"]["saved_usd"] == 1.5
    day = json.loads(ok(run("usage", "--since", "24h", "--json")).output)
    assert day["totals"]["requests"] == 2 and len(day["groups"]) >= 1
    assert day["groups"][-1]["start"].endswith("T00:00:00Z")
    old = json.loads(ok(run("usage", "--since", "2000-01-01", "--until", "5d", "--json")).output)
    assert old["totals"]["requests"] == 1 and old["totals"]["cost_usd"] == 100.0
    hours = json.loads(ok(run("usage", "--by", "hour", "--since", "1h", "--json")).output)
    assert sum(g["requests"] for g in hours["groups"]) == 2


def test_usage_bad_input(run: Cli) -> None:
    make_key(run)
    failed(run("usage", "--since", "last tuesday"), "is not a time")
    failed(run("usage", "--since", "1d", "--until", "2d"), "'from' must be before 'to'")
    assert run("usage", "--by", "colour").exit_code == 2
    assert ok(run("usage")).output.strip() == "no requests in this period"
