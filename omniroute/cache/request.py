"""What the cache stage reads of a request (the bypass headers, the temperature, the memo
slot, the decode it keeps) and the verdict header it writes."""

from __future__ import annotations

from collections.abc import Hashable

from multidict import istr

from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest
from omniroute.pipeline.context import RequestContext

CACHE_HEADER = istr("X-OmniRoute-Cache")  # (aiohttp takes an istr name as it is)
SIMILARITY_HEADER = "X-OmniRoute-Cache-Similarity"
NO_CACHE_HEADER = "X-OmniRoute-No-Cache"
#: (``istr`` names: looked up without being case-folded on every request)
NO_CACHE, CACHE_CONTROL = istr(NO_CACHE_HEADER), istr("Cache-Control")
_TRUE = frozenset({"true", "1", "yes", "on"})


def say(ctx: RequestContext, verdict: str) -> None:
    """Put ``X-OmniRoute-Cache: <verdict>`` on the answer."""
    if ctx.reply_headers is None:
        ctx.reply_headers = {CACHE_HEADER: verdict}
    else:
        ctx.reply_headers[CACHE_HEADER] = verdict


def bypassed(ctx: RequestContext) -> bool:
    headers = ctx.headers
    flag = headers.get(NO_CACHE)
    if flag is not None and flag.strip().lower() in _TRUE:
        return True
    control = headers.get(CACHE_CONTROL)
    if control is None:
        return False
    directives = {d.strip().lower() for d in control.split(",")}
    return "no-cache" in directives or "no-store" in directives


def is_zero(value: object) -> bool:
    # the comparison first: it rules out most values in one bytecode (a tuple: ``int |
    # float`` would build a union object on every call)
    return value == 0 and isinstance(value, (int, float)) and not isinstance(value, bool)


def memo_slot(ctx: RequestContext, mode: str, layers: bool) -> tuple[Hashable, ...] | None:
    """Everything a request's cache key is computed from, its body's bytes last (a
    :class:`~omniroute.cache.memo.KeyMemo` slot); None: a stage replaced the client's body,
    or the format's decode reads the headers too (its key is computed every time)."""
    read = ctx.as_read
    if read is None or ctx.body is not read[1] or ctx.fmt.decode_reads_headers:
        return None
    query = ctx.query
    return (ctx.fmt.name, ctx.principal.key_id or "", ctx.model, ctx.prefix, ctx.stream, layers,
            mode, tuple(query.items()) if query else (), read[0])


def canonical_of(ctx: RequestContext) -> c.Request | None:
    """The request in the canonical model, decoded once (None: it does not decode; the
    operation then refuses it, or the pass-through lane sends it as it is)."""
    if ctx.canonical is None:
        try:
            ctx.canonical = ctx.fmt.decode_request(ClientRequest(
                ctx.body, ctx.model, ctx.stream, ctx.headers, ctx.query))
        except GatewayError:
            return None
    return ctx.canonical
