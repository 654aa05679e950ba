"""The vault's AES-256-GCM: OpenSSL's through ``_ssl`` and ``cryptography``'s write the
same bytes, open each other's, refuse anything changed, and match the GCM spec's vectors."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from omniroute import aesgcm as aesgcm_module
from omniroute.aesgcm import CryptographyGCM, InvalidTag, OpenSSLGCM, aesgcm
from omniroute.vault import Vault, VaultError

KEY = bytes(range(32))


def boxes() -> list[Any]:
    return [OpenSSLGCM(KEY), CryptographyGCM(KEY)]


@pytest.mark.skipif(sys.platform != "linux", reason="_ssl's libcrypto is reached on Linux")
def test_openssl_through_ssl_is_used_where_it_can_be_reached() -> None:
    assert aesgcm_module._libcrypto() is not None
    assert isinstance(aesgcm(KEY), OpenSSLGCM)


def test_the_spec_vectors() -> None:
    # "The Galois/Counter Mode of Operation", test cases 13 and 14: zero key, zero 96-bit IV
    for box in [OpenSSLGCM(bytes(32)), CryptographyGCM(bytes(32))]:
        assert box.encrypt(bytes(12), b"", b"").hex() == "530f8afbc74536b9a963b4f1c4cb738b"
        assert box.encrypt(bytes(12), bytes(16), b"").hex() == (
            "cea7403d4d606b6e074ec5d3baf39d18" "d0d1c8a799996bf0265b98b5d48ab919")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 100_003])
@pytest.mark.parametrize("aad", [b"", b"conn-1", os.urandom(300)])
@pytest.mark.parametrize("nonce_size", [12, 8, 16])
def test_both_write_the_same_bytes_and_open_each_others(size: int, aad: bytes,
                                                       nonce_size: int) -> None:
    data, nonce = os.urandom(size), os.urandom(nonce_size)
    ours, theirs = boxes()
    sealed = ours.encrypt(nonce, data, aad)
    assert sealed == theirs.encrypt(nonce, data, aad)
    assert len(sealed) == size + 16
    assert ours.decrypt(nonce, sealed, aad) == data == theirs.decrypt(nonce, sealed, aad)


@pytest.mark.parametrize("box", boxes(), ids=["openssl", "cryptography"])
def test_anything_changed_is_refused(box: Any) -> None:
    nonce, data, aad = os.urandom(12), b'{"api_key": "sk-secret"}', b"conn-1"
    sealed = box.encrypt(nonce, data, aad)
    changed = [
        (nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad),   # the tag
        (nonce, bytes([sealed[0] ^ 0x80]) + sealed[1:], aad),  # the ciphertext
        (nonce, sealed, b"conn-2"),                            # the associated data
        (nonce, sealed, b""),
        (bytes([nonce[0] ^ 1]) + nonce[1:], sealed, aad),      # the nonce
        (nonce, sealed[:-1], aad),                             # cut short
        (nonce, sealed[:15], aad),                             # shorter than a tag
        (nonce, sealed + b"\x00", aad),
    ]
    for args in changed:
        with pytest.raises(InvalidTag):
            box.decrypt(*args)
    other = type(box)(bytes(32))  # another key
    with pytest.raises(InvalidTag):
        other.decrypt(nonce, sealed, aad)
    assert box.decrypt(nonce, sealed, aad) == data  # the original still opens


def test_a_bad_key_or_nonce_is_an_error_not_a_weak_cipher() -> None:
    with pytest.raises(ValueError):
        aesgcm(bytes(16))
    with pytest.raises(ValueError):
        OpenSSLGCM(KEY).encrypt(b"short", b"x", b"")


def test_a_vault_sealed_by_either_opens_with_the_other(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    with_openssl = Vault(KEY)
    monkeypatch.setattr(aesgcm_module, "_libcrypto", lambda: None)
    with_cryptography = Vault(KEY)
    assert isinstance(with_cryptography._aead, CryptographyGCM)
    secret = {"api_key": "sk-secret", "refresh_token": "r" * 500}
    assert with_cryptography.decrypt(with_openssl.encrypt(secret, context="c1"),
                                     context="c1") == secret
    assert with_openssl.decrypt(with_cryptography.encrypt(secret, context="c1"),
                                context="c1") == secret
    for vault in (with_openssl, with_cryptography):
        with pytest.raises(VaultError, match="cannot be decrypted"):
            vault.decrypt(with_openssl.encrypt(secret, context="c1"), context="c2")
