"""``omniroute doctor``: check an installation, and repair what can be repaired safely.

Each check gives :class:`Finding` lines; ``repair=True`` fixes what needs no
judgement and says so (status ``fixed``):

* the data directory and its files: private to their owner (0700 / 0600);
* the key file: present and well formed (never rewritten: a new key would lose
  every stored credential);
* the database: SQLite's ``quick_check`` (a damaged file is reported, never touched);
* the credentials: the key decrypts every connection's;
* the plugins: each loaded without an error;
* each subscription (OAuth) account: its tokens' freshness, and whether it needs a
  new sign-in (only a sign-in repairs that: the finding says which command);
* each subscription account's OAuth client settings: overrides of the service's
  defaults (``oauth_client_id``, ``oauth_token_url`` ...) are reported, and a repair
  puts the defaults back (:func:`repair_oauth_settings`, also ``POST
  /api/system/env/repair``) after a backup of what it removes.

omniroute keeps no OAuth client settings in an env file: a service's defaults are
in its plugin's code, and a connection may override them in its settings. So
"restoring the defaults" means removing a connection's overrides.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from omniroute.config import ConfigError
from omniroute.credentials import sign_in_required
from omniroute.oauth.service import OVERRIDES, OAuthService
from omniroute.vault import KEY_FILE, VaultError

if TYPE_CHECKING:
    from omniroute.config import Config
    from omniroute.plugins import Plugins
    from omniroute.storage.store import Connection, Store

Status = Literal["ok", "warn", "fail", "fixed"]
#: a refresh token that lapses sooner than this is worth a warning (seconds)
REFRESH_WARNING = 3 * 86400.0
#: where backups of repaired settings go, under the data directory
BACKUPS = "backups"


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report."""

    check: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail}


# ---------------------------------------------------------------------- files


def check_files(config: Config, *, repair: bool) -> list[Finding]:
    """The data directory, the key file and the database files: private to their owner."""
    data_dir = config.data_dir
    if not data_dir.exists():
        return [Finding("data_dir", "warn", f"{data_dir} does not exist yet: `omniroute "
                        "serve` (or `omniroute doctor --repair`) makes it")]
    if not data_dir.is_dir():
        return [Finding("data_dir", "fail", f"{data_dir} is not a directory")]
    out = [_private(data_dir, 0o700, "data_dir", repair)]
    if not os.access(data_dir, os.W_OK | os.X_OK):
        out.append(Finding("data_dir", "fail", f"{data_dir} is not writable by this user"))
    for path in sorted(data_dir.iterdir()):
        if path.is_file() and (path.suffix in (".sqlite3", ".key") or
                               path.name.endswith(("-wal", "-shm"))):
            out.append(_private(path, 0o600, f"file {path.name}", repair))
    if config.secret_key is None:
        out.append(_key_file(data_dir / KEY_FILE))
    else:
        out.append(Finding("vault_key", "ok", "the key comes from OMNIROUTE_SECRET_KEY"))
    return out


def _private(path: Path, mode: int, check: str, repair: bool) -> Finding:
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & 0o077:
        return Finding(check, "ok", f"{path} is private ({current:o})")
    if not repair:
        return Finding(check, "warn", f"{path} is readable by others ({current:o}); "
                       f"run `omniroute doctor --repair` to make it {mode:o}")
    os.chmod(path, mode)
    return Finding(check, "fixed", f"{path} was {current:o}, now {mode:o}")


def _key_file(path: Path) -> Finding:
    import base64

    try:
        raw = base64.urlsafe_b64decode(path.read_text().strip())
    except FileNotFoundError:
        return Finding("vault_key", "warn", f"{path} does not exist yet (it is made at the "
                       "first start; a key made now would not decrypt credentials kept before)")
    except (OSError, ValueError) as exc:
        return Finding("vault_key", "fail", f"{path} cannot be read: {exc}")
    if len(raw) != 32:
        return Finding("vault_key", "fail", f"{path} is damaged: it must hold the base64 of "
                       "32 bytes (restore it from a backup; never replace it with a new one)")
    return Finding("vault_key", "ok", f"{path} holds a 32-byte key")


def check_database(path: Path) -> Finding:
    """SQLite's own ``quick_check`` of the database (read only)."""
    if not path.exists():
        return Finding("database", "warn", f"{path} does not exist yet")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return Finding("database", "fail", f"{path} cannot be checked: {exc} (restore a "
                       "backup, or move it away to start with an empty one)")
    problems = [r[0] for r in rows if r[0] != "ok"]
    if problems:
        return Finding("database", "fail", f"{path} is damaged: {'; '.join(problems[:3])}")
    return Finding("database", "ok", f"{path} passed quick_check (schema version {version})")


async def check_database_url(config: Config, plugins: Plugins) -> Finding:
    """The ``database_url`` database: reached, migrated as the gateway would, answering."""
    from omniroute.startup import open_database_url

    try:
        db = await open_database_url(config, plugins.database_backends)
    except ConfigError as exc:
        return Finding("database", "fail", str(exc))
    try:
        version = await db.schema_version()
        answers = await db.check()
    finally:
        await db.close()
    if not answers:
        return Finding("database", "fail", f"{db.where} does not answer a query")
    return Finding("database", "ok", f"{db.where} answers (schema version {version})")


def check_plugins(plugins: Plugins) -> list[Finding]:
    out = []
    for info in plugins.infos:
        if info.error:
            out.append(Finding(f"plugin {info.name}", "fail", info.error))
        elif info.blocked:
            out.append(Finding(f"plugin {info.name}", "warn", "blocked by the configuration"))
    loaded = sum(1 for i in plugins.infos if not i.error and not i.blocked)
    out.append(Finding("plugins", "ok" if not any(f.status == "fail" for f in out) else "fail",
                       f"{loaded} of {len(plugins.infos)} plugin(s) loaded"))
    return out


# ---------------------------------------------------------------------- accounts


def services_by_type(services: Mapping[str, OAuthService]) -> dict[str, OAuthService]:
    return {s.provider_type: s for s in services.values()}


def check_account(conn: Connection, service: OAuthService, now: float) -> list[Finding]:
    """A subscription account: its tokens, and its OAuth client settings."""
    name, creds = f"account {conn.name}", conn.credentials
    out: list[Finding] = []
    reason = sign_in_required(creds)
    expires, refresh_expires = creds.get("expires_at"), creds.get("refresh_expires_at")
    if reason is not None:
        out.append(Finding(name, "fail", f"needs a new sign-in ({reason}): run "
                           f"`omniroute login {service.name} --name {conn.name}`"))
    elif not creds.get("access_token"):
        out.append(Finding(name, "fail", f"holds no access token: run "
                           f"`omniroute login {service.name} --name {conn.name}`"))
    elif isinstance(expires, (int, float)) and expires <= now and not creds.get("refresh_token"):
        out.append(Finding(name, "fail", "its access token has expired and it has no refresh "
                           f"token: run `omniroute login {service.name} --name {conn.name}`"))
    elif isinstance(refresh_expires, (int, float)) and refresh_expires - now < REFRESH_WARNING:
        left = max(0.0, refresh_expires - now) / 3600
        out.append(Finding(name, "warn", f"its refresh token lapses in {left:.0f} h; the "
                           "gateway renews it while it runs, or sign in again"))
    elif isinstance(expires, (int, float)) and expires <= now:
        out.append(Finding(name, "ok", "its access token has expired; it is renewed on the "
                           "next request (or by the background refresh)"))
    else:
        valid = "" if not isinstance(expires, (int, float)) else \
            f", access token valid for {(expires - now) / 60:.0f} min"
        out.append(Finding(name, "ok", f"signed in{valid}"))
    overrides = oauth_overrides(conn.settings, service)
    if overrides:
        try:
            service.check_settings(conn.settings)
        except ValueError as exc:
            out.append(Finding(f"oauth settings {conn.name}", "fail", f"{exc}; run "
                               f"`omniroute doctor --repair` to restore the defaults"))
        else:
            out.append(Finding(f"oauth settings {conn.name}", "warn",
                               f"overrides the service's defaults: {', '.join(overrides)} "
                               "(right for a proxy or a test server; `omniroute doctor "
                               "--repair` restores the defaults)"))
    return out


def oauth_overrides(settings: Mapping[str, Any], service: OAuthService) -> list[str]:
    """The names of the OAuth client settings a connection overrides."""
    names = [*OVERRIDES, *(f"oauth_{n}_url" for n in service.urls)]
    return sorted(n for n in names if settings.get(n) not in (None, ""))


async def repair_oauth_settings(
    store: Store, services: Mapping[str, OAuthService], provider: str, data_dir: Path,
    *, clock: Any = time.time,
) -> tuple[list[str], Path | None, list[str]]:
    """Remove the OAuth client overrides of every account of ``provider`` (a service name,
    or its provider type), after writing what is removed to a backup file.

    :returns: (the setting names removed, the backup's path or None when nothing was
        removed, the connection ids changed).
    :raises LookupError: no service has that name or provider type.
    """
    service = services.get(provider) or services_by_type(services).get(provider)
    if service is None:
        raise LookupError(provider)
    changed: list[Connection] = []
    removed: set[str] = set()
    backup: dict[str, Any] = {}
    for conn in await store.list_connections():
        if conn.type != service.provider_type:
            continue
        names = oauth_overrides(conn.settings, service)
        if not names:
            continue
        backup[conn.id] = {"name": conn.name, "settings": {n: conn.settings[n] for n in names}}
        removed.update(names)
        changed.append(conn)
    if not changed:
        return [], None, []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    folder = data_dir / BACKUPS
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"env-repair-{service.name}-{stamp}.json"
    n = 1
    while path.exists():  # two repairs in one second keep both backups
        n += 1
        path = folder / f"env-repair-{service.name}-{stamp}-{n}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps({"provider": service.name, "connections": backup},
                              option=orjson.OPT_INDENT_2))
    for conn in changed:
        conn.settings = {k: v for k, v in conn.settings.items() if k not in removed}
        await store.save_connection(conn)
    return sorted(removed), path, [c.id for c in changed]


async def diagnose(config: Config, plugins: Plugins, *, repair: bool,
                   now: float | None = None) -> list[Finding]:
    """Every check, in order; with ``repair`` the safe fixes are made."""
    from omniroute.startup import open_store

    now = time.time() if now is None else now
    made: list[Finding] = []
    if repair and not config.data_dir.exists():  # as the first start would make them
        store = await open_store(config, plugins.database_backends)
        await store.db.close()
        made.append(Finding("data_dir", "fixed",
                            f"{config.data_dir} made, with its key and database"))
    out = made + check_files(config, repair=repair)
    if not config.data_dir.is_dir():
        return out
    if config.database_url is not None:
        database = await check_database_url(config, plugins)
    else:
        database = check_database(config.db_path)
    out.append(database)
    out.extend(check_plugins(plugins))
    if database.status == "fail" or any(f.check == "vault_key" and f.status == "fail"
                                        for f in out):
        return out  # a damaged database or key: nothing more is read with them
    try:
        store = await open_store(config, plugins.database_backends)
    except ConfigError as exc:
        out.append(Finding("store", "fail", str(exc)))
        return out
    try:
        try:
            connections = await store.list_connections()
        except VaultError as exc:
            out.append(Finding("credentials", "fail", f"{exc}: is the key the one they were "
                               "saved with? (OMNIROUTE_SECRET_KEY or the key file)"))
            return out
        out.append(Finding("credentials", "ok",
                           f"the key decrypts all {len(connections)} connection(s)"))
        by_type = services_by_type(plugins.oauth_services)
        for conn in connections:
            service = by_type.get(conn.type)
            if service is not None:
                out.extend(check_account(conn, service, now))
        if repair:
            for service in plugins.oauth_services.values():
                removed, path, _ = await repair_oauth_settings(
                    store, plugins.oauth_services, service.name, config.data_dir)
                if removed:
                    out.append(Finding(f"oauth settings {service.name}", "fixed",
                                       f"restored the defaults of {', '.join(removed)}; the "
                                       f"old values are in {path}"))
    finally:
        await store.db.close()
    return out
