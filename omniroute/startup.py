"""Start-up checks: each bad start-up input becomes one :class:`ConfigError` line.

``omniroute serve`` (and every CLI command that opens the data directory) goes
through here, so a data directory that is a file or cannot be written, a damaged
key file, a key that does not decrypt the stored credentials, a file that is not
a database, or a port that is taken is reported as one sentence that names the
input to fix, never as a traceback.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from collections.abc import Mapping

from omniroute.config import Config, ConfigError
from omniroute.storage import Database, DatabaseBackend, StorageError, Store, database_backend
from omniroute.storage.db import private_file
from omniroute.vault import KEY_FILE, Vault, VaultError


async def open_store(config: Config,
                     backends: Mapping[str, type[DatabaseBackend]] | None = None) -> Store:
    """Open the data directory's credentials key and the database (creating them if new):
    the SQLite file in the data directory, or ``database_url``'s.

    :param backends: the database backend types the plugins registered (default: the
        installed plugins' when ``database_url`` is set).
    :raises ConfigError: the data directory, its key file or its database cannot be used.
    """
    data_dir = config.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"the data directory {data_dir} is a file, not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {data_dir}: "
                          f"{exc.strerror or exc}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the data directory {data_dir} is not writable")
    try:
        vault = Vault.open(data_dir, config.secret_key)
    except VaultError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot use the key file {data_dir / KEY_FILE}: "
                          f"{exc.strerror or exc}") from None
    if config.database_url is not None:
        return Store(await open_database_url(config, backends), vault)
    path = config.db_path
    try:
        # Opened here first: when aiosqlite fails to open a file, its thread outlives the
        # event loop of a short-lived command and reports to a closed loop (a traceback).
        private_file(path)
        sqlite3.connect(path).close()
        db = await Database.open(path)
    except StorageError as exc:
        raise ConfigError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) or "not a database" not in str(exc):
            raise ConfigError(f"cannot open the database {path}: {exc}") from None
        raise ConfigError(f"{path} is not an omniroute database ({exc}); move it away "
                          "to start with an empty one, or restore a backup") from None
    except OSError as exc:
        raise ConfigError(f"cannot open the database {path}: {exc.strerror or exc}") from None
    return Store(db, vault)


async def open_database_url(config: Config,
                            backends: Mapping[str, type[DatabaseBackend]] | None = None,
                            ) -> DatabaseBackend:
    """Open (and migrate) the ``database_url`` database with the backend serving its scheme.

    :raises ConfigError: no plugin serves the scheme, or the database cannot be used.
    """
    url = config.database_url
    assert url is not None
    if backends is None:
        from omniroute.plugins import load_plugins

        backends = load_plugins(blocked=config.disabled_plugins,
                                allowed=config.allowed_plugins).database_backends
    cls = database_backend(backends, url)
    try:
        return await cls.connect(url)
    except StorageError as exc:
        raise ConfigError(str(exc)) from None


async def check_credentials(store: Store, config: Config) -> None:
    """Check that the key decrypts the stored provider credentials.

    :raises ConfigError: it does not (the key changed since they were saved).
    """
    try:
        await store.list_connections()
    except VaultError:
        source = ("OMNIROUTE_SECRET_KEY" if config.secret_key is not None
                  else str(config.data_dir / KEY_FILE))
        raise ConfigError(f"the stored provider credentials cannot be decrypted with the key "
                          f"from {source}: it is not the key they were saved with") from None


def listen_error(config: Config, exc: OSError) -> ConfigError:
    """The one-line report of a failed bind or listen on ``config.host:port``."""
    reason = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use (another omniroute, or another program?)"
    return ConfigError(f"cannot listen on {config.host}:{config.port}: {reason}")


def check_port(config: Config) -> None:
    """Bind (and release) ``config.host:port`` as the workers will, with SO_REUSEPORT.

    Run before starting worker processes, so a taken port or an address that
    is not this machine's is reported once, by the parent.

    :raises ConfigError: the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(address)
                sock.listen()  # a listener without SO_REUSEPORT on the port fails here
    except OSError as exc:
        raise listen_error(config, exc) from None
