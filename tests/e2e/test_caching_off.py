"""A real vLLM started with prefix caching disabled, seen through the sidecar."""

from __future__ import annotations

import time

import pytest
from live import LONG, SHORT, diagnoses, fetch, is_nan, one, scraped_after, series, start_vllm, \
    traffic, wait_until

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
    # shared prefixes that would hit if caching were on
    traffic(vllm_off, requests=24, concurrency=2, shared_fraction=1.0, prefixes=1, rate=4.0,
            seed=5)
    wait_until(scraped_after(sidecar, time.time()), "a scrape after traffic")
    data = series(fetch(sidecar.base_url + "/metrics"))
    labels = dict(target="live", model_name="tiny", engine="0")

    assert one(data, "vllm_sidecar_prefix_caching_enabled", target="live", engine="0") == 0
    found = diagnoses(data, "live")
    assert "prefix_caching_disabled" in found
    assert one(data, "vllm_sidecar_diagnosis", target="live", code="prefix_caching_disabled",
               severity="warning") == 1
    assert "zero_hit_rate" not in found, found
    for window in ("lifetime", SHORT, LONG):
        assert is_nan(one(data, "vllm_sidecar_prefix_cache_hit_ratio", window=window, **labels))
    # vLLM did see the prompts: this is not "no traffic"
    assert one(data, "vllm_sidecar_prompt_tokens_total", **labels) > 0
    assert "no_traffic" not in found
