"""Bad start-up inputs: ``omniroute serve`` ends with one line on stderr and exit status 2.

Each case runs the installed ``omniroute`` command as a user would, with an
input that cannot be used: the configuration file, a flag, the data directory,
the secret key, the initial password, the database or the port.
"""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")
_CLEARED = ("OMNIROUTE_CONFIG", "OMNIROUTE_DATA_DIR", "OMNIROUTE_DISABLE_PLUGINS",
            "OMNIROUTE_PLUGINS", "OMNIROUTE_SECRET_KEY", "INITIAL_PASSWORD",
            "OMNIROUTE_REQUIRE_API_KEY", "REQUIRE_API_KEY", "OMNIROUTE_HOST", "OMNIROUTE_PORT",
            "OMNIROUTE_WORKERS", "OMNIROUTE_ALLOWED_HOSTS", "OMNIROUTE_CORS_ORIGINS")
KEY_A = base64.urlsafe_b64encode(b"a" * 32).decode()
KEY_B = base64.urlsafe_b64encode(b"b" * 32).decode()


def _omniroute(*args: str, env: dict[str, str] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    full["OMNIROUTE_LOG_LEVEL"] = "warning"  # only what goes wrong reaches stderr
    full.update(env or {})
    return subprocess.run([OMNIROUTE_BIN, *args], env=full, capture_output=True, text=True,
                          timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(done: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit status 2 and exactly one line on stderr, ``Error: ...`` holding ``message``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert message in lines[0], lines[0]


Setup = Callable[[Path], tuple[list[str], dict[str, str]]]


def _config_file(text: str) -> Setup:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        (tmp / "omniroute.toml").write_text(text)
        return ["--config", str(tmp / "omniroute.toml")], {}

    return setup


def _data_dir_is_a_file(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "afile").write_text("x")
    return ["--data-dir", str(tmp / "afile")], {}


def _data_dir_env_is_a_file(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "afile").write_text("x")
    return [], {"OMNIROUTE_DATA_DIR": str(tmp / "afile")}


def _data_dir_under_a_file(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "afile").write_text("x")
    return ["--data-dir", str(tmp / "afile" / "data")], {}


def _database_path_is_a_directory(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "data" / "omniroute.sqlite3").mkdir(parents=True)
    return ["--data-dir", str(tmp / "data")], {}


def _garbage_database(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "data").mkdir()
    (tmp / "data" / "omniroute.sqlite3").write_bytes(os.urandom(4096))
    return ["--data-dir", str(tmp / "data")], {}


def _database_from_a_newer_release(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "data").mkdir()
    with sqlite3.connect(tmp / "data" / "omniroute.sqlite3") as db:
        db.execute("PRAGMA user_version=999")
    return ["--data-dir", str(tmp / "data")], {}


def _damaged_key_file(tmp: Path) -> tuple[list[str], dict[str, str]]:
    (tmp / "data").mkdir()
    (tmp / "data" / "secret.key").write_text("not a key\n")
    return ["--data-dir", str(tmp / "data")], {}


def _env(**values: str) -> Setup:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        return ["--data-dir", str(tmp / "data")], values

    return setup


def _flags(*flags: str) -> Setup:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        return ["--data-dir", str(tmp / "data"), "serve", *flags], {}

    return setup


CASES: dict[str, tuple[Setup, str]] = {
    "password too short": (_env(INITIAL_PASSWORD="abc"),
                           "INITIAL_PASSWORD: the admin password must have at least 8 characters"),
    "config file missing": (lambda tmp: (["--config", str(tmp / "nope.toml")], {}),
                            "cannot read config file"),
    "config file is a directory": (lambda tmp: (["--config", str(tmp)], {}),
                                   "cannot read config file"),
    "config file not TOML": (_config_file("[server\nport = 1"), "cannot read config file"),
    "config unknown setting": (_config_file("[settings]\nno_such = 1\n"),
                               "unknown [settings] keys"),
    "config bad setting value": (_config_file("[settings]\nmax_attempts = 'many'\n"),
                                 "max_attempts"),
    "config host not a string": (_config_file("[server]\nhost = 5\n"),
                                 "host must be a non-empty string"),
    "config workers not a number": (_config_file("[server]\nworkers = 'many'\n"),
                                    "port and workers must be integers"),
    "config bad cors origin": (_config_file("[server]\ncors_origins = ['null']\n"),
                               "cors_origins: 'null' is not an origin"),
    "config bad allowed host": (_config_file("[server]\nallowed_hosts = ['a.example:80']\n"),
                                "allowed_hosts: 'a.example:80' is not a host name"),
    "env bad log level": (_env(OMNIROUTE_LOG_LEVEL="loud"), "log_level must be one of"),
    "flag port not a number": (_flags("--port", "abc"), "'abc' is not a valid integer"),
    "flag port out of range": (_flags("--port", "70000"), "port must be 0-65535"),
    "flag no workers": (_flags("--workers", "0"), "workers at least 1"),
    "flag unknown": (_flags("--bogus"), "No such option '--bogus'"),
    "flag bad log level": (_flags("--log-level", "loud"), "'loud' is not one of"),
    "flag host unknown": (_flags("--host", "no-such-host.invalid", "--port", "0"),
                          "cannot listen on no-such-host.invalid:0"),
    "data dir is a file": (_data_dir_is_a_file, "is a file, not a directory"),
    "data dir from env is a file": (_data_dir_env_is_a_file, "is a file, not a directory"),
    "data dir under a file": (_data_dir_under_a_file, "cannot create the data directory"),
    "data dir cannot be created": (
        lambda tmp: (["--data-dir", "/sys/omniroute-test/data"], {}),
        "cannot create the data directory /sys/omniroute-test/data"),
    "database path is a directory": (_database_path_is_a_directory, "cannot open the database"),
    "database is garbage": (_garbage_database, "is not an omniroute database"),
    "database from a newer release": (_database_from_a_newer_release, "upgrade omniroute"),
    "secret key not base64": (_env(OMNIROUTE_SECRET_KEY="%%%"), "OMNIROUTE_SECRET_KEY"),
    "secret key too short": (_env(OMNIROUTE_SECRET_KEY="YWJj"), "must decode to 32 bytes"),
    "key file damaged": (_damaged_key_file, "secret.key is damaged"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_start_up_input_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    setup, message = CASES[name]
    args, env = setup(tmp_path)
    if "--data-dir" not in args and "OMNIROUTE_DATA_DIR" not in env:
        args = ["--data-dir", str(tmp_path / "data"), *args]  # never the user's ~/.omniroute
    if "serve" not in args:
        args = [*args, "serve", "--port", str(_free_port())]
    done = _omniroute(*args, env=env)
    refused(done, message)
    assert "serving on" not in done.stderr


def test_a_key_that_does_not_decrypt_the_stored_credentials(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    added = _omniroute("--data-dir", data, "providers", "add", "--preset", "groq",
                       "--api-key", "gsk_test", env={"OMNIROUTE_SECRET_KEY": KEY_A})
    assert added.returncode == 0, added.stderr
    done = _omniroute("--data-dir", data, "serve", "--port", str(_free_port()),
                      env={"OMNIROUTE_SECRET_KEY": KEY_B})
    refused(done, "the stored provider credentials cannot be decrypted with the key from "
                  "OMNIROUTE_SECRET_KEY")
    listed = _omniroute("--data-dir", data, "providers", "list",
                        env={"OMNIROUTE_SECRET_KEY": KEY_B})
    refused(listed, "credentials cannot be decrypted with this key")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _omniroute("--data-dir", str(tmp_path / "data"), "serve", "--port", str(port),
                          "--workers", workers)
    refused(done, f"cannot listen on 127.0.0.1:{port}: address already in use")
    # the check comes first: a generated password is not printed (and lost) on the way
    assert "shown once" not in done.stderr


def test_the_password_is_still_printed_at_the_next_good_start_after_a_failure(
        tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    refused(_omniroute("--data-dir", data, "serve", "--port", "1", "--host", "192.0.2.1"),
            "cannot listen on 192.0.2.1:1")
    proc = subprocess.Popen(
        [OMNIROUTE_BIN, "--data-dir", data, "serve", "--port", str(_free_port())],
        env={k: v for k, v in os.environ.items() if k not in _CLEARED},
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = ""
        while "serving on" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        assert "admin password (shown once)" in seen
    finally:
        proc.terminate()
        proc.wait(timeout=15)
