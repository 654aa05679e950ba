"""Provider type ``codex``: a ChatGPT subscription (Plus, Pro, Team...) through the Codex
backend, signed in the way the official Codex CLI signs in.

**Sign-in** (service ``codex``: ``omniroute login codex``): authorization code with
PKCE S256 at ``auth.openai.com``, the public client id of the Codex CLI, and the
redirect to a listener on ``localhost:1455/auth/callback`` (the only port the service
accepts besides 1457); when the browser cannot reach this machine, the user pastes the
address it ended on. The token answer's ``id_token`` (a JWT, read without verifying)
names the ChatGPT account (``chatgpt_account_id``), its plan and its email. Refresh
tokens are single-use: a renewal rotates them and the new set is kept at once (the
OAuth base does that); a refusal (``refresh_token_expired`` / ``_reused`` /
``_invalidated``, ``invalid_grant``, any 401) means a new sign-in.

**Import** (``omniroute providers import codex``): ``~/.codex/auth.json``, only read.

**Requests** go to ``POST {base_url}/responses`` (``https://chatgpt.com/backend-api/
codex``) in the Responses format, so every client format works through the ordinary
translation, and a Responses client (Codex itself) stays on the pass-through lane but
for what the backend requires: ``store: false``, ``stream: true`` (a JSON request is
served by collecting the stream), non-empty ``instructions``, ``include`` with
``reasoning.encrypted_content``, only the fields the backend takes, input items without
server-side ids. Headers: ``Authorization: Bearer``, ``chatgpt-account-id``,
``originator: codex_cli_rs`` and a ``session_id``; the User-Agent is the gateway's own.

**Quota**: the ``x-codex-primary-*`` / ``x-codex-secondary-*`` headers of every answer
(used percent, window length, reset) are kept per account (``/api/rate-limits``); a
429 ``usage_limit_reached`` rests the account until its ``resets_at``.

Every URL can be overridden in the connection's settings: ``base_url``, and the OAuth
ones (``oauth_authorize_url``, ``oauth_token_url``, ``oauth_redirect_uri``,
``oauth_client_id``). Sources: docs/subscriptions.md.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import aclosing
from typing import Any, ClassVar

import orjson

from omniroute.errors import UpstreamError, UpstreamStatusError
from omniroute.hookspecs import hookimpl
from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import InvalidGrant, OAuthError
from omniroute.oauth.jwt import jwt_claims, jwt_expiry
from omniroute.oauth.provider import OAuthProvider
from omniroute.oauth.quota import Window, exhausted, number
from omniroute.oauth.service import Account, Endpoints, OAuthService
from omniroute.oauth.tokens import TokenSet
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.providers.responses import ResponsesProvider
from omniroute.sse import event_data, event_name
from omniroute.storage.store import Connection

#: openai/codex codex-rs/login: the Codex CLI's public OAuth client and issuer
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
ISSUER = "https://auth.openai.com"
REDIRECT_URI = "http://localhost:1455/auth/callback"
#: openai/codex model_provider_info.rs: the base URL in ChatGPT auth mode
BASE_URL = "https://chatgpt.com/backend-api/codex"
#: the ``originator`` header (and authorize parameter) the backend expects
ORIGINATOR = "codex_cli_rs"
#: the ``client_version`` the model list asks for (it filters models by client version)
CLIENT_VERSION = "0.124.0"
#: the claims an OpenAI token keeps the ChatGPT account and the profile under
AUTH_CLAIMS = "https://api.openai.com/auth"
PROFILE_CLAIMS = "https://api.openai.com/profile"
#: the system prompt of a request that brings none (the backend wants one)
DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
#: models offered when the backend's list cannot be read (openai/codex core/models.json)
DEFAULT_MODELS = ("gpt-5.2-codex", "gpt-5.1-codex-max", "gpt-5.1-codex", "gpt-5.1-codex-mini",
                  "gpt-5.2", "gpt-5.1", "gpt-5-codex", "gpt-5")
#: the request fields the backend takes (codex-api ResponsesApiRequest); others go
BODY_FIELDS = frozenset({
    "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning", "store", "stream", "include", "prompt_cache_key", "text", "service_tier",
    "client_metadata"})
ENCRYPTED_REASONING = "reasoning.encrypted_content"
#: refresh refusals that mean the refresh token will never work again (codex-rs
#: auth/manager.rs ``classify_refresh_token_failure``)
DEAD_REFRESH = frozenset({"refresh_token_expired", "refresh_token_reused",
                          "refresh_token_invalidated", "invalid_grant"})


# ----------------------------------------------------------------------------- accounts

def with_account(tokens: TokenSet) -> TokenSet:
    """``tokens`` with the account read from their JWTs: ``extra.account_id`` (the
    ``chatgpt-account-id`` header), ``plan_type`` and ``email``, and ``expires_at``
    from the access token's ``exp`` when the answer gave no ``expires_in``."""
    id_claims = jwt_claims(tokens.id_token) or {}
    access_claims = jwt_claims(tokens.access_token) or {}
    auth = id_claims.get(AUTH_CLAIMS)
    if not isinstance(auth, dict):
        auth = access_claims.get(AUTH_CLAIMS)
    auth = auth if isinstance(auth, dict) else {}
    fields: dict[str, Any] = {}
    account = auth.get("chatgpt_account_id")
    if isinstance(account, str) and account:
        fields["account_id"] = account
    plan = auth.get("chatgpt_plan_type")
    if isinstance(plan, str) and plan:
        fields["plan_type"] = plan
    profile = id_claims.get(PROFILE_CLAIMS)
    email = id_claims.get("email") or (profile.get("email") if isinstance(profile, dict)
                                       else None)
    if isinstance(email, str) and email:
        fields["email"] = email
    if tokens.expires_at is None:
        tokens = dataclasses.replace(tokens, expires_at=jwt_expiry(tokens.access_token))
    return tokens.with_extra(**fields) if fields else tokens


class CodexService(OAuthService):
    """The Codex CLI's sign-in: the account from the ``id_token``, JSON refreshes,
    ``auth.json`` imports."""

    async def finish(self, tokens: TokenSet, client: TokenClient,
                     endpoints: Endpoints) -> Account:
        tokens = with_account(tokens)
        email = tokens.extra.get("email")
        return Account(tokens.credentials(), label=email if isinstance(email, str) else None)

    async def renew(self, credentials: Mapping[str, Any], client: TokenClient,
                    endpoints: Endpoints) -> dict[str, Any]:
        """The ``refresh_token`` grant (as JSON: :attr:`refresh_encoding`); a refused
        refresh token (spent: they are single-use) raises :class:`InvalidGrant`."""
        try:
            renewed = await super().renew(credentials, client, endpoints)
        except InvalidGrant:
            raise
        except OAuthError as exc:
            if exc.error in DEAD_REFRESH or exc.upstream_status == 401:
                raise InvalidGrant(exc.message, error=exc.error,
                                   upstream_status=exc.upstream_status) from None
            raise
        return with_account(TokenSet.from_credentials(renewed)).credentials()

    def parse_import(self, data: bytes, now: float) -> TokenSet:
        """``auth.json`` of the Codex CLI: ``{"tokens": {"id_token", "access_token",
        "refresh_token", "account_id"}, "last_refresh", ...}``."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("it is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("it is not a JSON object")
        found = doc.get("tokens")
        if not isinstance(found, dict):
            if doc.get("OPENAI_API_KEY"):
                raise ValueError("it holds an API key, not a ChatGPT sign-in (add the key as "
                                 "an openai connection instead)")
            raise ValueError("it holds no ChatGPT tokens (sign in with `codex login` first)")
        access, refresh, id_token = (found.get(k) for k in ("access_token", "refresh_token",
                                                             "id_token"))
        access = access if isinstance(access, str) else ""
        refresh = refresh if isinstance(refresh, str) and refresh else None
        if not access and refresh is None:
            raise ValueError("it holds neither an access token nor a refresh token")
        if id_token is not None and jwt_claims(id_token) is None:
            raise ValueError("its id_token is not a JSON Web Token")
        account = found.get("account_id")
        extra = {"account_id": account} if isinstance(account, str) and account else {}
        return with_account(TokenSet(
            access_token=access, refresh_token=refresh, expires_at=jwt_expiry(access),
            token_type="Bearer", id_token=id_token if isinstance(id_token, str) else None,
            extra=extra))


SERVICE = CodexService(
    name="codex", provider_type="codex", flow="loopback", client_id=CLIENT_ID,
    authorize_url=f"{ISSUER}/oauth/authorize", token_url=f"{ISSUER}/oauth/token",
    redirect_uri=REDIRECT_URI, scopes=("openid", "profile", "email", "offline_access"),
    token_encoding="form", refresh_encoding="json",
    authorize_params={"id_token_add_organizations": "true",
                      "codex_cli_simplified_flow": "true", "originator": ORIGINATOR},
    title="ChatGPT (Codex)",
    instructions=("Open the URL and sign in with your ChatGPT account. The browser comes "
                  "back to this machine on localhost:1455; if it cannot (omniroute runs "
                  "elsewhere), paste the address the browser ended on."),
    import_source="codex", import_path="~/.codex/auth.json")


# ----------------------------------------------------------------------------- quota

def codex_windows(headers: Mapping[str, str], now: float) -> list[Window]:
    """The ``x-codex-primary-*`` and ``x-codex-secondary-*`` windows in ``headers``."""
    lower = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-codex-")}
    windows = []
    for name in ("primary", "secondary"):
        def read(field: str, name: str = name) -> float | None:
            return number(lower.get(f"x-codex-{name}-{field}"))

        used, minutes = read("used-percent"), read("window-minutes")
        resets = read("reset-at")
        if resets is None and (after := read("reset-after-seconds")) is not None:
            resets = now + after
        if used is None and minutes is None and resets is None:
            continue
        windows.append(Window(name, used_percent=used, resets_at=resets,
                              window_minutes=minutes))
    return windows


def _json(data: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(data or b"")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------- the wire

class CodexBackend(ResponsesProvider):
    """The Codex Responses backend (the wire half of :class:`CodexProvider`)."""

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        settings = connection.settings
        version = str(settings.get("client_version") or CLIENT_VERSION)
        self.client_version = version
        self.instructions = str(settings.get("instructions") or DEFAULT_INSTRUCTIONS)
        # the gateway's own User-Agent: nothing of the official client is imitated beyond
        # what the backend requires (the ``headers`` setting may add more)
        self._headers = {
            "Content-Type": "application/json", "Accept": "text/event-stream",
            "originator": str(settings.get("originator") or ORIGINATOR),
            "User-Agent": context.user_agent, **settings.get("headers", {})}
        self.quota = context.quotas.of(connection.id, connection.name)

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = dict(settings)
        settings.setdefault("base_url", BASE_URL)
        for name in ("client_version", "instructions", "originator"):
            if name in settings and (not isinstance(settings[name], str)
                                     or not settings[name].strip()):
                raise ValueError(f"{name} must be a non-empty string")
        return super().configure(settings, credentials, preset)

    def call_headers(self, body: Mapping[str, Any]) -> dict[str, str]:
        """The headers of one call: the account's bearer token and id, a session id."""
        credentials = self.connection.credentials
        headers = {**self._headers,
                   "Authorization": f"Bearer {credentials.get('access_token') or ''}"}
        extra = credentials.get("extra")
        account = extra.get("account_id") if isinstance(extra, Mapping) else None
        if isinstance(account, str) and account:
            headers["chatgpt-account-id"] = account
        session = body.get("prompt_cache_key")
        headers["session_id"] = session if isinstance(session, str) and session else (
            str(uuid.uuid4()))
        return headers

    def backend_body(self, call: UpstreamCall) -> dict[str, Any]:
        """The request as the backend takes it (see the module docstring)."""
        body = {k: v for k, v in call.body.items() if k in BODY_FIELDS}
        body["model"] = call.model
        body["store"] = False
        body["stream"] = True
        instructions = body.get("instructions")
        if not isinstance(instructions, str) or not instructions.strip():
            body["instructions"] = self.instructions
        include = body.get("include")
        include = [i for i in include if isinstance(i, str)] if isinstance(include, list) else []
        if ENCRYPTED_REASONING not in include:
            include.append(ENCRYPTED_REASONING)
        body["include"] = include
        given = body.get("input")
        if isinstance(given, str):
            body["input"] = [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": given}]}]
        elif isinstance(given, list):
            body["input"] = [_stateless(item) for item in given if _replayable(item)]
        return body

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        self.quota.check()
        body = self.backend_body(call)
        answer = await self.post_stream(self.responses_url, self.call_headers(body),
                                        orjson.dumps(body))
        return answer if call.stream else await self.collect(answer)

    async def collect(self, answer: UpstreamResponse) -> UpstreamResponse:
        """A JSON answer from a stream: the final ``response`` object, its ``output``
        filled from the ``response.output_item.done`` events when it came empty."""
        assert answer.events is not None
        items: list[Any] = []
        final: Any = None
        async with aclosing(answer.events) as frames:  # type: ignore[type-var]
            async for frame in frames:
                name = event_name(frame)
                data = _json(event_data(frame))
                kind = data.get("type") or name
                if kind == "response.output_item.done":
                    items.append(data.get("item"))
                elif kind in ("response.completed", "response.incomplete"):
                    final = data.get("response")
                elif kind in ("response.failed", "error"):
                    raise self.first_frame_error(frame) or UpstreamError(
                        f"upstream stream error: {kind}")
        if not isinstance(final, dict):
            raise UpstreamError("the Codex backend's stream ended without a response")
        if not final.get("output"):
            final = {**final, "output": [i for i in items if isinstance(i, dict)]}
        return UpstreamResponse(answer.status, answer.headers, body=orjson.dumps(final))

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        now = time.time()
        windows = codex_windows(headers, now)
        plan = headers.get("x-codex-plan-type")
        self.quota.update(windows, plan=plan if isinstance(plan, str) else None)

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """``usage_limit_reached`` rests the account until its reset; a plan without
        Codex is the account's end (402); ``{"detail": ...}`` answers keep their text."""
        data = _json(body)
        err = data.get("error")
        kind = err.get("type") if isinstance(err, dict) else None
        if kind == "usage_limit_reached" and isinstance(err, dict):
            now = time.time()
            resets = number(err.get("resets_at"))
            if resets is None and (after := number(err.get("resets_in_seconds"))) is not None:
                resets = now + after
            plan = err.get("plan_type")
            left = self.quota.exhaust(resets, f"the {plan} plan's usage limit was reached"
                                      if isinstance(plan, str) else "usage limit reached")
            return exhausted(f"The ChatGPT account {self.connection.name!r} reached its "
                             f"Codex usage limit: {err.get('message') or kind}.", left,
                             code="usage_limit_reached")
        if kind == "usage_not_included":
            return self.status_error(402, body, headers, "The ChatGPT plan of account "
                                     f"{self.connection.name!r} does not include Codex.",
                                     code="usage_not_included")
        detail = data.get("detail")
        if isinstance(detail, str) and detail:
            return self.status_error(status, body, headers, detail)
        return super().error_from(status, body, headers)

    async def list_models(self) -> list[str]:
        """``GET {base_url}/models?client_version=...`` (``{"models": [{"slug"}]}``); the
        known models when the backend has no list."""
        url = f"{self.base_url}/models?client_version={self.client_version}"
        headers = {**self.call_headers({}), "Accept": "application/json"}
        try:
            data = await self.get_json(url, headers)
        except UpstreamStatusError as err:
            if err.status not in (404, 405):
                raise
            data = {}
        entries = data.get("models") if isinstance(data, dict) else None
        listed = [m["slug"] for m in entries or []
                  if isinstance(m, dict) and isinstance(m.get("slug"), str)]
        configured = self.configured_models
        return configured + [m for m in listed or DEFAULT_MODELS if m not in configured]

    def quota_view(self) -> dict[str, Any] | None:
        return self.quota.snapshot()


def _replayable(item: Any) -> bool:
    """Whether an input item can be sent without ``store``: references to stored items
    and reasoning without its encrypted content cannot."""
    if not isinstance(item, dict):
        return True
    kind = item.get("type")
    if kind == "item_reference":
        return False
    return not (kind == "reasoning" and not item.get("encrypted_content"))


def _stateless(item: Any) -> Any:
    """An input item without its server-side ``id`` (nothing is stored to refer to)."""
    if isinstance(item, dict) and "id" in item:
        return {k: v for k, v in item.items() if k != "id"}
    return item


class CodexProvider(OAuthProvider, CodexBackend):
    """A ChatGPT subscription account (see the module docstring)."""

    type = "codex"
    oauth = SERVICE
    default_prefix = "codex"
    description = "ChatGPT subscription (Plus, Pro, Team...) through the Codex backend"
    presets: ClassVar[Mapping[str, Preset]] = {}
    credential_fields = OAuthProvider.credential_fields
    price_provider = "openai"


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(CodexProvider)


@hookimpl
def register_oauth_services(register: Callable[[OAuthService], None]) -> None:
    register(SERVICE)
