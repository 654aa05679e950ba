"""The Lua scripts: each shared operation is one script, so it is atomic in Redis.

No operation reads a value, decides in Python and writes it back: the decision
runs where the value is. Times inside the scripts are the Redis server's
(``TIME``), so the windows and leases of every instance share one clock.

:class:`Scripts` runs them by their SHA (``EVALSHA``) and loads them again when
Redis answers ``NOSCRIPT`` (a restarted server has forgotten them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from omniroute_redis.wire import Command, NoScript, _parse, bulks

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

#: one resilience record (a connection's statistics and rest, a breaker): apply one
#: instance's change to the shared JSON record, keep it for ARGV[5] seconds, publish
#: it on ARGV[4] (when given) and return it. ARGV[1] is the change:
#: ``add`` numbers, ``max`` numbers, ``set`` values, ``ewma`` deltas (the record's own
#: value when it has none), ``full`` (the whole record, when Redis has none),
#: ``trial`` (a half-open trial was taken: stamp it; trials older than ARGV[6] seconds
#: belong to an instance that is gone), ``delete``.
MERGE = _NOW + """
local op = cjson.decode(ARGV[1])
local null = cjson.null
local function val(x) if x == null then return nil end return x end
if op.delete then
  redis.call('DEL', KEYS[1])
  if ARGV[4] ~= '' then
    redis.call('PUBLISH', ARGV[4], cjson.encode({t = ARGV[2], k = ARGV[3], gone = true}))
  end
  return false
end
local raw = redis.call('GET', KEYS[1])
local r
if not raw then
  r = op.full
else
  r = cjson.decode(raw)
  if op.add then for f, d in pairs(op.add) do r[f] = (val(r[f]) or 0) + d end end
  if op.max then
    for f, x in pairs(op.max) do
      local c = val(r[f])
      if c == nil or x > c then r[f] = x end
    end
  end
  if op.ewma then
    for f, d in pairs(op.ewma) do
      local c = val(r[f])
      if c == nil then r[f] = op.full[f] else r[f] = c + d end
    end
  end
  if op.set then for f, x in pairs(op.set) do r[f] = x end end
end
if val(r.error_rate) ~= nil then r.error_rate = math.min(1, math.max(0, r.error_rate)) end
if val(r.ttft) ~= nil then r.ttft = math.max(0, r.ttft) end
if val(r.trials) ~= nil then
  if op.trial then r.trial_at = now end
  if r.trials < 0 or (r.trials > 0 and now - (val(r.trial_at) or now) > tonumber(ARGV[6])) then
    r.trials = 0
  end
end
r.rev = (val(r.rev) or 0) + 1
local out = cjson.encode(r)
redis.call('SET', KEYS[1], out, 'EX', ARGV[5])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], cjson.encode({t = ARGV[2], k = ARGV[3], r = r}))
end
return out
"""

#: take a slot under a concurrency limit and a requests-per-minute limit, or say how
#: long until one may be free: KEYS = the slots (member -> lease end) and the starts
#: (member -> start time) of one connection or API key; ARGV = member, concurrency or
#: '', rpm or '', lease seconds. Returns '0' (taken), 'c' (concurrency full) or the
#: seconds until the rolling minute frees one.
TAKE_FN = """
local function take(K, A)
  local member, concurrency, rpm = A[1], A[2], A[3]
  if concurrency ~= '' then
    redis.call('ZREMRANGEBYSCORE', K[1], '-inf', now)
    if redis.call('ZCARD', K[1]) >= tonumber(concurrency) then return 'c' end
  end
  if rpm ~= '' then
    local limit = tonumber(rpm)
    redis.call('ZREMRANGEBYSCORE', K[2], '-inf', now - 60)
    local n = redis.call('ZCARD', K[2])
    if n >= limit then
      local oldest = redis.call('ZRANGE', K[2], n - limit, n - limit, 'WITHSCORES')
      return tostring(math.max(0.001, tonumber(oldest[2]) + 60 - now))
    end
    redis.call('ZADD', K[2], now, member)
    redis.call('EXPIRE', K[2], 61)
  end
  if concurrency ~= '' then
    redis.call('ZADD', K[1], now + tonumber(A[4]), member)
    redis.call('EXPIRE', K[1], math.ceil(tonumber(A[4])) + 1)
  end
  return '0'
end
"""
TAKE = _NOW + TAKE_FN + "return take(KEYS, ARGV)\n"

#: extend the leases of the slots an instance holds: KEYS[1] = the slots; ARGV = lease
#: seconds, then the members (only those still there)
RENEW = _NOW + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 1)
return #ARGV - 1
"""

#: the reservations in flight of a key's budget (``key``: id -> "µusd tokens lease_end"),
#: the expired ones dropped: how many, their µUSD and their tokens (the ``reserve`` and
#: ``lease`` scripts')
RESERVED_FN = """
local function reserved(key)
  local held, rusd, rtok = 0, 0, 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local u, k, e = string.match(all[i + 1], '(%S+) (%S+) (%S+)')
    if tonumber(e) <= now then
      redis.call('HDEL', key, all[i])
    else
      held, rusd, rtok = held + 1, rusd + tonumber(u), rtok + tonumber(k)
    end
  end
  return held, rusd, rtok
end
"""

#: admit a request against an API key's budget windows and reserve its estimate. Money
#: is whole micro-dollars (µUSD) here and on the wire (integers: no float is formatted
#: or parsed per request, and the spend adds up exactly): KEYS[1] = the key's
#: reservations (id -> "µusd tokens lease_end"), KEYS[2..] = one spend hash per window
#: (musd, tokens, requests). ARGV: first what is the same for every request of the key
#: in these windows, lease seconds, then per window: end, µUSD limit or '', token limit
#: or ''; then the request's own: its id, and one argument of space-separated numbers
#: (one argument costs the gateway one format to pack, not one a number): µUSD, tokens,
#: and per window this instance's own count of its spend in µUSD and tokens (a floor:
#: Redis may have lost some). Returns {'ok',
#: µusd1, tokens1, ...} or {'no', window, unit, spent, reserved, estimate, limit}
#: (amounts in µUSD for the unit 'USD'); a window admits while its spend is under the
#: limit and the reservations in flight and this estimate fit, or nothing else of the
#: key is in flight.
RESERVE_FN = RESERVED_FN + """
local function int(x) return string.format('%d', x) end
local function reserve(K, A)
  local held, rusd, rtok = reserved(K[1])
  local alone = held == 0
  local n = #K - 1
  local v = 1 + 3 * n
  local own, o = {}, 0
  for x in string.gmatch(A[v + 2], '%S+') do o = o + 1; own[o] = x end
  local id, musd, mtok = A[v + 1], own[1], own[2]
  local usd, tokens = tonumber(musd), tonumber(mtok)
  local out = {'ok'}
  local refusal, refusal_end = nil, 0
  local function admits(spent, reserved, estimate, limit)
    return spent < limit and (alone or spent + reserved + estimate <= limit)
  end
  for w = 1, n do
    local b, f = 1 + (w - 1) * 3, 2 + (w - 1) * 2
    local wend, lusd, ltok = tonumber(A[b + 1]), A[b + 2], A[b + 3]
    local key = K[w + 1]
    local su = tonumber(redis.call('HGET', key, 'musd') or '-1')
    local st = tonumber(redis.call('HGET', key, 'tokens') or '-1')
    local fu, ft = tonumber(own[f + 1]), tonumber(own[f + 2])
    if su < fu then su = fu; redis.call('HSET', key, 'musd', own[f + 1]) end
    if st < ft then st = ft; redis.call('HSET', key, 'tokens', own[f + 2]) end
    redis.call('EXPIREAT', key, math.ceil(wend) + 86400)
    out[#out + 1] = int(su)
    out[#out + 1] = int(st)
    if lusd ~= '' and not admits(su, rusd, usd, tonumber(lusd)) and wend > refusal_end then
      refusal, refusal_end = {'no', tostring(w), 'USD', int(su), int(rusd), musd, lusd}, wend
    end
    if ltok ~= '' and wend > refusal_end and not admits(st, rtok, tokens, tonumber(ltok)) then
      refusal, refusal_end = {'no', tostring(w), 'tokens', int(st), int(rtok), mtok, ltok},
                             wend
    end
  end
  if refusal then return refusal end
  local lease = tonumber(A[1])
  redis.call('HSET', K[1], id, musd .. ' ' .. mtok .. ' ' .. tostring(now + lease))
  redis.call('EXPIRE', K[1], math.ceil(lease) + 60)
  return out
end
"""
RESERVE = _NOW + RESERVE_FN + "return reserve(KEYS, ARGV)\n"

#: a request is over: drop its reservation (KEYS[1], field ARGV[1]) and add its spend
#: (ARGV[2]: "<µUSD> <tokens>", one argument: one format to pack; one request) to each
#: window (KEYS[2..]); with ARGV[3], also give back the key's slot: ARGV[3] is its
#: member, the last key its slots (the request's writes after its answer in one command)
SETTLE = """
redis.call('HDEL', KEYS[1], ARGV[1])
local musd, tokens = string.match(ARGV[2], '(%S+) (%S+)')
local last = #KEYS
if ARGV[3] then
  redis.call('ZREM', KEYS[last], ARGV[3])
  last = last - 1
end
for w = 2, last do
  redis.call('HINCRBY', KEYS[w], 'musd', musd)
  redis.call('HINCRBY', KEYS[w], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[w], 'requests', 1)
end
return 1
"""

#: lease an API key's limits to one instance (:mod:`.keylease`): up to ``want`` requests'
#: rpm starts and budget estimates, and up to ``kmax`` of its concurrency slots, each at
#: most 1/``share`` of what is left of its limit (a lease shrinks as the limits near;
#: under 2 requests, none is granted). KEYS = the key's slots and starts, then, with a
#: budget, its reservations and one spend hash per window (the ``reserve`` script's).
#: ARGV = the lease's name (its members' and its reservation's prefix), want, concurrency
#: or '', rpm or '', share, the slots' lease seconds, kmax, "<µUSD> <tokens>" of one
#: request; with a budget the reservation's lease seconds and per window: end, µUSD limit
#: or '', token limit or ''. Returns {requests, slots} granted ({0, 0}: none).
LEASE = _NOW + RESERVED_FN + """
local name, n = ARGV[1], tonumber(ARGV[2])
local concurrency, rpm, share = ARGV[3], ARGV[4], tonumber(ARGV[5])
local musd, mtok = string.match(ARGV[8], '(%S+) (%S+)')
musd, mtok = tonumber(musd), tonumber(mtok)
local k = 0
if concurrency ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local free = tonumber(concurrency) - redis.call('ZCARD', KEYS[1])
  k = math.min(tonumber(ARGV[7]), math.floor(free / share))
  if k < 1 then return {0, 0} end
end
if rpm ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
  n = math.min(n, math.floor((tonumber(rpm) - redis.call('ZCARD', KEYS[2])) / share))
end
if #KEYS > 2 then
  local _, rusd, rtok = reserved(KEYS[3])
  for w = 4, #KEYS do
    local lusd, ltok = ARGV[11 + (w - 4) * 3], ARGV[12 + (w - 4) * 3]
    if lusd ~= '' and musd > 0 then
      local su = tonumber(redis.call('HGET', KEYS[w], 'musd') or '0')
      n = math.min(n, math.floor((tonumber(lusd) - su - rusd) / (share * musd)))
    end
    if ltok ~= '' and mtok > 0 then
      local st = tonumber(redis.call('HGET', KEYS[w], 'tokens') or '0')
      n = math.min(n, math.floor((tonumber(ltok) - st - rtok) / (share * mtok)))
    end
  end
end
if n < 2 then return {0, 0} end
if rpm ~= '' then
  for i = 1, n do redis.call('ZADD', KEYS[2], now, name .. ':' .. i) end
  redis.call('EXPIRE', KEYS[2], 61)
end
if k > 0 then
  local lease = tonumber(ARGV[6])
  for i = 1, k do redis.call('ZADD', KEYS[1], now + lease, name .. ':c' .. i) end
  redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 1)
end
if #KEYS > 2 then
  local lease = tonumber(ARGV[9])
  redis.call('HSET', KEYS[3], name, string.format('%d %d ', musd * n, mtok * n)
             .. tostring(now + lease))
  redis.call('EXPIRE', KEYS[3], math.ceil(lease) + 60)
end
return {n, k}
"""

#: a lease is over (:mod:`.keylease`): KEYS as the ``lease`` script's; ARGV = its name,
#: the requests it admitted, granted, its slots, the seconds since it closed,
#: and "<µUSD> <tokens> <requests>" spent ('': nothing to settle, a blind undo). The
#: starts not used are given back, the used ones counted from its close; its
#: slots and its reservation dropped; its spend added to each window.
LEASE_END = _NOW + """
local name, used, n, k = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = used + 1, n do redis.call('ZREM', KEYS[2], name .. ':' .. i) end
local last = now - tonumber(ARGV[5])
for i = 1, used do redis.call('ZADD', KEYS[2], 'XX', last, name .. ':' .. i) end
for i = 1, k do redis.call('ZREM', KEYS[1], name .. ':c' .. i) end
if #KEYS > 2 then
  redis.call('HDEL', KEYS[3], name)
  if ARGV[6] ~= '' then
    local musd, tokens, requests = string.match(ARGV[6], '(%S+) (%S+) (%S+)')
    for w = 4, #KEYS do
      redis.call('HINCRBY', KEYS[w], 'musd', musd)
      redis.call('HINCRBY', KEYS[w], 'tokens', tokens)
      redis.call('HINCRBY', KEYS[w], 'requests', requests)
    end
  end
end
return 1
"""

#: a session bound to a connection: KEYS[1] = the session, ARGV = connection id, TTL
#: milliseconds, channel, message
SESSION = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

#: a cache lookup that counts the entry's hits: KEYS = entry, hits hash; ARGV[1] = field
CACHE_GET_FN = """
local function cache_get(K, A)
  local value = redis.call('GET', K[1])
  if value then redis.call('HINCRBY', K[2], A[1], 1) end
  return value
end
"""
CACHE_GET = CACHE_GET_FN + "return cache_get(KEYS, ARGV)\n"

#: store a cache entry: KEYS = entry, index (field -> expiry), hits; ARGV = value, TTL
#: ms, field, most entries, the entries' key prefix. Expired index rows go first, then
#: the entries closest to their end while the index holds more than the most.
CACHE_SET = _NOW + """
local prefix = ARGV[5]
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, field in ipairs(gone) do
  redis.call('ZREM', KEYS[2], field)
  redis.call('HDEL', KEYS[3], field)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]) / 1000, ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[2], math.min(over, 100))
  for i = 1, #evicted, 2 do
    redis.call('DEL', prefix .. evicted[i])
    redis.call('HDEL', KEYS[3], evicted[i])
  end
end
return 1
"""

#: claim an idempotency key (KEYS[1], a hash): ARGV = fingerprint, request id, lease ms.
#: Returns {'mine'} (claimed now), {'conflict'} (another fingerprint), {'calling'} or
#: {'failed'} (another request's call), or {'done', request id, stream, status, headers,
#: kind, payload}. A request told 'calling' waits for the answer: the key is marked
#: ``waited``, so that its settle (or release) publishes it (unmarked, nobody listens:
#: nothing is published).
IDEM_CLAIM_FN = """
local function idem_claim(K, A)
  local state = redis.call('HGET', K[1], 'state')
  if not state then
    redis.call('HSET', K[1], 'state', 'calling', 'fp', A[1], 'rid', A[2])
    redis.call('PEXPIRE', K[1], A[3])
    return {'mine'}
  end
  if redis.call('HGET', K[1], 'fp') ~= A[1] then return {'conflict'} end
  if state == 'done' then
    return {'done', unpack(redis.call('HMGET', K[1], 'rid', 'stream', 'status', 'headers',
                                      'kind', 'payload'))}
  end
  if state == 'calling' then redis.call('HSET', K[1], 'waited', '1') end
  return {state}
end
"""
IDEM_CLAIM = IDEM_CLAIM_FN + "return idem_claim(KEYS, ARGV)\n"

#: the claimed key's answer is final: KEYS[1]; ARGV = request id (only its own claim is
#: settled), state ('done' or 'failed'), stream, status, headers, kind, payload, keep ms,
#: channel. Published on the channel (the key's name) when a request waits for it (the
#: claim marked it ``waited``): most keys are never asked twice, and nobody hears those.
IDEM_SETTLE = """
local found = redis.call('HMGET', KEYS[1], 'rid', 'waited')
if found[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'stream', ARGV[3], 'status', ARGV[4],
           'headers', ARGV[5], 'kind', ARGV[6], 'payload', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
if found[2] then redis.call('PUBLISH', ARGV[9], KEYS[1]) end
return 1
"""

#: a claim a request took and will not use (it turned out a duplicate here): KEYS[1];
#: ARGV = request id, channel. Dropped only while it is that request's and still
#: calling; its name is published when a request waits for it (as for a settle), so
#: that instances waiting on it ask again.
IDEM_RELEASE = """
local found = redis.call('HMGET', KEYS[1], 'rid', 'state', 'waited')
if found[1] ~= ARGV[1] or found[2] ~= 'calling' then return 0 end
redis.call('DEL', KEYS[1])
if found[3] then redis.call('PUBLISH', ARGV[2], KEYS[1]) end
return 1
"""

#: one request's shared work before dispatch, in one script (:mod:`.prefetch`): the steps
#: run in order, each one the script of the same name (``take``, ``cache_get``,
#: ``idem_claim``, ``reserve``), and the first answer that makes the rest moot stops
#: them: a slot refused, a cache hit, a key claimed by another request, a reservation
#: refused. ARGV[1] = the steps, one argument (fewer arguments cost the gateway less
#: to pack): per step its name and counts of keys and arguments, space-separated
#: (``take 2 4 cache_get 2 1``); then every step's arguments; KEYS = every step's keys,
#: in order. Returns the answers of the steps that ran.
ADMIT = _NOW + TAKE_FN + CACHE_GET_FN + IDEM_CLAIM_FN + RESERVE_FN + """
local steps = {take = take, cache_get = cache_get, idem_claim = idem_claim, reserve = reserve}
local stops = {
  take = function(r) return r ~= '0' end,
  cache_get = function(r) return r ~= false end,
  idem_claim = function(r) return r[1] ~= 'mine' end,
  reserve = function(r) return r[1] == 'no' end,
}
local ki, ai, s = 1, 2, 0
local out = {}
for name, nk, na in string.gmatch(ARGV[1], '(%S+) (%d+) (%d+)') do
  nk, na = tonumber(nk), tonumber(na)
  local k, a = {}, {}
  for i = 1, nk do k[i] = KEYS[ki + i - 1] end
  for i = 1, na do a[i] = ARGV[ai + i - 1] end
  ki, ai = ki + nk, ai + na
  local r = steps[name](k, a)
  s = s + 1
  out[s] = r
  if stops[name](r) then break end
end
return out
"""

#: a credential renewal is over: KEYS[1] = its lock, ARGV = the holder, the channel
#: (only the holder's own lock goes; the connection's id is published)
RENEW_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
"""

SOURCES = {"merge": MERGE, "take": TAKE, "renew": RENEW, "reserve": RESERVE,
           "settle": SETTLE, "session": SESSION, "cache_get": CACHE_GET,
           "cache_set": CACHE_SET, "idem_claim": IDEM_CLAIM, "idem_settle": IDEM_SETTLE,
           "idem_release": IDEM_RELEASE, "admit": ADMIT, "renew_release": RENEW_RELEASE,
           "lease": LEASE, "lease_end": LEASE_END}


#: the sequences of steps whose ``admit`` command's parts are kept (:meth:`Scripts.admit_parts`)
ADMITS_KEPT = 4096


class Scripts:
    """The scripts by name, run with ``EVALSHA`` (loaded again after ``NOSCRIPT``)."""

    def __init__(self) -> None:
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest()
                    for name, src in SOURCES.items()}
        #: ``EVALSHA``, a script's SHA and its count of keys, packed (:meth:`packed`)
        self._heads: dict[tuple[str, int], bytes] = {}
        #: the ``admit`` command's parts packed once per sequence of steps (by their heads:
        #: :meth:`admit_parts`)
        self.admits: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    async def load(self, client: Any) -> None:
        """Load every script (one pipeline)."""
        async with client.pipeline(transaction=False) as pipe:
            for src in SOURCES.values():
                pipe.script_load(src)
            await pipe.execute()

    async def run(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` with a redis-py client (one round trip; two after Redis
        forgot its scripts)."""
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha[name], len(keys), *keys, *args)

    def command(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command of script ``name``, for :meth:`Link.commands
        <omniroute_redis.link.Link.commands>`."""
        return ("EVALSHA", self.sha[name], len(keys), *keys, *args)

    def packed(self, name: str, keys: bytes, nkeys: int, args: bytes, nargs: int) -> bytes:
        """:meth:`command` packed: ``keys`` and ``args`` are the keys and the arguments
        packed already (:func:`~omniroute_redis.wire.bulks`; the parts that do not change
        from one request to the next packed once by their owner)."""
        head = self._heads.get((name, nkeys))
        if head is None:
            head = self._heads[name, nkeys] = bulks(("EVALSHA", self.sha[name], nkeys))
        return b"*%d\r\n%b%b%b" % (3 + nkeys + nargs, head, keys, args)

    def admit_parts(self, heads: tuple[str, ...], nkeys: int, nargs: int) -> tuple[bytes, bytes]:
        """The ``admit`` command of steps with these heads (``take 2 4``; ``nkeys`` and
        ``nargs`` their counts of keys and arguments), up to its keys, and its first
        argument (the heads), packed: made once per sequence of steps (a request packs
        only its steps' keys and arguments), kept in :attr:`admits`."""
        if len(self.admits) >= ADMITS_KEPT:
            self.admits.clear()
        first = " ".join(heads).encode()
        made = self.admits[heads] = (self.packed("admit", b"", nkeys, b"", 1 + nargs),
                                     b"$%d\r\n%b\r\n" % (len(first), first))
        return made

    def source(self, name_or_sha: str) -> str:
        """A script's source, by name or by SHA."""
        if name_or_sha in SOURCES:
            return SOURCES[name_or_sha]
        return SOURCES[next(n for n, sha in self.sha.items() if sha == name_or_sha)]

    async def call(self, link: Any, name: str, keys: list[str], args: list[Any],
                   late: Callable[[Any], None] | None = None, riders: Any = None) -> Any:
        """Run script ``name`` on the link's request-path connection (one round trip; two
        after Redis forgot it).

        :param late: gets the answer if the caller is cancelled before it comes
            (:meth:`Link.command <omniroute_redis.link.Link.command>`).
        :param riders: writes to send before it, in the same write (the same).
        :raises Unreachable: Redis cannot be reached.
        """
        try:
            return await link.command(*self.command(name, keys, args), late=late,
                                      riders=riders)
        except NoScript:
            await link.command("SCRIPT", "LOAD", SOURCES[name])
            return await link.command(*self.command(name, keys, args), late=late)

    async def send(self, link: Any, name: str, packed: bytes,
                   late: Callable[[Any], None] | None = None, riders: Any = None) -> Any:
        """:meth:`call` of a command :meth:`packed` already."""
        try:
            return await link.command(packed, late=late, riders=riders)
        except NoScript:
            await self.load_one(link, name)
            return await link.command(packed, late=late)

    async def load_one(self, link: Any, name: str) -> None:
        """Load script ``name`` on the link's request-path connection (after ``NOSCRIPT``)."""
        await link.command("SCRIPT", "LOAD", SOURCES[name])

    async def reload_for(self, link: Any, commands: Sequence[Command]) -> None:
        """Load the scripts these ``EVALSHA`` commands name (after ``NOSCRIPT``)."""
        shas = set()
        for c in commands:
            if type(c) is bytes:  # packed: read back
                c = tuple(a.decode() for a in _parse(c, 0)[0])
            if c and c[0] == "EVALSHA":
                shas.add(c[1].decode() if isinstance(c[1], bytes) else str(c[1]))
        await link.commands([("SCRIPT", "LOAD", self.source(sha)) for sha in shas])
