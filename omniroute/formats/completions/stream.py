"""Completions streams: ``text_completion`` chunks from canonical events, closed by ``[DONE]``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from omniroute.formats import canonical as c
from omniroute.formats.completions.response import FINISH, choice, completion_id, usage_object
from omniroute.sse import DONE, encode


async def encode_stream(events: AsyncIterator[c.Event],
                        include_usage: bool) -> AsyncIterator[bytes]:
    head: dict[str, Any] = {"id": "cmpl-", "object": "text_completion",
                            "created": int(time.time()), "model": ""}
    usage = c.Usage()
    # `events` is an async generator (as in pipeline/chat.py's _tap_usage); the declared
    # AsyncIterator has no aclose
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, c.Start):
                head.update(id=completion_id(event.id), model=event.model,
                            created=event.created or head["created"])
                usage.merge(event.usage)
            elif isinstance(event, c.TextDelta) and event.text:
                yield encode({**head, "choices": [choice(event.text, None)]})
            elif isinstance(event, c.Finish):
                usage.merge(event.usage)
                finish = FINISH.get(event.stop_reason or "", "stop")
                yield encode({**head, "choices": [choice("", finish)]})
                if include_usage:
                    yield encode({**head, "choices": [], "usage": usage_object(usage)})
    yield DONE
