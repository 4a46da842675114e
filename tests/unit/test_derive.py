"""Derivation on real captures and on sequences built from them: windows, restarts, engines."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker, histogram_quantile
from sidecar.model import ScrapeOutcome, Window
from sidecar.scrape import parse_body
from testkit.bodies import multi_engine, set_value
from testkit.captures import load_capture

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"


def ref_value(body: bytes, name: str, **labels: str) -> float:
    """A sample's value read with prometheus_client's parser (the exact reference)."""
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(name)


def feed(tracker: TargetTracker, bodies: list[bytes], times: list[float]):
    snap = None
    for body, t in zip(bodies, times):
        outcome = parse_body(body, None, t, 0.01)
        assert outcome.ok, outcome.error
        snap = tracker.observe(outcome)
    return snap


@pytest.mark.parametrize(
    "folder",
    ["vllm-0.32.0/prefix_on_shared", "vllm-0.32.0/concurrent", "vllm-0.10.1.1.post2/prefix_on_shared"],
)
def test_ratios_equal_vllm_counters_on_real_captures(folder):
    caps = load_capture(folder)
    tracker = TargetTracker("t", parse_windows("1m,5m"))
    snap = feed(tracker, [c.body for c in caps], [c.ts for c in caps])
    first, last = caps[0].body, caps[-1].body
    (e,) = snap.engines
    assert e.current.prefix_queries == ref_value(last, Q)
    assert e.current.prefix_hits == ref_value(last, H)
    assert e.lifetime_hit_ratio == pytest.approx(ref_value(last, H) / ref_value(last, Q))
    for w in e.windows:  # all captures lie within one minute
        dq = ref_value(last, Q) - ref_value(first, Q)
        dh = ref_value(last, H) - ref_value(first, H)
        assert (w.queries, w.hits) == (dq, dh)
        assert w.hit_ratio == pytest.approx(dh / dq)


def test_window_uses_the_sample_one_window_ago():
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    tracker = TargetTracker("t", (Window("30s", 30),))
    times = [0, 10, 20, 30, 40, 50, 60]
    bodies = [set_value(set_value(body, Q, 100 * i), H, 10 * i * i) for i in range(len(times))]
    snap = feed(tracker, bodies, [1000 + t for t in times])
    w = snap.engines[0].windows[0]
    # baseline is the sample at t=30 (i=3): queries 600-300, hits 360-90
    assert (w.queries, w.hits, w.span) == (300, 270, 30)
    assert w.hit_ratio == pytest.approx(0.9)


def test_restart_inside_window_counts_from_zero_and_is_reported():
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    seq = [(100, 50), (200, 90), (50, 20), (80, 40)]  # vLLM restarted before the third scrape
    bodies = [set_value(set_value(body, Q, q), H, h) for q, h in seq]
    tracker = TargetTracker("t", parse_windows("1m,5m"))
    snap = feed(tracker, bodies, [0, 5, 10, 15])
    w = snap.engines[0].windows[0]
    assert w.queries == (200 - 100) + 50 + (80 - 50)
    assert w.hits == (90 - 50) + 20 + (40 - 20)
    assert 0 <= w.hit_ratio <= 1
    assert snap.restarts == 1
    assert w.resets == 1
    assert "counter_reset" in {d.code for d in snap.diagnoses}
    # lifetime is since vLLM (re)started, i.e. the current counters
    assert snap.engines[0].lifetime_hit_ratio == pytest.approx(40 / 80)


def test_changed_created_is_a_restart_even_when_counters_grew():
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    b1 = set_value(set_value(body, Q, 100), H, 50)
    b2 = set_value(set_value(set_value(body, Q, 5000), H, 2000), "vllm:prefix_cache_queries_created", 1.9e9)
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [b1, b2], [0, 5])
    assert snap.restarts == 1
    assert snap.engines[0].windows[0].queries == 5000  # the new process counted all from zero


def test_restart_is_counted_once_per_scrape_not_per_series():
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [caps[-1].body, caps[1].body], [0, 5])  # every counter went down
    assert snap.restarts == 1


def test_two_engines_are_tracked_separately_and_usage_is_not_summed():
    caps = load_capture("vllm-0.32.0/concurrent")
    b0, b1 = caps[2].body, caps[1].body
    body = multi_engine([b0, b1])
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [body], [0])
    engines = {e.engine: e for e in snap.engines}
    assert set(engines) == {"0", "1"}
    assert engines["0"].current.kv_usage == ref_value(b0, "vllm:kv_cache_usage_perc")
    assert engines["1"].current.kv_usage == ref_value(b1, "vllm:kv_cache_usage_perc")
    assert engines["1"].current.prefix_queries == ref_value(b1, Q)


def test_failed_scrape_serves_nothing_stale_and_history_survives():
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    tracker = TargetTracker("t", parse_windows("1m"))
    feed(tracker, [caps[0].body], [0])
    down = tracker.observe(ScrapeOutcome(5, 0.1, reason="connect", error="refused"))
    assert not down.up and down.engines == ()
    assert [d.code for d in down.diagnoses] == ["target_down"]
    assert dict(down.scrape_errors) == {"connect": 1}
    snap = feed(tracker, [caps[-1].body], [10])
    assert snap.up
    w = snap.engines[0].windows[0]
    assert w.queries == ref_value(caps[-1].body, Q) - ref_value(caps[0].body, Q)


def test_engine_appearing_later_starts_a_partial_window():
    """Contract "Windows": with no sample a window old and no _created (V0 has none) inside the
    window, the increase starts from the engine's oldest sample, never from an invented zero."""
    caps = load_capture("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [c.body for c in caps], [c.ts for c in caps])
    (e,) = snap.engines
    first = next(c for c in caps if b"vllm:prompt_tokens_total{" in c.body)
    assert e.windows[0].prompt_tokens == (
        ref_value(caps[-1].body, "vllm:prompt_tokens_total")
        - ref_value(first.body, "vllm:prompt_tokens_total")
    )
    assert e.windows[0].span == caps[-1].ts - first.ts


def test_v0_lifetime_is_its_gauge_and_minus_one_is_nan():
    caps = load_capture("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")
    last = caps[-1].body
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [last], [0])
    assert snap.engines[0].lifetime_hit_ratio == ref_value(last, "vllm:gpu_prefix_cache_hit_rate")
    assert snap.engines[0].v0
    off = set_value(last, "vllm:gpu_prefix_cache_hit_rate", -1)
    snap = feed(TargetTracker("t", parse_windows("1m")), [off], [0])
    assert math.isnan(snap.engines[0].lifetime_hit_ratio)


def test_kv_usage_delta_over_window():
    caps = load_capture("vllm-0.32.0/concurrent")
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [caps[0].body, caps[2].body], [0, 5])
    w = snap.engines[0].windows[0]
    assert w.kv_usage_delta == pytest.approx(ref_value(caps[2].body, "vllm:kv_cache_usage_perc"))
    assert w.kv_usage_delta > 0


def test_no_queries_in_window_is_nan_not_zero():
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [body, body], [0, 5])
    assert math.isnan(snap.engines[0].windows[0].hit_ratio)
    assert "no_traffic" in {d.code for d in snap.diagnoses}


def test_histogram_quantile_matches_prometheus_rules():
    bounds = (0.1, 0.5, 1.0, float("inf"))
    counts = (10, 20, 40, 40)
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(0.5 + 0.5 * 0 / 20)
    assert histogram_quantile(0.25, bounds, counts) == pytest.approx(0.1 + 0.4 * 0.0 / 10)
    assert histogram_quantile(0.75, bounds, counts) == pytest.approx(0.5 + 0.5 * (30 - 20) / 20)
    assert histogram_quantile(0.1, bounds, counts) == pytest.approx(0.1 * 4 / 10)  # from 0
    assert histogram_quantile(0.99, (1.0, float("inf")), (0, 10)) == 1.0  # in the +Inf bucket
    assert math.isnan(histogram_quantile(0.5, bounds, (0, 0, 0, 0)))
    assert math.isnan(histogram_quantile(0.5, (0.1, 0.5), (1, 2)))  # no +Inf bucket


def test_latency_from_real_histogram_deltas():
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    first, last = caps[0].body, caps[-1].body
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [first, last], [0, 5])
    lat = dict(snap.engines[0].windows[0].latency)
    n = ref_value(last, "vllm:time_to_first_token_seconds_count") - ref_value(
        first, "vllm:time_to_first_token_seconds_count"
    )
    s = ref_value(last, "vllm:time_to_first_token_seconds_sum") - ref_value(
        first, "vllm:time_to_first_token_seconds_sum"
    )
    assert lat["ttft"].mean == pytest.approx(s / n)
    assert 0 < lat["ttft"].p50 <= lat["ttft"].p90 <= lat["ttft"].p99


def test_changed_bucket_layout_is_never_merged():
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    first, last = caps[0].body, caps[-1].body
    # drop one bucket line from the later body: a different le set (another vLLM version)
    lines = [
        ln
        for ln in last.decode().split("\n")
        if not ln.startswith('vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001"')
    ]
    changed = "\n".join(lines).encode()
    tracker = TargetTracker("t", parse_windows("1m"))
    snap = feed(tracker, [first, changed], [0, 5])
    lat = dict(snap.engines[0].windows[0].latency)
    assert "ttft" not in lat  # no baseline with the same layout yet
    assert "e2e" in lat


@pytest.mark.parametrize("folder", ["vllm-0.32.0-dp2/prefix_on_shared", "vllm-0.32.0-dp2/api_servers_2"])
def test_real_data_parallel_capture_is_two_engines_never_summed(folder):
    """Our own capture of a real vLLM with --data-parallel-size 2 (tests/fixtures): one body, two
    engines, each with its own cache; admission_rejections (no engine label) does not break it."""
    caps = load_capture(folder)
    tracker = TargetTracker("t", parse_windows("1m,5m"))
    snap = feed(tracker, [c.body for c in caps], [c.ts for c in caps])
    last = caps[-1].body
    assert [(e.engine, e.replica) for e in snap.engines] == [("0", ""), ("1", "")]
    for e in snap.engines:
        q = ref_value(last, Q, engine=e.engine)
        h = ref_value(last, H, engine=e.engine)
        assert (e.current.prefix_queries, e.current.prefix_hits) == (q, h)
        assert e.lifetime_hit_ratio == pytest.approx(h / q)
    assert [c.engine for c in snap.cache_configs] == ["0", "1"]
    assert snap.restarts == 0 and "counter_reset" not in {d.code for d in snap.diagnoses}
    outcome = parse_body(last, None, caps[-1].ts, 0.01)
    assert outcome.normalised.admission_rejections == 0.0


def test_ratio_series_follows_the_history_and_snapshots_keep_theirs() -> None:
    """The sparkline series is kept point by point (pruned, cleared when the engine leaves):
    always the hit ratio between consecutive history points, and a snapshot's series never
    changes after later scrapes."""
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    tr = TargetTracker("t", [Window("1m", 60.0)])
    kept: list[tuple[Sequence[float], list[float]]] = []
    t = 1e9
    for i in range(40):
        if i == 25:
            t += 200.0  # away for longer than the window: history cleared, then rebuilt
        t += 5.0
        b = set_value(set_value(body, Q, 1000.0 + 97 * i), H, 10.0 + 41 * i + (i % 3))
        snap = tr.observe(parse_body(b, None, t, 0.01))
        hist = next(iter(tr._engines.values()))
        ts, vs = hist.ts, hist.vs
        expected: list[float] = []
        for j in range(1, len(vs)):
            expected += [ts[j], (vs[j][1] - vs[j - 1][1]) / (vs[j][0] - vs[j - 1][0])]
        series = snap.engines[0].ratio_series
        assert list(series) == expected
        kept.append((series, list(series)))  # the snapshot's own object, and a copy of it now
    assert all(list(held) == then for held, then in kept)
    assert len(hist.ts) < 20  # the window pruned it
