"""Provider type ``qwen`` and sign-in service ``qwen``: a Qwen account as Qwen Code signs
it in, served by the OpenAI-compatible (DashScope) API.

The sign-in (``omniroute login qwen``) is qwen-code's own (QwenLM/qwen-code
``packages/core/src/qwen/qwenOAuth2.ts``): the device authorization grant with PKCE at
``chat.qwen.ai`` — the device code request carries the S256 challenge (and a fresh
``x-request-id``), each poll the verifier; form bodies; ``authorization_pending`` (400)
polls on, ``slow_down`` (429) polls slower, ``expired_token`` / ``access_denied`` end it.
The token answer's ``resource_url`` names the account's API host (kept in the
credentials' ``extra``; a renewal may move it): ``https://{resource_url}/v1``, else
DashScope's compatible mode (qwen-code ``qwenContentGenerator.ts``). Renewal is the
``refresh_token`` grant at the same token URL.

``omniroute providers import qwen`` reads ``~/.qwen/oauth_creds.json`` (only reads it):
``access_token``, ``refresh_token``, ``resource_url``, ``expiry_date`` in epoch ms.

Requests are OpenAI Chat Completions with ``Authorization: Bearer`` and the headers
qwen-code's DashScope provider sends (``provider/dashscope.ts``):
``X-DashScope-AuthType: qwen-oauth``, ``X-DashScope-CacheControl: enable`` and
``X-DashScope-UserAgent``, which (like ``User-Agent``) names the gateway itself: qwen-code's
``QwenCode/<version>`` is not imitated (its older builds sent ``GeminiCLI/...``, so the
value is not what the service checks); a ``headers`` setting may add or replace any. Every URL
is a connection setting: ``base_url`` (the API, over ``resource_url``),
``oauth_device_url``, ``oauth_token_url``.

**Quota**: a 429 that speaks of the quota ("Free allocated quota exceeded", qwen-code
issues #1742, #3281: a daily allowance) rests the account in its quota until the
``Retry-After`` it gives, else for :data:`QUOTA_REST` (Qwen names no reset time), so it
is not asked again before; other 429s are rate limits (a cooldown).

Service status (docs/subscriptions.md): Qwen's free OAuth tier ended on 2026-04-15; the
protocol is kept for accounts that still have access.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from omniroute.errors import UpstreamStatusError
from omniroute.hookspecs import hookimpl
from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import InvalidGrant, OAuthError
from omniroute.oauth.provider import OAuthProvider
from omniroute.oauth.quota import exhausted
from omniroute.oauth.service import Endpoints, OAuthService
from omniroute.oauth.tokens import TokenSet
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.providers.gemini_cli import google_credentials
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.resilience.cooldown import parse_retry_after
from omniroute.storage.store import Connection

#: where the API is when the account's token names no ``resource_url``
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
#: the models Qwen Code offers with its sign-in; a ``models`` setting wins
DEFAULT_MODELS = ("coder-model", "qwen3-coder-plus", "qwen3-coder-flash", "vision-model")
#: how long a spent quota rests the account when the 429 says no Retry-After (an
#: assumption: Qwen documents a daily allowance but no reset time)
QUOTA_REST = 3600.0


def api_base(resource_url: str | None) -> str:
    """The API base a token's ``resource_url`` names: ``https://`` added when it has no
    scheme, ``/v1`` when it does not end so (qwen-code ``getCurrentEndpoint``)."""
    if not resource_url:
        return DEFAULT_BASE_URL
    base = resource_url.strip().rstrip("/")
    if "://" not in base:
        base = f"https://{base}"
    return base if base.endswith("/v1") else f"{base}/v1"


class QwenService(OAuthService):
    """qwen-code's device sign-in."""

    def device_headers(self) -> dict[str, str]:
        """qwen-code names each device authorization request with a fresh id."""
        return {**self.headers, "x-request-id": str(uuid.uuid4())}

    async def renew(self, credentials: Mapping[str, Any], client: TokenClient,
                    endpoints: Endpoints) -> dict[str, Any]:
        """The standard renewal; ``invalid_request`` is a refusal for good too (as OmniRoute
        reads Qwen's answers; qwen-code drops its credentials on any 400 or 401)."""
        try:
            return await super().renew(credentials, client, endpoints)
        except OAuthError as exc:
            if exc.error == "invalid_request":
                raise InvalidGrant(exc.message, error=exc.error) from None
            raise

    def parse_import(self, data: bytes, now: float) -> TokenSet:
        """``~/.qwen/oauth_creds.json`` (its ``resource_url`` kept in ``extra``)."""
        tokens = google_credentials(data, now, what="Qwen Code")
        resource = tokens.extra.get("resource_url")
        if resource is not None and not (isinstance(resource, str) and _host_like(resource)):
            raise ValueError("its resource_url is not a host name or URL")
        return tokens


def _host_like(value: str) -> bool:
    parts = urlsplit(value if "://" in value else f"https://{value}")
    return parts.scheme in ("http", "https") and bool(parts.hostname)


QWEN = QwenService(
    name="qwen", provider_type="qwen", flow="device", title="Qwen Code",
    # QwenLM/qwen-code packages/core/src/qwen/qwenOAuth2.ts
    client_id="f0304373b74a44d2b584a3fb70ca9e56",
    device_url="https://chat.qwen.ai/api/v1/oauth2/device/code",
    token_url="https://chat.qwen.ai/api/v1/oauth2/token",
    scopes=("openid", "profile", "email", "model.completion"),
    pkce=True, token_encoding="form",
    instructions="Open the verification URL, sign in to Qwen and approve the code.",
    import_source="qwen", import_path="~/.qwen/oauth_creds.json",
)


class QwenAPI(HTTPProvider):
    """The OpenAI-compatible DashScope API as Qwen Code calls it (the wire of
    :class:`QwenProvider`)."""

    format = "openai"

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.quota = context.quotas.of(connection.id, connection.name)

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = dict(settings)
        if settings.get("base_url"):  # an override of the resource_url's host
            settings = http_settings(settings, None, type_name="a qwen")
        elif not isinstance(settings.get("headers", {}), dict):
            raise ValueError("headers must map header names to strings")
        return super().configure(settings, credentials, preset)

    @property
    def base_url(self) -> str:
        """The ``base_url`` setting, else the host the account's token named."""
        if self.connection.settings.get("base_url"):
            return str(self.connection.settings["base_url"]).rstrip("/")
        extra = self.connection.credentials.get("extra") or {}
        resource = extra.get("resource_url") if isinstance(extra, Mapping) else None
        return api_base(resource if isinstance(resource, str) else None)

    def _headers(self, stream: bool) -> dict[str, str]:
        agent = self.context.user_agent  # the gateway's own: qwen-code's is not imitated
        token = str(self.connection.credentials.get("access_token") or "")
        return {"User-Agent": agent, "X-DashScope-UserAgent": agent,
                "X-DashScope-CacheControl": "enable", "X-DashScope-AuthType": "qwen-oauth",
                **(self.connection.settings.get("headers") or {}),
                "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json"}

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        self.quota.check()  # the allowance spent: not asked again before the rest ends
        body = {**call.body, "model": call.model}
        url = f"{self.base_url}/chat/completions"
        if call.stream:
            options = body.get("stream_options") or {}
            body["stream_options"] = {**options, "include_usage": True}
            return await self.post_stream(url, self._headers(True), orjson.dumps(body))
        return await self.post_json(url, self._headers(False), orjson.dumps(body))

    async def list_models(self) -> list[str]:
        """The ``models`` setting, else the models Qwen Code offers (the OAuth API lists
        none)."""
        return self.configured_models or list(DEFAULT_MODELS)

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """A 429 for the quota rests the account (see the module docstring)."""
        err = super().error_from(status, body, headers)
        if status != 429 or "quota" not in err.message.lower():
            return err
        now = time.time()
        said = err.upstream_headers.get("retry-after")
        after = parse_retry_after(said, now) if said else None
        left = self.quota.exhaust(now + (after if after else QUOTA_REST),
                                  "the allocated quota is used up")
        return exhausted(f"The Qwen account {self.connection.name!r} has used its quota: "
                         f"{err.message}", left)

    def quota_view(self) -> dict[str, Any] | None:
        return self.quota.snapshot()


class QwenProvider(OAuthProvider, QwenAPI):
    """A Qwen account signed in as Qwen Code (see the module docstring)."""

    type = "qwen"
    oauth = QWEN
    default_prefix = "qwen"
    description = "Qwen through an account signed in as Qwen Code (DashScope-compatible)"
    presets: ClassVar[Mapping[str, Preset]] = {}


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(QwenProvider)


@hookimpl
def register_oauth_services(register: Callable[[OAuthService], None]) -> None:
    register(QWEN)
