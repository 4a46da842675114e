"""Issue 10 §4 and §6 through the real scrape loop: the service as users start it, scraping
replayed bodies of a router, Ray Serve, a fresh vLLM right after a burst, and a V0 server whose
idle bodies drop the counters before it restarts."""

from __future__ import annotations

import math
import time

import httpx
import pytest

from testkit.bodies import ROUTER, ray_body, set_value, without_counters
from testkit.captures import load_capture
from testkit.procs import SidecarProcess, wait_until
from testkit.replay import ReplayServer

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"


def series(m: dict, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        lab: v
        for (n, lab), v in m.items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    }


@pytest.fixture()
def replay():
    with ReplayServer() as rs:
        yield rs


def v0_body(idle: bool, prompt: float) -> bytes:
    b = load_capture("vllm-0.8.5.post2-v0-hidden/prefix_on_shared")[-1].body
    return without_counters(b) if idle else set_value(b, "vllm:prompt_tokens_total", prompt)


def test_router_ray_burst_and_v0_restart_through_the_scrape_loop(replay):
    # a vLLM that served a burst 20 s before the sidecar's first scrape (its _created says so)
    now = time.time()
    burst = set_value(set_value(load_capture("vllm-0.32.0/prefix_on_shared")[-1].body, Q, 1000), H, 600)
    burst = set_value(burst, "vllm:prompt_tokens_cached_by_source_total", 600, {"source": "device"})
    burst = set_value(burst, "vllm:prefix_cache_queries_created", now - 20)
    replay.add("burst", [burst])
    replay.add("router", [(ROUTER % 12000).encode()])
    replay.add(
        "ray",
        [ray_body({"r1": (3584, 2048), "r2": (2048, 512)}).encode(), ray_body({"r1": (4000, 2100)}).encode()],
    )  # r2 scaled away
    # V0: counters, then idle bodies without them, then a restart (lower than last seen)
    replay.add("v0", [v0_body(False, 9000)] + [v0_body(True, 0)] * 20 + [v0_body(False, 300)])
    sidecar = SidecarProcess(
        [
            "--interval",
            "0.3",
            "--windows",
            "1m",
            *(f"--target={n}={replay.url(n)}" for n in ("burst", "router", "ray")),
            "--target",
            f"v0={replay.url('v0')}",
        ]
    )
    try:

        def settled():
            m = sidecar.metrics(timeout=5)
            # every body served, and the last one scraped at least twice (so it was observed)
            done = (
                replay.fakes["v0"].hits > len(replay.fakes["v0"].bodies) + 1 and replay.fakes["ray"].hits >= 3
            )
            return m if done else None

        m = wait_until(settled, "every replayed body scraped")
        m = sidecar.metrics(timeout=5)
        # §6: the burst before the first scrape counts in the window (not NaN)
        (burst_ratio,) = series(
            m, "vllm_sidecar_prefix_cache_hit_ratio", target="burst", window="1m"
        ).values()
        assert burst_ratio == pytest.approx(0.6)
        # §6: a V0 counter back lower after idle bodies: one restart
        assert list(series(m, "vllm_sidecar_target_restarts_total", target="v0").values()) == [1]
        # §4: the router is three engines with replica labels
        running = series(m, "vllm_sidecar_requests_running", target="router")
        assert sorted(running.values()) == [2, 3, 5]
        assert {dict(lab)["replica"] for lab in running} == {f"server=http://backend-{x}:8000" for x in "abc"}
        info = series(m, "vllm_sidecar_vllm_info", target="router")
        assert [dict(lab)["exposer"] for lab in info] == ["production-stack-router"]
        assert not series(m, "vllm_sidecar_diagnosis", target="router", code="legacy_metric_names")
        # §4: Ray replicas kept apart; the one left keeps its replica label (no churn)
        life = series(m, "vllm_sidecar_prefix_cache_hit_ratio", target="ray", window="lifetime")
        assert {dict(lab)["replica"]: v for lab, v in life.items()} == {
            "ReplicaId=r1,WorkerId=w1": pytest.approx(2100 / 4000)
        }
        doc = httpx.get(sidecar.base + "/api/v1/targets", timeout=5).json()
        router = next(t for t in doc["targets"] if t["name"] == "router")
        assert router["exposer"] == "production-stack-router" and router["requests_running"] == 10
        assert "router" in router["exposer_note"]
        assert not any(math.isnan(v) for v in running.values())
    finally:
        sidecar.stop()
