"""The cache key of a request: a hash of its canonical form, scoped by tenant.

The canonical request (:mod:`omniroute.formats.canonical`) is what every client
format decodes to, so the same question asked through the OpenAI API and the
Anthropic API has the same key. What goes in: messages, system, tools,
tool_choice, response format, sampling parameters, max_tokens, stop, reasoning
settings, format extras that may change the answer (``meta``), and the model the
client requested; what stays out: the stream flag and the fields that only
steer transport or bookkeeping (``user``, ``metadata``, ``stream_options``,
Responses ``store``, prompt-cache hints, service tier).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from omniroute.cache.layer import CacheKey
from omniroute.formats import canonical as c
from omniroute.tokens import estimate_request

#: format extras that do not change the answer (dropped from ``Request.meta[<format>]``)
_TRANSPORT = frozenset({
    "include_usage", "stream_options", "store", "prompt_cache_key", "prompt_cache_retention",
    "service_tier", "safety_identifier", "user", "metadata", "keep_alive",
})
#: format extras that make an answer unfit for the cache wherever they appear in ``meta``
#: (log-probabilities, several choices)
_UNCACHEABLE = frozenset({"logprobs", "top_logprobs", "responseLogprobs"})
_CHOICES = ("n", "candidateCount", "best_of")
_SORTED = orjson.OPT_SORT_KEYS
#: for a question with a key that is not a string somewhere in its extras (the same bytes
#: as ``_SORTED`` gives wherever that one does not fail, at a slower pace)
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
#: a sha256 never fed: a key's hash starts as a copy of it (``hashlib.sha256()`` looks the
#: algorithm up anew on every call, at several times the cost of hashing a request)
_SHA256 = hashlib.sha256()


def uncacheable(request: c.Request) -> str | None:
    """Why ``request`` must not be cached (log-probabilities, ``n > 1``), or None."""
    return _scan(request.meta, 0)


def _scan(value: Any, depth: int) -> str | None:
    if depth > 3 or not isinstance(value, dict):
        return None
    for name, item in value.items():
        if name in _UNCACHEABLE and item not in (None, False, 0):
            return name
        if name in _CHOICES and isinstance(item, int) and item > 1:
            return name
        found = _scan(item, depth + 1)
        if found is not None:
            return found
    return None


def cache_key(request: c.Request, tenant: str, model: str, *, layers: bool = True) -> CacheKey:
    """The :class:`CacheKey` of a cacheable ``request`` by ``tenant`` for ``model``.

    :param layers: compute what only the layers read (``scope``, ``prompt``, the flags,
        ``prompt_tokens``); without layers they are left empty, which saves about half
        the key's cost.
    """
    fields = _question(request, model)
    exact = _digest(tenant, fields)
    if not layers:
        # positional (exact, scope, prompt, tenant, model, multi_turn, has_tools,
        # has_media, prompt_tokens): a class called with keywords packs them into a dict
        return CacheKey(exact, "", "", tenant, model, False, False, False, 0)
    messages = request.messages
    last = messages[-1] if messages else None
    prompt = ""
    if last is not None and last.role == "user":
        prompt = "\n".join(p.text for p in last.parts if isinstance(p, c.Text))
        blank = c.Message(last.role, [c.Text("") if isinstance(p, c.Text) else p
                                      for p in last.parts], last.name, last.meta)
        scope = _digest(tenant, (*fields[:-1], [*messages[:-1], blank]))
    else:
        scope = exact
    has_tools = bool(request.tools)
    has_media = False
    for message in messages:
        for part in message.parts:
            if isinstance(part, (c.ToolCall, c.ToolResult)):
                has_tools = True
                if isinstance(part, c.ToolResult) and any(
                        isinstance(p, (c.Image, c.File)) for p in part.content):
                    has_media = True
            elif isinstance(part, (c.Image, c.File)):
                has_media = True
    return CacheKey(exact=exact, scope=scope, prompt=prompt, tenant=tenant, model=model,
                    multi_turn=len(messages) > 1, has_tools=has_tools, has_media=has_media,
                    prompt_tokens=estimate_request(request))


def text_key(text: c.TextRequest, tenant: str, model: str) -> str:
    """The exact key (:attr:`CacheKey.exact`) of a request in its text form
    (``Format.text_request``), without decoding it: the same key :func:`cache_key` gives
    the decoded request, so a question asked in another client format still finds it.

    It hashes the same bytes: the canonical objects' JSON (their fields in declaration
    order) written out as dicts in that order, so not sorted (no dict here has keys to sort).
    """
    system, turns, settings = text
    # (loops, not comprehensions: a comprehension is a function called, a frame more)
    texts: list[dict[str, Any]] = []
    for t in system:
        texts.append({"text": t, "cache_control": None, "meta": {}})
    messages: list[dict[str, Any]] = []
    for role, t in turns:
        messages.append({"role": role, "parts": [{"text": t, "cache_control": None, "meta": {}}]
                         if t else [], "name": None, "meta": {}})
    digest = _SHA256.copy()
    digest.update(tenant.encode())
    digest.update(b"\0")
    digest.update(orjson.dumps([model, texts, [], None, *settings, None, None, {}, messages]))
    return digest.hexdigest()


def _question(request: c.Request, model: str) -> tuple[Any, ...]:
    """What the answer depends on, messages last (no copy of the request is made)."""
    r = request
    return (model, r.system, r.tools, r.tool_choice, r.parallel_tool_calls, r.max_tokens,
            r.temperature, r.top_p, r.top_k, r.stop, r.seed, r.presence_penalty,
            r.frequency_penalty, r.response_format, r.reasoning, _semantic_meta(r.meta),
            r.messages)


def _semantic_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in meta.items():
        if isinstance(value, dict):
            kept = {k: v for k, v in value.items() if k not in _TRANSPORT}
            if kept:
                out[name] = kept
        elif name not in _TRANSPORT:
            out[name] = value
    return out


def _digest(tenant: str, question: tuple[Any, ...]) -> str:
    digest = _SHA256.copy()
    digest.update(tenant.encode())
    digest.update(b"\0")
    try:
        data = orjson.dumps(question, option=_SORTED)
    except TypeError:  # (orjson.JSONEncodeError) a key that is not a string
        data = orjson.dumps(question, option=_OPTIONS)
    digest.update(data)
    return digest.hexdigest()
