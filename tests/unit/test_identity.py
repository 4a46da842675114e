"""Contract "Identity" and "Other exposers": series that differ in labels the sidecar does not
understand are different engines, never merged (issue 10 §4)."""

from __future__ import annotations

import pytest
from truth_helpers import codes, observe, run, series, tracker

from sidecar import explain
from sidecar.normalize import escape_replica_value
from sidecar.scrape import parse_body
from testkit.bodies import ROUTER, ray_body
from testkit.captures import load_capture


def test_production_stack_router_is_three_engines_not_one():
    snap = run([ROUTER % 12000, ROUTER % 13000])
    assert snap.exposer == "production-stack-router"
    replicas = sorted(e.replica for e in snap.engines)
    assert replicas == [f"server=http://backend-{x}:8000" for x in "abc"]
    assert {e.model_name for e in snap.engines} == {""}
    assert sum(e.current.running for e in snap.engines) == 10
    a = next(e for e in snap.engines if e.replica.endswith("a:8000"))
    assert a.current.prefix_queries == 13000 and a.lifetime_hit_ratio == pytest.approx(7500 / 13000)
    assert "legacy_metric_names" not in codes(snap)  # the router chose those names
    running = series(snap, "vllm_sidecar_requests_running")
    assert sorted(running.values()) == [2, 3, 5]
    assert all(dict(lab)["replica"].startswith("server=") for lab in running)
    info = series(snap, "vllm_sidecar_vllm_info")
    assert [dict(lab)["exposer"] for lab in info] == ["production-stack-router"]
    assert "router" in explain.exposer_note(snap)


def test_ray_serve_replicas_with_the_same_engine_stay_apart():
    snap = run([ray_body({"r1": (3584, 2048), "r2": (2048, 512)})])
    assert snap.up and "no_vllm_metrics" not in codes(snap)
    assert snap.exposer == "ray-serve"
    ratios = {e.replica: e.lifetime_hit_ratio for e in snap.engines}
    assert ratios == {
        "ReplicaId=r1,WorkerId=w1": pytest.approx(0.5714, abs=1e-4),
        "ReplicaId=r2,WorkerId=w2": pytest.approx(0.25),
    }
    # labels that do not vary are not identity
    assert snap.identity_labels == ("ReplicaId", "WorkerId")
    life = series(snap, "vllm_sidecar_prefix_cache_hit_ratio", window="lifetime")
    assert {dict(lab)["replica"] for lab in life} == set(ratios)


def test_identity_labels_stay_for_the_targets_life():
    """A label that varied once keeps naming the engine when only one value is left (no churn)."""
    two = ROUTER.replace("server=", "shard=").replace(
        "vllm:gpu_prefix_cache_queries_total{", 'vllm:gpu_prefix_cache_queries_total{engine="0",'
    )
    tr = tracker()
    first = observe(tr, two % 100, 1000)
    assert "shard" in first.identity_labels
    one = "\n".join(line for line in (two % 20000).splitlines() if "backend-a" in line or "#" in line)
    later = observe(tr, one + "\n", 1005)
    assert [e.replica for e in later.engines if e.current.prefix_queries is not None] == [
        "shard=http://backend-a:8000"
    ]
    assert all("replica" in dict(lab) for lab in series(later, "vllm_sidecar_prefix_cache_queries_total"))


def test_a_varying_unknown_label_splits_engines_but_dimensions_and_pid_do_not():
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body.decode()
    # two copies of every engine series that differ in a label nobody told us about
    lines = []
    for line in body.splitlines():
        if line.startswith("vllm:") and 'engine="0"' in line:
            lines.append(line.replace('engine="0"', 'engine="0",zone="a"'))
            lines.append(line.replace('engine="0"', 'engine="0",zone="b"'))
        else:
            lines.append(line)
    snap = run(["\n".join(lines) + "\n"])
    assert sorted(e.replica for e in snap.engines) == ["zone=a", "zone=b"]
    assert snap.identity_labels == ("zone",)
    # the real capture alone: source/finished_reason/le vary, but one engine
    assert [e.replica for e in run([body]).engines] == [""]


def test_replica_values_are_escaped():
    assert escape_replica_value("a,b=c\\d") == "a\\,b\\=c\\\\d"


def test_a_family_without_engine_and_a_foreign_process_never_break_the_body():
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body.decode()
    body = body.replace('reason="max_num_queued_reqs"} 0.0', 'reason="max_num_queued_reqs"} 3.0')
    body = body.replace('reason="max_num_queued_tokens"} 0.0', 'reason="max_num_queued_tokens"} 4.0')
    extra = (
        "# KServe queue-proxy in the same body\n"
        "process_start_time_seconds 1.7e9\n"
        'queue_proxy_requests_total{pod="p"} 7\n'
        'queue_proxy_requests_total{pod="p"} 7\n'
    )
    body = body.replace("# HELP vllm:num_requests_running", extra + "# HELP vllm:num_requests_running")
    tr = tracker()
    outcome = parse_body(body.encode(), None, 1000.0, 0.01)
    assert outcome.ok and outcome.normalised.admission_rejections == 7
    assert outcome.normalised.process_start is None  # two processes said different things
    snap = run([body])
    assert snap.up
    (e,) = snap.engines
    assert e.engine == "0" and e.replica == ""
    assert tr.observe(outcome).up


def test_a_label_on_some_samples_only_is_identity_too():
    """Absent means "" in Prometheus: `pod="a"` next to no pod are two engines, never merged."""
    body = (
        'vllm:prefix_cache_queries_total{engine="0",model_name="m",pod="a"} 1000\n'
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 500\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m",pod="a"} 900\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m",pod="a"} 0.9\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
    )
    snap = run([body])
    assert sorted((e.replica, e.current.prefix_queries) for e in snap.engines) == [("", 500), ("pod=a", 1000)]


def test_an_empty_engine_label_means_engine_zero():
    snap = run(
        [
            'vllm:prefix_cache_queries_total{engine="",model_name="m"} 10\n'
            'vllm:prefix_cache_hits_total{engine="",model_name="m"} 5\n'
        ]
    )
    assert [e.engine for e in snap.engines] == ["0"]
