"""Each diagnosis code of the contract, on real captures and sequences derived from them."""

from __future__ import annotations

from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker
from sidecar.diagnose import CODES
from sidecar.model import ScrapeOutcome
from sidecar.scrape import parse_body
from testkit.bodies import multi_engine, no_hits, set_value
from testkit.captures import load_capture

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
P = "vllm:prompt_tokens_total"


def run(bodies, step=5.0, windows="1m,5m"):
    tracker = TargetTracker("t", parse_windows(windows))
    snap = None
    for i, body in enumerate(bodies):
        outcome = parse_body(body, None, 1000 + i * step, 0.01)
        snap = tracker.observe(outcome)
    return snap


def codes(snap) -> set[str]:
    return {d.code for d in snap.diagnoses}


def folder(name):
    return [c.body for c in load_capture(name)]


def test_severities_are_the_contracts():
    assert CODES == {
        "target_down": "critical",
        "no_vllm_metrics": "critical",
        "prefix_caching_disabled": "warning",
        "zero_hit_rate": "warning",
        "no_traffic": "info",
        "counter_reset": "info",
        "kv_cache_pressure": "warning",
        "external_kv_connector": "info",
        "legacy_metric_names": "info",
        "prefix_cache_unused": "warning",
        "prefix_below_block": "warning",
    }


def test_healthy_shared_prefix_run_has_no_finding():
    assert codes(run(folder("vllm-0.32.0/prefix_on_shared"))) == set()


def test_caching_off_is_disabled_and_never_zero_hit_rate():
    snap = run(folder("vllm-0.32.0/prefix_off"))
    assert codes(snap) == {"prefix_caching_disabled"}
    d = snap.diagnoses[0]
    assert d.severity == "warning" and dict(d.evidence)["block_size"] == 128


def test_zero_hit_rate_when_queries_grow_and_hits_do_not():
    bodies = folder("vllm-0.32.0/prefix_on_shared")
    flat = [no_hits(b) for b in bodies]
    snap = run(flat)
    assert "zero_hit_rate" in codes(snap)
    ev = next(d for d in snap.diagnoses if d.code == "zero_hit_rate").evidence_dict()
    assert ev["hits"] == 0 and ev["queries"] > 0 and ev["block_size"] == 128
    assert ev["mean_prompt_tokens"] > 0


def test_zero_hit_rate_only_looks_at_the_shortest_window():
    bodies = folder("vllm-0.32.0/prefix_on_shared")
    # hits grew early (inside 5m) but not in the last minute while queries kept growing
    last = bodies[-1]
    seq = [set_value(set_value(last, Q, 1000), H, 0), set_value(set_value(last, Q, 2000), H, 500)]
    seq += [set_value(set_value(last, Q, 2000 + 1000 * i), H, 500) for i in range(1, 15)]
    snap = run(seq, step=10)
    assert "zero_hit_rate" in codes(snap)


def test_no_traffic_when_prompt_tokens_are_flat():
    body = folder("vllm-0.32.0/prefix_on_shared")[-1]
    snap = run([body, body, body])
    assert codes(snap) == {"no_traffic"}


def test_first_scrape_alone_claims_nothing_about_traffic():
    body = folder("vllm-0.32.0/prefix_on_shared")[-1]
    assert codes(run([body])) == set()


def test_counter_reset_holds_within_the_longest_window_only():
    bodies = folder("vllm-0.32.0/prefix_on_shared")
    snap = run([bodies[-1], bodies[1]], windows="1m,5m")
    assert "counter_reset" in codes(snap)
    later = run([bodies[-1], bodies[1]] + [bodies[1]] * 70, step=5, windows="1m,5m")
    assert "counter_reset" not in codes(later)  # 350 s later: out of the 5m window
    assert later.restarts == 1


def test_kv_pressure_from_usage_and_from_preemptions():
    bodies = folder("vllm-0.32.0/concurrent")
    full = set_value(bodies[2], "vllm:kv_cache_usage_perc", 0.93)
    assert "kv_cache_pressure" in codes(run([bodies[1], full]))
    pre = set_value(bodies[2], "vllm:num_preemptions_total", 3)
    snap = run([bodies[1], pre])
    d = next(d for d in snap.diagnoses if d.code == "kv_cache_pressure")
    assert d.evidence_dict()["preemptions"] == 3
    assert "kv_cache_pressure" not in codes(run([bodies[1], bodies[2]]))


def test_external_connector_when_external_queries_nonzero():
    body = folder("vllm-0.32.0/prefix_on_shared")[-1]
    ext = set_value(body, "vllm:external_prefix_cache_queries_total", 512)
    assert "external_kv_connector" in codes(run([ext]))
    assert "external_kv_connector" not in codes(run([body]))


def test_legacy_names_on_old_eras_only():
    assert "legacy_metric_names" in codes(run(folder("vllm-0.10.1.1.post2/prefix_on_shared")))
    assert "legacy_metric_names" in codes(run(folder("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")))
    assert "legacy_metric_names" in codes(run(folder("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")[:1]))
    assert "legacy_metric_names" not in codes(run(folder("vllm-0.32.0/concurrent")))


def test_v0_zero_hit_rate_from_its_gauge():
    bodies = folder("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")[1:]
    zero = [set_value(b, "vllm:gpu_prefix_cache_hit_rate", 0) for b in bodies]
    assert "zero_hit_rate" in codes(run(zero))
    assert "zero_hit_rate" not in codes(run(bodies))


def test_down_and_no_vllm_metrics_are_exclusive_and_alone():
    tracker = TargetTracker("t", parse_windows("1m"))
    tracker.observe(parse_body(folder("vllm-0.32.0/prefix_off")[-1], None, 0, 0.01))
    down = tracker.observe(ScrapeOutcome(5, 0.1, reason="timeout", error="slow"))
    assert [(d.code, d.severity) for d in down.diagnoses] == [("target_down", "critical")]
    empty = tracker.observe(parse_body(b"# nothing\nprocess_open_fds 3\n", None, 10, 0.01))
    assert [(d.code, d.severity) for d in empty.diagnoses] == [("no_vllm_metrics", "critical")]
    assert empty.last_error_reason == "no_vllm_metrics"


def test_data_parallel_zero_hits_on_all_engines():
    bodies = folder("vllm-0.32.0/prefix_on_shared")
    dp = [multi_engine([no_hits(b), no_hits(b)]) for b in bodies]
    snap = run(dp)
    assert len(snap.engines) == 2 and "zero_hit_rate" in codes(snap)
    healthy = [multi_engine([b, no_hits(b)]) for b in bodies]
    assert "zero_hit_rate" not in codes(run(healthy))  # one engine hits: the pod is caching
