"""Start-up configuration and runtime settings.

This is the only module that reads environment variables.

* :class:`Config` is fixed at start-up: where to listen, where the data lives,
  which plugins load. Precedence: defaults < TOML file < environment < CLI flags.
* :class:`Settings` can change while the gateway runs (``/api/settings``). They
  are stored in the database; precedence: defaults < TOML ``[settings]`` <
  stored values < environment (an environment value pins the setting).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 20128
#: the event loops ``serve`` can run on
LOOPS = ("auto", "uvloop", "asyncio")


class ConfigError(ValueError):
    """The configuration is invalid; the message says what to fix."""


def default_data_dir() -> Path:
    return Path.home() / ".omniroute"


#: the variables that say where the agent CLIs live on this machine (omniroute.clitools):
#: the home and PATH, XDG's config home, and the tools' own directory overrides
TOOL_ENV_VARS = ("HOME", "PATH", "XDG_CONFIG_HOME", "CLAUDE_CONFIG_DIR", "CODEX_HOME",
                 "GEMINI_CLI_HOME", "CONTINUE_GLOBAL_DIR")


def tool_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The :data:`TOOL_ENV_VARS` that are set (``HOME`` always: the user's home)."""
    env = os.environ if environ is None else environ
    found = {name: env[name] for name in TOOL_ENV_VARS if env.get(name)}
    found.setdefault("HOME", str(Path.home()))
    return found


@dataclass(frozen=True)
class Config:
    """Start-up configuration (immutable while the gateway runs)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    workers: int = 1
    #: event loop: "auto" (uvloop when installed, else asyncio), "uvloop" or "asyncio"
    loop: str = "auto"
    log_level: str = "info"
    secret_key: bytes | None = None  # credentials encryption key; else a key file
    initial_password: str | None = None
    disabled_plugins: tuple[str, ...] = ()
    allowed_plugins: tuple[str, ...] | None = None
    #: extra ``Host`` names the gateway answers to (see :mod:`omniroute.web.security`)
    allowed_hosts: tuple[str, ...] = ()
    #: web origins allowed to call the client API from a browser (CORS); empty: none
    cors_origins: tuple[str, ...] = ()
    settings_defaults: Mapping[str, Any] = field(default_factory=dict)
    settings_env: Mapping[str, Any] = field(default_factory=dict)
    #: where state shared between instances lives (``redis://host:6379/0``; a plugin
    #: registers the backend for the URL's scheme, ``register_state_backends``); None:
    #: this process's memory, as with one instance
    state_url: str | None = None
    #: where the configuration and usage live (``postgresql://user@host/db``; a plugin
    #: registers the backend for the URL's scheme, ``register_database_backends``); None:
    #: the SQLite file in the data directory (:attr:`db_path`)
    database_url: str | None = None
    #: prometheus-client's multiprocess directory: set by ``serve`` for ``--workers`` > 1
    #: (a fresh one per run, also exported as ``PROMETHEUS_MULTIPROC_DIR`` to the workers)
    metrics_dir: Path | None = None
    #: where the agent CLIs live (``omniroute connect``, ``/api/cli-tools``): the
    #: :data:`TOOL_ENV_VARS` of the environment the configuration was read in
    tool_env: Mapping[str, str] = field(default_factory=tool_environ)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "omniroute.sqlite3"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _names(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = _csv(value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return [v.strip().lower() for v in value if v.strip()]


_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]|\*")
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


def host_names(value: Any) -> tuple[str, ...]:
    """``allowed_hosts`` entries: ``name``, ``*.domain`` (its subdomains) or ``*`` (any).

    Names are compared without the port, in lower case; an IPv6 address may be
    given with or without its brackets.
    """
    out = []
    for given in _names("allowed_hosts", value):
        name = given.rstrip(".")
        try:
            if ipaddress.ip_address(name).version == 6:
                name = f"[{name}]"  # as it appears in a Host header
        except ValueError:
            pass
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(f"allowed_hosts: {given!r} is not a host name (give names like "
                              "'gateway.example.com' or '*.example.com', without a port)")
        out.append(name)
    return tuple(out)


def web_origins(value: Any) -> tuple[str, ...]:
    """``cors_origins`` entries: ``scheme://host[:port]`` as browsers send them, or ``*``."""
    out = []
    for origin in _names("cors_origins", value):
        origin = origin.rstrip("/")
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"cors_origins: {origin!r} is not an origin (give "
                              "'https://app.example.com', 'http://localhost:3000' or '*')")
        out.append(origin)
    return tuple(out)


#: query parameters that carry a secret (asyncpg reads ``?password=`` and ``?sslpassword=``)
_SECRET_QUERY = re.compile(r"([?&](?:password|sslpassword)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without its passwords: the user's (``redis://:secret@host`` ->
    ``redis://:***@host``) and those of the query (``?password=secret`` -> ``?password=***``)."""
    return _SECRET_QUERY.sub(r"\1***", re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url))


def backend_for_url(types: Iterable[Any], url: str, *, setting: str, kind: str,
                    hint: str) -> Any:
    """The registered backend type (a class with a ``schemes`` tuple) serving ``url``'s
    scheme: the one lookup behind ``state_url`` and ``database_url``.

    :raises ConfigError: none serves it; the message names ``setting`` (the URL redacted),
        the schemes known and ``hint`` (which plugin to install).
    """
    scheme = urlsplit(url).scheme.lower()
    known: set[str] = set()
    for cls in types:
        if scheme in cls.schemes:
            return cls
        known.update(cls.schemes)
    raise ConfigError(f"{setting} {redact_url(url)!r}: no {kind} backend serves {scheme!r}:// "
                      f"(known: {', '.join(sorted(known)) or 'none'}; {hint})")


def load_config(
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Build the :class:`Config` from a TOML file, the environment and ``overrides``.

    :param config_file: a TOML file; default ``$OMNIROUTE_CONFIG`` or
        ``<data dir>/omniroute.toml`` when it exists.
    :param environ: the environment (default ``os.environ``).
    :param overrides: values from the command line; ``None`` means "not given".
    """
    env = os.environ if environ is None else environ
    overrides = {k: v for k, v in overrides.items() if v is not None}

    data_dir = overrides.get("data_dir") or env.get("OMNIROUTE_DATA_DIR")
    path = config_file or env.get("OMNIROUTE_CONFIG")
    if path is None:
        candidate = Path(data_dir or default_data_dir()).expanduser() / "omniroute.toml"
        path = candidate if candidate.exists() else None
    toml: dict[str, Any] = {}
    if path is not None:
        try:
            toml = tomllib.loads(Path(path).expanduser().read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    server = toml.get("server", {})
    plugins = toml.get("plugins", {})

    values: dict[str, Any] = {
        "host": server.get("host", DEFAULT_HOST),
        "port": server.get("port", DEFAULT_PORT),
        "data_dir": server.get("data_dir"),
        "workers": server.get("workers", 1),
        "loop": server.get("loop", "auto"),
        "log_level": server.get("log_level", "info"),
        "disabled_plugins": tuple(plugins.get("disabled", ())),
        "allowed_plugins": tuple(plugins["allowed"]) if "allowed" in plugins else None,
        "allowed_hosts": server.get("allowed_hosts", ()),
        "cors_origins": server.get("cors_origins", ()),
        "state_url": server.get("state_url"),
        "database_url": server.get("database_url"),
    }
    env_map = {
        "OMNIROUTE_HOST": "host",
        "OMNIROUTE_PORT": "port",
        "OMNIROUTE_DATA_DIR": "data_dir",
        "OMNIROUTE_WORKERS": "workers",
        "OMNIROUTE_LOOP": "loop",
        "OMNIROUTE_LOG_LEVEL": "log_level",
        "OMNIROUTE_STATE_URL": "state_url",
        "OMNIROUTE_DATABASE_URL": "database_url",
    }
    for var, key in env_map.items():
        if env.get(var):
            values[key] = env[var]
    if "OMNIROUTE_DISABLE_PLUGINS" in env:
        values["disabled_plugins"] = _csv(env["OMNIROUTE_DISABLE_PLUGINS"])
    if env.get("OMNIROUTE_PLUGINS", "").strip():  # empty means "not set", not "load none"
        values["allowed_plugins"] = _csv(env["OMNIROUTE_PLUGINS"])
    for var, key in (("OMNIROUTE_ALLOWED_HOSTS", "allowed_hosts"),
                     ("OMNIROUTE_CORS_ORIGINS", "cors_origins")):
        if var in env:
            values[key] = _csv(env[var])
    values.update(overrides)

    try:
        port, workers = int(values["port"]), int(values["workers"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"port and workers must be integers: {exc}") from exc
    if not 0 <= port < 65536 or workers < 1:
        raise ConfigError("port must be 0-65535 and workers at least 1")
    for key in ("host", "log_level"):
        if not isinstance(values[key], str) or not values[key].strip():
            raise ConfigError(f"{key} must be a non-empty string, got {values[key]!r}")
    if values["data_dir"] is not None and not isinstance(values["data_dir"], str | Path):
        raise ConfigError(f"data_dir must be a path, got {values['data_dir']!r}")
    state_url = values["state_url"] or None
    if state_url is not None and (not isinstance(state_url, str) or "://" not in state_url):
        raise ConfigError("state_url must be a URL such as redis://127.0.0.1:6379/0, got "
                          f"{redact_url(str(state_url))!r}")
    database_url = values["database_url"] or None
    if database_url is not None and (not isinstance(database_url, str)
                                     or "://" not in database_url):
        raise ConfigError("database_url must be a URL such as "
                          "postgresql://omniroute@127.0.0.1:5432/omniroute, got "
                          f"{redact_url(str(database_url))!r}")
    if values["log_level"].lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {values['log_level']!r}")
    if values["loop"] not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, got {values['loop']!r}")

    secret = env.get("OMNIROUTE_SECRET_KEY")
    secret_key: bytes | None = None
    if secret:
        try:
            secret_key = base64.urlsafe_b64decode(secret.encode() + b"=" * (-len(secret) % 4))
        except ValueError as exc:
            raise ConfigError("OMNIROUTE_SECRET_KEY is not base64") from exc
        if len(secret_key) != 32:
            raise ConfigError("OMNIROUTE_SECRET_KEY must decode to 32 bytes")

    defaults = dict(toml.get("settings", {}))
    unknown = set(defaults) - set(Settings.field_names())
    if unknown:
        raise ConfigError(f"unknown [settings] keys in {path}: {', '.join(sorted(unknown))}")
    return Config(
        host=str(values["host"]),
        port=port,
        data_dir=Path(values["data_dir"] or default_data_dir()).expanduser(),
        workers=workers,
        loop=str(values["loop"]),
        log_level=str(values["log_level"]).lower(),
        secret_key=secret_key,
        initial_password=env.get("INITIAL_PASSWORD") or None,
        disabled_plugins=tuple(values["disabled_plugins"]),
        allowed_plugins=values["allowed_plugins"],
        allowed_hosts=host_names(values["allowed_hosts"]),
        cors_origins=web_origins(values["cors_origins"]),
        state_url=state_url,
        database_url=database_url,
        settings_defaults=Settings.coerce_all(defaults, source=str(path)),
        settings_env=settings_from_env(env),
        tool_env=tool_environ(env),
    )


# ---------------------------------------------------------------- runtime settings

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _to_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise ValueError(f"expected a line of text, got {value!r}")
    return value.strip()


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean, got {value!r}")


def _to_positive(kind: type) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        number = kind(value)
        if number <= 0:
            raise ValueError(f"expected a positive number, got {value!r}")
        return number

    return convert


def _to_at_least(kind: type, minimum: float) -> Any:
    """Like :func:`_to_positive`, but ``minimum`` itself is allowed (0 turns a feature off)."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        number = kind(value)
        if number < minimum:
            raise ValueError(f"expected a number of at least {minimum:g}, got {value!r}")
        return number

    return convert


#: how the gateway orders the accounts of one provider and the steps of a combo
#: (``omniroute.resilience.strategies`` implements them)
ACCOUNT_STRATEGIES = (
    "priority", "round-robin", "weighted", "random", "least-used", "fill-first",
    "cost-optimized", "latency-optimized", "p2c",
)

#: who may read ``GET /metrics`` (the ``metrics_access`` setting)
METRICS_ACCESS = ("key", "admin", "public")
#: which requests the response cache serves and stores (omniroute.cache.stage)
CACHE_MODES = ("deterministic", "on", "off")


@dataclass
class Settings:
    """Runtime settings, editable through ``/api/settings``.

    Every field can be pinned by the environment as ``OMNIROUTE_<NAME>``;
    ``require_api_key`` also as ``REQUIRE_API_KEY``.
    """

    require_api_key: bool = False
    require_login: bool = True
    max_body_bytes: int = 10 * 1024 * 1024
    #: multipart uploads (audio transcription): the largest accepted body, and the time
    #: its reading may take
    max_upload_bytes: int = 25 * 1024 * 1024
    upload_timeout: float = 120.0
    connect_timeout: float = 10.0
    first_byte_timeout: float = 120.0
    idle_timeout: float = 120.0
    total_timeout: float = 900.0
    image_timeout: float = 300.0  # seconds one image generation may take (docs/media.md)
    request_log: bool = True
    models_cache_ttl: float = 600.0
    # resilience (omniroute.resilience): target order, attempts, cooldowns, breakers,
    # per-connection queues, sticky sessions
    account_strategy: str = "priority"
    round_robin_sticky: int = 1  # requests in a row on one target before rotating
    max_attempts: int = 10  # targets tried per request, at most
    cooldown_base: float = 1.0  # seconds; backoff = base * factor ** (failures - 1)
    cooldown_factor: float = 2.0
    cooldown_max: float = 300.0
    breaker_threshold: int = 12  # consecutive failures that open an API-key provider's breaker
    breaker_threshold_oauth: int = 8  # ... a subscription (OAuth) provider's
    breaker_reset: float = 30.0  # seconds open before half-open trials
    breaker_reset_oauth: float = 60.0
    breaker_half_open_max: int = 1  # trial requests at once while half-open
    queue_size: int = 32  # waiters per limited connection (0: fail at once)
    queue_timeout: float = 5.0  # seconds a waiter waits for a slot (0: fail at once)
    wait_for_cooldown_max: float = 5.0  # wait this long for a cooling target (0: fail fast)
    session_ttl: float = 1800.0  # seconds a sticky session lives after its last use
    session_max: int = 10000  # sticky sessions kept (least recently used go first)
    # hedging: a call with no first byte past its bound races the next target
    hedge: bool = True
    hedge_factor: float = 3.0  # bound = factor * the target's recent p95 first-byte time ...
    hedge_floor: float = 2.0  # ... at least this many seconds ...
    hedge_initial: float = 10.0  # ... and this many until it has 8 first-byte times
    # prices (omniroute.pricing): genai-prices' database ships with the package and is
    # never fetched unless updates are turned on
    price_updates: bool = False
    price_update_url: str = (
        "https://raw.githubusercontent.com/pydantic/genai-prices/refs/heads/main/"
        "prices/new_data/v2/data.json")
    price_update_interval: float = 86400.0  # seconds between fetches, when turned on
    # budgets (omniroute.budgets): per-key limits
    budget_output_tokens: int = 1024  # output tokens reserved when a request sets no max_tokens
    # metrics and telemetry (omniroute.metrics, GET /metrics, GET /api/telemetry/summary)
    #: who may read /metrics: "key" (like the client API: an API key when
    #: require_api_key is on), "admin" (an admin only) or "public" (anyone)
    metrics_access: str = "key"
    telemetry_window: float = 3600.0  # seconds of requests the latency summary covers
    # usage records (omniroute.storage.requestlog, omniroute.pipeline.usage): bodies,
    # retention, and the shutdown that flushes them
    log_bodies: bool = False  # store request and response bodies (credentials redacted) ...
    log_body_max_bytes: int = 64 * 1024  # ... each cut to this many bytes
    usage_retention_days: float = 30.0  # records older than this are pruned (0: any age)
    usage_max_rows: int = 1_000_000  # the newest this many records are kept (0: no bound)
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on SIGTERM
    # idempotency (omniroute.idempotency): duplicates of a request (same Idempotency-Key
    # or X-Request-Id, same API key) share its one upstream call
    idempotency_window: float = 5.0  # seconds a finished answer is replayed (0: in flight only)
    idempotency_max_bytes: int = 8 * 1024 * 1024  # bytes one shared answer may keep
    idempotency_max_keys: int = 10000  # keys tracked at once (in flight and kept)
    # progress events (omniroute.pipeline.progress): X-OmniRoute-Progress: true
    progress_interval: float = 2.0  # seconds between a stream's progress frames
    # audit log (omniroute.storage.audit): retention
    audit_retention_days: float = 365.0  # entries older than this are pruned (0: any age)
    # response cache (omniroute.cache): exact answers, replayed in any client format
    #: which requests are cached: "deterministic" (an explicit temperature 0), "on" (every
    #: cacheable request), "off"; an API key's own ``cache`` limit wins over it
    cache_mode: str = "deterministic"
    cache_ttl: float = 3600.0  # seconds an entry lives (a key's ``cache_ttl`` wins)
    #: the backends, front to back ("memory", "sqlite", "memory,sqlite"; read at start-up)
    cache_backends: str = "memory"
    cache_max_entries: int = 10_000  # memory backend: entries ...
    cache_max_bytes: int = 64 * 1024 * 1024  # ... and bytes, least recently used go first
    cache_db_max_entries: int = 100_000  # sqlite backend: entries kept
    cache_max_entry_bytes: int = 1024 * 1024  # a larger answer is not cached
    # subscription (OAuth) accounts (omniroute.oauth): tokens renewed before they lapse
    oauth_refresh_margin: float = 300.0  # seconds left when a token is renewed before a call
    oauth_refresh_interval: float = 60.0  # seconds between the background renewal sweeps
    # semantic cache (plugins/omniroute-semantic-cache): a layer behind the exact cache that
    # answers a reworded single-turn question from a stored answer; off by default
    semantic_cache: bool = False
    semantic_cache_threshold: float = 0.95  # cosine a hit needs (and the lexical guards)
    semantic_cache_max_entries: int = 50_000  # least recently used go first past this ...
    semantic_cache_max_bytes: int = 200 * 1024 * 1024  # ... or past this many answer bytes
    semantic_cache_timeout: float = 0.25  # seconds a lookup waits for the encoder (then: miss)
    semantic_cache_queue: int = 4  # lookups and stores queued for the encoder (more: miss)
    # shared state (state_url, e.g. plugins/omniroute-redis): several instances as one
    state_timeout: float = 0.25  # seconds one call to the shared state may take
    #: while the shared state is unreachable, refuse (503) the requests of keys with a
    #: budget instead of enforcing it with this instance's own numbers
    budget_fail_closed: bool = False

    #: lower bounds for settings where "positive" is not the rule
    _MINIMUM: ClassVar[dict[str, float]] = {
        "cooldown_factor": 1.0, "queue_size": 0, "queue_timeout": 0.0,
        "wait_for_cooldown_max": 0.0, "hedge_factor": 1.0,
        "usage_retention_days": 0.0, "usage_max_rows": 0, "shutdown_grace": 0.0,
        "idempotency_window": 0.0, "audit_retention_days": 0.0}
    #: upper bounds, where there is one
    _MAXIMUM: ClassVar[dict[str, float]] = {"semantic_cache_threshold": 1.0}
    #: settings that take one of a few names
    _CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "account_strategy": ACCOUNT_STRATEGIES, "metrics_access": METRICS_ACCESS,
        "cache_mode": CACHE_MODES}

    _CONVERTERS: ClassVar[dict[type, Callable[[Any], Any]]] = {
        str: _to_text,
        bool: _to_bool,
        int: _to_positive(int),
        float: _to_positive(float),
    }

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def coerce(cls, name: str, value: Any) -> Any:
        """Validate one value; raise ``ValueError`` with a readable message."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        if name not in types:
            raise ValueError(f"unknown setting {name!r}")
        if name in cls._CHOICES:
            choice = value.strip().lower().replace("_", "-") if isinstance(value, str) else value
            if choice not in cls._CHOICES[name]:
                raise ValueError(
                    f"{name}: expected one of {', '.join(cls._CHOICES[name])}, got {value!r}")
            return choice
        kind = {"bool": bool, "int": int, "float": float, "str": str}[str(types[name])]
        convert = (_to_at_least(kind, cls._MINIMUM[name]) if name in cls._MINIMUM
                   else cls._CONVERTERS[kind])
        try:
            number = convert(value)
            if name in cls._MAXIMUM and number > cls._MAXIMUM[name]:
                raise ValueError(f"expected a number of at most {cls._MAXIMUM[name]:g}, "
                                 f"got {value!r}")
            return number
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None

    @classmethod
    def coerce_all(cls, values: Mapping[str, Any], *, source: str) -> dict[str, Any]:
        try:
            return {k: cls.coerce(k, v) for k, v in values.items()}
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings pinned by environment variables."""
    pinned: dict[str, Any] = {}
    for name in Settings.field_names():
        legacy = name.upper() if name == "require_api_key" else None
        for var in (f"OMNIROUTE_{name.upper()}", legacy):
            if var and env.get(var, "").strip():
                pinned[name] = env[var]
    return Settings.coerce_all(pinned, source="environment")
