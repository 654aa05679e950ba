"""What one subscription service is: its OAuth client, its endpoints, its flow.

An :class:`OAuthService` is a description object (frozen) that a plugin registers
with the ``register_oauth_services`` hook; the sign-in surfaces (``omniroute login``,
``/api/oauth/{service}/...``, ``omniroute providers import``) and the token life
cycle read everything they need from it. A service whose protocol needs more than
the standard steps overrides the methods (a subclass in its own module):

* :meth:`OAuthService.finish` turns the tokens a sign-in (or an import) produced into
  the account's credentials and settings (Copilot exchanges its GitHub token, Gemini
  onboards the Code Assist project);
* :meth:`OAuthService.renew` renews an account's credentials (default: the
  ``refresh_token`` grant at the token endpoint);
* :meth:`OAuthService.parse_import` reads the file the official CLI keeps.

Every URL can be overridden in a connection's settings (tests, enterprise proxies):
``oauth_client_id``, ``oauth_authorize_url``, ``oauth_token_url``, ``oauth_device_url``,
``oauth_redirect_uri``, and ``oauth_<name>_url`` for each of :attr:`OAuthService.urls`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from omniroute.oauth.client import Encoding, TokenClient
from omniroute.oauth.errors import InvalidGrant, OAuthError
from omniroute.oauth.pkce import Pkce
from omniroute.oauth.tokens import TokenSet

#: how the user signs in: paste back the code a page shows, be redirected to a
#: listener on this machine (with the paste as fallback), or type a device code
Flow = Literal["paste", "loopback", "device"]
FLOWS: tuple[Flow, ...] = ("paste", "loopback", "device")

#: connection setting -> the :class:`Endpoints` field it overrides
OVERRIDES = {
    "oauth_client_id": "client_id",
    "oauth_authorize_url": "authorize_url",
    "oauth_token_url": "token_url",
    "oauth_device_url": "device_url",
    "oauth_redirect_uri": "redirect_uri",
}
#: RFC 8628 section 3.4
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A service's endpoints for one connection: the defaults under its overrides."""

    client_id: str
    authorize_url: str
    token_url: str
    device_url: str
    redirect_uri: str
    #: the service's other URLs by name (:attr:`OAuthService.urls`)
    urls: Mapping[str, str] = field(default_factory=dict)
    #: the connection settings they were made from (a service's own settings, such as
    #: a user-given project id, for :meth:`OAuthService.finish`)
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def url(self, name: str) -> str:
        """The URL called ``name`` (a ``KeyError`` names a service's own mistake)."""
        return self.urls[name]


@dataclass(frozen=True, slots=True)
class Account:
    """What a sign-in or an import produced: ready to be stored as a connection."""

    #: the connection's credentials (the token fields, see :mod:`omniroute.oauth.tokens`)
    credentials: dict[str, Any] = field(repr=False)
    #: settings the connection needs (a project id), merged over the sign-in's own
    settings: dict[str, Any] = field(default_factory=dict)
    #: who signed in (an email), the account's default name
    label: str | None = None


@dataclass(frozen=True, kw_only=True)
class OAuthService:
    """One subscription service's OAuth client (see the module docstring)."""

    #: the service's name: ``omniroute login NAME``, ``/api/oauth/NAME/start``
    name: str
    #: the provider type its accounts become (a registered ``Provider.type``)
    provider_type: str
    flow: Flow
    client_id: str
    token_url: str
    authorize_url: str = ""
    #: device flow: the device authorization endpoint (RFC 8628 section 3.1)
    device_url: str = ""
    #: where the authorization answer goes: the service's own page (paste flow) or
    #: ``http://localhost:PORT/PATH``, where the loopback listener waits
    redirect_uri: str = ""
    scopes: tuple[str, ...] = ()
    #: a public client's published secret ("installed app" clients), or None
    client_secret: str | None = None
    pkce: bool = True
    #: how requests to the token (and device) endpoint are encoded
    token_encoding: Encoding = "form"
    #: how a refresh request is encoded, when it differs (Codex: form codes, JSON refresh)
    refresh_encoding: Encoding | None = None
    #: extra query parameters of the authorization URL (Claude's ``code=true``)
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    #: headers sent to the service's OAuth endpoints (a ``User-Agent`` it expects)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the service's other URLs by name, each overridable as ``oauth_<name>_url``
    urls: Mapping[str, str] = field(default_factory=dict)
    title: str = ""
    #: what the user is told to do with the URL or the code
    instructions: str = ""
    #: ``omniroute providers import SOURCE`` reads the official CLI's file
    import_source: str | None = None
    #: where that file is by default (``~`` expanded)
    import_path: str | None = None
    #: other places that file may be (an older layout), tried in order when no path is
    #: given and ``import_path`` does not exist
    import_fallbacks: tuple[str, ...] = ()

    # ------------------------------------------------------------------ endpoints

    def endpoints(self, settings: Mapping[str, Any] | None = None) -> Endpoints:
        """The endpoints for a connection with ``settings`` (its overrides win)."""
        settings = settings or {}
        values = {"client_id": self.client_id, "authorize_url": self.authorize_url,
                  "token_url": self.token_url, "device_url": self.device_url,
                  "redirect_uri": self.redirect_uri}
        for setting, name in OVERRIDES.items():
            if isinstance(settings.get(setting), str) and settings[setting]:
                values[name] = settings[setting]
        urls = {name: str(settings.get(f"oauth_{name}_url") or url)
                for name, url in self.urls.items()}
        return Endpoints(**values, urls=urls, settings=dict(settings))

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when an override in ``settings`` is not usable."""
        names = [*OVERRIDES, *(f"oauth_{n}_url" for n in self.urls)]
        for name in names:
            if name not in settings or settings[name] is None:
                continue
            value = settings[name]
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
            if name != "oauth_client_id":
                parts = urlsplit(value)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    raise ValueError(f"{name} must be an http(s) URL, got {value!r}")

    # ------------------------------------------------------------------ requests

    def authorization_url(self, endpoints: Endpoints, state: str, pkce: Pkce | None) -> str:
        """The URL the user opens (authorization code flows)."""
        params = {**self.authorize_params, "client_id": endpoints.client_id,
                  "response_type": "code", "redirect_uri": endpoints.redirect_uri}
        if self.scopes:
            params["scope"] = " ".join(self.scopes)
        if pkce is not None:
            params["code_challenge"] = pkce.challenge
            params["code_challenge_method"] = pkce.method
        params["state"] = state
        return f"{endpoints.authorize_url}?{urlencode(params)}"

    def _client(self, endpoints: Endpoints) -> dict[str, str]:
        out = {"client_id": endpoints.client_id}
        if self.client_secret:
            out["client_secret"] = self.client_secret
        return out

    def code_request(self, endpoints: Endpoints, code: str, state: str,
                     pkce: Pkce | None) -> dict[str, Any]:
        """The token request exchanging an authorization code (RFC 6749 section 4.1.3)."""
        body: dict[str, Any] = {"grant_type": "authorization_code", "code": code,
                                "redirect_uri": endpoints.redirect_uri, **self._client(endpoints)}
        if pkce is not None:
            body["code_verifier"] = pkce.verifier
        return body

    def refresh_request(self, endpoints: Endpoints, refresh_token: str) -> dict[str, Any]:
        """The token request renewing an access token (RFC 6749 section 6)."""
        return {"grant_type": "refresh_token", "refresh_token": refresh_token,
                **self._client(endpoints)}

    def device_request(self, endpoints: Endpoints, pkce: Pkce | None) -> dict[str, Any]:
        """The device authorization request (RFC 8628 section 3.1)."""
        body: dict[str, Any] = {"client_id": endpoints.client_id}
        if self.scopes:
            body["scope"] = " ".join(self.scopes)
        if pkce is not None:
            body["code_challenge"] = pkce.challenge
            body["code_challenge_method"] = pkce.method
        return body

    def device_headers(self) -> dict[str, str]:
        """The headers of the device authorization request (a service may add a fresh
        request id to each)."""
        return dict(self.headers)

    def device_token_request(self, endpoints: Endpoints, device_code: str,
                             pkce: Pkce | None) -> dict[str, Any]:
        """The device access token request (RFC 8628 section 3.4)."""
        body: dict[str, Any] = {"grant_type": DEVICE_GRANT, "device_code": device_code,
                                **self._client(endpoints)}
        if pkce is not None:
            body["code_verifier"] = pkce.verifier
        return body

    # ------------------------------------------------------------------ steps a service may change

    async def finish(self, tokens: TokenSet, client: TokenClient,
                     endpoints: Endpoints) -> Account:
        """The account a sign-in (or an import) produced: by default the tokens as they
        are. Override to add what the service needs (an exchange, a project).

        :param client: calls the service's endpoints (``client.http`` for other calls).
        """
        return Account(tokens.credentials())

    async def renew(self, credentials: Mapping[str, Any], client: TokenClient,
                    endpoints: Endpoints) -> dict[str, Any]:
        """Renewed credentials for an account (complete: they replace the old set).

        :raises InvalidGrant: the account cannot be renewed any more (sign in again).
        :raises OAuthError: the renewal failed this time (tried again later).
        """
        previous = TokenSet.from_credentials(credentials)
        if not previous.refresh_token:
            raise InvalidGrant(f"{self.name}: no refresh token is kept for this account")
        tokens = await client.tokens(
            endpoints.token_url, self.refresh_request(endpoints, previous.refresh_token),
            encoding=self.refresh_encoding or self.token_encoding, previous=previous,
            headers=self.headers)
        return tokens.credentials()

    def parse_import(self, data: bytes, now: float) -> TokenSet:
        """The tokens in the official CLI's credentials file (its raw bytes).

        :param now: epoch seconds (for files that store a lifetime).
        :raises ValueError: the file does not hold usable credentials (say why).
        """
        raise OAuthError(f"{self.name} has no import", status=400, code="no_import")
