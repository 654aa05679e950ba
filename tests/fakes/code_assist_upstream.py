"""Fake Google sign-in and Code Assist API, for the ``gemini-cli`` provider type's tests.

:class:`GoogleOAuthServer` is the fake authorization server as Google's token endpoint
behaves for gemini-cli's installed-app client: form bodies, the client secret required
("client_secret is missing." otherwise), ``access_type=offline`` required on the
authorization URL, refresh tokens not rotated, and ``GET /oauth2/v2/userinfo``.

:class:`FakeCodeAssist` speaks ``https://cloudcode-pa.googleapis.com/v1internal``
(google-gemini/gemini-cli ``code_assist/server.ts``, ``setup.ts``, ``converter.ts``):

- ``POST /v1internal:loadCodeAssist`` answers by ``kind``: ``"free"`` (no tier yet; the
  free tier is the default to onboard; after onboarding, its current tier and managed
  project), ``"standard"`` (current tier ``standard-tier``, whose project the user must
  give: ``cloudaicompanionProject`` is the one the request names), ``"ineligible"``
  (no tier; ``ineligibleTiers`` with a reason), ``"validation"`` (``VALIDATION_REQUIRED``
  with a ``validationUrl``).
- ``POST /v1internal:onboardUser`` starts a long-running operation (the free tier
  refuses a project: "Precondition Failed"); ``GET /v1internal/operations/{id}`` is
  ``done: false`` for ``polls_needed`` polls, then done with the managed project.
- ``POST /v1internal:generateContent`` / ``:streamGenerateContent?alt=sse`` take the
  envelope ``{"model", "project", "user_prompt_id"?, "request"}`` and answer
  ``{"response": {...}, "traceId"}`` (each SSE event too); the inner request is checked
  and answered as the Gemini fake does (``fakes.gemini_upstream``).
- ``POST /v1internal:countTokens`` takes ``{"request": {"model": "models/M", "contents"}}``.
- ``POST /v1internal:retrieveUserQuota`` takes ``{"project"}`` (the account's; 403
  otherwise) and answers ``{"buckets": [{"modelId", "tokenType", "remainingFraction",
  "remainingAmount", "resetTime"}]}`` (``code_assist/types.ts``), the ``buckets``
  attribute: one per model, three quarters left, resetting at the next midnight UTC.

Every call must carry a bearer token the fake authorization server issued and has not
expired (401 ``UNAUTHENTICATED`` otherwise) and, with a body, ``Content-Type:
application/json`` (400); a generate call must name the account's project and a known model
without the ``models/`` prefix, and no other envelope field (400 otherwise). ``script``
acts on generate calls as in every fake; :func:`daily_limit` is a 429 for the day's
quota (``QUOTA_EXHAUSTED``, a per-day quota id, a ``RetryInfo``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from fakes import gemini_checks
from fakes.base import Recorded, json_response, sse, tokens
from fakes.gemini_upstream import Behaviour, FakeGemini
from fakes.oauth_server import FakeOAuthServer

CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
CLIENT_SECRET = "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"
_RPC = "type.googleapis.com/google.rpc."
_ENVELOPE = {"model", "project", "user_prompt_id", "request"}


class GoogleOAuthServer(FakeOAuthServer):
    """Google's authorization and token endpoints for an installed-app client."""

    def __init__(self, *, email: str = "someone@example.com", **knobs: Any) -> None:
        options: dict[str, Any] = dict(
            client_id=CLIENT_ID, encoding="form", mode="redirect", rotate=False,
            authorize_path="/o/oauth2/v2/auth", token_path="/token",
            required_params={"access_type": "offline"}, access_lifetime=3599.0,
            prefix="ya29")
        options.update(knobs)
        super().__init__(**options)
        self.client_secret = CLIENT_SECRET
        self.email = email
        self.app.router.add_get("/oauth2/v2/userinfo", self._userinfo)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = dict(parse_qsl((await request.read()).decode()))
        if form.get("client_secret") != self.client_secret:
            return self._error("invalid_request", "client_secret is missing.")
        return await super()._token(request)

    async def _userinfo(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not self.is_valid(token):
            return json_response(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                 "message": "Invalid Credentials"}})
        return json_response(200, {"id": "1234", "email": self.email, "verified_email": True})


def daily_limit(retry_delay: str = "3600s") -> Behaviour:
    """A 429 for the day's quota, as Code Assist words it (googleQuotaErrors.ts)."""
    return Behaviour(status=429, error={
        "code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "You have exhausted your daily quota on this model.",
        "details": [
            {"@type": _RPC + "ErrorInfo", "reason": "QUOTA_EXHAUSTED",
             "domain": "cloudcode-pa.googleapis.com",
             "metadata": {"quota_limit": "GenerateContentRequestsPerDayPerUserPerTier",
                          "model": "gemini-2.5-pro"}},
            {"@type": _RPC + "QuotaFailure",
             "violations": [{"quotaId": "GenerateContentRequestsPerDayPerUserPerTier"}]},
            {"@type": _RPC + "RetryInfo", "retryDelay": retry_delay},
        ]})


def _google_error(code: int, message: str, status: str,
                  details: list[dict[str, Any]] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return json_response(code, {"error": err}, charset="UTF-8")


class FakeCodeAssist(FakeGemini):
    """In-process fake of the Code Assist API (see the module docstring)."""

    def __init__(self, oauth: FakeOAuthServer, *, kind: str = "free", polls_needed: int = 2,
                 models: Sequence[str] = ("gemini-2.5-flash", "gemini-2.5-pro",
                                          "gemini-3-pro-preview"),
                 **knobs: Any) -> None:
        super().__init__(api_key=None, models=models, **knobs)
        self.oauth = oauth
        self.kind = kind
        self.polls_needed = polls_needed
        self.managed_project = f"fake-managed-{secrets.token_hex(3)}"
        self.onboarded: str | None = None  # the tier the account was onboarded to
        self.operations: dict[str, int] = {}  # operation id -> polls so far
        self.user_projects: set[str] = set()  # projects a standard account may name
        midnight = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
        #: what retrieveUserQuota answers
        self.buckets: list[dict[str, Any]] = [
            {"modelId": m, "tokenType": "REQUESTS", "remainingFraction": 0.75,
             "remainingAmount": "750", "resetTime": midnight} for m in models]
        self.app.router.add_post("/v1internal:{method}", self._method)
        self.app.router.add_get("/v1internal/operations/{op}", self._operation)

    # ---- what every call must carry ---------------------------------------------------
    def _auth_error(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token or not self.oauth.is_valid(token):
            return _google_error(401, "Request had invalid authentication credentials. "
                                 "Expected OAuth 2 access token, login cookie or other valid "
                                 "authentication credential.", "UNAUTHENTICATED")
        if request.method == "POST" and not request.headers.get(
                "Content-Type", "").startswith("application/json"):
            return _google_error(400, "fake Code Assist: the body must be JSON",
                                 "INVALID_ARGUMENT")
        return None

    def project_of_account(self) -> str | None:
        """The project calls must name (None while the account is not set up)."""
        if self.kind == "free":
            return self.managed_project if self.onboarded else None
        return next(iter(self.user_projects), None) if self.kind == "standard" else None

    # ---- setup ----------------------------------------------------------------------
    async def _method(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if method in ("generateContent", "streamGenerateContent"):
            return await self._handle(request)
        rec = await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        body = rec.json if isinstance(rec.json, dict) else {}
        if method == "loadCodeAssist":
            return json_response(200, self._load(body))
        if method == "onboardUser":
            return self._onboard(body)
        if method == "countTokens":
            return self._count(body)
        if method == "retrieveUserQuota":
            project = self.project_of_account()
            if project is None or body.get("project") != project:
                return _google_error(403, f"Permission denied on resource project "
                                     f"{body.get('project')}.", "PERMISSION_DENIED")
            return json_response(200, {"buckets": self.buckets})
        return _google_error(404, f"Method not found: {method}", "NOT_FOUND")

    def _load(self, body: dict[str, Any]) -> dict[str, Any]:
        free = {"id": "free-tier", "name": "Gemini Code Assist for individuals",
                "isDefault": True, "userDefinedCloudaicompanionProject": False}
        standard = {"id": "standard-tier", "name": "Gemini Code Assist Standard",
                    "userDefinedCloudaicompanionProject": True}
        if self.kind == "free":
            if self.onboarded:
                return {"currentTier": free, "allowedTiers": [free],
                        "cloudaicompanionProject": self.managed_project}
            return {"allowedTiers": [free, standard]}
        if self.kind == "standard":
            given = body.get("cloudaicompanionProject")
            if isinstance(given, str):
                self.user_projects.add(given)
            return {"currentTier": {**standard, "isDefault": True},
                    "allowedTiers": [standard], **({"cloudaicompanionProject": given}
                                                   if given else {})}
        reason = {"reasonCode": "INELIGIBLE_ACCOUNT", "tierId": "free-tier",
                  "reasonMessage": "Your current account is not eligible for Gemini Code "
                                   "Assist for individuals"}
        if self.kind == "validation":
            reason = {"reasonCode": "VALIDATION_REQUIRED", "tierId": "free-tier",
                      "reasonMessage": "Verify your account to continue.",
                      "validationUrl": "https://accounts.google.com/signin/continue?x=1"}
        return {"ineligibleTiers": [reason]}

    def _onboard(self, body: dict[str, Any]) -> web.Response:
        tier = body.get("tierId")
        if tier == "free-tier" and body.get("cloudaicompanionProject"):
            return _google_error(400, "Precondition Failed", "FAILED_PRECONDITION")
        if self.kind != "free" or tier != "free-tier":
            return _google_error(400, f"fake Code Assist: cannot onboard to {tier}",
                                 "INVALID_ARGUMENT")
        op = secrets.token_hex(6)
        self.operations[op] = 0
        return json_response(200, {"name": f"operations/{op}", "done": False})

    async def _operation(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        op = request.match_info["op"]
        if op not in self.operations:
            return _google_error(404, "operation not found", "NOT_FOUND")
        self.operations[op] += 1
        if self.operations[op] < self.polls_needed:
            return json_response(200, {"name": f"operations/{op}", "done": False})
        self.onboarded = "free-tier"
        return json_response(200, {"name": f"operations/{op}", "done": True, "response": {
            "@type": "type.googleapis.com/google.internal.cloud.code.v1internal."
                     "OnboardUserResponse",
            "cloudaicompanionProject": {"id": self.managed_project,
                                        "name": self.managed_project}}})

    def _count(self, body: dict[str, Any]) -> web.Response:
        inner = body.get("request")
        if set(body) != {"request"} or not isinstance(inner, dict):
            return _google_error(400, "fake Code Assist: countTokens takes {request}",
                                 "INVALID_ARGUMENT")
        model = inner.get("model")
        if not isinstance(model, str) or model.removeprefix("models/") not in self.models \
                or not model.startswith("models/"):
            return _google_error(400, f"fake Code Assist: bad model {model!r}",
                                 "INVALID_ARGUMENT")
        contents = inner.get("contents")
        if not isinstance(contents, list) or not contents:
            return _google_error(400, "contents is not specified", "INVALID_ARGUMENT")
        text = " ".join(gemini_checks.text_of(c) for c in contents)
        return json_response(200, {"totalTokens": tokens(text)})

    # ---- generation -----------------------------------------------------------------
    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour
                     ) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        stream = request.match_info["method"] == "streamGenerateContent"
        env = rec.json
        if not isinstance(env, dict) or not isinstance(env.get("request"), dict):
            return _google_error(400, "fake Code Assist: the request envelope is missing",
                                 "INVALID_ARGUMENT")
        unknown = set(env) - _ENVELOPE
        if unknown:
            return _google_error(400, f'Invalid JSON payload received. Unknown name '
                                 f'"{sorted(unknown)[0]}": Cannot find field.',
                                 "INVALID_ARGUMENT")
        project = self.project_of_account()
        if project is None or env.get("project") != project:
            return _google_error(403, f"Permission denied on resource project "
                                 f"{env.get('project')}.", "PERMISSION_DENIED")
        model = env.get("model")
        if not isinstance(model, str) or model not in self.models:
            return _google_error(404, f"Requested entity was not found: model {model!r}.",
                                 "NOT_FOUND")
        inner = env["request"]
        if (problem := gemini_checks.check_request(inner, model)) is not None:
            return problem
        if b.garbage is not None:
            return self._garbage(b, stream)
        trace = secrets.token_hex(8)
        chunks = self._chunks(inner, b, model)
        if not stream:
            return await self._send_whole(request, b, orjson.dumps(
                {"response": self._merged(chunks), "traceId": trace}))
        if request.query.get("alt") != "sse":
            return _google_error(400, "fake Code Assist: streams are asked with ?alt=sse",
                                 "INVALID_ARGUMENT")
        frames = [sse({"response": c, "traceId": trace}, end=b"\r\n\r\n") for c in chunks]
        return await self._send_stream(request, b, frames, {"Cache-Control": "no-cache"},
                                       lambda sent: sse({"error": b.error}, end=b"\r\n\r\n"))
