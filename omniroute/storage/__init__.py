"""Persistence: the SQLite database, configuration records and the request log."""

from omniroute.storage.db import Database, StorageError
from omniroute.storage.requestlog import RequestLog, RequestRecord
from omniroute.storage.store import ApiKey, Combo, Connection, Store, hash_secret, new_id

__all__ = [
    "ApiKey",
    "Combo",
    "Connection",
    "Database",
    "RequestLog",
    "RequestRecord",
    "StorageError",
    "Store",
    "hash_secret",
    "new_id",
]
