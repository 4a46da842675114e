"""The sidecar against a real vLLM (prefix caching on): counters, ratios, KV usage, diagnoses."""

from __future__ import annotations

import math
import time

import pytest
from live import (
    LONG,
    SHORT,
    Watcher,
    diagnoses,
    fetch,
    is_nan,
    one,
    pick,
    scraped_after,
    series,
    traffic,
    wait_until,
)
from prometheus_client.openmetrics.parser import text_string_to_metric_families as text_string_to_openmetrics

pytestmark = pytest.mark.e2e

Q, H = "vllm_sidecar_prefix_cache_queries_total", "vllm_sidecar_prefix_cache_hits_total"
RATIO = "vllm_sidecar_prefix_cache_hit_ratio"


def quiet_scrape(sidecar, server) -> tuple[dict, dict]:
    """After traffic stopped: wait for a good scrape that began later, then read vLLM and the
    sidecar (retrying if a later scrape of a busy machine failed in between).

    vLLM's counters do not move without traffic, so both reads see the same moment.
    """
    t = time.time()

    def read():
        if not scraped_after(sidecar, t)():
            return None
        own = series(fetch(server.metrics_url))
        ours = series(fetch(sidecar.base_url + "/metrics"))
        again = series(fetch(server.metrics_url))
        assert pick(own, "vllm:prefix_cache_queries_total") == pick(
            again, "vllm:prefix_cache_queries_total"
        ), "vLLM counted while idle?"
        if one(ours, "vllm_sidecar_target_up", target="live") != 1:
            return None
        return own, ours

    return wait_until(read, "a good sidecar scrape after the traffic ended")


def test_shared_prefix_counters_equal_vllm_and_ratios(vllm_on, sidecar_for):
    sidecar = sidecar_for(vllm_on)
    stats = traffic(vllm_on, requests=40, concurrency=4, shared_fraction=0.8, prefixes=2, seed=11)
    assert stats.shared > 0 and stats.ok == 40
    own, ours = quiet_scrape(sidecar, vllm_on)

    vq = one(own, "vllm:prefix_cache_queries_total", model_name="tiny", engine="0")
    vh = one(own, "vllm:prefix_cache_hits_total", model_name="tiny", engine="0")
    labels = dict(target="live", model_name="tiny", engine="0")
    assert vq > 0 and vh > 0
    assert one(ours, Q, **labels) == vq
    assert one(ours, H, **labels) == vh

    lifetime = one(ours, RATIO, window="lifetime", **labels)
    assert lifetime == pytest.approx(vh / vq)
    assert lifetime > 0.3
    for window in (SHORT, LONG):  # every configured window is exported
        assert len(pick(ours, RATIO, window=window, **labels)) == 1
    # the traffic happened inside the long window: its ratio is a real number in (0, 1]
    long_ratio = one(ours, RATIO, window=LONG, **labels)
    assert 0 < long_ratio <= 1
    assert one(ours, "vllm_sidecar_prefix_caching_enabled", target="live", engine="0") == 1
    assert one(ours, "vllm_sidecar_target_up", target="live") == 1
    assert "zero_hit_rate" not in diagnoses(ours, "live")

    # the same numbers in OpenMetrics, for scrapers that ask for it
    om = fetch(
        sidecar.base_url + "/metrics", accept="application/openmetrics-text;version=1.0.0;charset=utf-8"
    )
    fams = {f.name: f for f in text_string_to_openmetrics(om)}
    queries = fams["vllm_sidecar_prefix_cache_queries"]
    assert queries.type == "counter"
    assert [s.value for s in queries.samples if s.name.endswith("_total")] == [vq]


def test_concurrent_long_requests_show_kv_usage_and_delta(vllm_on, sidecar_for):
    sidecar = sidecar_for(vllm_on)
    wait_until(scraped_after(sidecar, time.time()), "an idle baseline scrape")
    with Watcher(sidecar) as watch:
        traffic(vllm_on, requests=144, concurrency=48, max_tokens=400, shared_fraction=0.5, seed=23)
        wait_until(scraped_after(sidecar, time.time()), "a scrape after the long requests")
    usage = watch.values("vllm_sidecar_kv_cache_usage_ratio", target="live")
    deltas = [
        d
        for d in watch.values("vllm_sidecar_kv_cache_usage_delta", target="live", window=SHORT)
        if not math.isnan(d)
    ]
    assert usage and max(usage) > 0, f"KV usage never above 0: {sorted(set(usage))[-5:]}"
    assert all(0 <= u <= 1 for u in usage)
    assert deltas and max(deltas) > 0


def test_unique_prompts_only_give_zero_hit_rate(vllm_on, sidecar_for):
    sidecar = sidecar_for(vllm_on)
    wait_until(scraped_after(sidecar, time.time()), "a baseline scrape")
    labels = dict(target="live", model_name="tiny", engine="0")
    hits0 = one(series(fetch(sidecar.base_url + "/metrics")), H, **labels)
    with Watcher(sidecar) as watch:
        traffic(vllm_on, requests=32, concurrency=2, shared_fraction=0.0, rate=4.0, seed=37)
        wait_until(scraped_after(sidecar, time.time()), "a scrape after the unique traffic")
    flagged = [d for d in watch.diagnoses() if "zero_hit_rate" in d]
    assert flagged, f"zero_hit_rate never raised: {watch.diagnoses()[-3:]}"
    assert all("prefix_caching_disabled" not in d for d in watch.diagnoses())
    # unique prompts never hit: no new hits, and every defined short-window ratio is 0
    assert set(watch.values(H, **labels)) == {hits0}
    short = [r for r in watch.values(RATIO, window=SHORT, **labels) if not is_nan(r)]
    assert short and set(short) == {0.0}
    assert one(watch.seen[-1], Q, **labels) > one(watch.seen[0], Q, **labels)


@pytest.mark.restarts_vllm
def test_vllm_restart_under_the_sidecar(vllm_on, sidecar_for):
    sidecar = sidecar_for(vllm_on)
    labels = dict(target="live", model_name="tiny", engine="0")
    traffic(vllm_on, requests=20, concurrency=4, shared_fraction=0.8, seed=41)
    wait_until(scraped_after(sidecar, time.time()), "a scrape before the restart")
    restarts0 = one(
        series(fetch(sidecar.base_url + "/metrics")), "vllm_sidecar_target_restarts_total", target="live"
    )
    with Watcher(sidecar) as watch:
        vllm_on.stop()
        wait_until(lambda: watch.diagnoses(up=False), "target_up 0 while vLLM is down")
        vllm_on.start()
        traffic(vllm_on, requests=20, concurrency=4, shared_fraction=0.8, seed=43)
        own, ours = quiet_scrape(sidecar, vllm_on)

    down = watch.diagnoses(up=False)
    assert any("target_down" in d for d in down), down
    assert one(ours, "vllm_sidecar_target_up", target="live") == 1
    assert one(ours, "vllm_sidecar_target_restarts_total", target="live") == restarts0 + 1
    assert "target_down" not in diagnoses(ours, "live")
    assert "counter_reset" in diagnoses(ours, "live")
    ratios = [r for w in (SHORT, LONG) for r in watch.values(RATIO, window=w, **labels)]
    bad = [r for r in ratios if not is_nan(r) and not 0 <= r <= 1]
    assert ratios and not bad, f"windowed ratios out of [0, 1]: {bad}"
    # after the restart the pass-through counters follow vLLM's new ones exactly
    assert one(ours, Q, **labels) == one(own, "vllm:prefix_cache_queries_total", engine="0")
    assert one(ours, H, **labels) == one(own, "vllm:prefix_cache_hits_total", engine="0")
    for window in (SHORT, LONG):
        r = one(ours, RATIO, window=window, **labels)
        assert is_nan(r) or 0 <= r <= 1
