"""Combos, resilience settings and state over the management API."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from resilience_e2e.support import (
    MODEL,
    api,
    call,
    combo,
)


async def test_combos_crud_with_validation(gw):
    await gw.add("alpha", prefix="a")
    await gw.add("b")
    created = await combo(gw, "pair", [f"a/{MODEL}", {"provider": "b", "model": MODEL,
                                                      "connection": "b", "weight": 2}],
                          "Least_Used")
    assert created["strategy"] == "least-used"
    cid = created["id"]
    assert (await api(gw, "GET", f"/api/combos/{cid}"))["name"] == "pair"
    listed = await api(gw, "GET", "/api/combos")
    assert [c["id"] for c in listed["combos"]] == [cid]

    async def refused(method: str, path: str, body: dict[str, Any], *needles: str) -> None:
        err = (await api(gw, method, path, body, 400))["error"]
        assert err["code"] == "invalid_config"
        for needle in needles:
            assert needle in err["message"], err["message"]

    await refused("POST", "/api/combos", {"name": "x", "steps": [f"a/{MODEL}", "gpt-4o-mni"]},
                  "step 2 ('gpt-4o-mni'): Model 'gpt-4o-mni' is not known.")
    await refused("POST", "/api/combos", {"name": "x", "steps": ["zz/gpt-4o"]},
                  "step 1 ('zz/gpt-4o')", "is not known")
    await refused("POST", "/api/combos", {"name": "x", "steps": ["pari"]},
                  "Did you mean 'pair'?")
    await refused("POST", "/api/combos", {"name": "x", "steps": []}, "non-empty list of steps")
    await refused("POST", "/api/combos", {"name": "x", "steps": [f"a/{MODEL}"],
                                          "strategy": "fastest"},
                  "unknown strategy 'fastest'; expected one of priority, round-robin")
    await refused("POST", "/api/combos", {"name": "x", "steps": [
        {"model": f"a/{MODEL}", "weight": -1}]}, "step 1: weight must be a positive number")
    await refused("POST", "/api/combos", {"name": "x", "steps": [
        {"model": f"a/{MODEL}", "connection": "gamma"}]}, "step 1: no connection 'gamma'")
    await refused("POST", "/api/combos", {"name": "x", "steps": [
        {"model": f"a/{MODEL}", "connection": "b"}]}, "pins connection 'b', which does not serve")
    await refused("POST", "/api/combos", {"name": "pair", "steps": [f"a/{MODEL}"]},
                  "a combo named 'pair' already exists")
    outer = await combo(gw, "outer", ["pair", f"b/{MODEL}"])
    await refused("PUT", f"/api/combos/{cid}", {"steps": ["outer"]},
                  "combo cycle: pair -> outer -> pair")
    await refused("PUT", f"/api/combos/{cid}", {"strategy": "nope"}, "unknown strategy 'nope'")
    await refused("PUT", f"/api/combos/{cid}", {"steps": ["gpt-5"]}, "step 1 ('gpt-5')")

    updated = await api(gw, "PUT", f"/api/combos/{cid}",
                        {"steps": [f"b/{MODEL}", f"a/{MODEL}"], "strategy": "p2c"})
    assert updated["id"] == cid and updated["strategy"] == "p2c"
    assert (await api(gw, "GET", f"/api/combos/{cid}"))["steps"] == [f"b/{MODEL}", f"a/{MODEL}"]
    route = gw.catalog.router.resolve("pair")  # live at once
    assert route.strategy == "p2c" and [t.prefix for t in route.targets] == ["b", "a"]

    await api(gw, "DELETE", f"/api/combos/{outer['id']}")
    assert (await api(gw, "DELETE", f"/api/combos/{cid}")) == {"deleted": cid}
    await api(gw, "GET", f"/api/combos/{cid}", status=404)
    await api(gw, "PUT", f"/api/combos/{cid}", {"strategy": "p2c"}, 404)
    await api(gw, "DELETE", f"/api/combos/{cid}", status=404)
    assert (await api(gw, "GET", "/api/combos"))["combos"] == []
    with pytest.raises(openai.BadRequestError) as info:
        await call(gw, "pair")
    assert info.value.code == "model_not_found"


async def test_resilience_settings_and_state_over_the_api(gw):
    state = await api(gw, "GET", "/api/resilience")
    assert state["settings"]["breaker_threshold"] == 12
    assert state["settings"]["account_strategy"] == "priority"
    assert state["health"] == {"healthy": 0, "degraded": 0, "down": 0,
                               "breakers": {"closed": 0, "open": 0, "half_open": 0}}
    changed = await api(gw, "PATCH", "/api/resilience",
                        {"breaker_threshold": 3, "account_strategy": "Round_Robin",
                         "wait_for_cooldown_max": 0})
    assert changed["settings"]["breaker_threshold"] == 3
    assert changed["settings"]["account_strategy"] == "round-robin"
    assert changed["settings"]["wait_for_cooldown_max"] == 0
    assert gw.resilience.settings.breaker_threshold == 3
    err = (await api(gw, "PATCH", "/api/resilience", {"require_login": False}, 400))["error"]
    assert "not a resilience setting: require_login" in err["message"]
    err = (await api(gw, "PATCH", "/api/resilience", {"account_strategy": "best"}, 400))["error"]
    assert "expected one of" in err["message"]
    await gw.add("a")
    state = await api(gw, "GET", "/api/resilience")
    assert state["health"]["healthy"] == 1
    assert (await api(gw, "POST", "/api/resilience/reset"))["reset"] == "all"
    sessions = await api(gw, "GET", "/api/sessions")
    assert sessions == {"count": 0, "max": 10000, "ttl": 1800.0, "items": []}
