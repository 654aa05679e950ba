"""Persistence: the database (SQLite, or a ``database_url`` backend), configuration records
and the request log."""

from omniroute.storage.backend import DatabaseBackend, StorageError, database_backend
from omniroute.storage.db import Database
from omniroute.storage.requestlog import RequestLog, RequestRecord
from omniroute.storage.store import ApiKey, Combo, Connection, Store, hash_secret, new_id

__all__ = [
    "ApiKey",
    "Combo",
    "Connection",
    "Database",
    "DatabaseBackend",
    "RequestLog",
    "RequestRecord",
    "StorageError",
    "Store",
    "database_backend",
    "hash_secret",
    "new_id",
]
