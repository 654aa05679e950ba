"""What the storage tests share: the vault key, and how a test makes the database fail
or sees a transaction left open (the ``store`` fixture is in conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from omniroute.storage import Database, DatabaseBackend

KEY = b"k" * 32


def outage(db: DatabaseBackend, what: str) -> BaseException:
    """The error ``db`` raises when it cannot be used just now (SQLite: locked, full...;
    PostgreSQL: unreachable), as a test makes it fail."""
    return db.unavailable[0](what)


def holds_a_transaction(db: DatabaseBackend) -> bool:
    """Whether a transaction was left open (SQLite's one connection, or a pooled one)."""
    if isinstance(db, Database):
        return db.conn.in_transaction
    pool = db.pool  # type: ignore[attr-defined]
    return bool(pool.get_size() - pool.get_idle_size())


def statements(monkeypatch: pytest.MonkeyPatch, db: DatabaseBackend, method: str) -> list[str]:
    """The SQL of every ``db.<method>`` call from now on (the calls still run), in order."""
    seen: list[str] = []
    real = getattr(db, method)

    async def spy(sql: str, *args: Any) -> Any:
        seen.append(sql)
        return await real(sql, *args)

    monkeypatch.setattr(db, method, spy)
    return seen

