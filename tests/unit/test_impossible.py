"""Contract "Impossible values": never exported, absent for derivation and restart detection,
counted, and shown as what vLLM said (issue 10 §5)."""

from __future__ import annotations

import math

from truth_helpers import observe, run, series, tracker

from sidecar.api import target_dict
from testkit.bodies import set_value
from testkit.captures import load_capture

KV = "vllm:kv_cache_usage_perc"
Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"


def body(i: int = -1) -> bytes:
    return load_capture("vllm-0.32.0/prefix_on_shared")[i].body


def test_negative_kv_usage_is_refused_counted_and_shown():
    good = set_value(body(), KV, 0.25)
    bad = set_value(body(), KV, -0.4127)
    snap = run([good, bad, bad])
    (e,) = snap.engines
    assert e.current.kv_usage is None
    assert series(snap, "vllm_sidecar_kv_cache_usage_ratio") == {}
    assert series(snap, "vllm_sidecar_kv_cache_usage_delta") == {}  # no delta from it either
    assert list(series(snap, "vllm_sidecar_out_of_range_values_total").items()) == [
        ((("family", "vllm:kv_cache_usage_perc"), ("target", "t")), 2.0)
    ]
    (r,) = snap.refused
    assert (r.family, r.engine, r.value) == ("vllm:kv_cache_usage_perc", "0", -0.4127)
    shown = target_dict(snap)["refused"]
    assert shown[0]["value"] == -0.4127 and "outside 0..1" in shown[0]["why"]


def test_usage_above_one_and_nan_are_refused():
    for v in (1.5, math.nan):
        (e,) = run([set_value(body(), KV, v)]).engines
        assert e.current.kv_usage is None


def test_negative_counter_is_not_a_restart_and_not_exported():
    b1 = set_value(body(), "vllm:prompt_tokens_total", 10000)
    b2 = set_value(body(), "vllm:prompt_tokens_total", -5)
    b3 = set_value(body(), "vllm:prompt_tokens_total", 10500)
    tr = tracker()
    observe(tr, b1, 1000)
    mid = observe(tr, b2, 1005)
    assert mid.restarts == 0
    assert series(mid, "vllm_sidecar_prompt_tokens_total") == {}
    last = observe(tr, b3, 1010)
    assert last.restarts == 0
    assert last.engines[0].windows[0].prompt_tokens == 500


def test_hits_above_queries_refuses_both_so_no_ratio_lies():
    snap = run([set_value(set_value(body(), Q, 100), H, 900)])
    (e,) = snap.engines
    assert e.current.prefix_queries is None and e.current.prefix_hits is None
    assert series(snap, "vllm_sidecar_prefix_cache_hit_ratio") == {}
    assert [r.family for r in snap.refused] == ["vllm:prefix_cache_hits"]
    assert "hits above queries" in snap.refused[0].why


def test_negative_running_and_v0_rate_outside_range():
    snap = run([set_value(body(), "vllm:num_requests_running", -1)])
    assert snap.engines[0].current.running is None
    v0 = load_capture("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")[-1].body
    (e,) = run([set_value(v0, "vllm:gpu_prefix_cache_hit_rate", 1.7)]).engines
    assert e.current.v0_hit_rate is None
    (e,) = run([set_value(v0, "vllm:gpu_prefix_cache_hit_rate", -1)]).engines
    assert e.current.v0_hit_rate == -1  # the sentinel: caching off, not impossible


def test_infinite_counters_are_refused_and_json_stays_valid():
    import json

    b = set_value(body(), "vllm:num_preemptions_total", math.inf)
    snap = run([b, b])
    assert snap.engines[0].current.preemptions is None
    assert [r.why for r in snap.refused] == ["infinite"]
    json.dumps(target_dict(snap), allow_nan=False)  # /api/v1/targets and doctor --json


def test_out_of_range_family_label_is_the_family_alone():
    b = set_value(body(), "vllm:prompt_tokens_cached_by_source_total", -3, {"source": "host"})
    snap = run([b])
    (r,) = snap.refused
    assert r.family == "vllm:prompt_tokens_cached_by_source"
    assert r.series == 'vllm:prompt_tokens_cached_by_source{source="host"}'
    fams = [dict(lab)["family"] for lab in series(snap, "vllm_sidecar_out_of_range_values_total")]
    assert fams == ["vllm:prompt_tokens_cached_by_source"]


def test_negative_admission_rejections_are_refused_and_counted():
    b = body().replace(b'reason="max_num_queued_reqs"} 0.0', b'reason="max_num_queued_reqs"} -2.0')
    snap = run([b])
    assert [r.family for r in snap.refused] == ["vllm:admission_rejections"]
