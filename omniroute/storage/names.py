"""The request log's repeated texts, each stored once: ``record_names`` and its codes.

A record's endpoint, client format, provider, model, requested model, connection,
user agent and API key are a handful of values repeated over millions of records. The
records table (``request_records``) keeps each as an integer, the id of its text in
``record_names`` (one table for every kind of value: the texts never clash in meaning,
since a code is read back through its column); the view ``request_log`` joins them back,
so every read (the usage APIs, the CLI, telemetry, the rollup backfills) sees the texts
exactly as before. Measured with callgrind (``scripts/bench_instructions.py``): Python's
sqlite3 binds a text for some 800 instructions (a copy and a lock), an integer for some
170, and the row, its page and its connection index are smaller.

The writer (:class:`Names`) holds the codes in memory: loaded once, the texts of a batch
it has not seen are inserted (``ON CONFLICT DO NOTHING``: another instance on the same
PostgreSQL may have just added one) and their ids read back. They are committed in a
transaction of their own, before the batch's: inside the batch's, a name not yet
committed would hold up every other instance inserting the same one until that batch
commits (an instance never waits for another's batch). A batch that fails then leaves
a name no record uses, which is harmless. Names are never deleted (retention prunes
records, not the few texts they share), so a cached code stays valid for as long as the
database lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from omniroute.storage.backend import DatabaseBackend

#: the records table's coded columns, each holding a ``record_names`` id (NULL: no value).
#: ``combo`` and ``error_class`` stay texts: a served request has neither, and
#: ``error_class`` is in the failed-records index's condition
CODED = ("api_key_id", "endpoint", "model_requested", "provider", "connection_id", "model",
         "client_format", "user_agent")
#: the records table, as the writer stores it
TABLE = "request_records"


def view(columns: Sequence[str]) -> str:
    """``CREATE VIEW request_log``: the records with their texts, ``columns`` in order (the
    table's columns as they stood before the codes, so ``SELECT *`` reads as it did).

    The table is named ``request_log`` inside the view too, so a query plan names it as
    it did (``SEARCH request_log USING INDEX request_log_ts``)."""
    joins, listed = [], []
    for column in columns:
        if column in CODED:
            alias = f"n_{column}"
            listed.append(f"{alias}.name AS {column}")
            joins.append(f"LEFT JOIN record_names AS {alias} "
                         f"ON {alias}.id = request_log.{column}")
        else:
            listed.append(f"request_log.{column}")
    return (f"CREATE VIEW request_log AS SELECT {', '.join(listed)} "
            f"FROM {TABLE} AS request_log {' '.join(joins)}")


class Names:
    """The codes of ``record_names``, in memory, for one writer.

    ::

        names = Names()
        await names.ensure(db, texts)   # any new ones stored (and committed)
        names.code["gpt-4o"]            # -> its id (None -> None)
    """

    def __init__(self) -> None:
        #: text -> id (None codes None)
        self.code: dict[str | None, int | None] = {None: None}
        #: id -> text, the same
        self.text: dict[int | None, str | None] = {None: None}
        self._loaded = False

    async def ensure(self, db: DatabaseBackend, texts: Iterable[str | None]) -> None:
        """Give every one of ``texts`` a code, storing those ``record_names`` lacks (in a
        transaction of their own: call it outside any other)."""
        if not self._loaded:  # once: the names a gateway has used are few
            for row in await db.fetchall("SELECT id, name FROM record_names"):
                self._learn(row[1], row[0])
            self._loaded = True
        missing = sorted({t for t in texts if t is not None and t not in self.code})
        if not missing:
            return
        async with db.transaction():  # in one order on every instance (no deadlock)
            await db.executemany("INSERT INTO record_names(name) VALUES (?) "
                                 "ON CONFLICT(name) DO NOTHING", [(t,) for t in missing])
        for text in missing:  # one by one: a backend may store a text otherwise than
            # given (PostgreSQL: a NUL as U+FFFD), and reads the parameter the same way
            row = await db.fetchone("SELECT id FROM record_names WHERE name = ?", (text,))
            if row is None:  # the insert above stored it or found it: a broken database
                raise LookupError("record_names lost a name just stored")
            self._learn(text, row[0])

    def _learn(self, text: str, code: int) -> None:
        self.code[text] = code
        self.text[code] = text
