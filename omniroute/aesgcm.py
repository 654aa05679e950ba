"""AES-256-GCM for the vault: OpenSSL's, through the libcrypto Python's ``ssl`` loaded.

    box = aesgcm(key)                        # 32 bytes
    sealed = box.encrypt(nonce, data, aad)   # ciphertext + 16-byte tag
    box.decrypt(nonce, sealed, aad)          # raises InvalidTag when anything differs

Every aiohttp process has OpenSSL's libcrypto mapped already: CPython's ``_ssl``
links it. Its EVP interface does AES-256-GCM at no further memory cost, where
``cryptography``'s binding (a Rust extension with its own copy of OpenSSL) costs
6.6 MiB of resident memory for good. Nothing is implemented here but the calls:
the cipher is OpenSSL's, as it is inside ``cryptography``.

Where ``_ssl``'s OpenSSL cannot be reached that way (Windows, where a module's
handle does not resolve its dependencies' symbols; a build without ``_ssl``),
``cryptography``'s ``AESGCM`` is used: both write the same bytes (the nonce given,
the ciphertext, then the tag), and ``tests/test_aesgcm.py`` checks each opens the
other's.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Protocol

__all__ = ["AEAD", "InvalidTag", "aesgcm"]

TAG_SIZE = 16
# EVP_CIPHER_CTX_ctrl's GCM commands (openssl/evp.h)
_GCM_SET_IVLEN, _GCM_GET_TAG, _GCM_SET_TAG = 0x9, 0x10, 0x11


class InvalidTag(Exception):
    """The data, the nonce, the associated data or the key is not the one sealed with."""


class AEAD(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes: ...


def aesgcm(key: bytes) -> AEAD:
    """AES-256-GCM with ``key`` (32 bytes): OpenSSL's through ``_ssl``, else
    ``cryptography``'s."""
    if len(key) != 32:
        raise ValueError("an AES-256 key is 32 bytes")
    if _libcrypto() is not None:
        return OpenSSLGCM(key)
    return CryptographyGCM(key)


@functools.cache
def _libcrypto() -> Any:
    """The libcrypto ``_ssl`` is linked with, its EVP functions typed; None when it
    cannot be reached."""
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # already loaded: the same handle, its libcrypto
        p, i = ctypes.c_void_p, ctypes.c_int
        for name, restype, argtypes in [
            ("EVP_CIPHER_CTX_new", p, []),
            ("EVP_CIPHER_CTX_free", None, [p]),
            ("EVP_aes_256_gcm", p, []),
            ("EVP_EncryptInit_ex", i, [p, p, p, p, p]),
            ("EVP_DecryptInit_ex", i, [p, p, p, p, p]),
            ("EVP_EncryptUpdate", i, [p, p, ctypes.POINTER(i), p, i]),
            ("EVP_DecryptUpdate", i, [p, p, ctypes.POINTER(i), p, i]),
            ("EVP_EncryptFinal_ex", i, [p, p, ctypes.POINTER(i)]),
            ("EVP_DecryptFinal_ex", i, [p, p, ctypes.POINTER(i)]),
            ("EVP_CIPHER_CTX_ctrl", i, [p, i, i, p]),
        ]:
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (ImportError, OSError, AttributeError):
        return None
    return lib


class OpenSSLGCM:
    """AES-256-GCM through OpenSSL's EVP interface (one cipher context per call)."""

    def __init__(self, key: bytes) -> None:
        self._key = bytes(key)
        self._lib = _libcrypto()

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        lib = self._lib
        ctx = self._start(lib.EVP_EncryptInit_ex, nonce)
        try:
            out = ctypes.create_string_buffer(len(data) + TAG_SIZE)
            written = self._update(lib.EVP_EncryptUpdate, ctx, out, data, aad)
            rest = ctypes.c_int(0)
            _ok(lib.EVP_EncryptFinal_ex(ctx, ctypes.addressof(out) + written,
                                        ctypes.byref(rest)))
            tag = ctypes.create_string_buffer(TAG_SIZE)
            _ok(lib.EVP_CIPHER_CTX_ctrl(ctx, _GCM_GET_TAG, TAG_SIZE, tag))
            return out.raw[:written + rest.value] + tag.raw
        finally:
            lib.EVP_CIPHER_CTX_free(ctx)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if len(data) < TAG_SIZE:
            raise InvalidTag()
        lib = self._lib
        sealed, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
        ctx = self._start(lib.EVP_DecryptInit_ex, nonce)
        try:
            out = ctypes.create_string_buffer(len(sealed) + TAG_SIZE)
            written = self._update(lib.EVP_DecryptUpdate, ctx, out, sealed, aad)
            _ok(lib.EVP_CIPHER_CTX_ctrl(ctx, _GCM_SET_TAG, TAG_SIZE, tag))
            rest = ctypes.c_int(0)
            if lib.EVP_DecryptFinal_ex(ctx, ctypes.addressof(out) + written,
                                       ctypes.byref(rest)) != 1:
                raise InvalidTag()
            return out.raw[:written + rest.value]
        finally:
            lib.EVP_CIPHER_CTX_free(ctx)

    def _start(self, init: Any, nonce: bytes) -> Any:
        """A cipher context set up with the key and ``nonce`` (free it)."""
        if not 8 <= len(nonce) <= 128:
            raise ValueError("the nonce must be 8 to 128 bytes")
        lib = self._lib
        ctx = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("OpenSSL could not make a cipher context")
        try:
            _ok(init(ctx, lib.EVP_aes_256_gcm(), None, None, None))
            _ok(lib.EVP_CIPHER_CTX_ctrl(ctx, _GCM_SET_IVLEN, len(nonce), None))
            _ok(init(ctx, None, None, self._key, nonce))
        except BaseException:
            lib.EVP_CIPHER_CTX_free(ctx)
            raise
        return ctx

    @staticmethod
    def _update(update: Any, ctx: Any, out: Any, data: bytes, aad: bytes) -> int:
        """Feed the associated data, then ``data`` into ``out``; the bytes written."""
        written = ctypes.c_int(0)
        if aad:
            _ok(update(ctx, None, ctypes.byref(written), aad, len(aad)))
        written.value = 0
        if data:
            _ok(update(ctx, out, ctypes.byref(written), data, len(data)))
        return written.value


def _ok(result: int) -> None:
    if result != 1:
        raise RuntimeError("OpenSSL refused an AES-GCM step")


class CryptographyGCM:
    """AES-256-GCM from ``cryptography`` (imported on first use)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag as Refused

        try:
            return self._aead.decrypt(nonce, data, aad)
        except Refused:
            raise InvalidTag() from None
