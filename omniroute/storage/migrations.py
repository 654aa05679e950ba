"""The schema, as an ordered list of migrations.

Migration N brings a database from ``PRAGMA user_version`` N-1 to N. Never edit
a migration that has shipped: append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: the foundation tables
    [
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE connections (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            credentials BLOB,
            active INTEGER NOT NULL DEFAULT 1,
            priority INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE INDEX connections_prefix ON connections(prefix)""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash BLOB NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            scopes TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
        """CREATE TABLE aliases (
            alias TEXT PRIMARY KEY, target TEXT NOT NULL, created_at REAL NOT NULL
        )""",
        """CREATE TABLE combos (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            strategy TEXT NOT NULL DEFAULT 'priority',
            steps TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE request_log (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            ts REAL NOT NULL,
            api_key_id TEXT,
            endpoint TEXT NOT NULL,
            model_requested TEXT,
            provider TEXT,
            connection_id TEXT,
            model TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            status INTEGER NOT NULL,
            error TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms REAL
        )""",
    ],
    # 2: timing and token detail in the request log, key usage, admin sessions
    [
        """ALTER TABLE request_log ADD COLUMN ttfb_ms REAL""",
        """ALTER TABLE request_log ADD COLUMN cached_tokens INTEGER""",
        """ALTER TABLE request_log ADD COLUMN reasoning_tokens INTEGER""",
        """ALTER TABLE request_log ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1""",
        """CREATE INDEX request_log_ts ON request_log(ts)""",
        """ALTER TABLE api_keys ADD COLUMN last_used_at REAL""",
        """CREATE TABLE admin_sessions (
            token_hash BLOB PRIMARY KEY,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ],
    # 3: stored OpenAI Responses (``store``, ``previous_response_id``), scoped per API key
    [
        """CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            api_key_id TEXT,
            model TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            input TEXT NOT NULL,
            output TEXT NOT NULL,
            response TEXT NOT NULL
        )""",
        """CREATE INDEX responses_key ON responses(api_key_id, created_at)""",
        """CREATE INDEX responses_expires ON responses(expires_at)""",
    ],
]

LATEST = len(MIGRATIONS)
