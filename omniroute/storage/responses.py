"""Stored OpenAI Responses: what ``previous_response_id`` and ``GET /v1/responses/{id}`` read.

One row per response the gateway answered with ``store`` not false: the
*effective* input of that turn (the history it continued, then its own input
items), its output items, and the rest of the response object. Continuing from
a response is therefore one primary-key lookup (``input + output``), and
deleting or expiring one response never breaks another.

Rows belong to the API key that created them (``api_key_id``; NULL for
anonymous callers when keys are optional, which form one scope of their own):
every read and delete names the key, so a key never sees another key's rows.
Rows expire after ``ttl`` seconds (30 days, as OpenAI keeps them): readers no longer
see them, and the request log's retention loop deletes them (:func:`delete_expired`),
never the request path.

A response is stored before its answer is sent (a follow-up fired the moment the
client has the id finds it), so :meth:`ResponseStore.save` waits at most
``save_timeout`` (2 s): a database that hangs or fails does not hold the answer. The
answer goes out, that response cannot be continued by id, and the failure is logged
once per outage (once more when stores resume). A read (:meth:`ResponseStore.get`: a
``previous_response_id``, ``GET /v1/responses/{id}``) or a delete
(``DELETE /v1/responses/{id}``) waits at most ``read_timeout`` (2 s) as well: past that,
or when the database cannot be reached, the request fails with
:class:`~omniroute.errors.StoredResponsesUnavailable` (503, ``Retry-After``), the
gateway's failure, not the unknown id's 400/404; the work goes on in the background,
bounded by the database's own statement timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from omniroute.errors import StoredResponsesUnavailable
from omniroute.storage.backend import DatabaseBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a stored response stays retrievable (OpenAI: 30 days)
DEFAULT_TTL = 30 * 24 * 3600.0
#: how long a request waits for its response to be stored (seconds)
SAVE_TIMEOUT = 2.0
#: how long a request waits for a stored response to be read (seconds)
READ_TIMEOUT = 2.0
#: expired rows per ``DELETE`` of :func:`delete_expired`
DELETE_BATCH = 2000


@dataclass(slots=True)
class StoredResponse:
    id: str
    api_key_id: str | None
    model: str
    created_at: float
    #: the input items the response answered (history included)
    input: list[Any]
    output: list[Any]
    #: the response object as the client received it
    response: dict[str, Any]


class ResponseStore:
    """Reads and writes stored responses, always within one API key's scope."""

    def __init__(self, db: DatabaseBackend, *, ttl: float = DEFAULT_TTL,
                 save_timeout: float = SAVE_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 ) -> None:
        self.db = db
        self.ttl = ttl
        self.save_timeout = save_timeout
        self.read_timeout = read_timeout
        #: writes and reads that outlasted their wait, finishing (or failing) in the
        #: background
        self._writes: set[asyncio.Future[Any]] = set()
        #: the last store failed: the next failures are not logged
        self._failing = False
        #: the last read failed: the next failures are not logged
        self._read_failing = False

    async def save(self, api_key_id: str | None, response: dict[str, Any],
                   input_items: list[Any]) -> bool:
        """Store ``response`` (a ``response`` object with an ``id``) and the input it
        answered; True when stored. Waits at most :attr:`save_timeout`: a write still
        running then goes on in the background (bounded by the database's own statement
        timeout) and False is returned, as for a write that failed."""
        write = asyncio.ensure_future(self._write(api_key_id, response, input_items))
        self._writes.add(write)  # held until it ends, even if this request is cancelled
        write.add_done_callback(self._finished)
        done, _ = await asyncio.wait((write,), timeout=self.save_timeout)
        if not done:
            return self._failed(response["id"], f"no answer within {self.save_timeout:g} s")
        exc = write.exception()  # (the write is never cancelled: none but ours holds it)
        if exc is not None:
            return self._failed(response["id"], f"{type(exc).__name__}: {exc}")
        if self._failing:
            self._failing = False
            log.warning("responses are stored again")
        return True

    def _failed(self, response_id: str, reason: str) -> bool:
        if not self._failing:  # once per outage, not once per request
            log.warning("could not store response %s (%s): it cannot be continued by id; "
                        "further failures are not logged until responses are stored again",
                        response_id, reason)
        else:
            log.debug("could not store response %s (%s)", response_id, reason)
        self._failing = True
        return False

    def _finished(self, write: asyncio.Future[Any]) -> None:
        """A write (or read) ended; one whose request stopped waiting may have failed
        unseen."""
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.debug("response store call failed: %s", write.exception())

    async def _write(self, api_key_id: str | None, response: dict[str, Any],
                     input_items: list[Any]) -> None:
        now = time.time()
        output = response.get("output") or []
        rest = {**response, "output": None}  # kept in its own column; the key keeps its place
        await self.db.execute(
            "INSERT INTO responses"
            "(id, api_key_id, model, created_at, expires_at, input, output, response)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
            " model = excluded.model, created_at = excluded.created_at,"
            " expires_at = excluded.expires_at, input = excluded.input,"
            " output = excluded.output, response = excluded.response"
            # an id is never taken over by another key
            " WHERE responses.api_key_id IS excluded.api_key_id",
            (response["id"], api_key_id, str(response.get("model") or ""), now,
             now + self.ttl, orjson.dumps(input_items).decode(),
             orjson.dumps(output).decode(), orjson.dumps(rest).decode()),
        )

    async def get(self, response_id: str, api_key_id: str | None) -> StoredResponse | None:
        """The response, when it exists, has not expired and belongs to ``api_key_id``.

        Waits at most :attr:`read_timeout`.

        :raises StoredResponsesUnavailable: no answer in time, or the database is away.
        """
        return await self._bounded(self._read(response_id, api_key_id))

    async def delete(self, response_id: str, api_key_id: str | None) -> bool:
        """Delete the response when it belongs to ``api_key_id``; whether it did.

        Waits at most :attr:`read_timeout`, as :meth:`get`.

        :raises StoredResponsesUnavailable: no answer in time, or the database is away.
        """
        return await self._bounded(self._delete(response_id, api_key_id))

    async def _bounded(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, waited for at most :attr:`read_timeout`; past that it goes
        on in the background (bounded by the database's own statement timeout)."""
        task = asyncio.ensure_future(work)
        self._writes.add(task)  # held until it ends, even if this request is cancelled
        task.add_done_callback(self._finished)
        done, _ = await asyncio.wait((task,), timeout=self.read_timeout)
        if not done:
            raise self._unreadable(f"no answer within {self.read_timeout:g} s")
        exc = task.exception()  # (never cancelled: none but ours holds it)
        if isinstance(exc, self.db.unavailable):
            raise self._unreadable(f"{type(exc).__name__}: {exc}") from exc
        result = task.result()
        if self._read_failing:
            self._read_failing = False
            log.warning("stored responses are read again")
        return result

    def _unreadable(self, reason: str) -> StoredResponsesUnavailable:
        if not self._read_failing:  # once per outage, not once per request
            log.warning("could not reach the stored responses (%s); requests naming one are "
                        "answered 503 until reads resume (not logged again until then)",
                        reason)
        else:
            log.debug("could not reach the stored responses (%s)", reason)
        self._read_failing = True
        return StoredResponsesUnavailable(
            "Stored responses cannot be reached just now (the gateway's database did not "
            "answer); try again shortly, or send the whole conversation as input.",
            headers={"Retry-After": "1"})

    async def _read(self, response_id: str, api_key_id: str | None) -> StoredResponse | None:
        row = await self.db.fetchone(
            "SELECT * FROM responses WHERE id = ? AND api_key_id IS ? AND expires_at >= ?",
            (response_id, api_key_id, time.time()))
        if row is None:
            return None
        output = orjson.loads(row["output"])
        response = orjson.loads(row["response"])
        response["output"] = output
        return StoredResponse(row["id"], row["api_key_id"], row["model"], row["created_at"],
                              orjson.loads(row["input"]), output, response)

    async def _delete(self, response_id: str, api_key_id: str | None) -> bool:
        async with self.db.transaction():
            changed = await self.db.execute(
                "DELETE FROM responses WHERE id = ? AND api_key_id IS ?",
                (response_id, api_key_id))
        return changed > 0


async def delete_expired(db: DatabaseBackend, now: float) -> int:
    """Delete the responses expired at ``now``, :data:`DELETE_BATCH` at a time (by the
    ``responses_expires`` index); how many went. The retention loop's, not a request's."""
    removed = 0
    while True:
        async with db.transaction():
            n = await db.execute(
                "DELETE FROM responses WHERE id IN "
                "(SELECT id FROM responses WHERE expires_at < ? LIMIT ?)", (now, DELETE_BATCH))
        removed += n
        if n < DELETE_BATCH:
            return removed
        await asyncio.sleep(0)  # the other writers go first
