"""Configuration: the TOML file, the environment and flags, stored settings, URLs shown redacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omniroute.config import Config, ConfigError, Settings, load_config
from omniroute.testing import make_test_config, start_harness


def test_config_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "custom.toml"
    toml.write_text('[server]\nhost = "0.0.0.0"\nport = 1111\nworkers = 2\nlog_level = "DEBUG"\n'
                    '[settings]\nidle_timeout = 30\nrequire_api_key = true\n')
    env_dir = tmp_path / "env-dir"

    defaults = load_config(environ={"OMNIROUTE_DATA_DIR": str(tmp_path / "empty")})
    assert (defaults.host, defaults.port, defaults.workers, defaults.log_level) == (
        "127.0.0.1", 20128, 1, "info")
    assert defaults.settings_defaults == {} and defaults.settings_env == {}

    from_toml = load_config(config_file=toml, environ={})
    assert (from_toml.host, from_toml.port, from_toml.workers, from_toml.log_level) == (
        "0.0.0.0", 1111, 2, "debug")
    assert from_toml.settings_defaults == {"idle_timeout": 30.0, "require_api_key": True}

    env = {"OMNIROUTE_PORT": "2222", "OMNIROUTE_HOST": "::1", "OMNIROUTE_DATA_DIR": str(env_dir),
           "OMNIROUTE_IDLE_TIMEOUT": "45", "REQUIRE_API_KEY": "false"}
    from_env = load_config(config_file=toml, environ=env)
    assert (from_env.host, from_env.port, from_env.workers) == ("::1", 2222, 2)
    assert from_env.data_dir == env_dir
    assert from_env.settings_env == {"idle_timeout": 45.0, "require_api_key": False}

    flags = load_config(config_file=toml, environ=env, port=3333, workers=None,
                        data_dir=str(tmp_path / "flag"))
    assert (flags.port, flags.workers) == (3333, 2)  # None means "not given"
    assert flags.data_dir == tmp_path / "flag"

    # OMNIROUTE_CONFIG and <data dir>/omniroute.toml are found without --config
    assert load_config(environ={"OMNIROUTE_CONFIG": str(toml)}).port == 1111
    (tmp_path / "flag").mkdir()
    (tmp_path / "flag" / "omniroute.toml").write_text("[server]\nport = 4444\n")
    assert load_config(environ={}, data_dir=str(tmp_path / "flag")).port == 4444


@pytest.mark.parametrize("toml, env, message", [
    ("[settings]\nmax_body_bytes = -1\n", {}, "max_body_bytes: expected a positive number"),
    ("[settings]\nno_such_setting = 1\n", {}, "unknown [settings] keys"),
    ("[settings]\nrequire_login = \"maybe\"\n", {}, "require_login: expected a boolean"),
    ("", {"OMNIROUTE_REQUIRE_API_KEY": "perhaps"}, "environment: require_api_key"),
    ("", {"OMNIROUTE_IDLE_TIMEOUT": "soon"}, "idle_timeout"),
    ("", {"OMNIROUTE_PORT": "http"}, "port and workers must be integers"),
    ("", {"OMNIROUTE_PORT": "70000"}, "port must be 0-65535"),
    ("", {"OMNIROUTE_WORKERS": "0"}, "workers at least 1"),
    ("[server\n", {}, "cannot read config file"),
])
def test_invalid_config_is_a_config_error(tmp_path: Path, toml: str, env: dict[str, str],
                                          message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, environ=env)
    assert message in str(info.value)


async def test_settings_precedence_in_a_running_gateway(aiohttp_client: Any,
                                                        tmp_path: Path) -> None:
    config = make_test_config(tmp_path).replace(
        settings_defaults={"idle_timeout": 30.0, "connect_timeout": 3.0, "models_cache_ttl": 5.0},
        settings_env={"models_cache_ttl": 9.0},
    )
    h = await start_harness(aiohttp_client, config)
    gateway = h.catalog
    assert gateway.settings.first_byte_timeout == Settings().first_byte_timeout  # default
    assert gateway.settings.idle_timeout == 30.0  # TOML beats the default
    assert gateway.settings.models_cache_ttl == 9.0  # env beats TOML

    gateway.apply_settings({"idle_timeout": 40, "models_cache_ttl": 1, "unknown": 1})
    assert gateway.settings.idle_timeout == 40.0  # stored beats TOML
    assert gateway.timeouts.idle == 40.0 and h.gateway.context.timeouts.idle == 40.0
    assert gateway.settings.connect_timeout == 3.0
    assert gateway.settings.models_cache_ttl == 9.0  # env pins it
    gateway.apply_settings({"idle_timeout": "not a number"})  # bad stored value: ignored
    assert gateway.settings.idle_timeout == 30.0

    resp = await h.client.patch("/api/settings", json={"idle_timeout": 50, "request_log": "off"},
                                headers=h.admin_headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["settings"]["idle_timeout"] == 50.0
    assert body["settings"]["request_log"] is False and h.log.enabled is False
    assert body["stored"] == {"idle_timeout": 50.0, "request_log": False}
    assert body["pinned_by_environment"] == ["models_cache_ttl"]
    assert gateway.settings.connect_timeout == 3.0  # PATCH keeps what it did not name

    resp = await h.client.put("/api/settings", json={"connect_timeout": 4},
                              headers=h.admin_headers)
    body = await resp.json()
    assert body["stored"] == {"connect_timeout": 4.0}  # PUT replaces
    assert body["settings"]["idle_timeout"] == 30.0  # back to the TOML value
    # the admin password is an internal setting: PUT keeps it, login still works
    resp = await h.client.post("/api/auth/login", json={"password": "test-password-123"})
    assert resp.status == 200


@pytest.mark.parametrize("values, message", [
    ({"max_body_bytes": "lots"}, "max_body_bytes"),
    ({"max_body_bytes": 0}, "positive"),
    ({"require_api_key": "maybe"}, "require_api_key: expected a boolean"),
    ({"idle_timeout": True}, "idle_timeout: expected a number"),
    ({"no_such_setting": 1}, "unknown setting 'no_such_setting'"),
    ({"_admin_password": "scrypt$1$1$1$AA==$AA=="}, "unknown setting '_admin_password'"),
])
async def test_invalid_settings_are_refused(omniroute: Any, values: dict[str, Any],
                                            message: str) -> None:
    before = await omniroute.store.get_settings()
    resp = await omniroute.client.patch("/api/settings", json={"idle_timeout": 7, **values},
                                        headers=omniroute.admin_headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_setting" and message in error["message"]
    assert await omniroute.store.get_settings() == before  # nothing half-applied


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
    ("postgresql://app:s3cret@db/omni?sslmode=require",
     "postgresql://app:***@db/omni?sslmode=require"),
    ("postgresql://app@db/omni?password=s3cret", "postgresql://app@db/omni?password=***"),
    ("postgresql://app@db/omni?sslmode=verify-full&SSLPassword=s3cret&pool_size=5",
     "postgresql://app@db/omni?sslmode=verify-full&SSLPassword=***&pool_size=5"),
    ("postgresql://app:a@db/omni?password=s3cret&sslpassword=s3cret#x",
     "postgresql://app:***@db/omni?password=***&sslpassword=***#x"),
])
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    from omniroute.config import redact_url

    assert redact_url(url) == shown


def test_config_is_frozen(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    assert config.replace(port=5).port == 5 and config.port == 20128
    assert config.db_path == tmp_path / "omniroute.sqlite3"
