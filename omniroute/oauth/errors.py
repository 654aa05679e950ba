"""The OAuth errors, typed: each carries the status the management API answers with.

A token endpoint's refusal (RFC 6749 section 5.2, RFC 8628 section 3.5) becomes one of
these by its ``error`` code. Only :class:`InvalidGrant` says a refresh token will never
work again (revoked, expired, already spent): the account then needs a new sign-in.
Messages never hold a token (the endpoint's description is scrubbed and cut short).
"""

from __future__ import annotations

from omniroute.errors import GatewayError


class OAuthError(GatewayError):
    """A sign-in or a renewal failed; ``error`` is the endpoint's RFC 6749 code, if any."""

    status, type, code = 502, "api_error", "oauth_error"

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None,
                 code: str | None = None, upstream_status: int | None = None) -> None:
        super().__init__(message, status=status, code=code)
        #: the ``error`` field of the endpoint's answer (``invalid_grant``...)
        self.error = error
        #: the HTTP status the endpoint answered with (None: it did not answer)
        self.upstream_status = upstream_status


class InvalidGrant(OAuthError):
    """The code or the refresh token was refused for good (RFC 6749 ``invalid_grant``)."""

    status, type, code = 400, "invalid_request_error", "invalid_grant"


class AccessDenied(OAuthError):
    """The user (or the service) refused the authorization."""

    status, type, code = 403, "permission_error", "access_denied"


class AuthorizationPending(OAuthError):
    """Device flow: the user has not finished yet; poll again after the interval."""

    status, type, code = 409, "invalid_request_error", "authorization_pending"


class SlowDown(AuthorizationPending):
    """Device flow: polling too fast; the interval grows by 5 seconds (RFC 8628 3.5)."""

    code = "slow_down"


class ExpiredToken(OAuthError):
    """The device code, or the sign-in itself, expired before the user finished."""

    status, type, code = 410, "invalid_request_error", "expired_token"


class StateMismatch(OAuthError):
    """The pasted or redirected ``state`` is not the one this sign-in sent."""

    status, type, code = 400, "invalid_request_error", "state_mismatch"


class OAuthUnavailable(OAuthError):
    """The endpoint could not be reached, timed out or failed (5xx): worth retrying later."""

    status, type, code = 502, "api_error", "oauth_unavailable"
