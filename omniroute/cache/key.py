"""The cache key of a request: a hash of its canonical form, scoped by tenant.

The canonical request (:mod:`omniroute.formats.canonical`) is what every client
format decodes to, so the same question asked through the OpenAI API and the
Anthropic API has the same key. What goes in: messages, system, tools,
tool_choice, response format, sampling parameters, max_tokens, stop, reasoning
settings, format extras that may change the answer (``meta``), and the model the
client requested; what stays out: the stream flag and the fields that only
steer transport or bookkeeping (``user``, ``metadata``, ``stream_options``,
Responses ``store``, prompt-cache hints, service tier).

A key is the hex BLAKE2b digest (16 bytes) of one JSON array, the tenant first. A
request that is only text turns and scalar settings (what
:data:`~omniroute.formats.canonical.TextRequest` holds: most chat traffic) is hashed in
that text form, five items: ``[tenant, model, system, turns, settings]``, with ``turns``
as ``[role, text]`` pairs; it is the same array whether the text form was read from the
client's body (:func:`text_key`, without a decode) or made from the decoded request
(:func:`cache_key`), so a question meets its answer from any client format. Any other
request is hashed whole: ``[tenant, model, system, ..., messages]``, eighteen items, so
the two forms never give one array. (Keys were SHA-256 of the whole form for every
request before; entries stored under those are misses, and go with their TTL.)

The digest is the key's name (:func:`key_name`): what every backend but the in-process
one, every layer and the management API see. In the process a text request's key is kept
as its JSON array itself when it is short (:func:`text_exact`, :data:`Exact`): the
``memory`` backend's dict hashes those bytes in C and compares them whole, so a miss there
is told without hashing them; the name is made only where one is needed.

A request whose format can say cheaply that it is text ending with a user's turn
(``Format.asked_text``) is not even given that form when it is new: the ``memory`` backend
keeps its answer under the request's own bytes and scoping (:data:`Asked`: a byte-identical
request is the same question), indexed by that last user text, and gives it its exact key
(:func:`asked_exact`) only when a request that could be the same question comes, one with
that text (see :class:`~omniroute.cache.memory.MemoryCache`). Two requests with one exact
key have one last message, so one such text (:func:`last_text`, :func:`last_text_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from omniroute.cache.layer import CacheKey
from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest
from omniroute.tokens import estimate_request

if TYPE_CHECKING:
    from omniroute.formats.base import Format

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
#: the digest's size in bytes (a key is twice as many hex digits). BLAKE2b, not SHA-256:
#: both are software under valgrind, where a key of a text request costs ~6k instructions
#: against ~10k (a CPU with SHA-NI runs SHA-256 faster; either is a few hundred
#: nanoseconds for a request's few hundred bytes)
DIGEST_SIZE = 16
#: a BLAKE2b never fed: a key's hash starts as a copy of it (cheaper than the constructor,
#: which parses its keyword arguments on every call)
_BLAKE2B = blake2b(digest_size=DIGEST_SIZE)
#: an exact key as the process keeps it: a text request's JSON array itself (bytes, at
#: most ``RAW_MAX`` of them), which the in-process backend (``memory``) takes as it is,
#: a dict hashing it in C; or its name (str, the hex digest: :func:`key_name`), which
#: every other backend and layer is given, made only when one is asked
Exact: TypeAlias = "bytes | str"
#: a request kept by its bytes (the ``memory`` backend's key of a new text request, until a
#: request with its last user text asks for it): ``(body, format name, tenant, model, last
#: user text)``, the body at most ``RAW_MAX`` bytes; its exact key is :func:`asked_exact`
Asked: TypeAlias = "tuple[bytes, str, str, str, str]"
#: the longest JSON array kept as an exact key (a longer one is named at once); the
#: ``memory`` backend counts an entry's key in its size, so ``max_bytes`` bounds keys too
RAW_MAX = 512


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


def cache_key(request: c.Request, tenant: str, model: str, *, layers: bool = True,
              exact: Exact | None = None) -> CacheKey:
    """The :class:`CacheKey` of a cacheable ``request`` by ``tenant`` for ``model``.

    :param layers: compute what only the layers read (``scope``, ``prompt``, the flags,
        ``prompt_tokens``); without layers they are left empty, which saves about half
        the key's cost.
    :param exact: the request's :func:`exact_key`, when it is known (not made again).
    """
    fields = _question(request, model)
    if exact is None:
        text = text_form(request)
        exact = _digest(tenant, fields) if text is None else text_exact(text, tenant, model)
    name = key_name(exact)
    if not layers:
        # positional (exact, scope, prompt, tenant, model, multi_turn, has_tools,
        # has_media, prompt_tokens): a class called with keywords packs them into a dict
        return CacheKey(name, "", "", tenant, model, False, False, False, 0)
    messages = request.messages
    last = messages[-1] if messages else None
    prompt = ""
    if last is not None and last.role == "user":
        prompt = "\n".join(p.text for p in last.parts if isinstance(p, c.Text))
        blank = c.Message(last.role, [c.Text("") if isinstance(p, c.Text) else p
                                      for p in last.parts], last.name, last.meta)
        scope = _digest(tenant, (*fields[:-1], [*messages[:-1], blank]))
    else:
        scope = name
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
    return CacheKey(exact=name, scope=scope, prompt=prompt, tenant=tenant, model=model,
                    multi_turn=len(messages) > 1, has_tools=has_tools, has_media=has_media,
                    prompt_tokens=estimate_request(request))


def text_key(text: c.TextRequest, tenant: str, model: str) -> str:
    """The exact key (:attr:`CacheKey.exact`) of a request in its text form
    (``Format.text_request``), without decoding it: the key :func:`cache_key` gives the
    decoded request (which hashes :func:`text_form` the same way), so a question asked in
    another client format still finds it."""
    return key_name(text_exact(text, tenant, model))


def text_exact(text: c.TextRequest, tenant: str, model: str) -> Exact:
    """:func:`text_key` as the process keeps it (:data:`Exact`): the JSON array itself
    when it is at most :data:`RAW_MAX` bytes (not hashed), else its name."""
    raw = orjson.dumps((tenant, model, *text))
    return raw if len(raw) <= RAW_MAX else _name(raw)


def exact_key(request: c.Request, tenant: str, model: str) -> Exact:
    """The exact key of a cacheable ``request`` as the process keeps it (:data:`Exact`):
    :func:`text_exact` of its text form, else the name :func:`cache_key` gives it."""
    text = text_form(request)
    if text is not None:
        return text_exact(text, tenant, model)
    return _digest(tenant, _question(request, model))


def asked_exact(key: Asked, formats: Mapping[str, Format] | None) -> Exact | None:
    """The exact key of a request kept by its bytes (:data:`Asked`): what
    :func:`text_exact` or :func:`exact_key` give it as the cache stage keys it. None: it
    has none (a body its format no longer decodes, a format not loaded)."""
    raw, name, tenant, model, _ = key
    fmt = formats.get(name) if formats is not None else None
    if fmt is None:
        return None
    try:
        body = orjson.loads(raw)
        text = fmt.text_request(body)
        if text is not None:
            return text_exact(text, tenant, model)
        request = fmt.decode_request(ClientRequest(body, model, bool(body.get("stream"))))
    except (GatewayError, orjson.JSONDecodeError, TypeError, AttributeError):
        return None
    return None if uncacheable(request) is not None else exact_key(request, tenant, model)


def last_text(text: c.TextRequest) -> str | None:
    """The text of a request's last turn in its text form when it is a user's, not empty
    (what ``Format.asked_text`` reads from a body); else None."""
    turns = text[1]
    if turns:
        role, last = turns[-1]
        if role == "user" and last:
            return last
    return None


def last_text_of(request: c.Request) -> str | None:
    """:func:`last_text` of a decoded request: its last message's text when it is a user's
    one text part."""
    messages = request.messages
    if messages:
        last = messages[-1]
        parts = last.parts
        if last.role == "user" and len(parts) == 1 and type(parts[0]) is c.Text:
            return parts[0].text or None
    return None


def key_name(exact: Exact) -> str:
    """The name of an exact key (:attr:`CacheKey.exact`, what every backend but the
    in-process one and every layer are given, what the management API lists): a key
    kept as its JSON array, hashed; a name as it is."""
    if type(exact) is str:
        return exact
    digest = _BLAKE2B.copy()  # (_name's, in line: a call fewer a request with shared state)
    digest.update(exact)  # type: ignore[arg-type]
    return digest.hexdigest()


def _name(raw: bytes) -> str:
    digest = _BLAKE2B.copy()
    digest.update(raw)
    return digest.hexdigest()


def text_form(request: c.Request) -> c.TextRequest | None:
    """The text form of a decoded request, when it has one: what ``Format.text_request``
    reads from a client body that decodes to ``request``. None when the request holds
    anything else (tools, a response format, reasoning settings, extras that change the
    answer, a part that is not plain text, a message's name or meta, an empty text part:
    the text form writes an empty turn as a message without parts)."""
    r = request
    if (r.tools or r.tool_choice is not None or r.response_format is not None
            or r.reasoning is not None or _semantic_meta(r.meta)):
        return None
    system: list[str] = []
    for text in r.system:
        if type(text) is not c.Text or text.cache_control is not None or text.meta:
            return None
        system.append(text.text)
    turns: list[tuple[str, str]] = []
    for message in r.messages:
        if message.name is not None or message.meta:
            return None
        parts = message.parts
        if not parts:
            turns.append((message.role, ""))
            continue
        part = parts[0]
        if (len(parts) != 1 or type(part) is not c.Text or not part.text
                or part.cache_control is not None or part.meta):
            return None
        turns.append((message.role, part.text))
    return system, turns, (r.parallel_tool_calls, r.max_tokens, r.temperature, r.top_p,
                           r.top_k, r.stop, r.seed, r.presence_penalty, r.frequency_penalty)


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
    try:
        data = orjson.dumps((tenant, *question), option=_SORTED)
    except TypeError:  # (orjson.JSONEncodeError) a key that is not a string
        data = orjson.dumps((tenant, *question), option=_OPTIONS)
    return _name(data)
