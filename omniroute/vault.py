"""Encryption at rest for provider credentials, and masking for display.

AES-256-GCM, OpenSSL's (:mod:`omniroute.aesgcm`: through the libcrypto Python's
``ssl`` module loaded, else ``cryptography``'s; hand-rolled crypto would be worse
than either). The key comes from ``OMNIROUTE_SECRET_KEY`` or from
``<data dir>/secret.key``, created on first use with 0600 permissions.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orjson

from omniroute.aesgcm import InvalidTag, aesgcm

KEY_FILE = "secret.key"
_VERSION = b"\x01"


class VaultError(Exception):
    """Stored credentials cannot be decrypted (wrong or missing key)."""


class Vault:
    """Encrypts and decrypts JSON-able credential dicts."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the vault key must be 32 bytes")
        self._aead = aesgcm(key)

    @classmethod
    def open(cls, data_dir: Path, key: bytes | None = None) -> Vault:
        """Use ``key``, else the data directory's key file, creating it if absent."""
        if key is not None:
            return cls(key)
        path = data_dir / KEY_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            raw = os.urandom(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.urlsafe_b64encode(raw).decode() + "\n")
            return cls(raw)
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        try:
            return cls(base64.urlsafe_b64decode(text))
        except ValueError:  # not base64, or not 32 bytes
            raise VaultError(f"the key file {path} is damaged: it must hold the base64 of "
                             "32 bytes (restore it from a backup)") from None

    def encrypt(self, data: dict[str, Any], *, context: str) -> bytes:
        """Encrypt ``data``; ``context`` (e.g. the connection id) is authenticated too."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, orjson.dumps(data), context.encode())

    def decrypt(self, blob: bytes, *, context: str) -> dict[str, Any]:
        if not blob:
            return {}
        if blob[:1] != _VERSION:
            raise VaultError("unknown credential format")
        try:
            plain = self._aead.decrypt(blob[1:13], blob[13:], context.encode())
        except InvalidTag:
            raise VaultError("credentials cannot be decrypted with this key") from None
        return orjson.loads(plain)


def mask(secret: str | None) -> str | None:
    """Show enough of a secret to recognise it, never enough to use it."""
    if not secret:
        return None
    if len(secret) <= 8:
        return "*" * len(secret)
    return f"{secret[:4]}…{secret[-4:]}" if len(secret) >= 20 else f"{secret[:2]}…{secret[-2:]}"
