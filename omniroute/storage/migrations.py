"""The schema, as an ordered list of migrations.

Migration N brings a database from schema version N-1 to N (SQLite keeps it in
``PRAGMA user_version``, a ``database_url`` backend where it likes). Never edit a
migration that has shipped: append a new one.

One schema serves every backend, so the SQL here is what SQLite and PostgreSQL both
take, written as SQLite reads it: ``INTEGER`` and ``REAL`` columns, ``BLOB``,
``id INTEGER PRIMARY KEY`` for an id the database assigns. A backend translates
what its dialect cannot take as written (``omniroute_postgres.dialect``: the column
types, ``WITHOUT ROWID``), and nothing else.
"""

from __future__ import annotations

from omniroute.storage import rollup

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
    # 4: usage, cost, budgets and the audit log (issue 8)
    [
        # the usage record: who, through which API, which account answered, how fast, at what cost
        """ALTER TABLE request_log ADD COLUMN client_format TEXT""",
        """ALTER TABLE request_log ADD COLUMN user_agent TEXT""",
        """ALTER TABLE request_log ADD COLUMN combo TEXT""",
        """ALTER TABLE request_log ADD COLUMN error_class TEXT""",
        # JSON list: one {"target", "failure", "status", "ms"} per attempt, in order
        """ALTER TABLE request_log ADD COLUMN attempt_log TEXT""",
        """ALTER TABLE request_log ADD COLUMN ttfc_ms REAL""",
        """ALTER TABLE request_log ADD COLUMN tokens_per_s REAL""",
        """ALTER TABLE request_log ADD COLUMN cache_write_tokens INTEGER""",
        """ALTER TABLE request_log ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0""",
        """ALTER TABLE request_log ADD COLUMN cost_usd REAL""",
        # what a subscription (OAuth) connection's tokens would have cost at list price
        """ALTER TABLE request_log ADD COLUMN list_cost_usd REAL""",
        """ALTER TABLE request_log ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0""",
        # only with the ``log_bodies`` setting: capped, credentials redacted
        """ALTER TABLE request_log ADD COLUMN request_body TEXT""",
        """ALTER TABLE request_log ADD COLUMN response_body TEXT""",
        """CREATE INDEX request_log_key_ts ON request_log(api_key_id, ts)""",
        """CREATE INDEX request_log_conn_ts ON request_log(connection_id, ts)""",
        # per-key limits as JSON (budgets, token limits, rpm, concurrency, allowed models)
        """ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}'""",
        """ALTER TABLE api_keys ADD COLUMN expires_at REAL""",
        # 0: this key's requests leave no usage record (its spend is still counted)
        """ALTER TABLE api_keys ADD COLUMN log_usage INTEGER NOT NULL DEFAULT 1""",
        # spend and tokens per key and budget window, kept apart from the prunable log
        """CREATE TABLE key_spend (
            key_id TEXT NOT NULL,
            period TEXT NOT NULL,
            window_start REAL NOT NULL,
            cost_usd REAL NOT NULL DEFAULT 0,
            tokens INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, period, window_start)
        )""",
        # operator price overrides, USD per 1M tokens; scope '' = every connection
        """CREATE TABLE price_overrides (
            scope TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL,
            input REAL NOT NULL,
            output REAL NOT NULL,
            cache_read REAL,
            cache_write REAL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (scope, model)
        )""",
        # every management action and login, kept apart from usage
        """CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            diff TEXT,
            address TEXT,
            status INTEGER
        )""",
        """CREATE INDEX audit_log_ts ON audit_log(ts)""",
        # the budgets' read-back of recent windows and their prune select on window_start
        """CREATE INDEX key_spend_window ON key_spend(window_start)""",
    ],
    # 5: image generation (issue 11): images made per request, and a per-image price
    [
        """ALTER TABLE request_log ADD COLUMN images INTEGER""",
        # USD per image, for models priced by the image (DALL-E, Imagen); NULL: by tokens
        """ALTER TABLE price_overrides ADD COLUMN image REAL""",
    ],
    # 6: audio (issue 11): what a transcription or a speech request is charged by, and the
    # operator's per-second / per-character prices
    [
        # seconds of audio transcribed or translated (the upstream's count, else measured)
        """ALTER TABLE request_log ADD COLUMN audio_seconds REAL""",
        # characters of text turned into speech
        """ALTER TABLE request_log ADD COLUMN characters INTEGER""",
        # USD per second of audio, and per character of speech input
        """ALTER TABLE price_overrides ADD COLUMN per_second REAL""",
        """ALTER TABLE price_overrides ADD COLUMN per_character REAL""",
    ],
    # 7: usage totals by hour and by day, so a dashboard's (and a summary's) read of a
    # month of a million records reads a few thousand rows (issue 12)
    [
        *rollup.CREATE,
        *rollup.BACKFILL,
    ],
    # 8: the totals also sum audio seconds and speech characters (issue 11). Migration 7
    # builds the tables in their current shape, so this one rebuilds them whole rather
    # than adding columns: a database at 6 gets 7's tables already with the new
    # columns, one at 7 has the old shape; both end the same, refilled from the records
    [
        """DROP TABLE usage_dims""",
        """DROP TABLE usage_rollup""",
        *rollup.CREATE,
        *rollup.BACKFILL,
    ],
    # 9: several instances on one database (issue 13): a record is stored once, whatever
    # retries its batch (a commit may land just before the database goes away)
    [
        # records an older release may have stored twice keep their data, under a new id
        """UPDATE request_log SET request_id = request_id || '#' || CAST(id AS TEXT)
           WHERE id NOT IN (SELECT MIN(id) FROM request_log GROUP BY request_id)""",
        """CREATE UNIQUE INDEX request_log_request_id ON request_log(request_id)""",
    ],
    # 10: the overview's per-minute totals of the last hours (the writer keeps them from
    # now on), and an index of the failed records only, so a request log page filtered
    # by a failure (error, 5xx, 429) reads those, not every record of a busy hour
    # (issue 12)
    [
        rollup.MINUTE_BACKFILL,
        f"CREATE INDEX request_log_failed_ts ON request_log(ts) WHERE {rollup.FAILED} = 1",
    ],
    # 11: several instances on one database (issue 13): an audit entry and a budget sync
    # are stored once, whatever retries them (a commit may land and its acknowledgement
    # be lost): each carries an id made when it was, unique here
    [
        # the entry's own id (older entries have none: NULLs do not conflict)
        """ALTER TABLE audit_log ADD COLUMN uid TEXT""",
        """CREATE UNIQUE INDEX audit_log_uid ON audit_log(uid)""",
        # the budget syncs' batches added to key_spend, kept a day
        """CREATE TABLE spend_batches (id TEXT PRIMARY KEY, applied_at REAL NOT NULL)""",
        """CREATE INDEX spend_batches_applied ON spend_batches(applied_at)""",
    ],
    # 12: the request log's index by key holds the records that have a key only: a
    # gateway used without API keys no longer adds an entry per record to it (about 1,900
    # instructions a record, measured with callgrind), and a read filtered by a key
    # (``api_key_id = ?``, never NULL) is served by it as before
    [
        """DROP INDEX request_log_key_ts""",
        """CREATE INDEX request_log_key_ts ON request_log(api_key_id, ts)
           WHERE api_key_id IS NOT NULL""",
    ],
    # 13: one index fewer for every record (about 4,000 instructions a record, measured
    # with callgrind): the time index also keeps a retried batch's records from being
    # stored twice, unique by time and request id (a record tried again has both the
    # same), instead of a unique index of the request ids of its own. Time ranges and
    # pages read it as before (``ts`` leads)
    [
        """DROP INDEX request_log_ts""",
        """CREATE UNIQUE INDEX request_log_ts ON request_log(ts, request_id)""",
        """DROP INDEX request_log_request_id""",
    ],
    # 14: one index fewer for every record (some 2,000 instructions a record, measured
    # with callgrind): a page of one connection's records first asks that dimension's
    # hourly totals which hours hold its newest records and reads only those, as a
    # model's page does; its summaries read the totals but for the minutes a range
    # cuts into an hour, read by time
    [
        """DROP INDEX request_log_conn_ts""",
    ],
]

LATEST = len(MIGRATIONS)
