"""The vault: encrypted credentials, its key file or key from the environment, masking."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from storage_support import KEY

from omniroute.config import ConfigError, load_config
from omniroute.vault import KEY_FILE, Vault, VaultError, mask


def test_vault_round_trip_and_wrong_key() -> None:
    vault = Vault(KEY)
    blob = vault.encrypt({"api_key": "sk-secret-value", "n": 1}, context="conn_1")
    assert b"sk-secret-value" not in blob
    assert vault.decrypt(blob, context="conn_1") == {"api_key": "sk-secret-value", "n": 1}
    assert vault.encrypt({"a": 1}, context="c") != vault.encrypt({"a": 1}, context="c")  # nonce
    with pytest.raises(VaultError):
        Vault(b"x" * 32).decrypt(blob, context="conn_1")
    with pytest.raises(VaultError):  # the context is authenticated: no swapping rows
        vault.decrypt(blob, context="conn_2")
    with pytest.raises(VaultError):
        vault.decrypt(b"\x09" + blob[1:], context="conn_1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(VaultError):
        vault.decrypt(tampered, context="conn_1")
    assert vault.decrypt(b"", context="conn_1") == {}
    with pytest.raises(ValueError):
        Vault(b"short")


def test_vault_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    vault = Vault.open(data_dir)
    key_file = data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    blob = vault.encrypt({"api_key": "x"}, context="c")
    assert Vault.open(data_dir).decrypt(blob, context="c") == {"api_key": "x"}  # same key
    os.chmod(key_file, 0o644)
    Vault.open(data_dir)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # tightened again
    # another data directory has another key
    with pytest.raises(VaultError):
        Vault.open(tmp_path / "other").decrypt(blob, context="c")


def test_secret_key_from_environment(tmp_path: Path) -> None:
    raw = os.urandom(32)
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    config = load_config(environ={"OMNIROUTE_SECRET_KEY": encoded,
                                  "OMNIROUTE_DATA_DIR": str(tmp_path)})
    assert config.secret_key == raw
    vault = Vault.open(config.data_dir, config.secret_key)
    assert not (tmp_path / KEY_FILE).exists()  # no key file when the env gives the key
    assert Vault(raw).decrypt(vault.encrypt({"a": 1}, context="c"), context="c") == {"a": 1}
    for bad in (base64.urlsafe_b64encode(b"short").decode(), "!!!"):
        with pytest.raises(ConfigError, match="OMNIROUTE_SECRET_KEY"):
            load_config(environ={"OMNIROUTE_SECRET_KEY": bad, "OMNIROUTE_DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize("length", [1, 4, 8, 9, 12, 19, 20, 21, 40, 64, 164])
def test_mask_never_reveals_a_secret(length: int) -> None:
    secret = "".join(chr(ord("a") + i % 26) for i in range(length))
    shown = mask(secret)
    assert shown is not None and shown != secret and secret not in shown
    revealed = len(shown.replace("…", "").replace("*", ""))
    assert revealed <= length // 2
    assert mask(None) is None and mask("") is None
