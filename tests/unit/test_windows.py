"""Contract "Windows": increases that know when counters began (``_created``), and restarts seen
behind counters that were absent for a while (issue 10 §6)."""

from __future__ import annotations

import math

import pytest
from truth_helpers import observe, tracker

from testkit.bodies import set_value, without_counters
from testkit.captures import load_capture

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
QC = "vllm:prefix_cache_queries_created"
T = 1_795_406_200.0  # near the capture's own clock


def burst(q: float, h: float, created: float) -> bytes:
    b = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    b = set_value(set_value(b, Q, q), H, h)
    b = set_value(b, "vllm:prompt_tokens_cached_by_source_total", h, {"source": "device"})
    return set_value(b, QC, created)


def test_first_scrape_after_a_burst_counts_the_burst_from_created():
    tr = tracker("1m,5m")
    snap = observe(tr, burst(1000, 600, created=T - 30), T)
    w1m = snap.engines[0].window("1m")
    assert (w1m.queries, w1m.hits, w1m.span) == (1000, 600, 30)
    assert w1m.hit_ratio == pytest.approx(0.6)


def test_created_outside_the_window_leaves_it_partial():
    tr = tracker("1m,5m")
    snap = observe(tr, burst(1000, 600, created=T - 120), T)
    e = snap.engines[0]
    assert math.isnan(e.window("1m").hit_ratio) and e.window("1m").span == 0
    assert e.window("5m").hit_ratio == pytest.approx(0.6)  # inside 5m: counted from zero
    later = observe(tr, burst(1500, 900, created=T - 120), T + 10)
    w = later.engines[0].window("1m")
    assert (w.queries, w.span) == (500, 10)  # from the oldest sample, not from created


def test_created_later_than_the_first_sample_is_ignored():
    """Clocks differ in central mode: a _created in the sidecar's future is not a start."""
    tr = tracker("1m")
    snap = observe(tr, burst(1000, 600, created=T + 5), T)
    assert math.isnan(snap.engines[0].window("1m").hit_ratio)


def test_process_start_is_trusted_only_from_vllm_itself():
    b = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body.decode()
    lines = [ln for ln in b.splitlines() if "_created" not in ln]
    ray = "\n".join(ln.replace("vllm:", "ray_vllm_") for ln in lines)
    ray = set_value(ray, "process_start_time_seconds", T - 30)
    own = set_value("\n".join(lines), "process_start_time_seconds", T - 30)
    assert observe(tracker("1m"), own, T).engines[0].window("1m").span == 30
    assert observe(tracker("1m"), ray, T).engines[0].window("1m").span == 0


def v0(idle: bool, prompt: float) -> bytes:
    b = load_capture("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")[-1].body
    return without_counters(b) if idle else set_value(b, "vllm:prompt_tokens_total", prompt)


def test_v0_counter_back_lower_after_idle_bodies_is_a_restart():
    tr = tracker("1m")
    observe(tr, v0(False, 9000), 1000)
    for i in range(1, 30):  # idle far longer than the window: history expires, last seen stays
        observe(tr, v0(True, 0), 1000 + 5 * i)
    snap = observe(tr, v0(False, 300), 1200)
    assert snap.restarts == 1
    assert snap.engines[0].window("1m").prompt_tokens == 300  # counted from zero


def test_counter_back_higher_counts_from_its_last_seen_value():
    tr = tracker("1m")
    observe(tr, v0(False, 9000), 1000)
    for i in range(1, 30):
        observe(tr, v0(True, 0), 1000 + 5 * i)
    snap = observe(tr, v0(False, 9400), 1200)
    assert snap.restarts == 0
    assert snap.engines[0].window("1m").prompt_tokens == 400


def _ray(r1: tuple[int, int], r2: tuple[int, int]) -> str:
    from testkit.bodies import ray_body

    return ray_body({"r1": r1, "r2": r2})


def test_one_replicas_restart_leaves_the_others_windows_alone():
    """Restarts are judged per engine identity (review finding: one Ray replica's restart reset
    every engine's windows)."""
    tr = tracker("1m")
    observe(tr, _ray((1_000_000, 900_000), (2048, 512)), 1000)
    observe(tr, _ray((1_001_000, 900_100), (2148, 600)), 1060)
    snap = observe(tr, _ray((1_002_000, 900_200), (10, 5)), 1120)
    assert snap.restarts == 1
    r1 = next(e for e in snap.engines if "r1" in e.replica)
    r2 = next(e for e in snap.engines if "r2" in e.replica)
    assert (r1.window("1m").queries, r1.window("1m").hits) == (1000, 100)
    assert (r2.window("1m").queries, r2.window("1m").hits) == (10, 5)  # counted from zero


def test_a_missing_or_refused_hit_counter_is_no_zero_and_no_ratio_above_one():
    b = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body

    def body(q, h):
        out = set_value(b, Q, q)
        return (
            set_value(out, H, h)
            if h is not None
            else out.replace(b"vllm:prefix_cache_hits_total{", b"vllm:other_hits_total{")
        )

    for gap in (math.nan, None):  # refused (NaN) or absent
        tr = tracker("1m")
        observe(tr, body(1000, 100), 1000)
        mid = observe(tr, body(2000, gap), 1060)
        e = mid.engines[0]
        assert math.isnan(e.lifetime_hit_ratio) and math.isnan(e.window("1m").hit_ratio)
        assert "zero_hit_rate" not in {d.code for d in mid.diagnoses}
        last = observe(tr, body(3000, 1500), 1120)
        w = last.engines[0].window("1m")
        assert w.hits <= w.queries and w.hit_ratio == pytest.approx(1400 / 2000)
