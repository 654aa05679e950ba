"""Signing in to subscription services with OAuth, and keeping their tokens fresh.

The shared core every subscription provider type uses (one module per concept):

* :mod:`~omniroute.oauth.service` — :class:`OAuthService`, the description a plugin
  registers with ``register_oauth_services``: client id, endpoints (each overridable
  in a connection's settings), scopes, flow; and the steps a service may change.
* :mod:`~omniroute.oauth.pkce` — PKCE (S256) and ``state``.
* :mod:`~omniroute.oauth.client` — the token-endpoint client (JSON or form bodies,
  typed answers, typed errors: :mod:`~omniroute.oauth.errors`).
* :mod:`~omniroute.oauth.tokens` — :class:`TokenSet`, as kept in credentials.
* :mod:`~omniroute.oauth.paste`, :mod:`~omniroute.oauth.loopback`,
  :mod:`~omniroute.oauth.device` — the three ways an authorization comes back: a
  pasted ``code#state``, a redirect to a listener on this machine, a device code.
* :mod:`~omniroute.oauth.signin` — one sign-in from start to tokens (CLI and API).
* :mod:`~omniroute.oauth.accounts` — tokens to a stored connection; imports.
* :mod:`~omniroute.oauth.provider` — :class:`OAuthProvider`, the base of subscription
  provider types (renewal ahead of expiry, on a 401, "needs sign-in");
  :mod:`~omniroute.oauth.keeper` renews idle accounts in the background.

A sketch of a service module (one module: the service, its provider type, hooks)::

    SERVICE = OAuthService(name="acme", provider_type="acme-sub", flow="device",
                           client_id="...", device_url="https://acme/device",
                           token_url="https://acme/token", scopes=("chat",))

    @hookimpl
    def register_oauth_services(register):
        register(SERVICE)
"""

from omniroute.oauth.accounts import (
    account_state,
    find_import,
    find_service,
    read_import,
    save_account,
)
from omniroute.oauth.client import TokenClient
from omniroute.oauth.device import DeviceCode, DevicePoll, start_device
from omniroute.oauth.errors import (
    AccessDenied,
    AuthorizationPending,
    ExpiredToken,
    InvalidGrant,
    OAuthError,
    OAuthUnavailable,
    SlowDown,
    StateMismatch,
)
from omniroute.oauth.loopback import LoopbackListener, listen_address
from omniroute.oauth.paste import parse_pasted
from omniroute.oauth.pkce import Pkce, new_state
from omniroute.oauth.provider import OAuthProvider
from omniroute.oauth.service import FLOWS, Account, Endpoints, OAuthService
from omniroute.oauth.signin import SignIn, SignIns
from omniroute.oauth.tokens import TOKEN_FIELDS, TokenSet

__all__ = [
    "FLOWS",
    "TOKEN_FIELDS",
    "AccessDenied",
    "Account",
    "AuthorizationPending",
    "DeviceCode",
    "DevicePoll",
    "Endpoints",
    "ExpiredToken",
    "InvalidGrant",
    "LoopbackListener",
    "OAuthError",
    "OAuthProvider",
    "OAuthService",
    "OAuthUnavailable",
    "Pkce",
    "SignIn",
    "SignIns",
    "SlowDown",
    "StateMismatch",
    "TokenClient",
    "TokenSet",
    "account_state",
    "find_import",
    "find_service",
    "listen_address",
    "new_state",
    "parse_pasted",
    "read_import",
    "save_account",
    "start_device",
]
