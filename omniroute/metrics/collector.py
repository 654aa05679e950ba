"""The gateway's Prometheus metrics, written with prometheus-client.

One :class:`Metrics` per application (never prometheus-client's global
registry). Per request the metrics stage calls :meth:`Metrics.observe` with
the finished record: one dictionary lookup finds what counts for that
(endpoint, provider, model, status), then a few increments. What is state
rather than traffic (breakers, cooldowns, the usage-record backlog) is read at
scrape time by :meth:`Metrics.refresh`.

In one process the counts are plain numbers until a scrape, so prometheus-client
(1 MiB of memory with the ``http.server``, ``wsgiref`` and ``gzip`` its package
imports) is imported, and the metric families made, at the first scrape (or the
first look at a family): a gateway nobody scrapes never holds it.

With ``--workers N`` every worker writes its values to prometheus-client's
multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, a fresh one per run that
``serve`` makes before the workers start) and a scrape, whichever worker
answers it, merges all of them (:class:`~prometheus_client.multiprocess.MultiProcessCollector`):
counters and histograms add up; the in-flight and backlog gauges sum over live
workers; breaker and cooldown gauges take the worst live worker's value.

Labels hold only names from the configuration and the request's shape: the
endpoint, the provider prefix, the upstream model, the status, a connection's
id and name. Never a key, a credential or content. The upstream model is the
one label a client can vary, so at most :data:`MAX_MODELS` distinct (provider,
model) pairs get their own series per process; later ones count as ``_other``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from omniroute.resilience import Resilience
    from omniroute.sharedstate import SharedState
    from omniroute.storage import RequestLog, RequestRecord
    from omniroute.storage.store import Connection

#: histogram buckets (seconds): LLM answers take from tens of milliseconds to minutes
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: distinct (provider, model) label pairs per process; requests past that count as OTHER
MAX_MODELS = 500
OTHER = "_other"
#: ``omniroute_breaker_state`` values (the worst state has the highest number)
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


Add = Callable[[float], None]


def _adder(counter: Counter) -> Add:
    """What adds to one counter child: its value's own ``inc`` (the per-request path
    skips ``Counter.inc``'s checks: the amounts here are never negative and carry no
    exemplar), or ``Counter.inc`` should prometheus-client keep its value elsewhere."""
    value = getattr(counter, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else counter.inc


class _Observer:
    """One histogram child, observed without ``Histogram.observe``'s checks and bucket
    loop: the bucket is found by bisection. Falls back to ``observe`` should
    prometheus-client keep its values elsewhere (in one process a tally's observations
    are then given to ``observe`` at their buckets' upper bounds: the buckets and the
    count exact, the sum approximate)."""

    __slots__ = ("add_sum", "buckets", "observe")

    def __init__(self, histogram: Histogram) -> None:
        self.observe: Add | None = None
        sum_, buckets = getattr(histogram, "_sum", None), getattr(histogram, "_buckets", None)
        bounds = getattr(histogram, "_upper_bounds", None)
        if (bounds is None or buckets is None or not callable(getattr(sum_, "inc", None))
                or list(bounds) != [*BUCKETS, math.inf]):
            self.observe = histogram.observe
            self.add_sum, self.buckets = (lambda _: None), ()
            return
        self.add_sum = sum_.inc  # type: ignore[union-attr]
        self.buckets = tuple(bucket.inc for bucket in buckets)


class _Bound:
    """What one (endpoint, provider, model, status) counts to: in one process a tally of
    plain numbers, added to its label children at a scrape (:meth:`settle`); with
    workers the label children's adders, bound once."""

    __slots__ = ("cache_hits", "cache_read", "cache_write", "cost", "input", "labels",
                 "latency", "output", "reasoning", "requests", "tally", "ttfb")

    requests: Add
    latency: _Observer
    ttfb: _Observer
    input: Add
    output: Add
    cache_read: Add
    cache_write: Add
    reasoning: Add
    cost: Add
    cache_hits: Add

    def __init__(self, metrics: Metrics, endpoint: str, provider: str, model: str,
                 status: str) -> None:
        self.labels = (endpoint, provider, model, status)
        #: one process: what was counted since the last scrape, in plain numbers (see
        #: :meth:`Metrics.observe`); None: every count goes to prometheus-client at once
        self.tally: list[float] | None = None
        if metrics.multiprocess:
            self.bind(metrics)
        else:
            self.tally = [0.0] * _TALLY_SIZE

    def bind(self, metrics: Metrics) -> None:
        """Bind the label children's adders (workers: at once; one process: at the first
        scrape that finds a tally, once)."""
        endpoint, provider, model, status = self.labels
        self.requests = _adder(metrics.requests.labels(endpoint, provider, model, status))
        self.latency = _Observer(metrics.latency.labels(endpoint, provider, model))
        self.ttfb = _Observer(metrics.ttfb.labels(endpoint, provider, model))
        tokens = metrics.tokens
        self.input = _adder(tokens.labels(provider, model, "input"))
        self.output = _adder(tokens.labels(provider, model, "output"))
        self.cache_read = _adder(tokens.labels(provider, model, "cache_read"))
        self.cache_write = _adder(tokens.labels(provider, model, "cache_write"))
        self.reasoning = _adder(tokens.labels(provider, model, "reasoning"))
        self.cost = _adder(metrics.cost.labels(provider, model))
        self.cache_hits = _adder(metrics.cache_hits.labels(endpoint, provider, model))

    def counters(self) -> tuple[Add, ...]:
        """The counters' adders, in the order of the tally's first slots."""
        return (self.requests, self.input, self.output, self.cache_read, self.cache_write,
                self.reasoning, self.cost, self.cache_hits)

    def settle(self, metrics: Metrics) -> None:
        """Add the tally to the prometheus-client values, and start it over."""
        tally = self.tally
        assert tally is not None
        if not hasattr(self, "requests"):
            self.bind(metrics)
        for i, add in enumerate(self.counters()):
            if tally[i]:
                add(tally[i])
        for observer, total, first in ((self.latency, _LATENCY_SUM, _LATENCY),
                                       (self.ttfb, _TTFB_SUM, _TTFB)):
            counts = tally[first:first + _SLOTS]
            if not any(counts):
                continue
            if observer.observe is not None:  # values kept elsewhere: see _Observer
                for bound, n in zip((*BUCKETS, 2 * BUCKETS[-1]), counts, strict=True):
                    for _ in range(int(n)):
                        observer.observe(bound)
                continue
            observer.add_sum(tally[total])
            for add, n in zip(observer.buckets, counts, strict=True):
                if n:
                    add(n)
        tally[:] = _ZEROS


#: the tally's slots: the eight counters (in :meth:`_Bound.counters` order), then each
#: histogram's sum and its buckets (the last one: past the largest bound)
_SLOTS = len(BUCKETS) + 1
_LATENCY_SUM, _TTFB_SUM = 8, 9
_LATENCY, _TTFB = 10, 10 + _SLOTS
_TALLY_SIZE = 10 + 2 * _SLOTS
_ZEROS = [0.0] * _TALLY_SIZE
#: the attributes :meth:`Metrics._make_families` sets
_FAMILIES = frozenset({"registry", "requests", "latency", "ttfb", "tokens", "cost",
                       "cache_hits", "streams", "breaker", "cooldown", "terminal", "dropped",
                       "pending", "state_degraded"})


def _observe_now(bound: _Bound, record: RequestRecord) -> None:
    """Count one request in prometheus-client's values at once (workers)."""
    bound.requests(1)
    if record.latency_ms is not None:
        _observe(bound.latency, record.latency_ms / 1000)
    if record.ttfb_ms is not None:
        _observe(bound.ttfb, record.ttfb_ms / 1000)
    if record.prompt_tokens:
        bound.input(max(0, record.prompt_tokens))
    if record.completion_tokens:
        bound.output(max(0, record.completion_tokens))
    if record.cached_tokens:
        bound.cache_read(max(0, record.cached_tokens))
    if record.cache_write_tokens:
        bound.cache_write(max(0, record.cache_write_tokens))
    if record.reasoning_tokens:
        bound.reasoning(max(0, record.reasoning_tokens))
    if record.cost_usd is not None and record.cost_usd > 0:
        bound.cost(record.cost_usd)
    if record.cache_hit:
        bound.cache_hits(1)


def _observe(observer: _Observer, seconds: float) -> None:
    if observer.observe is not None:
        observer.observe(seconds)
        return
    observer.add_sum(seconds)
    observer.buckets[bisect_left(BUCKETS, seconds)](1)


class Metrics:
    """The metric families of one gateway, what feeds them, and the scrape.

    :param multiprocess_dir: prometheus-client's multiprocess directory when the
        gateway runs several workers (``Config.metrics_dir``); None for one process.
        With workers the families are made at once; in one process at the first
        look at one of them (a scrape: :meth:`refresh`, :meth:`render`).
    """

    #: what a scrape collects: the metrics below, or (workers) every worker's files
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    ttfb: Histogram
    tokens: Counter
    cost: Counter
    cache_hits: Counter
    streams: Gauge
    breaker: Gauge
    cooldown: Gauge
    terminal: Gauge
    dropped: Counter
    pending: Gauge
    state_degraded: Gauge

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess = multiprocess_dir is not None
        self._multiprocess_dir = multiprocess_dir
        #: one process: the streams being served, a plain number the gauge is set to at
        #: a scrape (:meth:`settle`); with workers (False) the gauge itself counts, at once
        self.streams_counted = not self.multiprocess
        self.open_streams = 0
        self._bound: dict[tuple[str, str | None, str | None, int], _Bound] = {}
        #: the bounds with a tally counted since the last scrape
        self._unsettled: list[_Bound] = []
        self._models: set[tuple[str, str]] = set()
        self._dropped_seen = 0
        self._breaker_labels: set[str] = set()
        self._connection_labels: set[tuple[str, str, str]] = set()
        if self.multiprocess:
            self._make_families()

    def __getattr__(self, name: str) -> object:
        """A metric family not made yet (one process): make them all, once."""
        if name not in _FAMILIES or "registry" in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self._make_families()
        return self.__dict__[name]

    def _make_families(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
        from prometheus_client.multiprocess import MultiProcessCollector

        multiprocess_dir = self._multiprocess_dir
        registry = CollectorRegistry(auto_describe=True)
        own: CollectorRegistry | None = registry
        if multiprocess_dir is not None:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError("metrics: PROMETHEUS_MULTIPROC_DIR must be set before "
                                   "prometheus_client is first imported (serve does this)")
            MultiProcessCollector(registry, path=str(multiprocess_dir))
            own = None  # values go to this worker's files; the collector reads them all
        endpoint_model = ("endpoint", "provider", "model")
        self.requests = Counter(
            "omniroute_requests", "Client requests by endpoint, provider, upstream model and "
            "final HTTP status (499: the client left).", (*endpoint_model, "status"),
            registry=own)
        self.latency = Histogram(
            "omniroute_request_duration_seconds", "Time from a request's arrival to its last "
            "byte.", endpoint_model, buckets=BUCKETS, registry=own)
        self.ttfb = Histogram(
            "omniroute_time_to_first_byte_seconds", "Time from a request's arrival to the "
            "first byte of its answer (requests that got one).", endpoint_model,
            buckets=BUCKETS, registry=own)
        self.tokens = Counter(
            "omniroute_tokens", "Tokens as the usage records count them, by type: input, "
            "output, cache_read, cache_write, reasoning.", ("provider", "model", "type"),
            registry=own)
        self.cost = Counter(
            "omniroute_cost_usd", "Cost of the requests in US dollars (requests with a known "
            "price).", ("provider", "model"), registry=own)
        self.cache_hits = Counter(
            "omniroute_cache_hits", "Requests answered from the response cache.",
            endpoint_model, registry=own)
        self.streams = Gauge(
            "omniroute_streams_in_flight", "Streamed requests being served now.",
            registry=own, multiprocess_mode="livesum")
        self.breaker = Gauge(
            "omniroute_breaker_state", "Circuit breaker of a provider prefix: 0 closed, "
            "1 half-open, 2 open (workers: the worst).", ("provider",), registry=own,
            multiprocess_mode="livemax")
        self.cooldown = Gauge(
            "omniroute_connection_cooldown_seconds", "Seconds until a cooling connection is "
            "used again (0: not cooling).", ("connection", "name", "provider"),
            registry=own, multiprocess_mode="livemax")
        self.terminal = Gauge(
            "omniroute_connection_terminal", "1 when a connection is out until an operator "
            "resets it (revoked key, no credit).", ("connection", "name", "provider"),
            registry=own, multiprocess_mode="livemax")
        self.dropped = Counter(
            "omniroute_usage_records_dropped", "Usage records dropped because the database "
            "stayed behind past the buffer's bound.", registry=own)
        self.pending = Gauge(
            "omniroute_usage_records_pending", "Usage records waiting to be written.",
            registry=own, multiprocess_mode="livesum")
        self.state_degraded = Gauge(
            "omniroute_state_degraded", "1 while the state shared between instances "
            "(state_url) cannot be reached and this instance uses its own numbers.",
            registry=own, multiprocess_mode="livemax")
        self.registry = registry  # last: its presence says the families are made

    # ------------------------------------------------------------------ per request

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request (the metrics stage calls it once per request).

        In one process the counts go to the bound's tally, plain numbers added up
        until a scrape (:meth:`render`) adds them to prometheus-client's values:
        nothing else reads them. With workers they go to this worker's files at once,
        where another worker's scrape reads them.
        """
        key = (record.endpoint, record.provider, record.model, record.status)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bind(key)
        tally = bound.tally
        if tally is None:
            _observe_now(bound, record)
            return
        if not tally[0]:
            self._unsettled.append(bound)
        tally[0] += 1
        if record.latency_ms is not None:
            seconds = record.latency_ms / 1000
            tally[_LATENCY_SUM] += seconds
            tally[_LATENCY + bisect_left(BUCKETS, seconds)] += 1
        if record.ttfb_ms is not None:
            seconds = record.ttfb_ms / 1000
            tally[_TTFB_SUM] += seconds
            tally[_TTFB + bisect_left(BUCKETS, seconds)] += 1
        if record.prompt_tokens:
            tally[1] += max(0, record.prompt_tokens)
        if record.completion_tokens:
            tally[2] += max(0, record.completion_tokens)
        if record.cached_tokens:
            tally[3] += max(0, record.cached_tokens)
        if record.cache_write_tokens:
            tally[4] += max(0, record.cache_write_tokens)
        if record.reasoning_tokens:
            tally[5] += max(0, record.reasoning_tokens)
        if record.cost_usd is not None and record.cost_usd > 0:
            tally[6] += record.cost_usd
        if record.cache_hit:
            tally[7] += 1

    def settle(self) -> None:
        """Add every tally to prometheus-client's values (before a scrape reads them)."""
        for bound in self._unsettled:
            bound.settle(self)
        self._unsettled.clear()
        if self.streams_counted:
            self.streams.set(self.open_streams)

    def streams_in_flight(self) -> int:
        """The streams being served now (by this worker)."""
        if self.streams_counted:
            return self.open_streams
        for family in self.streams.collect():
            for sample in family.samples:
                return int(sample.value)
        return 0

    def _bind(self, key: tuple[str, str | None, str | None, int]) -> _Bound:
        """Label children for ``key``, made once; a model past the bound counts as OTHER."""
        endpoint, provider, model, status = key
        provider, model = provider or "", model or ""
        pair = (provider, model)
        if model and pair not in self._models:
            if len(self._models) >= MAX_MODELS:
                other = (endpoint, provider, OTHER, status)
                bound = self._bound.get(other)
                if bound is None:
                    bound = self._bound[other] = _Bound(
                        self, endpoint, provider, OTHER, str(status))
                return bound  # not kept under the raw model: its name stays out of memory
            self._models.add(pair)
        bound = self._bound[key] = _Bound(self, endpoint, provider, model, str(status))
        return bound

    # ------------------------------------------------------------------ at scrape time

    def refresh(self, resilience: Resilience, connections: Iterable[Connection],
                request_log: RequestLog, shared: SharedState | None = None) -> None:
        """Read the state gauges: breakers, cooldowns, the usage-record backlog, and
        whether the shared state (``state_url``; None: none configured) is reachable.

        A connection or prefix that is gone is set to 0 and its series removed
        (with workers its last value stays in the files, as 0, until the restart).
        """
        connections = list(connections)
        states = resilience.breaker_states()
        prefixes = {conn.prefix for conn in connections} | set(states)
        for prefix in prefixes:
            self.breaker.labels(prefix).set(BREAKER_STATES.get(states.get(prefix, "closed"), 0))
        for gone in self._breaker_labels - prefixes:
            self.breaker.labels(gone).set(0)
            self.breaker.remove(gone)
        self._breaker_labels = prefixes
        rests = resilience.rests(connections)
        labels = set()
        for conn in connections:
            left, terminal = rests[conn.id]
            names = (conn.id, conn.name, conn.prefix)
            labels.add(names)
            self.cooldown.labels(*names).set(round(left, 3))
            self.terminal.labels(*names).set(1 if terminal else 0)
        for old in self._connection_labels - labels:
            for gauge in (self.cooldown, self.terminal):
                gauge.labels(*old).set(0)
                gauge.remove(*old)
        self._connection_labels = labels
        dropped = request_log.dropped
        if dropped > self._dropped_seen:
            self.dropped.inc(dropped - self._dropped_seen)
        self._dropped_seen = dropped
        self.pending.set(request_log.pending)
        self.state_degraded.set(0 if shared is None or shared.health()["ok"] else 1)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when ``accept`` asks for it)."""
        from prometheus_client.exposition import choose_encoder

        self.settle()
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
