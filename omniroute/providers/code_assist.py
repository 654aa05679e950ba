"""The Code Assist API that Gemini CLI's Google sign-in talks to, as the ``gemini`` sign-in
and the ``gemini-cli`` provider type share it.

``https://cloudcode-pa.googleapis.com/v1internal:{method}`` (google-gemini/gemini-cli
``packages/core/src/code_assist/server.ts``), with the account's Google access token
as the bearer. Three things differ from the Gemini API:

* **The envelope.** A request is ``{"model", "project", "user_prompt_id", "request":
  {...the Gemini request...}}`` (:func:`envelope`); an answer, and each stream event,
  is ``{"response": {...the Gemini answer...}, "traceId"}`` (:func:`unwrap_body`,
  :func:`unwrap_frame`). Unwrapped, the ordinary Gemini translation serves every client
  format. ``countTokens`` takes ``{"request": {"model": "models/M", "contents"}}``.
* **The project.** Every call names the account's Code Assist project, which
  :meth:`CodeAssist.setup` finds once (gemini-cli's ``setupUser``, ``setup.ts``):
  ``loadCodeAssist`` says the account's tier and project; an account with no tier yet
  is onboarded with ``onboardUser``, a long-running operation polled (bounded) until
  done. Standard and Enterprise tiers need a Google Cloud project the user gives.
* **The daily limit.** A 429 ``RESOURCE_EXHAUSTED`` whose ``ErrorInfo.reason`` is
  ``QUOTA_EXHAUSTED`` or whose quota id counts per day is the day's quota, not a rate
  (gemini-cli ``utils/googleQuotaErrors.ts``): the account rests until the quota
  resets (:func:`daily_reset_in`), not for the few seconds a ``RetryInfo`` may say.
  ``retrieveUserQuota`` (``{"project"}`` in, ``{"buckets": [{"modelId", "tokenType",
  "remainingFraction", "remainingAmount", "resetTime"}]}`` out: ``code_assist/types.ts``)
  says what is left of each model's allowance (:func:`quota_windows`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

import aiohttp
import orjson

from omniroute.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.oauth.errors import OAuthError
from omniroute.oauth.quota import Window, number
from omniroute.sse import encode, event_data

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://cloudcode-pa.googleapis.com/v1internal"
#: the client metadata gemini-cli sends with loadCodeAssist and onboardUser (setup.ts)
CLIENT_METADATA = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED",
                   "pluginType": "GEMINI"}
FREE_TIER, LEGACY_TIER, STANDARD_TIER = "free-tier", "legacy-tier", "standard-tier"
#: gemini-cli polls the onboarding operation every 5 s (setup.ts)
POLL_INTERVAL = 5.0
#: how long an onboarding may take before the sign-in gives up
ONBOARD_TIMEOUT = 120.0
#: Google's daily quotas reset at midnight Pacific time (ai.google.dev rate limits)
QUOTA_TIMEZONE = "America/Los_Angeles"

_RPC = "type.googleapis.com/google.rpc."


class SetupError(OAuthError):
    """The account cannot use Code Assist as it is (ineligible, needs a validation, or
    Code Assist refused the setup)."""

    status, type, code = 403, "permission_error", "code_assist_setup"


class ProjectRequired(SetupError):
    """The account's tier needs a Google Cloud project, and none was given."""

    status, type, code = 400, "invalid_request_error", "project_required"


@dataclass(frozen=True, slots=True)
class Project:
    """What the setup found: the project every call names, and the account's tier."""

    id: str
    tier: str
    tier_name: str | None = None


# ----------------------------------------------------------------------------- the envelope

def method_url(base_url: str, method: str) -> str:
    """``{base}:{method}`` (the API's methods hang off the version, not a path)."""
    return f"{base_url.rstrip('/')}:{method}"


def envelope(model: str, project: str, request: Mapping[str, Any],
             prompt_id: str = "") -> dict[str, Any]:
    """A generate request for the Code Assist API (the Gemini request inside)."""
    body: dict[str, Any] = {"model": model.removeprefix("models/"), "project": project,
                            "request": {k: v for k, v in request.items() if k != "model"}}
    if prompt_id:
        body["user_prompt_id"] = prompt_id
    return body


def count_envelope(model: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """A countTokens request: only the contents count (gemini-cli's converter.ts)."""
    name = model if model.startswith("models/") else f"models/{model}"
    return {"request": {"model": name, "contents": request.get("contents") or []}}


def _inner(data: Any) -> dict[str, Any] | None:
    inner = data.get("response") if isinstance(data, dict) else None
    return inner if isinstance(inner, dict) else None


def unwrap_body(body: bytes) -> bytes:
    """The Gemini answer inside ``{"response": {...}}`` (anything else as it came)."""
    try:
        inner = _inner(orjson.loads(body))
    except orjson.JSONDecodeError:
        return body
    return body if inner is None else orjson.dumps(inner)


def unwrap_frame(frame: bytes) -> bytes:
    """One SSE event with the Gemini chunk inside its envelope as its data (an error
    event, a comment or anything else passes unchanged)."""
    data = event_data(frame)
    if not data or data.find(b'"response"') < 0:
        return frame
    try:
        inner = _inner(orjson.loads(data))
    except orjson.JSONDecodeError:
        return frame
    return frame if inner is None else encode(inner)


# ----------------------------------------------------------------------------- the daily limit

def error_details(body: bytes) -> list[dict[str, Any]]:
    """The ``details`` of a google.rpc.Status error body (``[]`` when there are none)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    return [d for d in details or [] if isinstance(d, dict)]


def is_daily_limit(details: list[dict[str, Any]]) -> bool:
    """Whether a 429's details say the day's quota is spent (not a per-minute rate)."""
    for detail in details:
        kind = detail.get("@type")
        if kind == _RPC + "ErrorInfo" and detail.get("reason") == "QUOTA_EXHAUSTED":
            return True
        if kind == _RPC + "QuotaFailure":
            for violation in detail.get("violations") or []:
                quota = violation.get("quotaId") if isinstance(violation, dict) else None
                if isinstance(quota, str) and ("PerDay" in quota or "Daily" in quota):
                    return True
    return False


def quota_windows(data: Any) -> list[Window]:
    """The buckets of a ``retrieveUserQuota`` answer, one window per model (and token
    type, when it is not requests): what is left, and when it resets."""
    buckets = data.get("buckets") if isinstance(data, dict) else None
    windows = []
    for bucket in buckets if isinstance(buckets, list) else ():
        model = bucket.get("modelId") if isinstance(bucket, dict) else None
        if not isinstance(model, str) or not model:
            continue
        kind = bucket.get("tokenType")
        name = model if kind in (None, "", "REQUESTS") else f"{model} {kind}"
        left = number(bucket.get("remainingFraction"))
        resets = bucket.get("resetTime")
        windows.append(Window(
            name, used_percent=None if left is None else round((1 - left) * 100, 2),
            remaining=number(bucket.get("remainingAmount")),
            resets_at=_rfc3339(resets) if isinstance(resets, str) else None,
            window_minutes=1440.0))
    return windows


def _rfc3339(value: str) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo else None


def daily_reset_in(now: float) -> float:
    """Seconds from ``now`` (epoch) until the next midnight Pacific time."""
    # imported here, not with the module: zoneinfo brings sysconfig and its build data
    # (about 0.3 MiB of RSS) into every gateway, and only a Code Assist quota needs it;
    # ZoneInfo keeps the zones it read, so later calls read no file
    from zoneinfo import ZoneInfo

    local = datetime.fromtimestamp(now, ZoneInfo(QUOTA_TIMEZONE))
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, midnight.timestamp() - now)


# ----------------------------------------------------------------------------- the setup calls

class CodeAssist:
    """The setup methods of the Code Assist API, for one access token."""

    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, access_token: str, *,
        headers: Mapping[str, str] | None = None, timeout: float = 30.0,
        poll_interval: float | None = None, onboard_timeout: float = ONBOARD_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        :param base_url: ``https://cloudcode-pa.googleapis.com/v1internal`` or an override.
        :param headers: sent with every call (gemini-cli's ``User-Agent``).
        :param timeout: seconds one call may take.
        :param poll_interval: seconds between polls of the onboarding operation
            (default :data:`POLL_INTERVAL`).
        :param onboard_timeout: seconds the onboarding may take in all.
        """
        self.http, self.base_url = http, base_url.rstrip("/")
        self.headers = {**(headers or {}), "Authorization": f"Bearer {access_token}",
                        "Content-Type": "application/json", "Accept": "application/json"}
        self.timeout = timeout
        self.poll_interval = POLL_INTERVAL if poll_interval is None else poll_interval
        self.onboard_timeout, self.sleep, self.clock = onboard_timeout, sleep, clock

    async def _call(self, method: str, url: str, body: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
        data = None if body is None else orjson.dumps(body)
        try:
            async with self.http.request(method, url, data=data, headers=self.headers,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)
                                         ) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"Code Assist did not answer within {self.timeout:g}s "
                                  f"({_where(url)})") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Code Assist is unreachable ({_where(url)}): "
                                f"{type(exc).__name__}") from None
        try:
            answer = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            answer = None
        if status >= 400:
            err = answer.get("error") if isinstance(answer, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            raise UpstreamStatusError(
                f"Code Assist refused {_where(url)}: HTTP {status}"
                + (f": {message}" if isinstance(message, str) else ""),
                status=status, body=raw[:4000])
        if not isinstance(answer, dict):
            raise UpstreamError(f"Code Assist answered {_where(url)} with something that is "
                                "not a JSON object")
        return answer

    async def post(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST {base}:{method}``."""
        return await self._call("POST", method_url(self.base_url, method), body)

    async def load(self, project: str | None) -> dict[str, Any]:
        """``loadCodeAssist``: the account's tiers and project. A VPC Service Controls
        refusal means a Standard account behind a perimeter (gemini-cli server.ts)."""
        metadata: dict[str, Any] = dict(CLIENT_METADATA)
        body: dict[str, Any] = {"metadata": metadata}
        if project:
            body["cloudaicompanionProject"] = project
            metadata["duetProject"] = project
        try:
            return await self.post("loadCodeAssist", body)
        except UpstreamStatusError as exc:
            reasons = {d.get("reason") for d in error_details(exc.body or b"")}
            if "SECURITY_POLICY_VIOLATED" in reasons:
                return {"currentTier": {"id": STANDARD_TIER}}
            raise

    async def onboard(self, tier: str, project: str | None) -> dict[str, Any]:
        """``onboardUser``, then its operation polled until done (bounded).

        The free tier is onboarded without a project (its project is managed; naming
        one fails "Precondition Failed"); the others with the user's.

        :raises UpstreamTimeout: not done within ``onboard_timeout`` seconds.
        """
        metadata: dict[str, Any] = dict(CLIENT_METADATA)
        body: dict[str, Any] = {"tierId": tier, "metadata": metadata}
        if tier != FREE_TIER and project:
            body["cloudaicompanionProject"] = project
            metadata["duetProject"] = project
        deadline = self.clock() + self.onboard_timeout
        operation = await self.post("onboardUser", body)
        while not operation.get("done"):
            if self.clock() + self.poll_interval > deadline:
                raise UpstreamTimeout(f"the Code Assist onboarding was not done within "
                                      f"{self.onboard_timeout:g}s; sign in again later")
            await self.sleep(self.poll_interval)
            name = operation.get("name")
            if isinstance(name, str) and name.startswith("operations/"):
                try:
                    operation = await self._call("GET", f"{self.base_url}/{name}")
                    continue
                except UpstreamStatusError as exc:
                    if exc.status not in (404, 405, 501):
                        raise
            # no pollable operation: ask again, as OmniRoute does (the call is idempotent)
            operation = await self.post("onboardUser", body)
        failure = operation.get("error")
        if isinstance(failure, dict):
            raise SetupError(f"the Code Assist onboarding failed: "
                             f"{failure.get('message') or failure.get('status') or failure}")
        response = operation.get("response")
        return response if isinstance(response, dict) else {}

    async def setup(self, project: str | None = None) -> Project:
        """The account's project and tier, onboarding it first when it has no tier.

        :param project: the Google Cloud project the user gave (Standard / Enterprise
            tiers need one; gemini-cli reads ``GOOGLE_CLOUD_PROJECT``).
        :raises SetupError: the account is not eligible, or must be validated first.
        :raises ProjectRequired: the tier needs a project and none was given.
        """
        loaded = await self.load(project)
        current = loaded.get("currentTier")
        if not isinstance(current, dict) or not current.get("id"):
            _check_validation(loaded)
            tier = _default_tier(loaded)
            if tier.get("userDefinedCloudaicompanionProject") and not project:
                _refuse(loaded)  # the tier works in the user's own project only
            onboarded = await self.onboard(str(tier["id"]), project)
            found = _project_id(onboarded.get("cloudaicompanionProject")) or project
            if not found:
                _refuse(loaded)
            return Project(found, str(tier["id"]), _text(tier.get("name")))
        paid: dict[str, Any] = loaded.get("paidTier") or {}
        if not isinstance(paid, dict):
            paid = {}
        tier_id = str(paid.get("id") or current["id"])
        tier_name = _text(paid.get("name")) or _text(current.get("name"))
        found = _project_id(loaded.get("cloudaicompanionProject")) or project
        if not found:
            _refuse(loaded)
        return Project(found, tier_id, tier_name)


def _where(url: str) -> str:
    return url.split("?", 1)[0]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _project_id(value: Any) -> str | None:
    """A project as loadCodeAssist (a string) or an operation (``{"id", "name"}``) names it."""
    if isinstance(value, dict):
        value = value.get("id")
    return _text(value)


def _ineligible(loaded: Mapping[str, Any]) -> list[dict[str, Any]]:
    tiers = loaded.get("ineligibleTiers")
    return [t for t in tiers or [] if isinstance(t, dict)]


def _check_validation(loaded: Mapping[str, Any]) -> None:
    for tier in _ineligible(loaded):
        url = _text(tier.get("validationUrl"))
        if tier.get("reasonCode") == "VALIDATION_REQUIRED" and url:
            raise SetupError(f"Google asks to validate this account first "
                             f"({tier.get('reasonMessage') or 'validation required'}): open "
                             f"{url}, then sign in again", code="validation_required")


def _default_tier(loaded: Mapping[str, Any]) -> dict[str, Any]:
    for tier in loaded.get("allowedTiers") or []:
        if isinstance(tier, dict) and tier.get("isDefault") and tier.get("id"):
            return tier
    return {"id": LEGACY_TIER, "name": "", "userDefinedCloudaicompanionProject": True}


def _refuse(loaded: Mapping[str, Any]) -> NoReturn:
    reasons = [str(t.get("reasonMessage") or t.get("reasonCode") or "ineligible")
               for t in _ineligible(loaded)]
    if reasons:
        raise SetupError("this Google account cannot use Gemini Code Assist: "
                         + "; ".join(reasons), code="code_assist_ineligible")
    raise ProjectRequired("this Google account needs a Google Cloud project for Gemini Code "
                          "Assist: sign in again with the connection setting 'project' "
                          "(omniroute login gemini --setting project=ID; gemini-cli's "
                          "GOOGLE_CLOUD_PROJECT)")


def retry_seconds(details: list[dict[str, Any]]) -> float | None:
    """``RetryInfo.retryDelay`` ("34.07s", "900ms") in seconds, if the error has one."""
    for detail in details:
        delay = detail.get("retryDelay") if detail.get("@type") == _RPC + "RetryInfo" else None
        if not isinstance(delay, str):
            continue
        try:
            if delay.endswith("ms"):
                return float(delay[:-2]) / 1000
            if delay.endswith("s"):
                return float(delay[:-1])
        except ValueError:
            return None
    return None


def rest_after_429(body: bytes, now: float) -> float | None:
    """How long an account rests after a Code Assist 429: until the daily reset for the
    day's quota (or the retry delay, whichever is later); None for a mere rate limit
    (its own ``RetryInfo`` then says)."""
    details = error_details(body)
    if not is_daily_limit(details):
        return None
    return float(math.ceil(max(daily_reset_in(now), retry_seconds(details) or 0.0)))
