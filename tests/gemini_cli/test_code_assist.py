"""The pure pieces of ``gemini-cli``: loopback redirects, Code Assist's envelope, its quota,
the provider type's settings."""

from __future__ import annotations

import time

import orjson
import pytest
from fakes.code_assist_upstream import (
    daily_limit,
)

from omniroute.oauth.loopback import is_loopback, with_port
from omniroute.providers.code_assist import (
    daily_reset_in,
    envelope,
    is_daily_limit,
    quota_windows,
    unwrap_body,
    unwrap_frame,
)
from omniroute.providers.gemini_cli import GEMINI, GeminiCliProvider


def test_loopback_redirects_on_any_port_and_pasted_ones() -> None:
    assert is_loopback("http://127.0.0.1:0/oauth2callback")
    assert is_loopback("http://localhost:1455/auth/callback")
    assert not is_loopback("https://codeassist.google.com/authcode")
    assert not is_loopback("https://127.0.0.1:8/cb")  # a listener serves http only
    assert with_port("http://127.0.0.1:0/oauth2callback", 51234) == (
        "http://127.0.0.1:51234/oauth2callback")
    assert with_port("http://[::1]:0/cb?x=1", 8) == "http://[::1]:8/cb?x=1"
    endpoints = GEMINI.endpoints({"no_browser": True, "project": "p"})
    assert endpoints.redirect_uri == "https://codeassist.google.com/authcode"
    assert endpoints.settings["project"] == "p"
    assert GEMINI.endpoints({"no_browser": True, "oauth_redirect_uri": "http://localhost:9/c"}
                            ).redirect_uri == "http://localhost:9/c"  # an override wins
    assert GEMINI.endpoints({}).url("api") == "https://cloudcode-pa.googleapis.com/v1internal"


def test_the_envelope_and_its_unwrapping() -> None:
    request = {"model": "gemini-2.5-pro", "contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    assert envelope("models/gemini-2.5-pro", "p-1", request, "r-1") == {
        "model": "gemini-2.5-pro", "project": "p-1", "user_prompt_id": "r-1",
        "request": {"contents": request["contents"]}}
    inner = {"candidates": [], "usageMetadata": {"promptTokenCount": 1}}
    assert orjson.loads(unwrap_body(orjson.dumps({"response": inner, "traceId": "t"}))) == inner
    assert unwrap_body(b'{"error": {"code": 500}}') == b'{"error": {"code": 500}}'
    frame = b'data: {"response": {"candidates": []}, "traceId": "t"}\r\n\r\n'
    assert unwrap_frame(frame) == b'data: {"candidates":[]}\n\n'
    for kept in (b'data: {"error": {"code": 429}}\n\n', b": keep-alive\n\n", b"data: [x\n\n"):
        assert unwrap_frame(kept) == kept


def test_only_the_days_quota_rests_until_the_reset() -> None:
    daily = daily_limit().error["details"]
    assert is_daily_limit(daily)
    per_minute = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                   "reason": "RATE_LIMIT_EXCEEDED"},
                  {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                   "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]
    assert not is_daily_limit(per_minute)
    # 2026-07-01 23:30 in Los Angeles (PDT, UTC-7) is 06:30 UTC: the reset is 30 min away
    assert daily_reset_in(1782887400.0) == pytest.approx(1800.0)
    reset = daily_reset_in(time.time())
    assert 0 < reset <= 86_400


def test_the_quota_buckets_become_windows() -> None:
    windows = quota_windows({"buckets": [
        {"modelId": "gemini-2.5-pro", "tokenType": "REQUESTS", "remainingFraction": 0.75,
         "remainingAmount": "750", "resetTime": "2025-10-22T16:01:15Z"},
        {"modelId": "gemini-2.5-flash", "tokenType": "TOKENS", "remainingFraction": 1},
        {"tokenType": "REQUESTS"}, "not a bucket"]})
    assert [(w.name, w.used_percent, w.remaining, w.resets_at) for w in windows] == [
        ("gemini-2.5-pro", 25.0, 750.0, 1761148875.0),
        ("gemini-2.5-flash TOKENS", 0.0, None, None)]
    assert quota_windows({}) == [] and quota_windows(None) == []


def test_the_provider_type_describes_its_settings() -> None:
    assert GeminiCliProvider.auth_kind == "oauth" and GeminiCliProvider.oauth is GEMINI
    assert "count_tokens" in GeminiCliProvider.capabilities
    settings, _ = GeminiCliProvider.configure({}, {"access_token": "a"}, None)
    assert settings["base_url"] == "https://cloudcode-pa.googleapis.com/v1internal"
    for bad in ({"project": ""}, {"no_browser": "yes"}, {"read_quota": 1},
                {"oauth_token_url": "ftp://x"}):
        with pytest.raises(ValueError):
            GeminiCliProvider.configure(bad, {"access_token": "a"}, None)
