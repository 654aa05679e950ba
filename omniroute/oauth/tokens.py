"""A typed token set, and how it is kept in a connection's (encrypted) credentials.

Every OAuth provider type keeps the same credential fields, so the life cycle
(renewal ahead of expiry, the background keeper, ``providers list``) reads any of
them the same way:

================== ============================================================
``access_token``   the bearer token the upstream takes
``refresh_token``  what renews it (None: it cannot be renewed)
``expires_at``     when the access token lapses, epoch seconds (None: unknown)
``refresh_expires_at`` when the refresh token lapses, epoch seconds (None: unknown)
``token_type``     usually ``Bearer``
``scope``          the granted scopes, space separated
``id_token``       an OpenID Connect ID token, when the service sends one
``extra``          the service's other fields (account, organization, plan...)
================== ============================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: the credential fields of every OAuth connection (see the module docstring)
TOKEN_FIELDS = ("access_token", "refresh_token", "expires_at", "refresh_expires_at",
                "token_type", "scope", "id_token", "extra")
#: the answer fields RFC 6749 (and OpenID Connect) define; the rest go to ``extra``
_STANDARD = frozenset({"access_token", "refresh_token", "expires_in", "token_type", "scope",
                       "id_token", "refresh_token_expires_in", "expires_at"})


def _seconds(value: Any) -> float | None:
    """A positive finite number of seconds, else None (strings of digits are accepted)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class TokenSet:
    """Tokens from a token endpoint (or an import); secrets stay out of ``repr``."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    refresh_expires_at: float | None = None
    token_type: str | None = None
    scope: str | None = None
    id_token: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_response(
        cls, data: Mapping[str, Any], *, now: float, previous: TokenSet | None = None
    ) -> TokenSet:
        """The token set of a token endpoint's JSON answer (RFC 6749 section 5.1).

        :param now: epoch seconds when the answer arrived (``expires_in`` counts from it).
        :param previous: the set being renewed: a renewal that sends no new refresh
            token keeps the old one (RFC 6749 section 6), and the old ``extra`` fields
            stay under the new ones.
        :raises ValueError: the answer has no ``access_token``.
        """
        access = _text(data.get("access_token"))
        if access is None:
            raise ValueError("the answer has no access_token")
        refresh = _text(data.get("refresh_token"))
        lifetime = _seconds(data.get("expires_in"))
        expires_at = now + lifetime if lifetime is not None else _seconds(data.get("expires_at"))
        refresh_life = _seconds(data.get("refresh_token_expires_in"))
        refresh_expires_at = now + refresh_life if refresh_life is not None else None
        extra = {k: v for k, v in data.items() if k not in _STANDARD}
        if previous is not None:
            if refresh is None:  # not rotated: the old one, and its lapse, still hold
                refresh = previous.refresh_token
                if refresh_expires_at is None:
                    refresh_expires_at = previous.refresh_expires_at
            extra = {**previous.extra, **extra}
        return cls(
            access_token=access, refresh_token=refresh, expires_at=expires_at,
            refresh_expires_at=refresh_expires_at,
            token_type=_text(data.get("token_type")) or (previous.token_type if previous
                                                         else None),
            scope=_text(data.get("scope")) or (previous.scope if previous else None),
            id_token=_text(data.get("id_token")) or (previous.id_token if previous else None),
            extra=extra)

    @classmethod
    def from_credentials(cls, credentials: Mapping[str, Any]) -> TokenSet:
        """The set kept in a connection's credentials (:meth:`credentials` reversed)."""
        extra = credentials.get("extra")
        return cls(
            access_token=str(credentials.get("access_token") or ""),
            refresh_token=_text(credentials.get("refresh_token")),
            expires_at=_seconds(credentials.get("expires_at")),
            refresh_expires_at=_seconds(credentials.get("refresh_expires_at")),
            token_type=_text(credentials.get("token_type")),
            scope=_text(credentials.get("scope")),
            id_token=_text(credentials.get("id_token")),
            extra=dict(extra) if isinstance(extra, Mapping) else {})

    def credentials(self) -> dict[str, Any]:
        """The credential fields to keep (fields without a value are left out)."""
        values: dict[str, Any] = {
            "access_token": self.access_token, "refresh_token": self.refresh_token,
            "expires_at": self.expires_at, "refresh_expires_at": self.refresh_expires_at,
            "token_type": self.token_type, "scope": self.scope, "id_token": self.id_token,
            "extra": dict(self.extra) or None}
        return {k: v for k, v in values.items() if v is not None}

    def with_extra(self, **fields: Any) -> TokenSet:
        """A copy with more ``extra`` fields (a service's account details)."""
        return replace(self, extra={**self.extra, **fields})

    def expires_in(self, now: float) -> float | None:
        """Seconds until the access token lapses (negative: lapsed); None: unknown."""
        return None if self.expires_at is None else self.expires_at - now
