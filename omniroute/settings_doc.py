"""What each runtime setting means, for people: the dashboard's settings page and
``GET /api/settings/schema``.

:data:`SECTIONS` groups every field of :class:`omniroute.config.Settings` under a
heading, each with one or two sentences (``tests/test_dashboard_api.py`` fails
when a setting has none, so a new setting is described where it is added).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omniroute.config import Settings

#: (heading, {setting: description}) in the order the dashboard shows them
SECTIONS: tuple[tuple[str, dict[str, str]], ...] = (
    ("Access", {
        "require_api_key": "The client API (/v1/...) needs an API key. Off: anyone who can "
                           "reach the port may use it; a wrong key is ignored.",
        "require_login": "The dashboard asks for the admin password. Off: a browser on this "
                         "machine (loopback) opens it without one; other machines always "
                         "need the password.",
        "max_body_bytes": "Largest request body accepted, in bytes (413 above it).",
        "max_upload_bytes": "Largest audio upload accepted (multipart), in bytes (413 above "
                            "it).",
        "metrics_access": "Who may read GET /metrics: key (like the client API), admin, or "
                          "public.",
    }),
    ("Timeouts", {
        "connect_timeout": "Seconds to open a connection to an upstream.",
        "first_byte_timeout": "Seconds to wait for an upstream's first byte (a stream's "
                              "first event); then the next account is tried.",
        "idle_timeout": "Longest silence between two stream chunks, in seconds.",
        "total_timeout": "Longest time a whole upstream call may take, in seconds.",
        "models_cache_ttl": "Seconds each connection's model list is kept (GET /v1/models).",
        "image_timeout": "Longest time one image generation may take, in seconds (then the "
                         "next target is tried).",
        "upload_timeout": "Seconds a client may take to send an audio upload (408 after).",
        "state_timeout": "Seconds each call to the shared state (state_url: Redis) may take; "
                         "past it the instance uses its own state (degraded).",
        "oauth_refresh_margin": "A subscription token with fewer seconds left than this is "
                                "renewed before the call.",
        "oauth_refresh_interval": "Seconds between the background renewals of idle "
                                  "subscription accounts.",
    }),
    ("Routing and resilience", {
        "account_strategy": "How targets are ordered when a combo names no strategy.",
        "round_robin_sticky": "round-robin: requests in a row on one target before moving on.",
        "max_attempts": "Targets tried for one request, at most.",
        "cooldown_base": "Cooldown after a failure with no upstream hint, in seconds ...",
        "cooldown_factor": "... multiplied by this per consecutive failure ...",
        "cooldown_max": "... up to this many seconds.",
        "breaker_threshold": "Consecutive failures that open an API-key provider's circuit "
                             "breaker.",
        "breaker_threshold_oauth": "Consecutive failures that open a subscription "
                                   "provider's breaker.",
        "breaker_reset": "Seconds an open breaker (API key) waits before trial requests.",
        "breaker_reset_oauth": "Seconds an open breaker (subscription) waits before trial "
                               "requests.",
        "breaker_half_open_max": "Trial requests at once while a breaker is half-open.",
        "queue_size": "Requests that may wait for a slot of a busy connection (0: none).",
        "queue_timeout": "Seconds a queued request waits for a slot before moving on.",
        "wait_for_cooldown_max": "When every target rests, wait at most this long for one "
                                 "(else 429 with Retry-After).",
        "session_ttl": "Seconds a sticky session keeps its account after its last use.",
        "session_max": "Sticky sessions remembered (least recently used forgotten first).",
    }),
    ("Hedging", {
        "hedge": "Race the next target when a call has no first byte long after its usual "
                 "time (chat and embeddings).",
        "hedge_factor": "The bound: this many times the target's recent p95 first-byte "
                        "time ...",
        "hedge_floor": "... at least this many seconds ...",
        "hedge_initial": "... and this many seconds until 8 first-byte times are measured.",
    }),
    ("Usage records", {
        "request_log": "Keep a record of every request (usage, cost, the request log).",
        "log_bodies": "Store request and response bodies in the records (credentials "
                      "redacted).",
        "log_body_max_bytes": "Each stored body is cut to this many bytes.",
        "usage_retention_days": "Records older than this many days are removed (0: kept).",
        "usage_max_rows": "Only the newest this many records are kept (0: no bound); the "
                          "hourly totals stay.",
        "shutdown_grace": "Seconds requests in flight get to finish on shutdown.",
        "telemetry_window": "Seconds of past requests the latency percentiles cover.",
        "audit_retention_days": "Audit log entries older than this many days are removed "
                                "(0: kept).",
    }),
    ("Prices and budgets", {
        "price_updates": "Fetch newer prices from price_update_url (off: the prices shipped "
                         "with the package, nothing is fetched).",
        "price_update_url": "Where newer prices are fetched from, when turned on.",
        "price_update_interval": "Seconds between price fetches, when turned on.",
        "budget_output_tokens": "Output tokens a request reserves against its key's budget "
                                "when it sets no max_tokens.",
        "budget_fail_closed": "With shared state (state_url): refuse (503) requests of keys "
                              "with a budget while Redis cannot be reached, instead of "
                              "counting locally.",
    }),
    ("Idempotency and progress", {
        "idempotency_window": "Seconds a finished answer is replayed to a duplicate request "
                              "(same Idempotency-Key).",
        "idempotency_max_bytes": "Bytes one shared answer may keep.",
        "idempotency_max_keys": "Idempotency keys tracked at once.",
        "progress_interval": "Seconds between a stream's progress frames "
                             "(X-OmniRoute-Progress: true).",
    }),
    ("Response cache", {
        "cache_mode": "Which requests are cached: deterministic (temperature 0), on, or off.",
        "cache_ttl": "Seconds a cached answer lives.",
        "cache_backends": "Cache backends front to back: memory, sqlite or memory,sqlite "
                          "(read at start-up).",
        "cache_max_entries": "Memory backend: entries kept ...",
        "cache_max_bytes": "... and bytes; the least recently used go first.",
        "cache_db_max_entries": "SQLite backend: entries kept.",
        "cache_max_entry_bytes": "A larger answer is not cached.",
    }),
    ("Semantic cache", {
        "semantic_cache": "Answer a reworded single-turn question from a stored answer (needs "
                          "the omniroute-semantic-cache plugin).",
        "semantic_cache_threshold": "Cosine similarity a hit needs (with lexical guards).",
        "semantic_cache_max_entries": "Entries kept (least recently used go first) ...",
        "semantic_cache_max_bytes": "... or answer bytes.",
        "semantic_cache_timeout": "Seconds a lookup waits for the encoder (then: a miss).",
        "semantic_cache_queue": "Lookups and stores queued for the encoder (more: a miss).",
    }),
)

#: every described setting's description
DESCRIPTIONS: dict[str, str] = {name: text for _, fields in SECTIONS
                                for name, text in fields.items()}


def schema(values: dict[str, Any], stored: dict[str, Any], pinned: set[str]
           ) -> list[dict[str, Any]]:
    """Every runtime setting as the settings page shows it: section, name, type,
    description, default, current value, where the value comes from, and its bounds.

    :param values: the settings in force; :param stored: those stored in the database;
    :param pinned: those an environment variable pins.
    """
    defaults = Settings()
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    section_of = {name: title for title, group in SECTIONS for name in group}
    rows = []
    order = [*DESCRIPTIONS, *(n for n in fields if n not in DESCRIPTIONS)]
    for name in order:
        if name not in fields:
            continue
        kind = str(fields[name].type)
        default = getattr(defaults, name)
        row: dict[str, Any] = {
            "name": name, "section": section_of.get(name, "Other"), "type": kind,
            "description": DESCRIPTIONS.get(name, ""), "default": default,
            "value": values.get(name, default),
            "source": ("environment" if name in pinned else "stored" if name in stored
                       else "default"),
        }
        choices = Settings._CHOICES.get(name)
        if choices:
            row["choices"] = list(choices)
        if name in Settings._MINIMUM:
            row["minimum"] = Settings._MINIMUM[name]
        elif kind in ("int", "float"):
            row["minimum"] = 0 if kind == "float" else 1
            row["exclusive_minimum"] = kind == "float"
        if name in Settings._MAXIMUM:
            row["maximum"] = Settings._MAXIMUM[name]
        rows.append(row)
    return rows
