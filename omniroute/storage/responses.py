"""Stored OpenAI Responses: what ``previous_response_id`` and ``GET /v1/responses/{id}`` read.

One row per response the gateway answered with ``store`` not false: the
*effective* input of that turn (the history it continued, then its own input
items), its output items, and the rest of the response object. Continuing from
a response is therefore one primary-key lookup (``input + output``), and
deleting or expiring one response never breaks another.

Rows belong to the API key that created them (``api_key_id``; NULL for
anonymous callers when keys are optional, which form one scope of their own):
every read and delete names the key, so a key never sees another key's rows.
Rows expire after ``ttl`` seconds (30 days, as OpenAI keeps them); expired rows
are deleted on the next write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from omniroute.storage.backend import DatabaseBackend

#: how long a stored response stays retrievable (OpenAI: 30 days)
DEFAULT_TTL = 30 * 24 * 3600.0


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

    def __init__(self, db: DatabaseBackend, *, ttl: float = DEFAULT_TTL) -> None:
        self.db = db
        self.ttl = ttl

    async def save(self, api_key_id: str | None, response: dict[str, Any],
                   input_items: list[Any]) -> None:
        """Store ``response`` (a ``response`` object with an ``id``) and the input it answered."""
        now = time.time()
        output = response.get("output") or []
        rest = {**response, "output": None}  # kept in its own column; the key keeps its place
        async with self.db.transaction():
            await self.db.execute("DELETE FROM responses WHERE expires_at < ?", (now,))
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
        """The response, when it exists, has not expired and belongs to ``api_key_id``."""
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

    async def delete(self, response_id: str, api_key_id: str | None) -> bool:
        async with self.db.transaction():
            changed = await self.db.execute(
                "DELETE FROM responses WHERE id = ? AND api_key_id IS ?",
                (response_id, api_key_id))
        return changed > 0
