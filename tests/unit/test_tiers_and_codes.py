"""Which tier served the hits, and the two findings that read behaviour over flags
(issue 10 §1-§3): prefix_cache_unused, prefix_below_block."""

from __future__ import annotations

import math

import pytest
from truth_helpers import codes, run, series

from sidecar import doctor
from sidecar.explain import explain, tier_split
from testkit.bodies import no_hits, set_value
from testkit.captures import load_capture

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
P = "vllm:prompt_tokens_total"
SRC = "vllm:prompt_tokens_cached_by_source_total"


def base() -> bytes:
    return load_capture("vllm-0.32.0/prefix_on_shared")[-1].body


def unused(prompt: float) -> bytes:
    b = set_value(set_value(set_value(base(), P, prompt), Q, 0), H, 0)
    return no_hits(b)


# ------------------------------------------------------------------ prefix_cache_unused
def test_prompts_grow_queries_do_not_is_prefix_cache_unused():
    snap = run([unused(0), unused(5000), unused(10000)])
    assert "prefix_cache_unused" in codes(snap)
    d = next(d for d in snap.diagnoses if d.code == "prefix_cache_unused")
    assert d.severity == "warning"
    assert 'enable_prefix_caching="True"' in d.summary  # what the flag claimed
    assert d.evidence_dict()["engines"] == ("engine 0",)
    x = explain(d, snap)
    text = " ".join((*x.numbers, *(c.text for c in x.causes)))
    for cause in ("engine turned prefix caching off", "NIXL", "fork"):
        assert cause in text
    report = doctor.Report(snap, 3, 3)
    assert doctor.exit_code([report]) == 1


def test_prefix_cache_unused_not_while_disabled_nor_on_v0_nor_without_traffic():
    off = [set_value(unused(p), "vllm:cache_config_info", 1, None) for p in (0, 5000)]
    off = [b.replace(b'enable_prefix_caching="True"', b'enable_prefix_caching="False"') for b in off]
    assert codes(run(off)) >= {"prefix_caching_disabled"}
    assert "prefix_cache_unused" not in codes(run(off))
    assert "prefix_cache_unused" not in codes(run([unused(5000), unused(5000)]))
    v0 = load_capture("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")
    assert "prefix_cache_unused" not in codes(run([c.body for c in v0]))


def test_counters_win_over_a_false_flag():
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    lying = [c.body.replace(b'enable_prefix_caching="True"', b'enable_prefix_caching="False"') for c in caps]
    assert "prefix_caching_disabled" not in codes(run(lying))  # hits grow: caching works


# ------------------------------------------------------------------ prefix_below_block
def hybrid(q: float, mean_prompt: float = 600) -> bytes:
    b = no_hits(set_value(base(), Q, q))
    b = b.replace(b'block_size="128"', b'block_size="8320"')
    count = 10 + q / 1000
    b = set_value(b, "vllm:request_prompt_tokens_count", count)
    return set_value(b, "vllm:request_prompt_tokens_sum", count * mean_prompt)


def test_hybrid_block_larger_than_prompts_is_prefix_below_block():
    snap = run([hybrid(1000), hybrid(5000), hybrid(9000)])
    assert {"zero_hit_rate", "prefix_below_block"} <= codes(snap)
    d = next(d for d in snap.diagnoses if d.code == "prefix_below_block")
    ev = d.evidence_dict()
    assert ev["unit"] == 8320 and ev["mean_prompt_tokens"] == pytest.approx(600)
    fixes = " ".join(explain(d, snap).fix)
    assert "--block-size" in fixes and "--prefix-match-unit" in fixes


def test_prefix_match_unit_is_the_unit_where_set_and_long_prompts_are_not_structural():
    seq = [hybrid(q).replace(b'prefix_match_unit="None"', b'prefix_match_unit="256"') for q in (1000, 5000)]
    assert "prefix_below_block" not in codes(run(seq))  # 600 > 256: unlucky, not impossible
    assert "zero_hit_rate" in codes(run(seq))
    assert "prefix_below_block" not in codes(run([hybrid(q, 20000) for q in (1000, 5000)]))


# ------------------------------------------------------------------ tiers
def tiered(q: float, device: float, host: float) -> bytes:
    b = set_value(set_value(base(), Q, q), H, device)
    b = set_value(b, SRC, device, {"source": "device"})
    return set_value(b, SRC, host, {"source": "host"})


def test_hits_from_a_cpu_offload_tier_are_no_zero_hit_rate():
    snap = run([tiered(1000, 0, 0), tiered(3000, 0, 800)])
    assert "zero_hit_rate" not in codes(snap)
    ratios = {
        dict(lab)["source"]: v
        for lab, v in series(snap, "vllm_sidecar_prefix_cache_hit_ratio_by_source", window="1m").items()
    }
    assert ratios["host"] == pytest.approx(800 / 2000) and ratios["device"] == 0
    split = tier_split(snap.engines[0].window("1m"), short=True)
    assert [(s, name) for s, name, _ in split[:2]] == [
        ("device", "engine KV memory"),
        ("host", "CPU offload"),
    ]


def test_split_is_device_hits_over_queries_and_sums_to_the_effective_ratio():
    snap = run([tiered(1000, 100, 0), tiered(3000, 900, 300)])
    w = snap.engines[0].window("1m")
    assert dict(w.source_ratios())["device"] == pytest.approx(w.hit_ratio)
    assert sum(r for _, r in w.source_ratios()) == pytest.approx((800 + 300) / 2000)
    life = series(snap, "vllm_sidecar_prefix_cache_hit_ratio_by_source", window="lifetime", source="host")
    assert list(life.values()) == [pytest.approx(300 / 3000)]


def test_absent_tier_families_mean_absent_series_never_zeros():
    old = load_capture("vllm-0.10.1.1.post2/prefix_on_shared")
    snap = run([c.body for c in old])
    for name in (
        "vllm_sidecar_prefix_cache_hits_by_source_total",
        "vllm_sidecar_prefix_cache_hit_ratio_by_source",
        "vllm_sidecar_offload_tier_hit_ratio",
    ):
        assert series(snap, name) == {}


def test_offload_tier_and_external_ratios():
    extra = (
        "# TYPE vllm:kv_offload_tiering_chunk_queries_total counter\n"
        'vllm:kv_offload_tiering_chunk_queries_total{engine="0",model_name="tiny",tier="0:primary"} %d\n'
        "# TYPE vllm:kv_offload_tiering_chunk_hits_total counter\n"
        'vllm:kv_offload_tiering_chunk_hits_total{engine="0",model_name="tiny",tier="0:primary"} %d\n'
    )
    bodies = [
        no_hits(set_value(set_value(base(), Q, q), "vllm:external_prefix_cache_queries_total", q))
        + (extra % (tq, th)).encode()
        for q, tq, th in ((1000, 10, 0), (2000, 50, 20))
    ]
    bodies[1] = set_value(bodies[1], "vllm:external_prefix_cache_hits_total", 250)
    snap = run(bodies)
    assert "zero_hit_rate" not in codes(snap)  # the connector served hits
    tier = series(snap, "vllm_sidecar_offload_tier_hit_ratio", window="1m", tier="0:primary")
    assert list(tier.values()) == [pytest.approx(20 / 40)]
    ext = series(snap, "vllm_sidecar_external_prefix_cache_hit_ratio", window="1m")
    assert list(ext.values()) == [pytest.approx(250 / 1000)]
    assert not math.isnan(snap.engines[0].lifetime_hit_ratio)


def test_doctor_prints_the_tier_split():
    snap = run([tiered(1000, 100, 0), tiered(3000, 900, 300)])
    text = doctor.render_text([doctor.Report(snap, 2, 2)], 1.0, doctor.Style(False))
    assert "engine KV memory 40%" in text and "CPU offload 15%" in text


def test_prefix_below_block_needs_the_windows_own_prompts_not_the_lifetime_ones():
    """Queries grow but no request finished in the window: the lifetime mean (50 tokens here)
    must not make a structural claim about the window."""
    b = no_hits(base())
    b = set_value(
        set_value(b, "vllm:request_prompt_tokens_count", 1000), "vllm:request_prompt_tokens_sum", 50_000
    )
    snap = run([set_value(b, Q, 1000), set_value(b, Q, 21000)])
    assert "zero_hit_rate" in codes(snap)
    assert "prefix_below_block" not in codes(snap)


def test_zero_hit_rate_is_judged_per_replica():
    from testkit.bodies import ray_body

    seq = [ray_body({"r1": (1000, 500), "r2": (4000, 0)}), ray_body({"r1": (2000, 1000), "r2": (8000, 0)})]
    snap = run(seq)
    d = next(d for d in snap.diagnoses if d.code == "zero_hit_rate")
    assert d.evidence_dict()["replicas"] == ("ReplicaId=r2,WorkerId=w2",)
    assert d.evidence_dict()["queries"] == 4000


def test_doctor_says_when_the_counters_overrule_a_false_flag():
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    lying = [c.body.replace(b'enable_prefix_caching="True"', b'enable_prefix_caching="False"') for c in caps]
    text = doctor.render_text([doctor.Report(run(lying), 5, 5)], 1.0, doctor.Style(False))
    assert 'prefix caching ON (hits grow; the flag says enable_prefix_caching="False")' in text
