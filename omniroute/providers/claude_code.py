"""Provider type ``claude-code``: a Claude Pro/Max subscription, signed in like Claude Code.

The sign-in (service ``claude``: ``omniroute login claude``) is OAuth 2.0 with PKCE
where the user pastes back the code Anthropic's callback page shows (``CODE#STATE``);
``omniroute providers import claude-code`` copies what Claude Code itself stored in
``~/.claude/.credentials.json`` instead. Requests are the Anthropic Messages API
(``format = "anthropic"``, so an Anthropic client such as Claude Code stays on the
pass-through lane) with what a subscription token requires:

* ``Authorization: Bearer <access token>`` (no ``x-api-key``);
* ``anthropic-beta: oauth-2025-04-20``, ahead of the client's own betas;
* the system prompt's first text ``You are Claude Code, Anthropic's official CLI for
  Claude.``, prepended (as a block of its own) when the request does not start with
  it; a body that has it goes up as the client sent it, ``cache_control`` included.

Endpoints, client id and scopes come from Claude Code's public OAuth client; every one
can be overridden in the connection's settings (see :mod:`omniroute.oauth.service`).
Sources: docs/subscriptions.md. Accounts cost 0 and record their list-price
equivalent (``auth_kind = "oauth"``, priced as ``anthropic``).

**Quota**: every answer, success or error, carries the subscription's unified
rate-limit headers (``anthropic-ratelimit-unified-*``: the overall ``status``,
``reset`` and ``representative-claim``, and per window ``5h-`` / ``7d-`` ...
``status``, ``utilization`` as a fraction, ``reset`` in epoch seconds; overage and
fallback details), kept in the account's quota (``/api/rate-limits``). A 429 with
these headers (the subscription's limit; a 429 without them is a mere rate limit), or
an overall ``rejected`` status, rests the account until the reset they name, and the
request moves on to the next target: the account is not asked again before then
(:mod:`omniroute.oauth.quota`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from omniroute.errors import UpstreamStatusError
from omniroute.hookspecs import hookimpl
from omniroute.oauth.client import TokenClient
from omniroute.oauth.pkce import Pkce
from omniroute.oauth.provider import OAuthProvider
from omniroute.oauth.quota import Window, exhausted, number
from omniroute.oauth.service import Account, Endpoints, OAuthService
from omniroute.oauth.tokens import TokenSet
from omniroute.providers.anthropic import AnthropicProvider
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.resilience.cooldown import parse_retry_after
from omniroute.storage.store import Connection

#: the system text a subscription token requires first
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
#: how it starts (the Agent SDK's variant goes on ", running within the Claude Agent SDK.")
_IDENTITY_START = IDENTITY.rstrip(".")
#: the beta that lets the Messages API take an OAuth bearer token
OAUTH_BETA = "oauth-2025-04-20"
#: listed when the account's model list cannot be read (the ``models`` setting replaces it)
DEFAULT_MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")


class ClaudeService(OAuthService):
    """Claude's OAuth client: the token request carries the ``state`` too, answers are
    JSON, and the answer names the account (``account.email_address``)."""

    def code_request(self, endpoints: Endpoints, code: str, state: str,
                     pkce: Pkce | None) -> dict[str, Any]:
        return {**super().code_request(endpoints, code, state, pkce), "state": state}

    async def finish(self, tokens: TokenSet, client: TokenClient,
                     endpoints: Endpoints) -> Account:
        account = tokens.extra.get("account")
        email = account.get("email_address") if isinstance(account, Mapping) else None
        return Account(tokens.credentials(),
                       label=email if isinstance(email, str) and email else None)

    def parse_import(self, data: bytes, now: float) -> TokenSet:
        """``{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt" (ms),
        "refreshTokenExpiresAt" (ms), "scopes", "subscriptionType", "rateLimitTier"}}``."""
        try:
            stored = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("not a JSON file") from None
        oauth = stored.get("claudeAiOauth") if isinstance(stored, dict) else None
        if not isinstance(oauth, dict):
            raise ValueError("no 'claudeAiOauth' credentials in it (sign in with `claude` "
                             "first, or use `omniroute login claude`)")
        access = oauth.get("accessToken")
        refresh = oauth.get("refreshToken")
        if not isinstance(access, str) or not access:
            raise ValueError("its 'claudeAiOauth' holds no accessToken")
        scopes = oauth.get("scopes")
        extra = {name: oauth[key] for key, name in (("subscriptionType", "subscription_type"),
                                                     ("rateLimitTier", "rate_limit_tier"))
                 if isinstance(oauth.get(key), str)}
        return TokenSet(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=_ms(oauth.get("expiresAt")),
            refresh_expires_at=_ms(oauth.get("refreshTokenExpiresAt")),
            scope=" ".join(s for s in scopes if isinstance(s, str))
            if isinstance(scopes, list) else None,
            token_type="Bearer", extra=extra)


def _ms(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value) / 1000.0


CLAUDE = ClaudeService(
    name="claude",
    provider_type="claude-code",
    title="Claude Pro/Max (Claude Code sign-in)",
    flow="paste",
    client_id="9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    # the hosts Claude Code uses since Anthropic moved them (2026): console.anthropic.com's
    # token endpoint answers 404, claude.ai's authorize page no longer grants (sources:
    # docs/subscriptions.md); every one is overridable in the connection's settings
    authorize_url="https://claude.com/cai/oauth/authorize",
    token_url="https://platform.claude.com/v1/oauth/token",
    redirect_uri="https://platform.claude.com/oauth/code/callback",
    scopes=("org:create_api_key", "user:profile", "user:inference",
            "user:sessions:claude_code"),
    token_encoding="json",
    authorize_params={"code": "true"},
    instructions="Sign in with your Claude Pro/Max account; the page then shows a code "
                 "(CODE#STATE) to paste back here.",
    import_source="claude-code",
    import_path="~/.claude/.credentials.json",
)


def merged_betas(client: str | None) -> str:
    """``oauth-2025-04-20`` first, then the client's betas, each once, in order."""
    betas = [OAUTH_BETA]
    for beta in (client or "").split(","):
        beta = beta.strip()
        if beta and beta not in betas:
            betas.append(beta)
    return ",".join(betas)


def _starts_with_identity(block: Any) -> bool:
    return (isinstance(block, dict) and block.get("type") == "text"
            and isinstance(block.get("text"), str) and block["text"].startswith(_IDENTITY_START))


def with_identity(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the Claude Code system text first; ``body`` itself when it has it.

    Found when the system string starts with it, or one of the first two system
    blocks does (Claude Code may send a block of its own before it). Otherwise it
    becomes a block of its own in front; the client's blocks follow untouched
    (``cache_control`` and all), a system string becomes the second block.
    """
    system = body.get("system")
    mark = {"type": "text", "text": IDENTITY}
    if system is None or system == "" or system == []:
        return {**body, "system": [mark]}
    if isinstance(system, str):
        if system.startswith(_IDENTITY_START):
            return body
        return {**body, "system": [mark, {"type": "text", "text": system}]}
    if isinstance(system, list):
        if any(_starts_with_identity(block) for block in system[:2]):
            return body
        return {**body, "system": [mark, *system]}
    return body  # malformed: the upstream's 400 says so


# ----------------------------------------------------------------------------- quota

#: the prefix of the subscription's rate-limit headers
UNIFIED = "anthropic-ratelimit-unified-"
#: ``anthropic-ratelimit-unified-{window}-{field}``
_WINDOW_FIELD = re.compile(r"^anthropic-ratelimit-unified-(.+)-(status|utilization|reset)$")
#: representative claims, and the window names the headers give them
_CLAIMS = {"five_hour": "5h", "seven_day": "7d", "seven_day_opus": "7d_opus",
           "seven_day_sonnet": "7d_sonnet"}
#: what operators read for a window name
_LABELS = {"5h": "5-hour", "7d": "weekly", "overage": "extra usage"}
#: details kept as the service says them (the overage and the fallback)
_NOTES = ("fallback", "fallback-percentage", "overage-in-use", "overage-disabled-reason")


@dataclass(frozen=True, slots=True)
class ClaudeUsage:
    """What one answer's ``anthropic-ratelimit-unified-*`` headers say."""

    windows: list[Window]
    #: ``allowed``, ``allowed_warning`` or ``rejected`` (the overall verdict)
    status: str | None
    #: the window that binds (the representative claim, by its header name)
    binding: str | None
    #: when the binding limit resets, epoch seconds
    resets_at: float | None
    notes: dict[str, str]

    def spent(self, http_status: int) -> bool:
        """Whether the subscription refused the call for its quota: a 429 that carries
        these headers (what Claude Code takes for the subscription's limit, as opposed to
        a 429 without them), or an overall ``rejected`` status."""
        return http_status == 429 or self.status == "rejected"

    def reset(self) -> float | None:
        """When the refusal ends: the overall reset, else the binding window's, else the
        latest of the rejected windows'."""
        if self.resets_at is not None:
            return self.resets_at
        by_name = {w.name: w for w in self.windows}
        if self.binding in by_name and by_name[self.binding].resets_at is not None:
            return by_name[self.binding].resets_at
        resets = [w.resets_at for w in self.windows
                  if w.status == "rejected" and w.resets_at is not None]
        return max(resets) if resets else None

    def reason(self) -> str:
        rejected = [w.name for w in self.windows if w.status == "rejected"]
        name = self.binding or (rejected[0] if rejected else None)
        return (f"the {_LABELS.get(name, name)} limit was reached" if name
                else "the usage limit was reached")


def epoch(value: str | None) -> float | None:
    """A reset time: epoch seconds (what Claude sends), or an RFC 3339 time."""
    if value is None:
        return None
    seconds = number(value)
    if seconds is not None:
        return seconds
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def claude_usage(headers: Mapping[str, str]) -> ClaudeUsage | None:
    """The subscription's usage in an answer's headers; None when there is none."""
    lower = {k.lower(): v.strip() for k, v in headers.items()
             if k.lower().startswith(UNIFIED)}
    if not lower:
        return None
    fields: dict[str, dict[str, str]] = {}
    for name, value in lower.items():
        found = _WINDOW_FIELD.match(name)
        if found is not None:
            fields.setdefault(found[1], {})[found[2]] = value
    windows = []
    for name, said in fields.items():
        used = number(said.get("utilization"))
        minutes = 300.0 if name == "5h" else 10080.0 if name.startswith("7d") else None
        windows.append(Window(name, used_percent=None if used is None else round(used * 100, 2),
                              resets_at=epoch(said.get("reset")), window_minutes=minutes,
                              status=said.get("status") or None))
    claim = lower.get(f"{UNIFIED}representative-claim") or None
    return ClaudeUsage(
        windows, status=lower.get(f"{UNIFIED}status") or None,
        binding=_CLAIMS.get(claim, claim) if claim else None,
        resets_at=epoch(lower.get(f"{UNIFIED}reset")),
        notes={n: lower[f"{UNIFIED}{n}"] for n in _NOTES if lower.get(f"{UNIFIED}{n}")})


class ClaudeCodeProvider(OAuthProvider, AnthropicProvider):
    """The Messages API on a Claude subscription's OAuth token."""

    type = "claude-code"
    oauth = CLAUDE
    format = "anthropic"
    price_provider = "anthropic"
    default_prefix = "claude"
    description = "Claude Pro/Max subscription (omniroute login claude)"
    presets: ClassVar[Mapping[str, Preset]] = {}
    capabilities = frozenset({"chat", "count_tokens"})

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.quota = context.quotas.of(connection.id, connection.name)
        extra = connection.credentials.get("extra")
        plan = extra.get("subscription_type") if isinstance(extra, Mapping) else None
        if self.quota.plan is None and isinstance(plan, str) and plan:
            self.quota.plan = plan  # what Claude Code's file said (an import)

    @property
    def configured_models(self) -> list[str]:
        return list(self.connection.settings.get("models") or DEFAULT_MODELS)

    def headers_for(
        self, call: UpstreamCall | None = None, *, stream: bool = False
    ) -> dict[str, str]:
        headers = super().headers_for(call, stream=stream)
        headers.pop("x-api-key", None)
        headers["Authorization"] = f"Bearer {self.access_token}"
        headers["anthropic-beta"] = merged_betas(headers.get("anthropic-beta"))
        return headers

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        self.quota.check()  # resting until the limit resets: not asked again before
        body = with_identity(call.body)
        if body is not call.body:
            call = dataclasses.replace(call, body=body)
        return await super().chat(call)

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        self.quota.check()
        return await super().count_tokens(with_identity(body), client_headers)

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        """Every answer's unified headers into the quota; a refusal rests the account."""
        usage = claude_usage(headers)
        if usage is None:
            return
        self.quota.update(usage.windows, status=usage.status, binding=usage.binding,
                          notes=usage.notes)
        if usage.spent(status):
            now = time.time()
            resets = usage.reset()
            said = headers.get("retry-after")
            after = parse_retry_after(said, now) if resets is None and said else None
            self.quota.exhaust(resets if after is None else now + after, usage.reason())

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """A 429 that rested the account says until when (``Retry-After``: the reset)."""
        err = super().error_from(status, body, headers)
        left = self.quota.resting() if status == 429 else None
        if left is None:
            return err
        return exhausted(f"The Claude account {self.connection.name!r} has reached its usage "
                         f"limit ({self.quota.reason}): {err.message}", left,
                         code="usage_limit_reached")

    def quota_view(self) -> dict[str, Any] | None:
        return self.quota.snapshot()


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(ClaudeCodeProvider)


@hookimpl
def register_oauth_services(register: Callable[[OAuthService], None]) -> None:
    register(CLAUDE)
