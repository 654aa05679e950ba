"""Configuration records: connections, API keys, aliases, combos, settings, sessions.

Plain dataclasses in, plain dataclasses out. Provider credentials are encrypted
by the vault before they reach the database and decrypted only in memory.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from omniroute.budgets.limits import Limits
from omniroute.storage.backend import DatabaseBackend
from omniroute.vault import Vault, mask

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-or-"
#: ``update_key``'s "leave this field as it is"
UNCHANGED: Any = object()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def hash_secret(secret: str) -> bytes:
    """SHA-256 of a high-entropy secret (API keys, session tokens)."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class Connection:
    """One upstream account: a provider type, its settings and its credentials."""

    id: str
    type: str
    name: str
    prefix: str
    settings: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    priority: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """What the management API shows: credentials masked, never in full."""
        return {
            "id": self.id,
            "type": self.type,
            "name": self.name,
            "prefix": self.prefix,
            "settings": self.settings,
            "credentials": {k: mask(str(v)) for k, v in self.credentials.items() if v},
            "active": self.active,
            "priority": self.priority,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class ApiKey:
    id: str
    name: str
    key_hash: bytes
    key_prefix: str
    scopes: frozenset[str]
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None
    #: budgets, token limits, rpm, concurrency, allowed models; None: no limit
    limits: Limits | None = None
    #: after this time (epoch seconds) the key is refused like a revoked one
    expires_at: float | None = None
    #: False: this key's requests leave no usage record
    log_usage: bool = True

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "limits": self.limits.as_dict() if self.limits is not None else {},
            **({"limits_error": self.limits.unreadable}
               if self.limits is not None and self.limits.unreadable else {}),
            "expires_at": self.expires_at,
            "log_usage": self.log_usage,
        }


@dataclass
class Combo:
    """A named, ordered list of model steps tried in turn."""

    id: str
    name: str
    steps: list[Any]
    strategy: str = "priority"
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "strategy": self.strategy,
            "steps": self.steps,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Store:
    """Reads and writes configuration records; every write bumps the config version."""

    def __init__(self, db: DatabaseBackend, vault: Vault) -> None:
        self.db = db
        self.vault = vault

    # ---------------------------------------------------------------- connections

    def _connection(self, row: Any) -> Connection:
        return Connection(
            id=row["id"],
            type=row["type"],
            name=row["name"],
            prefix=row["prefix"],
            settings=orjson.loads(row["settings"]),
            credentials=self.vault.decrypt(row["credentials"] or b"", context=row["id"]),
            active=bool(row["active"]),
            priority=row["priority"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    async def list_connections(self) -> list[Connection]:
        rows = await self.db.fetchall("SELECT * FROM connections ORDER BY priority, created_at")
        return [self._connection(r) for r in rows]

    async def get_connection(self, conn_id: str) -> Connection | None:
        row = await self.db.fetchone("SELECT * FROM connections WHERE id = ?", (conn_id,))
        return self._connection(row) if row else None

    async def save_connection(self, conn: Connection) -> Connection:
        """Insert or replace ``conn`` (credentials encrypted)."""
        now = time.time()
        conn.created_at = conn.created_at or now
        conn.updated_at = now
        blob = self.vault.encrypt(conn.credentials, context=conn.id)
        async with self.db.transaction():
            await self.db.execute(
                "INSERT INTO connections"
                "(id, type, name, prefix, settings, credentials, active, priority,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET type = excluded.type, name = excluded.name,"
                " prefix = excluded.prefix, settings = excluded.settings,"
                " credentials = excluded.credentials, active = excluded.active,"
                " priority = excluded.priority, created_at = excluded.created_at,"
                " updated_at = excluded.updated_at",
                (conn.id, conn.type, conn.name, conn.prefix, orjson.dumps(conn.settings).decode(),
                 blob, int(conn.active), conn.priority, conn.created_at, conn.updated_at),
            )
            await self.db.bump_config_version()
        return conn

    async def save_credentials(self, conn_id: str, credentials: dict[str, Any]) -> bool:
        """Replace one connection's credentials (encrypted); False when it does not exist.

        Only the credentials change: not the settings and not ``updated_at``
        (which tracks an operator's edits), so a process whose provider already
        holds these credentials keeps that provider on its next reload. The
        config version is still bumped, so every other process rebuilds the
        provider of this one connection with them (a rotated refresh token must
        not stay behind in another worker).
        """
        blob = self.vault.encrypt(credentials, context=conn_id)
        async with self.db.transaction():
            changed = await self.db.execute(
                "UPDATE connections SET credentials = ? WHERE id = ?", (blob, conn_id))
            if changed:
                await self.db.bump_config_version()
        return changed > 0

    async def delete_connection(self, conn_id: str) -> bool:
        async with self.db.transaction():
            changed = await self.db.execute("DELETE FROM connections WHERE id = ?", (conn_id,))
            await self.db.bump_config_version()
        return changed > 0

    # ---------------------------------------------------------------- API keys

    @staticmethod
    def _key(row: Any) -> ApiKey:
        return ApiKey(
            id=row["id"],
            name=row["name"],
            key_hash=row["key_hash"],
            key_prefix=row["key_prefix"],
            scopes=frozenset(s for s in row["scopes"].split(",") if s),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
            limits=_stored_limits(row["id"], row["limits"]),
            expires_at=row["expires_at"],
            log_usage=bool(row["log_usage"]),
        )

    async def create_key(
        self, name: str, scopes: set[str] | frozenset[str] = frozenset(), *,
        limits: Limits | None = None, expires_at: float | None = None, log_usage: bool = True,
    ) -> tuple[ApiKey, str]:
        """Create a key; return it and its secret, which is never stored or shown again."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(new_id("key"), name, hash_secret(secret), secret[:10], frozenset(scopes),
                     time.time(), limits=limits, expires_at=expires_at, log_usage=log_usage)
        async with self.db.transaction():
            await self.db.execute(
                "INSERT INTO api_keys(id, name, key_hash, key_prefix, scopes, created_at,"
                " limits, expires_at, log_usage) VALUES (?,?,?,?,?,?,?,?,?)",
                (key.id, key.name, key.key_hash, key.key_prefix, ",".join(sorted(key.scopes)),
                 key.created_at, _limits_json(limits), expires_at, int(log_usage)),
            )
            await self.db.bump_config_version()
        return key, secret

    async def get_key(self, id_or_name: str) -> ApiKey | None:
        """The key with this id, else the newest active key with this name."""
        row = await self.db.fetchone(
            "SELECT * FROM api_keys WHERE id = ? OR (name = ? AND revoked_at IS NULL)"
            " ORDER BY id = ? DESC, created_at DESC LIMIT 1", (id_or_name, id_or_name, id_or_name))
        return self._key(row) if row else None

    async def update_key(
        self, key_id: str, *, limits: Limits | None = UNCHANGED,
        expires_at: float | None = UNCHANGED, log_usage: bool = UNCHANGED,
    ) -> bool:
        """Change a key's limits, expiry or usage-record flag (``UNCHANGED`` keeps one);
        False when no such key. The running gateways see it on their next reload."""
        changes: dict[str, Any] = {}
        if limits is not UNCHANGED:
            changes["limits"] = _limits_json(limits)
        if expires_at is not UNCHANGED:
            changes["expires_at"] = expires_at
        if log_usage is not UNCHANGED:
            changes["log_usage"] = int(log_usage)
        if not changes:
            return await self.get_key(key_id) is not None
        async with self.db.transaction():
            changed = await self.db.execute(
                f"UPDATE api_keys SET {', '.join(f'{c} = ?' for c in changes)} WHERE id = ?",
                (*changes.values(), key_id))
            if changed:
                await self.db.bump_config_version()
        return changed > 0

    async def list_keys(self) -> list[ApiKey]:
        return [self._key(r) for r in await self.db.fetchall(
            "SELECT * FROM api_keys ORDER BY created_at")]

    async def revoke_key(self, key_id: str) -> bool:
        async with self.db.transaction():
            changed = await self.db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            await self.db.bump_config_version()
        return changed > 0

    # ---------------------------------------------------------------- aliases

    async def list_aliases(self) -> dict[str, str]:
        """Every alias, in code-point order of its name: the router takes the first
        wildcard that matches, so the order must not be the database's collation (SQLite's
        is byte order, a PostgreSQL database's may be a locale's)."""
        rows = await self.db.fetchall("SELECT alias, target FROM aliases")
        return dict(sorted((r["alias"], r["target"]) for r in rows))

    async def set_alias(self, alias: str, target: str | None) -> None:
        """Create or replace ``alias``; a ``None`` target deletes it."""
        async with self.db.transaction():
            if target is None:
                await self.db.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
            else:
                await self.db.execute(
                    "INSERT INTO aliases(alias, target, created_at) VALUES (?,?,?)"
                    " ON CONFLICT(alias) DO UPDATE SET target = excluded.target,"
                    " created_at = excluded.created_at",
                    (alias, target, time.time()),
                )
            await self.db.bump_config_version()

    # ---------------------------------------------------------------- price overrides

    async def list_price_overrides(self) -> list[dict[str, Any]]:
        """Operator prices, USD per 1M tokens: ``scope`` (connection id or ``""``), ``model``,
        ``input``, ``output``, ``cache_read``, ``cache_write``; and USD per ``image``, per
        second of audio (``per_second``) and per character of speech (``per_character``)."""
        rows = await self.db.fetchall(
            "SELECT scope, model, input, output, cache_read, cache_write, image, per_second, "
            "per_character FROM price_overrides ORDER BY scope, model")
        return [dict(r) for r in rows]

    async def put_price_override(self, scope: str, model: str, input: float, output: float,
                                 cache_read: float | None, cache_write: float | None,
                                 image: float | None = None, per_second: float | None = None,
                                 per_character: float | None = None) -> None:
        async with self.db.transaction():
            await self.db.execute(
                "INSERT INTO price_overrides(scope, model, input, output, cache_read,"
                " cache_write, image, per_second, per_character, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(scope, model) DO UPDATE SET"
                " input = excluded.input, output = excluded.output,"
                " cache_read = excluded.cache_read, cache_write = excluded.cache_write,"
                " image = excluded.image, per_second = excluded.per_second,"
                " per_character = excluded.per_character, updated_at = excluded.updated_at",
                (scope, model, input, output, cache_read, cache_write, image, per_second,
                 per_character, time.time()))
            await self.db.bump_config_version()

    async def delete_price_override(self, scope: str, model: str) -> bool:
        async with self.db.transaction():
            changed = await self.db.execute(
                "DELETE FROM price_overrides WHERE scope = ? AND model = ?", (scope, model)) > 0
            if changed:
                await self.db.bump_config_version()
        return changed

    # ---------------------------------------------------------------- combos

    @staticmethod
    def _combo(row: Any) -> Combo:
        return Combo(row["id"], row["name"], orjson.loads(row["steps"]), row["strategy"],
                     row["created_at"], row["updated_at"])

    async def list_combos(self) -> list[Combo]:
        return [self._combo(r) for r in await self.db.fetchall(
            "SELECT * FROM combos ORDER BY name")]

    async def get_combo(self, combo_id: str) -> Combo | None:
        row = await self.db.fetchone("SELECT * FROM combos WHERE id = ? OR name = ?",
                                     (combo_id, combo_id))
        return self._combo(row) if row else None

    async def save_combo(self, combo: Combo) -> Combo:
        now = time.time()
        combo.created_at = combo.created_at or now
        combo.updated_at = now
        async with self.db.transaction():
            await self.db.execute(
                # not OR REPLACE: that would silently delete another combo with this name
                "INSERT INTO combos(id, name, strategy, steps, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET name = excluded.name,"
                " strategy = excluded.strategy, steps = excluded.steps,"
                " updated_at = excluded.updated_at",
                (combo.id, combo.name, combo.strategy, orjson.dumps(combo.steps).decode(),
                 combo.created_at, combo.updated_at),
            )
            await self.db.bump_config_version()
        return combo

    async def delete_combo(self, combo_id: str) -> bool:
        async with self.db.transaction():
            changed = await self.db.execute("DELETE FROM combos WHERE id = ?", (combo_id,))
            await self.db.bump_config_version()
        return changed > 0

    # ---------------------------------------------------------------- settings

    async def get_settings(self) -> dict[str, Any]:
        rows = await self.db.fetchall("SELECT key, value FROM settings")
        return {r["key"]: orjson.loads(r["value"]) for r in rows}

    async def put_settings(self, values: dict[str, Any], *, replace: bool = False) -> None:
        """Store ``values``; with ``replace`` every other stored setting is removed."""
        async with self.db.transaction():
            if replace:
                await self.db.execute("DELETE FROM settings WHERE key NOT LIKE '\\_%' ESCAPE '\\'")
            await self.db.executemany(
                "INSERT INTO settings(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, orjson.dumps(v).decode()) for k, v in values.items()],
            )
            await self.db.bump_config_version()

    # ---------------------------------------------------------------- admin sessions

    async def create_session(self, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        async with self.db.transaction():
            await self.db.execute("DELETE FROM admin_sessions WHERE expires_at < ?", (now,))
            await self.db.execute(
                "INSERT INTO admin_sessions(token_hash, created_at, expires_at) VALUES (?,?,?)",
                (hash_secret(token), now, now + ttl),
            )
        return token

    async def session_valid(self, token: str) -> bool:
        row = await self.db.fetchone(
            "SELECT expires_at FROM admin_sessions WHERE token_hash = ?", (hash_secret(token),))
        return bool(row and row["expires_at"] > time.time())

    async def delete_session(self, token: str) -> None:
        await self.db.execute("DELETE FROM admin_sessions WHERE token_hash = ?",
                              (hash_secret(token),))


def _limits_json(limits: Limits | None) -> str:
    return orjson.dumps(limits.as_dict() if limits is not None else {}).decode()


def _stored_limits(key_id: str, raw: str | None) -> Limits | None:
    """The stored limits; ones that no longer parse (edited by hand) refuse the key's
    requests with a 403 naming the problem, rather than dropping every limit."""
    try:
        return Limits.parse(orjson.loads(raw or "{}"))
    except (ValueError, TypeError, AttributeError) as exc:  # orjson's error is a ValueError
        log.error("API key %s: stored limits cannot be read (%s); its requests are refused "
                  "until they are set again", key_id, exc)
        return Limits(unreadable=str(exc))
