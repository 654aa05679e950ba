"""The failure classifier: every status and message pattern, per provider format."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import orjson
import pytest

from omniroute.errors import (
    GatewayError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from omniroute.resilience.classify import classify, classify_status
from omniroute.resilience.cooldown import (
    MAX_HINT,
    Backoff,
    hint_from,
    parse_go_duration,
    parse_retry_after,
    parse_rfc3339,
    retry_delay_from_body,
)

NOW = 1_700_000_000.0


def oai(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def anth(message: str, type_: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


def gem(code: int, message: str, status: str, details: list[Any] | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status,
                                   "details": details or []}})


def oll(message: str) -> bytes:
    return orjson.dumps({"error": message})


GEMINI_QUOTA = gem(
    429, "You exceeded your current quota, please check your plan and billing details.",
    "RESOURCE_EXHAUSTED",
    [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
     {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}])

# (format, status, body, kind, move_on, penalty, terminal_reason)
TABLE = [
    # ---- openai
    ("openai", 400, oai("This model's maximum context length is 128000 tokens. However, your "
                        "messages resulted in 130000 tokens. Please reduce the length of the "
                        "messages.", code="context_length_exceeded"),
     "context_too_long", True, "none", None),
    ("openai", 400, oai("The model `gpt-9` does not exist or you do not have access to it.",
                        code="model_not_found"), "model_not_supported", True, "none", None),
    ("openai", 400, oai("Invalid value for 'temperature': must be <= 2.", code="invalid_value"),
     "client_error", False, "none", None),
    ("openai", 429, oai("You exceeded your current quota, please check your plan and billing "
                        "details.", "insufficient_quota", "insufficient_quota"),
     "terminal", True, "terminal", "billing"),
    ("openai", 429, oai("Rate limit reached for gpt-4o on requests per min (RPM): Limit 3.",
                        "requests", "rate_limit_exceeded"), "rate_limited", True, "cooldown", None),
    ("openai", 401, oai("Incorrect API key provided: sk-abc***xyz.", code="invalid_api_key"),
     "terminal", True, "terminal", "credentials_invalid"),
    ("openai", 401, oai("This key is associated with a deactivated account.",
                        code="account_deactivated"), "terminal", True, "terminal",
     "account_deactivated"),
    ("openai", 403, oai("Project `proj_1` does not have access to model `gpt-5`",
                        code="model_not_found"), "model_not_supported", True, "none", None),
    ("openai", 404, oai("The model `gpt-9` does not exist", code="model_not_found"),
     "model_not_found", True, "none", None),
    # ---- anthropic
    ("anthropic", 400, anth("prompt is too long: 210000 tokens > 200000 maximum"),
     "context_too_long", True, "none", None),
    ("anthropic", 400, anth("input length and `max_tokens` exceed context limit: 190000 + "
                            "20000 > 200000"), "context_too_long", True, "none", None),
    ("anthropic", 400, anth("Your credit balance is too low to access the Anthropic API. Please "
                            "go to Plans & Billing to upgrade or purchase credits."),
     "terminal", True, "terminal", "billing"),
    ("anthropic", 400, anth("model: claude-9-opus"), "model_not_supported", True, "none", None),
    ("anthropic", 404, anth("model: claude-9-opus", "not_found_error"),
     "model_not_found", True, "none", None),
    ("anthropic", 403, anth("This organization has been disabled.", "permission_error"),
     "terminal", True, "terminal", "account_deactivated"),
    ("anthropic", 401, anth("invalid x-api-key", "authentication_error"),
     "terminal", True, "terminal", "credentials_invalid"),
    ("anthropic", 429, anth("Number of request tokens has exceeded your per-minute rate limit",
                            "rate_limit_error"), "rate_limited", True, "cooldown", None),
    ("anthropic", 529, anth("Overloaded", "overloaded_error"), "server_error", True, "cooldown",
     None),
    ("anthropic", 400, anth("max_tokens: must be greater than or equal to 1"),
     "client_error", False, "none", None),
    # ---- gemini
    ("gemini", 400, gem(400, "The input token count (1200000) exceeds the maximum number of "
                             "tokens allowed (1048576).", "INVALID_ARGUMENT"),
     "context_too_long", True, "none", None),
    ("gemini", 400, gem(400, "models/gemini-9 is not found for API version v1beta, or is not "
                             "supported for generateContent.", "NOT_FOUND"),
     "model_not_supported", True, "none", None),
    ("gemini", 404, gem(404, "models/gemini-9 is not found for API version v1beta.", "NOT_FOUND"),
     "model_not_found", True, "none", None),
    ("gemini", 429, GEMINI_QUOTA, "quota", True, "cooldown", None),
    ("gemini", 400, gem(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT",
                        [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                          "reason": "API_KEY_INVALID"}]),
     "terminal", True, "terminal", "credentials_invalid"),
    ("gemini", 403, gem(403, "This API method requires billing to be enabled.",
                        "PERMISSION_DENIED"), "terminal", True, "terminal", "billing"),
    ("gemini", 400, gem(400, "Invalid JSON payload received. Unknown name \"foo\".",
                        "INVALID_ARGUMENT"), "client_error", False, "none", None),
    # ---- ollama
    ("ollama", 400, oll("the input length exceeds the context length"),
     "context_too_long", True, "none", None),
    ("ollama", 400, oll('model "llama9" not found, try pulling it first'),
     "model_not_supported", True, "none", None),
    ("ollama", 404, oll('model "llama9" not found, try pulling it first'),
     "model_not_found", True, "none", None),
    ("ollama", 400, oll("registry.ollama.ai/library/gemma:2b does not support tools"),
     "model_not_supported", True, "none", None),
    ("ollama", 400, oll("invalid format: expected \"json\" or a JSON schema"),
     "client_error", False, "none", None),
    # ---- generic (an unknown format gets only the generic patterns)
    ("someformat", 400, b"Request exceeds the model's context window", "context_too_long", True,
     "none", None),
    ("someformat", 400, b'{"message": "Unknown model: foo-1"}', "model_not_supported", True,
     "none", None),
    ("someformat", 400, b'{"message": "field x is required"}', "client_error", False, "none",
     None),
    ("someformat", 403, b'{"message": "Daily quota exceeded for this key"}', "quota", True,
     "cooldown", None),
    ("someformat", 400, b"Too many requests, slow down", "quota", True, "cooldown", None),
    ("someformat", 402, b"", "terminal", True, "terminal", "billing"),
    ("someformat", 401, b'{"detail": "Your account has been suspended"}', "terminal", True,
     "terminal", "account_deactivated"),
    ("someformat", 401, b'{"detail": "This token has been revoked"}', "terminal", True,
     "terminal", "credentials_revoked"),
    ("someformat", 401, b'{"detail": "token expired"}', "auth", True, "cooldown", None),
    ("someformat", 403, b"forbidden", "auth", True, "cooldown", None),
    ("someformat", 408, b"", "timeout", True, "cooldown", None),
    ("someformat", 409, b"conflict", "client_error", False, "none", None),
    ("someformat", 422, b'{"detail": "value is not a valid integer"}', "client_error", False,
     "none", None),
    ("someformat", 500, b"", "server_error", True, "cooldown", None),
    ("someformat", 502, b"<html>bad gateway</html>", "server_error", True, "cooldown", None),
    ("someformat", 503, b"", "server_error", True, "cooldown", None),
    ("someformat", 504, b"", "server_error", True, "cooldown", None),
]


@pytest.mark.parametrize(("fmt", "status", "body", "kind", "move_on", "penalty", "reason"), TABLE)
def test_classification_table(
    fmt: str, status: int, body: bytes, kind: str, move_on: bool, penalty: str, reason: str | None
) -> None:
    c = classify_status(status, body=body, format=fmt, now_wall=NOW)
    assert (c.kind, c.move_on, c.penalty, c.terminal_reason) == (kind, move_on, penalty, reason)
    assert c.status == status
    assert c.breaker == (status >= 500 or status == 408)
    assert not c.refresh


@pytest.mark.parametrize(("fmt", "body"), [
    ("anthropic", anth("model: claude-9-opus")),
    ("ollama", oll('model "llama9" not found, try pulling it first')),
])
def test_format_specific_patterns_do_not_leak_into_other_formats(fmt: str, body: bytes) -> None:
    assert classify_status(400, body=body, format=fmt).kind == "model_not_supported"
    other = classify_status(400, body=body, format="openai")
    assert (other.kind, other.move_on) == ("client_error", False)


def test_gemini_quota_is_temporary_and_carries_its_retry_delay() -> None:
    c = classify_status(429, body=GEMINI_QUOTA, format="gemini", now_wall=NOW)
    assert c.penalty == "cooldown" and c.retry_after == 30.0


def test_rate_limit_wording_beats_context_wording() -> None:
    # a throttled answer that also mentions tokens must not look like an oversized prompt
    body = oai("Rate limit reached: too many tokens per min (TPM).", code="rate_limit_exceeded")
    c = classify_status(400, body=body)
    assert (c.kind, c.penalty) == ("quota", "cooldown")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_asks_for_one_refresh_when_the_provider_can(status: int) -> None:
    body = oai("Invalid authentication credentials", code="invalid_api_key")
    first = classify_status(status, body=body, can_refresh=True)
    assert first.refresh and first.move_on and first.penalty == "none"
    after = classify_status(status, body=body, can_refresh=False)
    assert not after.refresh and after.penalty == "terminal"


def test_terminal_pattern_wins_even_when_a_refresh_is_possible() -> None:
    body = oai("This key is associated with a deactivated account.", code="account_deactivated")
    c = classify_status(401, body=body, can_refresh=True)
    assert c.penalty == "terminal" and not c.refresh


def test_cooldown_carries_the_hint_and_no_cooldown_carries_none() -> None:
    c = classify_status(503, headers={"Retry-After": "12"})
    assert c.retry_after == 12.0
    assert classify_status(503).retry_after is None
    # no cooldown penalty: the hint does not matter
    assert classify_status(404, headers={"Retry-After": "12"}).retry_after is None


# ------------------------------------------------------------------ exceptions

def test_exceptions() -> None:
    assert classify(UpstreamTimeout("slow")).kind == "timeout"
    assert classify(TimeoutError()).kind == "timeout"
    c = classify(UpstreamError("upstream unreachable: ClientConnectorError"))
    assert (c.kind, c.move_on, c.penalty, c.breaker) == ("connection", True, "cooldown", True)
    assert classify(ConnectionRefusedError()).kind == "connection"
    bug = classify(ValueError("a bug of ours"))
    assert (bug.move_on, bug.penalty, bug.breaker) == (False, "none", False)
    assert not classify(GatewayError("x")).move_on


def test_status_error_uses_body_format_and_upstream_headers() -> None:
    body = anth("slow down", "rate_limit_error")
    err = UpstreamStatusError("Rate limited", status=429, body=body, headers={})
    err.upstream_headers = {"retry-after": "4"}  # kept by the provider layer, not for the client
    c = classify(err, format="anthropic")
    assert (c.kind, c.retry_after) == ("rate_limited", 4.0)
    visible = UpstreamStatusError("x", status=503, headers={"Retry-After": "9"})
    assert classify(visible).retry_after == 9.0
    ctx = UpstreamStatusError("too long", status=400, body=anth("prompt is too long: 3 > 2"))
    assert classify(ctx, format="anthropic").kind == "context_too_long"
    assert classify(ctx, format="openai").kind == "context_too_long"  # generic pattern


# ------------------------------------------------------------------ hints and backoff

def test_go_durations() -> None:
    assert parse_go_duration("1s") == 1.0
    assert parse_go_duration("6m0s") == 360.0
    assert parse_go_duration("20ms") == pytest.approx(0.02)
    assert parse_go_duration("1h2m3.5s") == 3723.5
    for bad in ("", "5", "s", "1x", "1s junk", "-1s"):
        assert parse_go_duration(bad) is None, bad


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(formatdate(NOW + 120, usegmt=True), NOW) == pytest.approx(120)
    assert parse_retry_after(formatdate(NOW - 50, usegmt=True), NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None


def test_rfc3339() -> None:
    assert parse_rfc3339("2023-11-14T22:13:50Z", NOW) == pytest.approx(30)
    assert parse_rfc3339("2023-11-14T22:13:50.123456789+00:00", NOW) == pytest.approx(30.123456)
    assert parse_rfc3339("not a time", NOW) is None


def test_retry_delay_from_gemini_bodies() -> None:
    assert retry_delay_from_body(GEMINI_QUOTA) == 30.0
    assert retry_delay_from_body(b"[" + GEMINI_QUOTA + b"]") == 30.0  # the list-wrapped shape
    nested = gem(429, "q", "RESOURCE_EXHAUSTED", [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo",
         "retryDelay": {"seconds": 2, "nanos": 500000000}}])
    assert retry_delay_from_body(nested) == 2.5
    assert retry_delay_from_body(b'{"error": {"message": "no retryDelay here"}}') is None
    assert retry_delay_from_body(b"retryDelay but not json") is None


def test_hint_sources_and_their_order() -> None:
    openai = {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-requests": "0",
              "x-ratelimit-reset-tokens": "20ms", "x-ratelimit-remaining-tokens": "5000"}
    assert hint_from(openai, None, NOW) == 360.0  # the exhausted limit's reset
    openai_tokens = {**openai, "x-ratelimit-remaining-requests": "3",
                     "x-ratelimit-remaining-tokens": "0"}
    assert hint_from(openai_tokens, None, NOW) == pytest.approx(0.02)
    no_remaining = {"x-ratelimit-reset-requests": "1s", "X-RateLimit-Reset-Tokens": "3s"}
    assert hint_from(no_remaining, None, NOW) == 3.0  # the later reset, names any case
    anthropic = {"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z",
                 "anthropic-ratelimit-requests-remaining": "0",
                 "anthropic-ratelimit-tokens-reset": "2023-11-14T22:14:20Z",
                 "anthropic-ratelimit-tokens-remaining": "100"}
    assert hint_from(anthropic, None, NOW) == pytest.approx(20)
    assert hint_from({"retry-after-ms": "1500"}, None, NOW) == 1.5
    assert hint_from({}, GEMINI_QUOTA, NOW) == 30.0
    assert hint_from({"Retry-After": "2", **openai}, GEMINI_QUOTA, NOW) == 2.0  # Retry-After wins
    assert hint_from({"Retry-After": "garbage", **openai}, None, NOW) == 360.0
    assert hint_from({"retry-after": str(10 * MAX_HINT)}, None, NOW) == MAX_HINT
    assert hint_from(None, None, NOW) is None


def test_backoff_grows_to_its_cap() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=10.0)
    assert [backoff.delay(n) for n in range(0, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert Backoff(0.5, 3.0, 100.0).delay(3) == 4.5
    assert backoff.delay(10_000) == 10.0  # no overflow on a long streak
