"""A real vLLM started with prefix caching disabled, seen through the sidecar."""

from __future__ import annotations

import time

import pytest
from live import LONG, SHORT, Watcher, is_nan, one, scraped_after, start_vllm, traffic, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vllm_off(model_dir, logs):
    """Started for this module only, so it does not hold CPU and memory for the others."""
    server = start_vllm(model_dir, logs, "off", prefix_caching=False)
    yield server
    server.stop()


def test_caching_disabled_is_diagnosed(vllm_off, sidecar_for):
    sidecar = sidecar_for(vllm_off)
    wait_until(scraped_after(sidecar, time.time()), "a baseline scrape")
    labels = dict(target="live", model_name="tiny", engine="0")
    with Watcher(sidecar) as watch:
        # shared prefixes that would hit if caching were on
        traffic(vllm_off, requests=24, concurrency=2, shared_fraction=1.0, prefixes=1, rate=4.0, seed=5)
        wait_until(scraped_after(sidecar, time.time()), "a scrape after traffic")
    data = watch.seen[-1]
    assert one(data, "vllm_sidecar_prefix_caching_enabled", target="live", engine="0") == 0
    assert (
        one(data, "vllm_sidecar_diagnosis", target="live", code="prefix_caching_disabled", severity="warning")
        == 1
    )
    # at every moment: the finding holds, and zero_hit_rate (a caching-on finding) never fires
    assert watch.diagnoses(up=True)
    assert all("prefix_caching_disabled" in d for d in watch.diagnoses(up=True))
    assert all("zero_hit_rate" not in d for d in watch.diagnoses())
    for window in ("lifetime", SHORT, LONG):
        ratios = watch.values("vllm_sidecar_prefix_cache_hit_ratio", window=window, **labels)
        assert ratios and all(is_nan(r) for r in ratios), (window, set(ratios))
    # vLLM did see the prompts: while they arrived this was not "no traffic"
    assert one(data, "vllm_sidecar_prompt_tokens_total", **labels) > 0
    assert any("no_traffic" not in d for d in watch.diagnoses())
