"""Provider type ``gemini-cli`` and sign-in service ``gemini``: a Google account as Gemini
CLI signs it in, served through the Code Assist API.

The sign-in (``omniroute login gemini``) is gemini-cli's own (google-gemini/gemini-cli
``packages/core/src/code_assist/oauth2.ts``): Google's OAuth client for installed apps,
whose id and secret gemini-cli publishes (an installed app cannot keep a secret; Google's
token endpoint still wants it), the authorization code flow with PKCE and
``access_type=offline`` (so Google issues a refresh token; ``prompt=consent`` as OmniRoute
sends it, so it does on a second sign-in too). The redirect comes back to
``http://127.0.0.1:PORT/oauth2callback`` on any free port; with the ``no_browser``
setting it goes to Google's page that shows the code instead
(``https://codeassist.google.com/authcode``, gemini-cli's ``NO_BROWSER`` variant), and
the user pastes it. Once signed in, the account's Code Assist project is set up
(:mod:`omniroute.providers.code_assist`): kept in the credentials' ``extra``
(``project``, ``tier``) with the tokens, so it is done once. A Standard or Enterprise
account names its Google Cloud project in the ``project`` setting.

``omniroute providers import gemini-cli`` reads ``~/.gemini/oauth_creds.json`` (only
reads it), google-auth-library's credentials with ``expiry_date`` in milliseconds.

Requests go to ``{base_url}:generateContent`` / ``:streamGenerateContent?alt=sse`` /
``:countTokens`` in the Code Assist envelope, with ``Authorization: Bearer`` (and the
gateway's own ``User-Agent``: nothing of gemini-cli is imitated); answers are unwrapped,
so the Gemini translation serves every client format. Every URL is a connection
setting: ``base_url`` (the Code Assist API), ``oauth_token_url``, ``oauth_authorize_url``,
``oauth_redirect_uri``, ``oauth_userinfo_url``, ``oauth_authcode_url``.

**Quota**: the daily limit's 429 rests the account in its quota until the quota
resets (midnight Pacific time), so it is not asked again before (an operator's reset
of the cooldowns or a connection edit do not end the rest); when the model list is
read, ``:retrieveUserQuota`` says what is left of each model's daily allowance (as
gemini-cli asks it; the ``read_quota`` setting, on by default, turns that off).

Service status (docs/subscriptions.md): since 2026-06-18 Google serves Gemini CLI only
to Code Assist Standard and Enterprise licences; personal accounts (free, Google AI
Pro / Ultra) are refused at the setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import aiohttp
import orjson

from omniroute.errors import GatewayError, UpstreamError, UpstreamStatusError
from omniroute.hookspecs import hookimpl
from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import OAuthUnavailable
from omniroute.oauth.provider import OAuthProvider
from omniroute.oauth.quota import exhausted
from omniroute.oauth.service import Account, Endpoints, OAuthService
from omniroute.oauth.tokens import TokenSet
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.providers.code_assist import (
    DEFAULT_BASE_URL,
    CodeAssist,
    SetupError,
    count_envelope,
    envelope,
    method_url,
    quota_windows,
    rest_after_429,
    unwrap_body,
    unwrap_frame,
)
from omniroute.providers.gemini import GeminiProvider
from omniroute.sse import events_of
from omniroute.storage.store import Connection
from omniroute.version import __version__

log = logging.getLogger(__name__)

#: gemini-cli's models (packages/core/src/config/models.ts); a ``models`` setting wins
DEFAULT_MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
                  "gemini-3-pro-preview")
#: access tokens with less than this left are renewed before the setup calls of a sign-in
_SETUP_MARGIN = 120.0


def api_headers(settings: Mapping[str, Any], agent: str) -> dict[str, str]:
    """The headers every Code Assist call carries besides the bearer: the gateway's own
    ``User-Agent`` (nothing of gemini-cli is imitated; a ``headers`` setting may add or
    replace any)."""
    return {"User-Agent": agent, **(settings.get("headers") or {})}


# ----------------------------------------------------------------------------- the sign-in

class GeminiCliService(OAuthService):
    """gemini-cli's Google sign-in, and the Code Assist setup after it."""

    def endpoints(self, settings: Mapping[str, Any] | None = None) -> Endpoints:
        """The standard ones, plus ``api`` (the ``base_url`` setting: the Code Assist API),
        and the code-showing redirect when the ``no_browser`` setting is on."""
        settings = settings or {}
        found = super().endpoints(settings)
        redirect = found.redirect_uri
        if settings.get("no_browser") and not settings.get("oauth_redirect_uri"):
            redirect = found.url("authcode")
        urls = {**found.urls, "api": str(settings.get("base_url") or DEFAULT_BASE_URL)}
        return replace(found, redirect_uri=redirect, urls=urls)

    async def finish(self, tokens: TokenSet, client: TokenClient,
                     endpoints: Endpoints) -> Account:
        """Set the account's Code Assist project up (once), and name it by its email."""
        left = tokens.expires_in(client.clock())
        if tokens.refresh_token and left is not None and left < _SETUP_MARGIN:
            # an imported file's token may have lapsed: the setup needs a live one
            renewed = await self.renew(tokens.credentials(), client, endpoints)
            tokens = TokenSet.from_credentials(renewed)
        settings = endpoints.settings
        assist = CodeAssist(client.http, endpoints.url("api"), tokens.access_token,
                            headers=api_headers(settings, f"omniroute/{__version__}"),
                            timeout=client.timeout)
        try:
            project = await assist.setup(_project_setting(settings))
        except UpstreamStatusError as exc:  # Code Assist answered the setup with an error
            if exc.status >= 500 or exc.status == 429:
                raise OAuthUnavailable(f"the Code Assist setup failed: {exc.message}") from None
            raise SetupError(f"the Code Assist setup was refused: {exc.message}") from None
        except UpstreamError as exc:  # unreachable, too slow, or not answering JSON
            raise OAuthUnavailable(f"the Code Assist setup failed: {exc.message}") from None
        tokens = tokens.with_extra(project=project.id, tier=project.tier)
        email = await _email(client, endpoints.url("userinfo"), tokens.access_token)
        return Account(tokens.credentials(), label=email)

    def parse_import(self, data: bytes, now: float) -> TokenSet:
        """``~/.gemini/oauth_creds.json``: google-auth-library credentials, ``expiry_date``
        in epoch milliseconds."""
        return google_credentials(data, now, what="Gemini CLI")


def google_credentials(data: bytes, now: float, *, what: str) -> TokenSet:
    """The tokens of a credentials file written as google-auth-library (and qwen-code)
    write them: ``access_token``, ``refresh_token``, ``expiry_date`` (epoch ms)...

    :raises ValueError: not such a file.
    """
    raw = orjson.loads(data)  # a JSONDecodeError is a ValueError
    if not isinstance(raw, dict):
        raise ValueError(f"not a {what} credentials file (a JSON object is expected)")
    if raw.get("type") == "external_account_authorized_user":
        raise ValueError("workforce identity (external_account_authorized_user) "
                         "credentials cannot be imported; sign in instead")
    fields = {k: v for k, v in raw.items() if k != "expiry_date"}
    expiry = raw.get("expiry_date")
    if isinstance(expiry, (int, float)) and not isinstance(expiry, bool) and expiry > 0:
        fields["expires_at"] = expiry / 1000
    try:
        return TokenSet.from_response(fields, now=now)
    except ValueError:
        raise ValueError(f"no access_token in this {what} credentials file") from None


def _project_setting(settings: Mapping[str, Any]) -> str | None:
    project = settings.get("project")
    return project if isinstance(project, str) and project.strip() else None


async def _email(client: TokenClient, url: str, access_token: str) -> str | None:
    """Who signed in (Google's userinfo, as gemini-cli asks); None when it cannot say."""
    try:
        async with client.http.get(url, headers={"Authorization": f"Bearer {access_token}"},
                                   timeout=aiohttp.ClientTimeout(total=client.timeout)) as resp:
            data = await resp.json(content_type=None) if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        log.info("Google's userinfo could not say who signed in: %s", type(exc).__name__)
        return None
    email = data.get("email") if isinstance(data, dict) else None
    return email if isinstance(email, str) and email else None


GEMINI = GeminiCliService(
    name="gemini", provider_type="gemini-cli", flow="loopback", title="Google (Gemini CLI)",
    # google-gemini/gemini-cli packages/core/src/code_assist/oauth2.ts
    client_id="681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
    client_secret="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",
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",
    redirect_uri="http://127.0.0.1:0/oauth2callback",
    scopes=("https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/userinfo.email",
            "https://www.googleapis.com/auth/userinfo.profile"),
    pkce=True, token_encoding="form",
    authorize_params={"access_type": "offline", "prompt": "consent"},
    urls={"userinfo": "https://www.googleapis.com/oauth2/v2/userinfo",
          "authcode": "https://codeassist.google.com/authcode"},
    instructions="Open the URL and sign in with Google. The browser comes back here by "
                 "itself; if it cannot (another machine), paste the address it ends on. "
                 "With the no_browser setting, paste the code Google shows.",
    import_source="gemini-cli", import_path="~/.gemini/oauth_creds.json",
)


# ----------------------------------------------------------------------------- the API

class CodeAssistAPI(GeminiProvider):
    """The Code Assist API's wire (the base of :class:`GeminiCliProvider`)."""

    capabilities = frozenset({"chat", "count_tokens"})

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.base_url = connection.settings["base_url"]
        self._setup_lock = asyncio.Lock()
        self.quota = context.quotas.of(connection.id, connection.name)

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = dict(settings)
        if not settings.get("base_url"):
            settings["base_url"] = DEFAULT_BASE_URL
        project = settings.get("project")
        if project is not None and not (isinstance(project, str) and project.strip()):
            raise ValueError("project must be a Google Cloud project id")
        for name in ("no_browser", "read_quota"):
            if not isinstance(settings.get(name, False), bool):
                raise ValueError(f"{name} must be true or false")
        return super().configure(settings, credentials, preset)

    def _headers(self, stream: bool) -> dict[str, str]:
        token = str(self.connection.credentials.get("access_token") or "")
        return {**api_headers(self.connection.settings, self.context.user_agent),
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json"}

    async def project(self) -> str:
        """The account's Code Assist project: kept since the sign-in, else set up now
        (once, kept with the credentials).

        :raises UpstreamStatusError: 403 when the account cannot use Code Assist.
        """
        kept = _kept_project(self.connection.credentials)
        if kept is not None:
            return kept
        async with self._setup_lock:  # one setup, however many requests arrive together
            kept = _kept_project(self.connection.credentials)
            if kept is not None:
                return kept
            extra = self.connection.credentials.get("extra") or {}
            assist = CodeAssist(self.context.http, self.base_url,
                                str(self.connection.credentials.get("access_token") or ""),
                                headers=api_headers(self.connection.settings,
                                                  self.context.user_agent),
                                timeout=min(30.0, self.context.timeouts.total))
            try:
                found = await assist.setup(_project_setting(self.connection.settings))
            except SetupError as exc:
                raise UpstreamStatusError(f"{self.connection.name}: {exc.message}",
                                          status=403, code=exc.code) from None
            await self.save_credentials({**self.connection.credentials, "extra": {
                **extra, "project": found.id, "tier": found.tier}})
            return found.id

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        self.quota.check()  # the day's quota spent: not asked again before it resets
        body = orjson.dumps(envelope(call.model, await self.project(), call.body,
                                     call.request_id))
        if call.stream:
            url = method_url(self.base_url, "streamGenerateContent") + "?alt=sse"
            return unwrapped(await self.post_stream(url, self._headers(True), body))
        answer = await self.post_json(method_url(self.base_url, "generateContent"),
                                      self._headers(False), body)
        answer.body = unwrap_body(answer.body or b"")
        return answer

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """``:countTokens``: ``{"totalTokens": N}``, the Gemini client's own answer."""
        self.quota.check()
        data = orjson.dumps(count_envelope(str(body.get("model") or ""), body))
        answer = await self.post_json(method_url(self.base_url, "countTokens"),
                                      self._headers(False), data)
        parsed = orjson.loads(answer.body or b"{}")
        total = parsed.get("totalTokens") if isinstance(parsed, dict) else None
        if isinstance(total, bool) or not isinstance(total, int):
            raise UpstreamError("The Code Assist countTokens answer has no 'totalTokens'.")
        return {"totalTokens": total}

    async def list_models(self) -> list[str]:
        """The ``models`` setting, else gemini-cli's models (Code Assist lists none); the
        quota is read alongside (see :meth:`read_quota`)."""
        if self.connection.settings.get("read_quota", True):
            await self.read_quota()
        return self.configured_models or list(DEFAULT_MODELS)

    async def read_quota(self) -> bool:
        """``:retrieveUserQuota`` into the account's quota, once the project is known (no
        setup is started for it); False when it could not be read (logged)."""
        project = _kept_project(self.connection.credentials)
        if project is None:
            return False
        try:
            answer = await self.post_json(method_url(self.base_url, "retrieveUserQuota"),
                                          self._headers(False),
                                          orjson.dumps({"project": project}))
            data = orjson.loads(answer.body or b"{}")
        except (GatewayError, orjson.JSONDecodeError) as exc:
            log.info("the Code Assist quota of %s could not be read: %s", self.connection.name,
                     getattr(exc, "message", exc))
            return False
        tier = (self.connection.credentials.get("extra") or {}).get("tier")
        self.quota.update(quota_windows(data), plan=tier if isinstance(tier, str) else None)
        return True

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """Gemini's errors; a 429 for the day's quota rests the account until the reset."""
        err = super().error_from(status, body, headers)
        now = time.time()
        rest = rest_after_429(body, now) if status == 429 else None
        if rest is None:
            return err
        left = self.quota.exhaust(now + rest, "the daily quota is used up")
        return exhausted(f"The Google account {self.connection.name!r} has used its daily "
                         f"Code Assist quota: {err.message}", left,
                         code="daily_quota_exhausted")

    def quota_view(self) -> dict[str, Any] | None:
        return self.quota.snapshot()


def _kept_project(credentials: Mapping[str, Any]) -> str | None:
    extra = credentials.get("extra")
    project = extra.get("project") if isinstance(extra, Mapping) else None
    return project if isinstance(project, str) and project else None


def unwrapped(answer: UpstreamResponse) -> UpstreamResponse:
    """The stream with each event's envelope taken off (read either way, as before)."""
    events, reads = answer.events, answer.reads

    async def frames() -> AsyncIterator[bytes]:
        assert events is not None
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for frame in events:
                yield unwrap_frame(frame)

    async def batches() -> AsyncIterator[bytes]:
        assert reads is not None
        async with contextlib.aclosing(reads):  # type: ignore[type-var]
            async for block in reads:  # whole events: cut, unwrapped, joined again
                yield b"".join([unwrap_frame(frame) for frame in events_of(block)])

    return UpstreamResponse(answer.status, answer.headers, events=frames(),
                            reads=batches() if reads is not None else None,
                            close=answer.close, split=answer.split)


class GeminiCliProvider(OAuthProvider, CodeAssistAPI):
    """A Google account signed in as Gemini CLI (see the module docstring)."""

    type = "gemini-cli"
    oauth = GEMINI
    default_prefix = "gemini-cli"
    description = "Gemini through a Google account signed in as Gemini CLI (Code Assist)"
    presets: ClassVar[Mapping[str, Preset]] = {}


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(GeminiCliProvider)


@hookimpl
def register_oauth_services(register: Callable[[OAuthService], None]) -> None:
    register(GEMINI)
