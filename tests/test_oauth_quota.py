"""A subscription account's quota (``omniroute.oauth.quota``): windows, the rest until
the service's reset, the refusal while resting, and what operators are shown."""

from __future__ import annotations

import pytest

from omniroute.errors import UpstreamStatusError
from omniroute.oauth.quota import (
    MAX_REST,
    Quota,
    Quotas,
    Window,
    describe,
    exhausted,
    number,
)
from omniroute.resilience.classify import QUOTA, classify


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_windows_are_kept_and_a_rest_ends_at_the_reset() -> None:
    clock = Clock()
    quota = Quota("work", clock=clock)
    assert quota.snapshot() == {"plan": None, "status": None, "binding": None, "notes": {},
                                "updated_at": None, "exhausted": False,
                                "resets_at": None, "reason": None, "windows": []}
    quota.update([Window("primary", used_percent=10.0, window_minutes=300)], plan="plus")
    quota.update([Window("secondary", used_percent=3.0)])
    quota.update([Window("primary", used_percent=11.0)])  # replaces its own window only
    assert [w["used_percent"] for w in quota.snapshot()["windows"]] == [11.0, 3.0]
    assert quota.snapshot()["plan"] == "plus" and quota.updated_at == clock.now

    assert quota.exhaust(clock.now + 600, "spent") == 600
    with pytest.raises(UpstreamStatusError) as caught:
        quota.check()
    err = caught.value
    assert err.status == 429 and err.headers["Retry-After"] == "600"
    assert "resets in 10 min" in err.message and "'work'" in err.message
    assert classify(err).kind == QUOTA and classify(err).retry_after == 600
    clock.now += 599
    assert quota.resting() == pytest.approx(1)
    clock.now += 2
    quota.check()  # the reset passed: calls go through again
    assert quota.snapshot()["exhausted"] is False and quota.reason is None


def test_odd_resets_give_a_short_or_a_bounded_rest() -> None:
    clock = Clock()
    quota = Quota("a", clock=clock)
    assert quota.exhaust(None, "unknown") == 60  # no reset said: a minute
    assert quota.exhaust(clock.now - 5, "in the past") == 60
    assert quota.exhaust(clock.now + 10 * MAX_REST, "absurd") == MAX_REST
    quota.served()
    assert quota.resting() is None


def test_numbers_from_headers_and_json() -> None:
    assert [number(v) for v in ("42.5", " 7 ", 3, 2.5, "x", None, True, float("nan"))] == [
        42.5, 7.0, 3.0, 2.5, None, None, None, None]
    assert exhausted("m", 0.2).headers["Retry-After"] == "1"  # at least a second


def test_operators_get_one_line() -> None:
    snapshot = {"plan": "individual", "exhausted": True, "resets_at": 1000 + 7200,
                "reason": "premium requests used up", "windows": [
                    {"name": "chat", "unlimited": True},
                    {"name": "premium_interactions", "used_percent": 100.0, "remaining": 0.0,
                     "limit": 300.0, "resets_at": 1000 + 3 * 86400, "unlimited": False}]}
    assert describe(snapshot, 1000) == (
        "quota (individual): chat unlimited; premium_interactions 100% used 0 of 300 left "
        "resets in 3.0 days; RESTING 2.0 h (premium requests used up)")
    assert describe({"windows": []}, 0) == "quota: nothing reported yet"


def test_a_services_verdict_binding_window_and_notes_are_kept() -> None:
    clock = Clock()
    quota = Quota("max", clock=clock)
    quota.update([Window("5h", used_percent=21.0, status="allowed"),
                  Window("7d", used_percent=80.0, status="allowed_warning")],
                 status="allowed_warning", binding="7d", notes={"fallback": "available"})
    quota.update([], notes={"overage-disabled-reason": "org_level_disabled"})
    snap = quota.snapshot()
    assert (snap["status"], snap["binding"]) == ("allowed_warning", "7d")
    assert snap["notes"] == {"fallback": "available",
                             "overage-disabled-reason": "org_level_disabled"}
    assert [w["status"] for w in snap["windows"]] == ["allowed", "allowed_warning"]
    snap["windows"][1]["resets_at"] = clock.now + 3 * 86400
    assert describe(snap, clock.now) == (
        "quota: 5h 21% used; 7d 80% used allowed_warning resets in 3.0 days (binding)")


def test_quotas_outlive_provider_instances_and_forget_deleted_connections() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    first = quotas.of("c1", "work")
    first.exhaust(clock.now + 600, "spent")
    again = quotas.of("c1", "renamed")  # a provider rebuilt after an edit finds it again
    assert again is first and again.name == "renamed" and again.resting() == 600
    assert quotas.of("c2", "other") is not first and len(quotas) == 2
    quotas.retain({"c2"})
    assert len(quotas) == 1 and quotas.of("c1", "work").resting() is None
