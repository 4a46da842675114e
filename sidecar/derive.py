"""Restart-safe derivation: windowed and lifetime hit ratios, KV deltas, rates and latencies.

Pure and I/O-free: a :class:`TargetTracker` is fed :class:`~sidecar.model.ScrapeOutcome` values
(by the scrape loop, by ``doctor`` or by the offline collector) and returns immutable
:class:`~sidecar.model.TargetSnapshot` values.

How increases survive restarts: for every counter the tracker keeps a running *accumulated* value
that only grows. Between two scrapes it adds ``now - before``, or, when vLLM restarted (a counter
went down, a ``_created`` or ``process_start_time_seconds`` changed), the whole new value — a
restarted counter counted up from zero. The increase over a window is then one subtraction of
accumulated values, exactly Prometheus' ``increase()`` without its extrapolation.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .config import Window
from .diagnose import diagnose
from .model import (NAN, EngineMetrics, EngineState, Histogram, LatencyStats, Normalised,
                    ScrapeOutcome, TargetSnapshot, WindowStats)

INF = float("inf")
COUNTERS = ("prefix_queries", "prefix_hits", "prompt_tokens", "generation_tokens", "preemptions")
PHASES = ("ttft", "e2e", "queue")
HISTS = PHASES + ("prompt_len",)
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class _Hist:
    """An accumulated histogram; ``gen`` changes when the bucket layout changes."""

    gen: int
    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float
    count: float


@dataclass(frozen=True)
class _Point:
    t: float
    acc: tuple[float, ...]  # accumulated COUNTERS, same order
    success: tuple[tuple[str, float], ...]  # accumulated finished requests by reason
    hists: tuple[_Hist | None, ...]  # accumulated HISTS, same order
    kv_usage: float | None


def _delta(cur: float | None, prev: float | None, reset: bool) -> float:
    """Increase of a counter between two scrapes; a restarted counter counts from zero."""
    if cur is None or math.isnan(cur):
        return 0.0
    if prev is None or math.isnan(prev):
        return cur if reset else 0.0
    if reset or cur < prev:
        return max(cur, 0.0)
    return cur - prev


def _acc_hist(prev: _Hist | None, before: Histogram | None, cur: Histogram | None,
              reset: bool, next_gen: Callable[[], int]) -> _Hist | None:
    if cur is None:
        return prev
    bounds = cur.bounds
    counts = tuple(c for _, c in cur.buckets)
    if prev is None or before is None or prev.bounds != bounds or before.bounds != bounds:
        # New series, or a bucket layout we must never merge with the old one.
        return _Hist(next_gen(), bounds, tuple(0.0 for _ in counts), 0.0, 0.0)
    restarted = reset or cur.count < before.count
    add = [_delta(c, None if restarted else b, restarted)
           for c, b in zip(counts, (c for _, c in before.buckets))]
    return _Hist(prev.gen, bounds, tuple(a + d for a, d in zip(prev.counts, add)),
                 prev.sum + _delta(cur.sum, None if restarted else before.sum, restarted),
                 prev.count + _delta(cur.count, None if restarted else before.count, restarted))


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """Prometheus' ``histogram_quantile`` on cumulative bucket counts (linear within a bucket)."""
    if not bounds or bounds[-1] != INF:
        return NAN
    fixed: list[float] = []
    running = 0.0
    for c in counts:  # enforce monotonic cumulative counts, as Prometheus does
        running = max(running, c)
        fixed.append(running)
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


def _latency(base: _Hist | None, cur: _Hist | None) -> LatencyStats | None:
    if cur is None or base is None or base.gen != cur.gen:
        return None
    counts = [c - b for c, b in zip(cur.counts, base.counts)]
    n = cur.count - base.count
    if n <= 0:
        return LatencyStats()
    qs = [histogram_quantile(q, cur.bounds, counts) for q in QUANTILES]
    return LatencyStats((cur.sum - base.sum) / n, *qs)


def _ratio(hits: float, queries: float) -> float:
    if queries <= 0 or math.isnan(queries) or math.isnan(hits):
        return NAN
    return min(1.0, max(0.0, hits / queries))


class _EngineHistory:
    """Accumulated samples of one (model_name, engine), bounded to the longest window."""

    def __init__(self) -> None:
        self.points: deque[_Point] = deque()
        self.last: EngineMetrics | None = None
        self.gen = 0

    def _next_gen(self) -> int:
        self.gen += 1
        return self.gen

    def add(self, t: float, m: EngineMetrics, reset: bool) -> None:
        prev = self.points[-1] if self.points else None
        before = self.last
        if prev is None or before is None:
            acc = tuple(0.0 for _ in COUNTERS)
            success = tuple((r, 0.0) for r, _ in m.request_success)
            hists = tuple(_acc_hist(None, None, getattr(m, h), reset, self._next_gen) for h in HISTS)
        else:
            acc = tuple(a + _delta(getattr(m, f), getattr(before, f), reset)
                        for a, f in zip(prev.acc, COUNTERS))
            old = dict(before.request_success)
            sacc = dict(prev.success)
            success = tuple((r, sacc.get(r, 0.0) + _delta(v, old.get(r), reset or r not in old))
                            for r, v in m.request_success)
            hists = tuple(_acc_hist(ph, getattr(before, h), getattr(m, h), reset, self._next_gen)
                          for ph, h in zip(prev.hists, HISTS))
        self.points.append(_Point(t, acc, success, hists, m.kv_usage))
        self.last = m

    def prune(self, horizon: float) -> None:
        """Keep one point at or before ``horizon`` (the baseline of the longest window)."""
        pts = self.points
        while len(pts) >= 2 and pts[1].t <= horizon:
            pts.popleft()

    def baseline(self, t0: float) -> _Point:
        """The latest point at or before ``t0``, else the oldest we have."""
        base = self.points[0]
        for p in self.points:
            if p.t <= t0:
                base = p
            else:
                break
        return base

    def window(self, w: Window, now: float, resets: int) -> WindowStats:
        cur = self.points[-1]
        base = self.baseline(now - w.seconds)
        if base is cur:
            return WindowStats(w.label, w.seconds, 0.0, resets=resets)
        d = [c - b for c, b in zip(cur.acc, base.acc)]
        queries, hits, prompt, gen, pre = d
        bsucc = dict(base.success)
        requests = tuple((r, v - bsucc.get(r, 0.0)) for r, v in cur.success)
        lat = []
        for i, phase in enumerate(PHASES):
            stats = _latency(self._hist_base(i, base, cur), cur.hists[i])
            if stats is not None:
                lat.append((phase, stats))
        plen = self._hist_base(len(PHASES), base, cur)
        cur_plen = cur.hists[len(PHASES)]
        mean_prompt = NAN
        if plen is not None and cur_plen is not None and cur_plen.count - plen.count > 0:
            mean_prompt = (cur_plen.sum - plen.sum) / (cur_plen.count - plen.count)
        kv_delta = None
        if cur.kv_usage is not None and base.kv_usage is not None:
            kv_delta = cur.kv_usage - base.kv_usage
        return WindowStats(
            window=w.label, seconds=w.seconds, span=cur.t - base.t,
            queries=queries, hits=hits, hit_ratio=_ratio(hits, queries),
            kv_usage_delta=kv_delta, prompt_tokens=prompt, generation_tokens=gen,
            preemptions=pre, requests=requests, latency=tuple(lat),
            mean_prompt_tokens=mean_prompt, resets=resets)

    def _hist_base(self, i: int, base: _Point, cur: _Point) -> _Hist | None:
        """The window's baseline histogram, moved forward past a bucket-layout change."""
        ch = cur.hists[i]
        if ch is None:
            return None
        bh = base.hists[i]
        if bh is not None and bh.gen == ch.gen:
            return bh
        for p in self.points:
            if p is cur:
                return None  # the layout only just changed: no baseline to subtract yet
            if p.t >= base.t and p.hists[i] is not None and p.hists[i].gen == ch.gen:
                return p.hists[i]
        return None

    def ratio_points(self) -> tuple[tuple[float, float], ...]:
        out = []
        prev = None
        for p in self.points:
            if prev is not None:
                out.append((p.t, _ratio(p.acc[1] - prev.acc[1], p.acc[0] - prev.acc[0])))
            prev = p
        return tuple(out)


def _zero_hist(h: Histogram | None) -> Histogram | None:
    return None if h is None else Histogram(tuple((b, 0.0) for b, _ in h.buckets), 0.0, 0.0)


def _zero_like(m: EngineMetrics) -> EngineMetrics:
    """The same engine with every counter at zero: its state just before it first counted."""
    zero = {f: (None if getattr(m, f) is None else 0.0) for f in COUNTERS}
    zero.update({h: _zero_hist(getattr(m, h)) for h in HISTS})
    return replace(m, request_success=tuple((r, 0.0) for r, _ in m.request_success),
                   kv_usage=None, created=None, **zero)


def _restarted(prev: Normalised | None, cur: Normalised) -> bool:
    """Did vLLM restart between two good scrapes? Any counter down, or a start time changed."""
    if prev is None:
        return False
    if (prev.process_start is not None and cur.process_start is not None
            and prev.process_start != cur.process_start):
        return True
    old = {e.key: e for e in prev.engines}
    for e in cur.engines:
        o = old.get(e.key)
        if o is None:
            continue
        if o.created is not None and e.created is not None and o.created != e.created:
            return True
        for f in COUNTERS:
            a, b = getattr(o, f), getattr(e, f)
            if a is not None and b is not None and b < a:
                return True
        for h in HISTS:
            a, b = getattr(o, h), getattr(e, h)
            if a is not None and b is not None and b.count < a.count:
                return True
    return False


class TargetTracker:
    """All history of one target; :meth:`observe` returns the new snapshot."""

    def __init__(self, name: str, windows: Sequence[Window], *, url: str = "",
                 labels: tuple[tuple[str, str], ...] = ()):
        if not windows:
            raise ValueError("at least one window is needed")
        self.name = name
        self.url = url
        self.labels = labels
        self.windows = tuple(sorted(windows, key=lambda w: w.seconds))
        self._engines: dict[tuple[str, str], _EngineHistory] = {}
        self._last_good: Normalised | None = None
        self._restart_times: deque[float] = deque()
        self._restarts = 0
        self._errors: dict[str, int] = {}
        self._version: str | None = None
        self._last_success: float | None = None
        self.snapshot = TargetSnapshot(name=name, url=url, labels=labels,
                                       windows=tuple(w.label for w in self.windows))

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
        base = replace(self.snapshot, scraped=True, last_scrape=t,
                       scrape_duration=outcome.duration, version=self._version)
        if not outcome.ok or outcome.normalised is None:
            reason = outcome.reason or "parse"
            self._errors[reason] = self._errors.get(reason, 0) + 1
            snap = replace(base, up=False, last_error=outcome.error, last_error_reason=reason,
                           scrape_errors=tuple(sorted(self._errors.items())), engines=(),
                           cache_configs=(), restart_times=self._recent_restarts(t))
            self.snapshot = replace(snap, diagnoses=diagnose(snap))
            return self.snapshot
        norm = outcome.normalised
        reset = _restarted(self._last_good, norm)
        if reset:
            self._restarts += 1
            self._restart_times.append(t)
        prev_t = self._last_success
        prev_keys = {e.key for e in self._last_good.engines} if self._last_good else None
        self._last_good = norm
        self._last_success = t
        engines = []
        for m in norm.engines:
            hist = self._engines.get(m.key)
            if hist is None:
                hist = self._engines[m.key] = _EngineHistory()
                if prev_keys is not None and prev_t is not None and m.key not in prev_keys:
                    # The series appeared since the last good scrape: vLLM counted it from zero.
                    hist.add(prev_t, _zero_like(m), False)
            hist.add(t, m, reset)
            hist.prune(t - self.longest)
            engines.append(self._engine_state(hist, m, t))
        self._forget_stale(t)
        snap = replace(base, up=True, last_success=t, last_error=None, last_error_reason=None,
                       scrape_errors=tuple(sorted(self._errors.items())), restarts=self._restarts,
                       schema=norm.schema, legacy_names=norm.legacy_names,
                       engines=tuple(engines), cache_configs=norm.cache_configs,
                       restart_times=self._recent_restarts(t))
        self.snapshot = replace(snap, diagnoses=diagnose(snap))
        return self.snapshot

    def _recent_restarts(self, now: float) -> tuple[float, ...]:
        while self._restart_times and self._restart_times[0] < now - self.longest:
            self._restart_times.popleft()
        return tuple(self._restart_times)

    def _forget_stale(self, now: float) -> None:
        """Drop engines not seen for a whole longest window (so their series vanish for good)."""
        for key in [k for k, h in self._engines.items() if h.points[-1].t < now - self.longest]:
            del self._engines[key]

    def _engine_state(self, hist: _EngineHistory, m: EngineMetrics, now: float) -> EngineState:
        if m.prefix_queries is not None:
            lifetime = _ratio(m.prefix_hits or 0.0, m.prefix_queries)
        elif m.v0_hit_rate is not None and m.v0_hit_rate >= 0 and not math.isnan(m.v0_hit_rate):
            lifetime = min(1.0, m.v0_hit_rate)
        else:
            lifetime = NAN
        resets = [sum(1 for r in self._restart_times if r > now - w.seconds) for w in self.windows]
        return EngineState(
            model_name=m.model_name, engine=m.engine, current=m, lifetime_hit_ratio=lifetime,
            windows=tuple(hist.window(w, now, n) for w, n in zip(self.windows, resets)),
            ratio_points=hist.ratio_points())
