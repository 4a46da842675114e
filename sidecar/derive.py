"""Restart-safe derivation: windowed and lifetime hit ratios, KV deltas, rates and latencies.

Pure and I/O-free: a :class:`TargetTracker` is fed :class:`~sidecar.model.ScrapeOutcome` values
(by the scrape loop, by ``doctor`` or by the offline collector) and returns immutable
:class:`~sidecar.model.TargetSnapshot` values.

How increases survive restarts: for every counter the tracker keeps a running *accumulated* value
that only grows. Between two scrapes it adds ``now - before``, or, when vLLM restarted (a counter
went down, a ``_created`` or ``process_start_time_seconds`` changed), the whole new value — a
restarted counter counted up from zero. The increase over a window is then one subtraction of
accumulated values, exactly Prometheus' ``increase()`` without its extrapolation.

``before`` is the counter's *last seen* value, kept per engine identity for the target's life (only
the history expires): a counter that vanished from some bodies (an idle V0 server drops them) and
returns lower is a restart; one that returns higher counts from its last seen value. When the
tracker has no sample a whole window old, a counter whose ``_created`` (or vLLM's process start)
lies inside the window counts from zero at that moment (contract "Windows").
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate
from operator import add, sub
from typing import Any

from .diagnose import diagnose
from .interning import SharedTable
from .model import (
    NAN,
    CacheConfig,
    EngineMetrics,
    EngineState,
    Histogram,
    LatencyStats,
    Normalised,
    ScrapeOutcome,
    TargetSnapshot,
    Window,
    WindowStats,
    ratio,
)

INF = float("inf")
COUNTERS = (
    "prefix_queries",
    "prefix_hits",
    "prompt_tokens",
    "generation_tokens",
    "preemptions",
    "external_queries",
    "external_hits",
)
#: counters kept per label value: EngineMetrics field names, each a tuple of (label, value)
LABELLED = ("request_success", "hits_by_source", "tier_queries", "tier_hits")
PHASES = ("ttft", "e2e", "queue")  # histograms kept bucket by bucket
HISTS = PHASES + ("prompt_len",)  # prompt_len: only its sum and count
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class _Layout:
    """How a point's numbers are laid out; shared by consecutive points until something changes.

    History is the sidecar's main memory cost (one point per scrape per engine over the longest
    window), so a point is one flat ``array('d')`` and everything repetitive lives here once.
    """

    labelled: tuple[tuple[str, str], ...]  # (field, label value) order of the LABELLED counters
    bounds: tuple[tuple[float, ...] | None, ...]  # bucket bounds per PHASE (None: absent)
    gens: tuple[int, ...]  # per PHASE: changes when the bucket layout changes (never merged)
    offsets: tuple[int, ...] = ()  # derived: where each PHASE's buckets start
    width: int = 0  # derived: the array length

    def __post_init__(self) -> None:
        off = _BASE + len(self.labelled)
        offsets = []
        for b in self.bounds:
            offsets.append(off)
            if b is not None:
                off += len(b) + 2
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "width", off + 2)  # + prompt_len sum and count

    def hist_offset(self, i: int) -> int:
        return self.offsets[i]


#: entries of each intern table below; a table that reaches it starts afresh (values only shared)
BOUNDS_MAX = 1024
#: layouts, each kept once for all targets: targets of one vLLM build have equal ones (their
#: generations count from 1 in every history)
_LAYOUTS: SharedTable[_Layout, _Layout] = SharedTable(BOUNDS_MAX)


def _shared_layout(layout: _Layout) -> _Layout:
    """``layout``, or an equal one already kept (looked up only when a history's layout changes)."""
    return _LAYOUTS.share(layout, layout)


#: one histogram in a point: (layout generation, bounds, cumulative counts, sum, count)
_Hist = tuple[int, tuple[float, ...], "array[float]", float, float]

# array slots: accumulated COUNTERS, then kv usage (NaN when absent)
_KV = len(COUNTERS)
_BASE = _KV + 1


@dataclass(frozen=True, slots=True)
class _Point:
    """A view of one point of an :class:`_EngineHistory`, made only while a window reads it."""

    t: float
    layout: _Layout
    v: array[float]  # see _Layout

    def hist(self, i: int) -> _Hist | None:
        b = self.layout.bounds[i]
        if b is None:
            return None
        off = self.layout.hist_offset(i)
        n = len(b)
        return self.layout.gens[i], b, self.v[off : off + n], self.v[off + n], self.v[off + n + 1]

    @property
    def kv_usage(self) -> float | None:
        x = self.v[_KV]
        return None if math.isnan(x) else x

    def labelled(self) -> dict[tuple[str, str], float]:
        keys = self.layout.labelled
        return dict(zip(keys, self.v[_BASE : _BASE + len(keys)]))

    def prompt_len(self) -> tuple[float, float]:
        return self.v[-2], self.v[-1]


def _delta(cur: float | None, prev: float | None, reset: bool) -> float:
    """Increase of a counter between two scrapes; a restarted counter counts from zero."""
    if cur is None or math.isnan(cur):
        return 0.0
    if prev is None or math.isnan(prev):
        return cur if reset else 0.0
    if reset or cur < prev:
        return max(cur, 0.0)
    return cur - prev


def histogram_quantile(
    q: float, bounds: Sequence[float], counts: Sequence[float], monotonic: bool = False
) -> float:
    """Prometheus' ``histogram_quantile`` on cumulative bucket counts (linear within a bucket)."""
    if not bounds or bounds[-1] != INF:
        return NAN
    # enforce monotonic cumulative counts, as Prometheus does
    fixed = counts if monotonic else list(accumulate(counts, max))
    total = fixed[-1]
    if total <= 0 or math.isnan(total):
        return NAN
    rank = q * total
    i = next(i for i, c in enumerate(fixed) if c >= rank)
    if bounds[i] == INF:
        return bounds[i - 1] if i > 0 else NAN
    lower = bounds[i - 1] if i > 0 else (0.0 if bounds[0] > 0 else bounds[0])
    below = fixed[i - 1] if i > 0 else 0.0
    in_bucket = fixed[i] - below
    if in_bucket <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / in_bucket


#: an empty window's latencies: one shared (immutable) value instead of one per window and scrape
_NO_LATENCY = LatencyStats()


def _latency(base: _Hist | None, cur: _Hist | None) -> LatencyStats | None:
    if cur is None or base is None or base[0] != cur[0]:
        return None
    counts = list(accumulate(map(sub, cur[2], base[2]), max))
    n = cur[4] - base[4]
    if n <= 0:
        return _NO_LATENCY
    qs = [histogram_quantile(q, cur[1], counts, monotonic=True) for q in QUANTILES]
    return LatencyStats((cur[3] - base[3]) / n, *qs)


_ratio = ratio


def _labelled(m: EngineMetrics) -> tuple[tuple[tuple[str, str], float], ...]:
    return tuple(((f, k), x) for f in LABELLED for k, x in getattr(m, f))


def _merge(old: EngineMetrics | None, m: EngineMetrics) -> EngineMetrics:
    """``m`` with every counter it lacks taken from ``old``: the last seen values."""
    if old is None:
        return m
    keep: dict[str, Any] = {}
    for f in COUNTERS + HISTS + ("created",):
        if getattr(m, f) is None and getattr(old, f) is not None:
            keep[f] = getattr(old, f)
    for f in LABELLED:
        have = dict(getattr(m, f))
        gone = [(k, x) for k, x in getattr(old, f) if k not in have]
        if gone:
            keep[f] = tuple(sorted(getattr(m, f) + tuple(gone)))
    return replace(m, **keep) if keep else m


class _EngineHistory:
    """Accumulated samples of one (model_name, engine), bounded to the longest window.

    Point ``i`` is ``ts[i]``, ``layouts[i]`` and ``vs[i]``: three parallel sequences instead of
    an object and a boxed time per point (96 bytes of the ~120 a point cost beside its numbers;
    a point per scrape per engine over the longest window is most of the sidecar's memory).
    """

    __slots__ = ("ts", "layouts", "vs", "ratios", "last", "seen", "last_t", "gen", "zero_at")

    def __init__(self) -> None:
        self.ts = array("d")  # scrape times, ascending as observed
        self.layouts: list[_Layout] = []
        self.vs: list[array[float]] = []  # consecutive equal numbers share one array
        #: :meth:`ratio_series`, kept up to date point by point; replaced, never changed in
        #: place, so the snapshot that holds it stays as it was
        self.ratios = array("d")
        #: the last seen values of the counters as derived (hit/query pairs complete)
        self.last: EngineMetrics | None = None
        #: the last seen value of every counter as exposed, kept for the target's life: a
        #: counter back below it is a restart (judged per engine identity)
        self.seen: EngineMetrics | None = None
        self.last_t: float | None = None
        self.gen = 0
        #: time of a synthetic zero point from ``_created``: a baseline only inside a window
        self.zero_at: float | None = None

    def _layout(self, prev: _Point | None, before: EngineMetrics | None, m: EngineMetrics) -> _Layout:
        labelled = tuple(k for k, _ in _labelled(m))
        bounds, gens = [], []
        for i, h in enumerate(PHASES):
            cur = getattr(m, h)
            b = None if cur is None else cur.bounds
            old = None if prev is None else prev.layout.bounds[i]
            same = (
                b is not None
                and old == b
                and before is not None
                and getattr(before, h) is not None
                and getattr(before, h).bounds == b
            )
            if same:
                assert prev is not None
                bounds.append(old)  # the interned tuple
                gens.append(prev.layout.gens[i])
            else:
                self.gen += 1
                bounds.append(b)
                gens.append(self.gen)
        layout = _Layout(labelled, tuple(bounds), tuple(gens))
        if prev is not None and layout == prev.layout:
            return prev.layout
        return _shared_layout(layout)

    def __len__(self) -> int:
        return len(self.ts)

    def point(self, i: int) -> _Point:
        return _Point(self.ts[i], self.layouts[i], self.vs[i])

    def add(self, t: float, m: EngineMetrics, reset: bool) -> None:
        if not self.ts and self.last is not None and self.last_t is not None and self.last_t < t:
            # back after its history expired: count from the last seen values, not from zero
            self._append(self.last_t, self.last, False)
        self._append(t, m, reset)

    def _append(self, t: float, m: EngineMetrics, reset: bool) -> None:
        prev = self.point(-1) if self.ts else None
        before = self.last if prev is not None else None
        layout = self._layout(prev, before, m)
        v = array("d", bytes(8 * layout.width))
        if prev is not None and before is not None:
            for i, f in enumerate(COUNTERS):
                v[i] = prev.v[i] + _delta(getattr(m, f), getattr(before, f), reset)
            old = dict(_labelled(before))
            acc = prev.labelled()
            for j, (k, x) in enumerate(_labelled(m)):
                v[_BASE + j] = acc.get(k, 0.0) + _delta(x, old.get(k), reset or k not in old)
        v[_KV] = math.nan if m.kv_usage is None else m.kv_usage
        for i, h in enumerate(PHASES):
            cur = getattr(m, h)
            if cur is None:
                continue
            off = layout.hist_offset(i)
            n = len(cur.bounds)
            if prev is not None and before is not None and layout.gens[i] == prev.layout.gens[i]:
                b = getattr(before, h)
                poff = prev.layout.hist_offset(i)
                was = prev.v[poff : poff + n + 2]
                now = cur.counts + (cur.sum, cur.count)
                if reset or cur.count < b.count:  # restarted: everything counted from zero
                    v[off : off + n + 2] = array("d", map(add, was, now))
                else:
                    base = b.counts + (b.sum, b.count)
                    inc = [x - y if x >= y else x for x, y in zip(now, base)]
                    v[off : off + n + 2] = array("d", map(add, was, inc))
        if m.prompt_len is not None and prev is not None and before is not None:
            pb = before.prompt_len
            if reset or pb is None or m.prompt_len.count < pb.count:  # counted from zero
                v[-2] = prev.v[-2] + _delta(m.prompt_len.sum, None, True)
                v[-1] = prev.v[-1] + _delta(m.prompt_len.count, None, True)
            else:
                v[-2] = prev.v[-2] + _delta(m.prompt_len.sum, pb.sum, False)
                v[-1] = prev.v[-1] + _delta(m.prompt_len.count, pb.count, False)
        if prev is not None and layout is prev.layout and v == prev.v:
            v = prev.v  # an idle engine: share the numbers instead of copying them
        if prev is not None:
            ratios = array("d", self.ratios)  # a copy (memcpy): the last snapshot keeps the old one
            ratios.append(t)
            ratios.append(_ratio(v[1] - prev.v[1], v[0] - prev.v[0]))
            self.ratios = ratios
        self.ts.append(t)
        self.layouts.append(layout)
        self.vs.append(v)
        self.last = _merge(self.last, m)
        self.last_t = t

    def start_at_zero(self, t: float, m: EngineMetrics) -> None:
        """A first point with every counter at zero at ``t`` (its ``_created``)."""
        self._append(t, _zero_like(m), False)
        self.zero_at = t

    def prune(self, horizon: float) -> None:
        """Keep one point at or before ``horizon`` (the baseline of the longest window)."""
        ts, k = self.ts, 0
        while len(ts) - k >= 2 and ts[k + 1] <= horizon:
            k += 1
        if k:
            del ts[:k], self.layouts[:k], self.vs[:k]
            self.ratios = self.ratios[2 * k :]  # the ratios of points 1..k: their predecessors left

    def baseline(self, t0: float) -> int:
        """The index of the latest point at or before ``t0``, else of the oldest we have. A zero
        point from ``_created`` counts only inside the window (before it, vLLM's counts are
        unknown)."""
        ts = self.ts
        base = 0
        if ts[0] == self.zero_at and ts[0] < t0 and len(ts) > 1:
            base = 1
        for i, t in enumerate(ts):
            if t <= t0:
                if t != self.zero_at:
                    base = i
            else:
                break
        return base

    def clear(self) -> None:
        """Forget the history, keep the last seen values (the engine left the body for a while)."""
        del self.ts[:], self.layouts[:], self.vs[:]
        self.ratios = array("d")
        self.zero_at = None

    def window(self, w: Window, now: float, resets: int) -> WindowStats:
        last = len(self.ts) - 1
        at = self.baseline(now - w.seconds)
        if at == last:
            return WindowStats(w.label, w.seconds, 0.0, resets=resets)
        cur, base = self.point(last), self.point(at)
        queries, hits, prompt, gen, pre, ext_q, ext_h = (cur.v[i] - base.v[i] for i in range(len(COUNTERS)))
        blab = base.labelled()
        inc: dict[str, dict[str, float]] = {f: {} for f in LABELLED}
        for (f, k), x in cur.labelled().items():
            inc[f][k] = x - blab.get((f, k), 0.0)
        requests = tuple(inc["request_success"].items())
        tiers = tuple((k, (q, inc["tier_hits"].get(k, 0.0))) for k, q in sorted(inc["tier_queries"].items()))
        lat = []
        for i, phase in enumerate(PHASES):
            stats = _latency(self._hist_base(i, base, cur, last), cur.hist(i))
            if stats is not None:
                lat.append((phase, stats))
        (s0, n0), (s1, n1) = base.prompt_len(), cur.prompt_len()
        mean_prompt = (s1 - s0) / (n1 - n0) if n1 - n0 > 0 else NAN
        kv_delta = None
        if cur.kv_usage is not None and base.kv_usage is not None:
            kv_delta = cur.kv_usage - base.kv_usage
        return WindowStats(
            window=w.label,
            seconds=w.seconds,
            span=cur.t - base.t,
            queries=queries,
            hits=hits,
            hit_ratio=_ratio(hits, queries),
            external_queries=ext_q,
            external_hits=ext_h,
            hits_by_source=tuple(sorted(inc["hits_by_source"].items())),
            tiers=tiers,
            kv_usage_delta=kv_delta,
            prompt_tokens=prompt,
            generation_tokens=gen,
            preemptions=pre,
            requests=requests,
            latency=tuple(lat),
            mean_prompt_tokens=mean_prompt,
            prompts_finished=max(n1 - n0, 0.0),
            resets=resets,
        )

    def _hist_base(self, i: int, base: _Point, cur: _Point, last: int) -> _Hist | None:
        """The window's baseline histogram, moved forward past a bucket-layout change
        (``last``: the index of ``cur``)."""
        gen = cur.layout.gens[i]
        if cur.layout.bounds[i] is None:
            return None
        if base.layout.gens[i] == gen:
            return base.hist(i)
        for j, (t, layout) in enumerate(zip(self.ts, self.layouts)):
            if j == last:
                return None  # the layout only just changed: no baseline to subtract yet
            if t >= base.t and layout.gens[i] == gen:
                return self.point(j).hist(i)
        return None

    def ratio_series(self) -> array[float]:
        """t1, r1, t2, r2, ...: the hit ratio between consecutive points (sparklines). Kept as
        points come and go (a copy per scrape instead of a pass over every point: 300 points per
        engine at 1 s), shared with the snapshot: never change it in place."""
        return self.ratios


def _zero_hist(h: Histogram | None) -> Histogram | None:
    return None if h is None else Histogram(h.bounds, tuple(0.0 for _ in h.counts), 0.0, 0.0)


def _zero_like(m: EngineMetrics) -> EngineMetrics:
    """The same engine with every counter at zero: its state just before it first counted."""
    zero: dict[str, Any] = {f: (None if getattr(m, f) is None else 0.0) for f in COUNTERS}
    zero.update({h: _zero_hist(getattr(m, h)) for h in HISTS})
    zero.update({f: tuple((k, 0.0) for k, _ in getattr(m, f)) for f in LABELLED})
    return replace(m, kv_usage=None, created=None, **zero)


def _engine_restarted(o: EngineMetrics, e: EngineMetrics) -> bool:
    """Did this engine identity restart? Any counter (labelled ones too) below its last seen
    value, or its ``_created`` changed."""
    if o.created is not None and e.created is not None and o.created != e.created:
        return True
    for f in COUNTERS:
        a, b = getattr(o, f), getattr(e, f)
        if a is not None and b is not None and b < a:
            return True
    before = dict(_labelled(o))
    if any(x < before.get(k, x) for k, x in _labelled(e)):
        return True
    for h in HISTS:
        a, b = getattr(o, h), getattr(e, h)
        if a is not None and b is not None and b.count < a.count:
            return True
    return False


def _restarted(
    prev_start: float | None, old: dict[tuple[str, str, str], EngineMetrics], cur: Normalised
) -> frozenset[tuple[str, str, str]]:
    """The engine identities that restarted: each judged on its own counters (one replica's
    restart behind a router or Ray Serve is not another's), all of them when vLLM's process
    start time changed."""
    if prev_start is not None and cur.process_start is not None and prev_start != cur.process_start:
        return frozenset(e.key for e in cur.engines)
    return frozenset(e.key for e in cur.engines if e.key in old and _engine_restarted(old[e.key], e))


#: histogram bucket bounds seen, each kept once for every target and scrape (vLLM exposes the same
#: few layouts everywhere); emptied when it grows past BOUNDS_MAX, so odd exposers cannot grow it
_BOUNDS: SharedTable[tuple[float, ...], tuple[float, ...]] = SharedTable(BOUNDS_MAX)


def _shared(h: Histogram | None) -> Histogram | None:
    if h is None:
        return None
    b = _BOUNDS.share(h.bounds, h.bounds)
    return h if b is h.bounds else Histogram(b, h.counts, h.sum, h.count)


def _shared_bounds(m: EngineMetrics) -> EngineMetrics:
    """``m`` with its histograms' bounds taken from :data:`_BOUNDS`: equal values, but the
    tuples the tracker and the snapshot keep (~40 floats each) exist once, not per target."""
    change: dict[str, Any] = {}
    for f in HISTS:
        h = getattr(m, f)
        s = _shared(h)
        if s is not h:
            change[f] = s
    return replace(m, **change) if change else m


#: the targets' ``cache_config_info`` values, each kept once however many replicas share it
#: (bounded like :data:`_BOUNDS`)
_CONFIGS: SharedTable[tuple[CacheConfig, ...], tuple[CacheConfig, ...]] = SharedTable(BOUNDS_MAX)


def _shared_configs(prev: tuple[CacheConfig, ...], cur: tuple[CacheConfig, ...]) -> tuple[CacheConfig, ...]:
    """``cur``, or an equal tuple already kept: the target's previous one (one comparison per
    scrape), else another target's (a config's label tuple is ~2 KiB per target otherwise)."""
    if cur == prev:
        return prev
    return _CONFIGS.share(cur, cur)


def _paired(m: EngineMetrics) -> EngineMetrics:
    """For derivation, a hit counter counts only with its query counter: when one of a pair is
    absent (or was refused), both are, so a window never sees hits without their queries."""
    change: dict[str, Any] = {}
    for q, h in (("prefix_queries", "prefix_hits"), ("external_queries", "external_hits")):
        if (getattr(m, q) is None) != (getattr(m, h) is None):
            change[q] = change[h] = None
    tq, th = dict(m.tier_queries), dict(m.tier_hits)
    if set(tq) != set(th):
        both = set(tq) & set(th)
        change["tier_queries"] = tuple((k, x) for k, x in m.tier_queries if k in both)
        change["tier_hits"] = tuple((k, x) for k, x in m.tier_hits if k in both)
    return replace(m, **change) if change else m


class TargetTracker:
    """All history of one target; :meth:`observe` returns the new snapshot."""

    # one per target: slots instead of an instance dict (memory at thousands of targets)
    __slots__ = (
        "name",
        "url",
        "labels",
        "windows",
        "_engines",
        "_last_start",
        "_last_keys",
        "identity_labels",
        "_out_of_range",
        "_restart_times",
        "_restarts",
        "_errors",
        "_version",
        "_last_success",
        "snapshot",
    )

    def __init__(
        self, name: str, windows: Sequence[Window], *, url: str = "", labels: tuple[tuple[str, str], ...] = ()
    ):
        if not windows:
            raise ValueError("at least one window is needed")
        self.name = name
        self.url = url
        self.labels = labels
        self.windows = tuple(sorted(windows, key=lambda w: w.seconds))
        self._engines: dict[tuple[str, str, str], _EngineHistory] = {}
        #: vLLM's last seen start time, and the engines' keys of the last good scrape
        self._last_start: float | None = None
        self._last_keys: frozenset[tuple[str, str, str]] | None = None
        #: identity labels seen so far: they stay for the target's life (contract "Identity")
        self.identity_labels: frozenset[str] = frozenset()
        self._out_of_range: dict[str, int] = {}
        self._restart_times: list[float] = []  # a list: an empty deque costs a 600-byte block
        self._restarts = 0
        self._errors: dict[str, int] = {}
        self._version: str | None = None
        self._last_success: float | None = None
        self.snapshot = TargetSnapshot(
            name=name, url=url, labels=labels, windows=tuple(w.label for w in self.windows)
        )

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def longest(self) -> float:
        return self.windows[-1].seconds

    def observe(self, outcome: ScrapeOutcome) -> TargetSnapshot:
        t = outcome.started
        if outcome.version is not None:
            self._version = outcome.version
        base = replace(
            self.snapshot,
            scraped=True,
            last_scrape=t,
            scrape_duration=outcome.duration,
            version=self._version,
        )
        if not outcome.ok or outcome.normalised is None:
            reason = outcome.reason or "parse"
            self._errors[reason] = self._errors.get(reason, 0) + 1
            snap = replace(
                base,
                up=False,
                last_error=outcome.error,
                last_error_reason=reason,
                scrape_errors=tuple(sorted(self._errors.items())),
                engines=(),
                cache_configs=(),
                restart_times=self._recent_restarts(t),
            )
            self.snapshot = replace(snap, diagnoses=diagnose(snap))
            return self.snapshot
        norm = outcome.normalised
        self.identity_labels |= norm.identity_labels
        for r in norm.refused:
            self._out_of_range[r.family] = self._out_of_range.get(r.family, 0) + 1
        reset = (
            _restarted(
                self._last_start, {k: h.seen for k, h in self._engines.items() if h.seen is not None}, norm
            )
            if self._last_keys is not None
            else frozenset()
        )
        if reset:  # one restart per scrape, however many engines it reset
            self._restarts += 1
            self._restart_times.append(t)
        if norm.process_start is not None:
            self._last_start = norm.process_start
        self._last_keys = frozenset(e.key for e in norm.engines)
        self._last_success = t
        engines = []
        for m in map(_shared_bounds, norm.engines):
            hist = self._engines.get(m.key)
            if hist is None:
                hist = self._engines[m.key] = _EngineHistory()
                self._start(hist, _paired(m), norm, t)
            hist.add(t, _paired(m), m.key in reset)
            hist.seen = _merge(hist.seen, m)
            hist.prune(t - self.longest)
            engines.append(self._engine_state(hist, m, t))
        self._forget_stale(t)
        snap = replace(
            base,
            up=True,
            last_success=t,
            last_error=None,
            last_error_reason=None,
            scrape_errors=tuple(sorted(self._errors.items())),
            restarts=self._restarts,
            schema=norm.schema,
            legacy_names=norm.legacy_names,
            exposer=norm.exposer,
            identity_labels=tuple(sorted(self.identity_labels)),
            refused=norm.refused,
            out_of_range=tuple(sorted(self._out_of_range.items())),
            engines=tuple(engines),
            cache_configs=_shared_configs(self.snapshot.cache_configs, norm.cache_configs),
            restart_times=self._recent_restarts(t),
        )
        self.snapshot = replace(snap, diagnoses=diagnose(snap))
        return self.snapshot

    def _start(self, hist: _EngineHistory, m: EngineMetrics, norm: Normalised, t: float) -> None:
        """Where a new engine identity's counting began, when vLLM says so (its ``_created``, or
        its process start); otherwise its windows start at its first sample (partial)."""
        began = m.created if m.created is not None else norm.process_start
        # only inside the longest window, and never after the first sample (clocks differ)
        if began is not None and t - self.longest < began < t:
            hist.start_at_zero(began, m)

    def _recent_restarts(self, now: float) -> tuple[float, ...]:
        times = self._restart_times
        k = 0
        while k < len(times) and times[k] < now - self.longest:
            k += 1
        del times[:k]
        return tuple(times)

    def _forget_stale(self, now: float) -> None:
        """Free the history of engines not seen for a whole longest window; their last seen
        values stay (a counter that comes back lower is a restart, whenever it comes back)."""
        for h in self._engines.values():
            if h.ts and h.ts[-1] < now - self.longest:
                h.clear()

    def _engine_state(self, hist: _EngineHistory, m: EngineMetrics, now: float) -> EngineState:
        if m.prefix_queries is not None:  # NaN without hits: an absent counter is not 0 hits
            lifetime = _ratio(NAN if m.prefix_hits is None else m.prefix_hits, m.prefix_queries)
        elif m.v0_hit_rate is not None and m.v0_hit_rate >= 0 and not math.isnan(m.v0_hit_rate):
            lifetime = min(1.0, m.v0_hit_rate)
        else:
            lifetime = NAN
        resets = [sum(1 for r in self._restart_times if r > now - w.seconds) for w in self.windows]
        return EngineState(
            model_name=m.model_name,
            engine=m.engine,
            current=m,
            replica=m.replica,
            lifetime_hit_ratio=lifetime,
            windows=tuple(hist.window(w, now, n) for w, n in zip(self.windows, resets)),
            ratio_series=hist.ratio_series(),
        )
