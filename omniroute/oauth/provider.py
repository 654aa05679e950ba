"""The base of subscription provider types: tokens kept fresh, renewals, "needs sign-in".

A subscription type subclasses :class:`OAuthProvider` first and its wire type second
(``class ClaudeCodeProvider(OAuthProvider, AnthropicProvider)``) and names its
:class:`~omniroute.oauth.service.OAuthService` in ``oauth``. It then gets:

* **renewal ahead of expiry**: before each upstream call (``chat``, ``count_tokens``,
  ``embed``, ``list_models``), an access token with less than the
  ``oauth_refresh_margin`` setting left is renewed first, through the gateway's
  :class:`~omniroute.credentials.Refresher` (one renewal per account however many
  requests arrive together);
* **renewal on a 401/403** (the data path asks :meth:`refresh_credentials` once);
* **persistence**: renewed tokens go through :meth:`~omniroute.providers.base.Provider.
  save_credentials` (encrypted in the database, atomically replacing the old set);
* **the terminal state**: a renewal refused for good (``invalid_grant``, or no refresh
  token) marks the account (:data:`~omniroute.credentials.SIGN_IN_REQUIRED` in its
  credentials) and raises :class:`~omniroute.credentials.SignInRequired`; routing then
  leaves it out until a new sign-in or import replaces the credentials.

The access token is read from the credentials at each call (:attr:`access_token`), so
a renewal needs no rebuild; a type that derives more from them overrides
:meth:`credentials_changed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from omniroute.credentials import SIGN_IN_REQUIRED, SignInRequired, sign_in_required
from omniroute.errors import UpstreamStatusError
from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import InvalidGrant
from omniroute.oauth.service import OAuthService
from omniroute.oauth.tokens import TOKEN_FIELDS
from omniroute.providers.base import Embeddings, Preset, Provider, UpstreamCall, UpstreamResponse

log = logging.getLogger(__name__)

#: seconds one token request may take (the refresher bounds the whole renewal too)
TOKEN_TIMEOUT = 30.0


class OAuthProvider(Provider):
    """A subscription account: see the module docstring."""

    auth_kind = "oauth"
    #: the service this type's accounts sign in with
    oauth: ClassVar[OAuthService]
    credential_fields: ClassVar[tuple[str, ...]] = (*TOKEN_FIELDS, SIGN_IN_REQUIRED)
    requires_credentials = True

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings, credentials = super().configure(settings, credentials, preset)
        cls.oauth.check_settings(settings)
        for name in ("access_token", "refresh_token"):
            value = credentials.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        if not credentials.get("access_token") and not credentials.get("refresh_token"):
            raise ValueError(f"{cls.type} connections need an access_token or a refresh_token "
                             f"(sign in with `omniroute login {cls.oauth.name}`)")
        for name in ("expires_at", "refresh_expires_at"):
            value = credentials.get(name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be epoch seconds")
        extra = credentials.get("extra")
        if extra is not None and not isinstance(extra, Mapping):
            raise ValueError("extra must be an object")
        return settings, credentials

    # ------------------------------------------------------------------ the tokens

    @property
    def access_token(self) -> str:
        """The current access token (renewals replace it in the credentials)."""
        return str(self.connection.credentials.get("access_token") or "")

    @property
    def sign_in_reason(self) -> str | None:
        """Why the account needs a new sign-in, or None."""
        return sign_in_required(self.connection.credentials)

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds the access token has left (None: unknown)."""
        expires = self.connection.credentials.get("expires_at")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            return None
        return float(expires) - (time.time() if now is None else now)

    def renewal_due(self, now: float, ahead: float) -> bool:
        """Whether the access token lapses within ``ahead`` seconds (and can be renewed)."""
        left = self.expires_in(now)
        return left is not None and left <= ahead and self.sign_in_reason is None

    def refresh_lapse_in(self, now: float) -> float | None:
        """Seconds until the refresh token itself lapses (None: unknown)."""
        lapse = self.connection.credentials.get("refresh_expires_at")
        if isinstance(lapse, bool) or not isinstance(lapse, (int, float)):
            return None
        return float(lapse) - now

    async def fresh(self) -> None:
        """Renew the access token first when it has less than the margin left.

        :raises UpstreamStatusError: 401 when the account needs a new sign-in: nothing
            is sent with tokens known to be dead, and the request moves on.
        """
        if self.renewal_due(time.time(), self.context.refresh_margin):
            await self.context.refresher.refresh(self)  # single-flight; never raises
        why = self.sign_in_reason
        if why is not None:
            raise UpstreamStatusError(
                f"The subscription account {self.connection.name!r} needs a new sign-in "
                f"(`omniroute login {self.oauth.name} --name {self.connection.name}`).",
                status=401, code="sign_in_required")

    # ------------------------------------------------------------------ calls

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        await self.fresh()
        return await super().chat(call)

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        await self.fresh()
        return await super().count_tokens(body, client_headers)

    async def embed(self, model: str, inputs: list[str], options: dict[str, Any]) -> Embeddings:
        await self.fresh()
        return await super().embed(model, inputs, options)

    async def list_models(self) -> list[str]:
        """The upstream's list (after a renewal when due); the configured models while
        the account needs a sign-in (nothing is asked with a dead token)."""
        if self.sign_in_reason is not None:
            return self.configured_models
        await self.fresh()
        return await super().list_models()

    # ------------------------------------------------------------------ renewals

    async def refresh_credentials(self) -> bool:
        """Renew through the service; mark the account when it is refused for good.

        :raises SignInRequired: the refresh token was refused (revoked, expired, spent),
            or there is none: the account is marked and needs a new sign-in.
        """
        conn = self.connection
        credentials = dict(conn.credentials)
        marked = sign_in_required(credentials)
        if marked is not None:
            raise SignInRequired(marked)
        endpoints = self.oauth.endpoints(conn.settings)
        client = TokenClient(self.context.http, timeout=TOKEN_TIMEOUT,
                             headers=self.oauth.headers)
        try:
            renewed = await self.oauth.renew(credentials, client, endpoints)
        except InvalidGrant as exc:
            if await self._renewed_elsewhere(credentials):
                log.info("the refresh token of %s was renewed by another process; the "
                         "reload brings the new one", conn.name)
                return False
            await self.save_credentials({**credentials, SIGN_IN_REQUIRED: {
                "reason": exc.message, "at": time.time()}})
            raise SignInRequired(f"{exc.message}; sign in again with `omniroute login "
                                 f"{self.oauth.name} --name {conn.name}`") from None
        await self.save_credentials(renewed)
        self.credentials_changed()
        return True

    async def _renewed_elsewhere(self, used: Mapping[str, Any]) -> bool:
        """Whether the stored refresh token is no longer the one just refused (another
        worker spent it first: a rotated token may be used only once)."""
        try:
            stored = await self.context.credentials.load(self.connection.id)
        except Exception:  # unknown: judge by the refusal alone (logged)
            log.exception("reading the stored credentials of %s failed", self.connection.name)
            return False
        return stored is not None and stored.get("refresh_token") != used.get("refresh_token")

    async def adopt_credentials(self, credentials: Mapping[str, Any]) -> bool:
        """Another instance renewed this account (``state_url``): use what it stored,
        without renewing again (the refresh token it spent may be single-use)."""
        if sign_in_required(credentials) is not None or not credentials.get("access_token"):
            return False
        self.connection.credentials = dict(credentials)
        self.credentials_changed()
        return True

    def credentials_changed(self) -> None:
        """The credentials were renewed: rebuild what was derived from them (override)."""
