"""Provider type ``copilot``: a GitHub Copilot subscription, signed in the way the
Copilot editor extensions sign in.

**Sign-in** (service ``copilot``: ``omniroute login copilot``): GitHub's device flow
(RFC 8628) with the public client id of the VS Code Copilot app and the ``read:user``
scope: the user types a code at ``github.com/login/device``; polls that come too fast
are told ``slow_down`` (the interval grows by 5 s), unfinished ones
``authorization_pending`` (GitHub answers both with a 200). The GitHub token it gives is
long-lived; it is then exchanged at ``api.github.com/copilot_internal/v2/token`` for the
short-lived Copilot token (about 30 minutes) that the Copilot API takes, with the API
base URL this account must use (``endpoints.api``).

In the account's credentials the Copilot token is the ``access_token`` (with its
``expires_at``) and the GitHub token is the ``refresh_token``: renewing the account is
exchanging the GitHub token again, which the OAuth base does ahead of expiry, once per
account however many requests are waiting (``OAuthProvider.fresh``). A GitHub token that
is refused (revoked: 401; no Copilot seat: 403/404) means a new sign-in.

**Import** (``omniroute providers import copilot``): the ``oauth_token`` of the
github.com entry in ``~/.config/github-copilot/apps.json`` (or, when there is none,
the older ``hosts.json`` beside it), only read.

**Requests** go to ``{api}/chat/completions`` in the OpenAI Chat Completions format
(every client format works through the ordinary translation) with the editor headers
the API expects (``Editor-Version``, ``Editor-Plugin-Version``,
``Copilot-Integration-Id``, ``User-Agent``, ``Openai-Intent``,
``X-GitHub-Api-Version``...). Models come from ``{api}/models``.

**Quota**: the premium-request allowance from ``copilot_internal/user``
(``quota_snapshots``), read when the model list is, and a 402 ``quota_exceeded`` rests
the account until the allowance resets (``quota_reset_date``; else the first of next
month, UTC).

Every URL can be overridden in the connection's settings: ``base_url`` (the API base),
``oauth_device_url``, ``oauth_token_url``, ``oauth_client_id``,
``oauth_copilot_token_url``, ``oauth_copilot_user_url``, ``oauth_user_url``; ``headers``
replace the editor headers. Sources: docs/subscriptions.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from omniroute.errors import GatewayError, UpstreamStatusError
from omniroute.hookspecs import hookimpl
from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import InvalidGrant, OAuthError, OAuthUnavailable
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
from omniroute.providers.openai import OpenAIProvider
from omniroute.storage.store import Connection

log = logging.getLogger(__name__)

#: the VS Code Copilot GitHub app (ericc-ch/copilot-api, litellm, OmniRoute)
CLIENT_ID = "Iv1.b507a08c87ecfe98"
GITHUB = "https://github.com"
GITHUB_API = "https://api.github.com"
#: the API base when the Copilot token names none
COPILOT_API = "https://api.githubcopilot.com"
#: the editor the API is told it serves (overridable with the ``headers`` setting)
EDITOR_HEADERS = {
    "Editor-Version": "vscode/1.110.0",
    "Editor-Plugin-Version": "copilot-chat/0.38.0",
    "User-Agent": "GitHubCopilotChat/0.38.0",
    "X-GitHub-Api-Version": "2025-04-01",
}
#: seconds a GitHub API call may take
GITHUB_TIMEOUT = 30.0


# ----------------------------------------------------------------------------- GitHub API

def github_headers(token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers of a GitHub API call made with the GitHub token (the word ``token``)."""
    return {**EDITOR_HEADERS, **(extra or {}), "Accept": "application/json",
            "Authorization": f"token {token}"}


async def github_get(http: aiohttp.ClientSession, url: str, token: str, *,
                     timeout: float = GITHUB_TIMEOUT,
                     headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``GET url`` with the GitHub token; the JSON object answered.

    :raises OAuthUnavailable: unreachable, too slow, or a 5xx.
    :raises OAuthError: any other refusal (``upstream_status`` says which).
    """
    where = url.split("?", 1)[0]
    try:
        async with http.get(url, headers=github_headers(token, headers),
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status, raw = resp.status, await resp.read()
    except TimeoutError:
        raise OAuthUnavailable(f"{where} did not answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise OAuthUnavailable(f"{where} is unreachable: {type(exc).__name__}") from None
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        data = None
    if status >= 500:
        raise OAuthUnavailable(f"{where} failed: HTTP {status}", upstream_status=status)
    if status >= 400:
        said = _message(data) or f"HTTP {status}"
        raise OAuthError(f"{where} refused: {said}", upstream_status=status)
    if not isinstance(data, dict):
        raise OAuthError(f"{where} answered something that is not a JSON object",
                         upstream_status=status)
    return data


def _message(data: Any) -> str | None:
    """GitHub's ``message``, or Copilot's ``error_details.message``, cut short."""
    if not isinstance(data, dict):
        return None
    details = data.get("error_details")
    text = details.get("message") if isinstance(details, dict) else data.get("message")
    return text[:300] if isinstance(text, str) and text else None


def copilot_credentials(github_token: str, answer: Mapping[str, Any], now: float,
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An account's credentials from a ``copilot_internal/v2/token`` answer: the
    Copilot token as the access token, the GitHub token as what renews it.

    :raises OAuthError: the answer has no token.
    """
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise OAuthError("the Copilot token answer has no token")
    expires_at = number(answer.get("expires_at"))
    if expires_at is None or expires_at <= now:
        refresh_in = number(answer.get("refresh_in"))
        expires_at = now + (refresh_in + 60 if refresh_in and refresh_in > 0 else 1500.0)
    kept = {k: v for k, v in (extra or {}).items() if k not in ("api_base", "sku")}
    endpoints = answer.get("endpoints")
    api = endpoints.get("api") if isinstance(endpoints, dict) else None
    if isinstance(api, str) and urlsplit(api).scheme in ("http", "https"):
        kept["api_base"] = api.rstrip("/")
    if isinstance(answer.get("sku"), str):
        kept["sku"] = answer["sku"]
    credentials: dict[str, Any] = {"access_token": token, "refresh_token": github_token,
                                   "expires_at": expires_at, "token_type": "Bearer"}
    if kept:
        credentials["extra"] = kept
    return credentials


class CopilotService(OAuthService):
    """GitHub's device flow, then the Copilot token exchange (on sign-in, import and
    every renewal)."""

    async def exchange(self, http: aiohttp.ClientSession, endpoints: Endpoints,
                       github_token: str, extra: Mapping[str, Any] | None = None,
                       ) -> dict[str, Any]:
        """The credentials a GitHub token gives now (a fresh Copilot token).

        :raises InvalidGrant: GitHub refused the token, or the account has no Copilot.
        """
        try:
            answer = await github_get(http, endpoints.url("copilot_token"), github_token,
                                      headers=self.headers)
        except OAuthUnavailable:
            raise
        except OAuthError as exc:
            if exc.upstream_status in (401, 403, 404):
                why = ("the GitHub token was refused (revoked or expired)"
                       if exc.upstream_status == 401
                       else "this GitHub account has no Copilot access")
                raise InvalidGrant(f"copilot: {why}: {exc.message}",
                                   upstream_status=exc.upstream_status) from None
            raise
        return copilot_credentials(github_token, answer, time.time(), extra)

    async def finish(self, tokens: TokenSet, client: TokenClient,
                     endpoints: Endpoints) -> Account:
        """``tokens`` hold the GitHub token (a sign-in's, an import's): exchange it, and
        name the account after its GitHub login."""
        credentials = await self.exchange(client.http, endpoints, tokens.access_token)
        login = tokens.extra.get("github_user")
        try:
            user = await github_get(client.http, endpoints.url("user"), tokens.access_token,
                                    timeout=client.timeout, headers=self.headers)
        except OAuthError as exc:  # the login only names the account: go on without it
            log.info("copilot: the GitHub login could not be read: %s", exc.message)
        else:
            login = user.get("login") if isinstance(user.get("login"), str) else login
        return Account(credentials, label=login if isinstance(login, str) and login else None)

    async def renew(self, credentials: Mapping[str, Any], client: TokenClient,
                    endpoints: Endpoints) -> dict[str, Any]:
        """A new Copilot token for the kept GitHub token (which does not change)."""
        github_token = credentials.get("refresh_token")
        if not isinstance(github_token, str) or not github_token:
            raise InvalidGrant("copilot: no GitHub token is kept for this account")
        extra = credentials.get("extra")
        return await self.exchange(client.http, endpoints, github_token,
                                   extra if isinstance(extra, Mapping) else None)

    def parse_import(self, data: bytes, now: float) -> TokenSet:
        """``apps.json`` (``{"github.com:<client id>": {"user", "oauth_token"}}``) or
        ``hosts.json`` (``{"github.com": {...}}``): the github.com entry's token,
        preferring this client's and a GitHub-app token (``ghu_``)."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("it is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("it is not a JSON object")
        found = [(str(key), entry) for key, entry in doc.items()
                 if isinstance(entry, dict) and isinstance(entry.get("oauth_token"), str)
                 and entry["oauth_token"] and str(key).split(":", 1)[0] == "github.com"]
        if not found:
            raise ValueError("it holds no github.com account with an oauth_token")

        def rank(item: tuple[str, dict[str, Any]]) -> tuple[bool, bool]:
            key, entry = item
            return key.endswith(f":{self.client_id}"), entry["oauth_token"].startswith("ghu_")

        _, entry = max(found, key=rank)
        user = entry.get("user")
        return TokenSet(access_token=entry["oauth_token"],
                        extra={"github_user": user} if isinstance(user, str) and user else {})


SERVICE = CopilotService(
    name="copilot", provider_type="copilot", flow="device", client_id=CLIENT_ID,
    device_url=f"{GITHUB}/login/device/code", token_url=f"{GITHUB}/login/oauth/access_token",
    scopes=("read:user",), pkce=False, token_encoding="form",
    headers={"User-Agent": EDITOR_HEADERS["User-Agent"]},
    urls={"copilot_token": f"{GITHUB_API}/copilot_internal/v2/token",
          "copilot_user": f"{GITHUB_API}/copilot_internal/user",
          "user": f"{GITHUB_API}/user"},
    title="GitHub Copilot",
    instructions="Open the verification URL, enter the code, and authorize the app.",
    import_source="copilot", import_path="~/.config/github-copilot/apps.json",
    import_fallbacks=("~/.config/github-copilot/hosts.json",))


# ----------------------------------------------------------------------------- quota

def _date(value: Any) -> float | None:
    """``2026-02-01`` or ``2026-02-01T00:00:00.000Z`` as epoch seconds (UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def next_month(now: float) -> float:
    """The first of next month, 00:00 UTC (when Copilot's premium allowance resets)."""
    today = datetime.fromtimestamp(now, UTC)
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def copilot_windows(data: Mapping[str, Any]) -> tuple[list[Window], str | None]:
    """The ``quota_snapshots`` of a ``copilot_internal/user`` answer, and the plan."""
    resets = _date(data.get("quota_reset_date_utc")) or _date(data.get("quota_reset_date"))
    windows = []
    snapshots = data.get("quota_snapshots")
    for name, snap in (snapshots.items() if isinstance(snapshots, dict) else ()):
        if not isinstance(snap, dict):
            continue
        percent = number(snap.get("percent_remaining"))
        windows.append(Window(
            str(name), used_percent=None if percent is None else round(100 - percent, 2),
            remaining=number(snap.get("remaining")), limit=number(snap.get("entitlement")),
            resets_at=resets, unlimited=snap.get("unlimited") is True))
    plan = data.get("copilot_plan") or data.get("access_type_sku")
    return windows, plan if isinstance(plan, str) else None


# ----------------------------------------------------------------------------- the wire

class CopilotAPI(OpenAIProvider):
    """The Copilot API (the wire half of :class:`CopilotProvider`)."""

    capabilities = frozenset({"chat"})

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.stream_usage = bool(connection.settings.get("stream_usage", False))
        self._headers = {**EDITOR_HEADERS, "Copilot-Integration-Id": "vscode-chat",
                         "Openai-Intent": "conversation-panel",
                         "Content-Type": "application/json",
                         **connection.settings.get("headers", {})}
        self.quota = context.quotas.of(connection.id, connection.name)

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = dict(settings)
        settings.setdefault("base_url", COPILOT_API)
        return super().configure(settings, credentials, preset)

    @property
    def api_base(self) -> str:
        """The ``base_url`` setting when it is not the default, else the base the
        Copilot token named, else the default."""
        if self.base_url != COPILOT_API:
            return self.base_url
        extra = self.connection.credentials.get("extra")
        api = extra.get("api_base") if isinstance(extra, Mapping) else None
        return api if isinstance(api, str) and api else COPILOT_API

    def call_headers(self, body: Mapping[str, Any], stream: bool) -> dict[str, str]:
        """The editor headers, the Copilot token, and this call's own."""
        token = self.connection.credentials.get("access_token") or ""
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else {}
        role = last.get("role") if isinstance(last, dict) else None
        headers = {**self._headers, "Authorization": f"Bearer {token}",
                   "X-Request-Id": str(uuid.uuid4()),
                   "X-Initiator": "user" if role in (None, "user") else "agent",
                   "Accept": "text/event-stream" if stream else "application/json"}
        if _has_image(messages):
            headers["Copilot-Vision-Request"] = "true"
        return headers

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        self.quota.check()
        body = {**call.body, "model": call.model}
        url = f"{self.api_base}/chat/completions"
        try:
            if call.stream:
                body["stream"] = True
                if self.stream_usage and not (body.get("stream_options") or {}).get(
                        "include_usage"):
                    body["stream_options"] = {**(body.get("stream_options") or {}),
                                              "include_usage": True}
                return await self.post_stream(url, self.call_headers(body, True),
                                              orjson.dumps(body))
            return await self.post_json(url, self.call_headers(body, False), orjson.dumps(body))
        except UpstreamStatusError as err:
            if err.status == 402 and _quota_exceeded(err):
                raise await self._spent(err) from None
            raise

    async def _spent(self, err: UpstreamStatusError) -> UpstreamStatusError:
        """A 402 ``quota_exceeded``: rest until the allowance resets."""
        resets = await self.refresh_quota()
        premium = self.quota.windows.get("premium_interactions")
        if resets is None and premium is not None:
            resets = premium.resets_at
        left = self.quota.exhaust(resets or next_month(time.time()),
                                  "premium requests used up")
        return exhausted(f"The Copilot account {self.connection.name!r} has used its premium "
                         f"requests: {err.message}", left, code="quota_exceeded")

    async def refresh_quota(self) -> float | None:
        """Read ``copilot_internal/user`` into the quota; its reset time (None: unread)."""
        github_token = self.connection.credentials.get("refresh_token")
        if not isinstance(github_token, str) or not github_token:
            return None
        endpoints = SERVICE.endpoints(self.connection.settings)
        try:
            data = await github_get(self.context.http, endpoints.url("copilot_user"),
                                    github_token, timeout=min(GITHUB_TIMEOUT,
                                                              self.context.timeouts.total),
                                    headers=SERVICE.headers)
        except OAuthError as exc:
            log.info("the Copilot quota of %s could not be read: %s", self.connection.name,
                     exc.message)
            return None
        windows, plan = copilot_windows(data)
        self.quota.update(windows, plan=plan)
        return _date(data.get("quota_reset_date_utc")) or _date(data.get("quota_reset_date"))

    async def list_models(self) -> list[str]:
        """The chat models of ``{api}/models`` (the quota is read alongside)."""
        data = await self.get_json(f"{self.api_base}/models", self.call_headers({}, False))
        await self.refresh_quota()
        entries = data.get("data", []) if isinstance(data, dict) else []
        listed = [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)
                  and _chat_model(m)]
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    def quota_view(self) -> dict[str, Any] | None:
        return self.quota.snapshot()


def _quota_exceeded(err: GatewayError) -> bool:
    return err.code == "quota_exceeded" or "quota" in err.message.lower()


def _chat_model(entry: Mapping[str, Any]) -> bool:
    capabilities = entry.get("capabilities")
    kind = capabilities.get("type") if isinstance(capabilities, dict) else None
    return kind in (None, "chat")


def _has_image(messages: Any) -> bool:
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False


class CopilotProvider(OAuthProvider, CopilotAPI):
    """A GitHub Copilot subscription account (see the module docstring)."""

    type = "copilot"
    oauth = SERVICE
    default_prefix = "copilot"
    description = "GitHub Copilot subscription (the Copilot chat API)"
    presets: ClassVar[Mapping[str, Preset]] = {}
    credential_fields = OAuthProvider.credential_fields
    #: Copilot serves several vendors' models: priced by the model's name alone
    price_provider = None


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(CopilotProvider)


@hookimpl
def register_oauth_services(register: Callable[[OAuthService], None]) -> None:
    register(SERVICE)
