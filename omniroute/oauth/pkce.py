"""PKCE (RFC 7636, method ``S256``) and the ``state`` of an authorization request.

The verifier is 32 random bytes in base64url without padding (43 characters, inside
the 43..128 the RFC allows); the challenge is the base64url SHA-256 of the verifier.
Neither is ever shown in a ``repr`` (a log line of the object leaks nothing).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7636 appendix A)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def challenge_of(verifier: str) -> str:
    """The ``S256`` code challenge of ``verifier``."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class Pkce:
    """One PKCE pair: the verifier stays here, the challenge goes in the URL."""

    verifier: str = field(repr=False)
    challenge: str = field(repr=False)
    method: str = "S256"

    @classmethod
    def new(cls) -> Pkce:
        verifier = b64url(secrets.token_bytes(32))
        return cls(verifier, challenge_of(verifier))


def new_state() -> str:
    """A fresh ``state``: 24 random bytes, URL-safe (it also names a pending sign-in)."""
    return secrets.token_urlsafe(24)
