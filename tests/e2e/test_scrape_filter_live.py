"""The name[] filter against the real vLLM: its ``/metrics/`` route honours the query (a much
smaller body holding every family asked for), and the filtered and full paths give the same
numbers, both through the pure pipeline and through the sidecar service."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
from live import INTERVAL, WINDOWS, fetch, series, traffic, wait_until

from demo.vllm_server import VllmServer
from sidecar.normalize import WANTED, normalise
from sidecar.parser import parse
from sidecar.scrape import ACCEPT
from sidecar.scrapefilter import check, filtered_url, request_names
from testkit.procs import SidecarProcess

P = "vllm_sidecar_"
#: series whose value depends on when each target was scraped, not on what vLLM said
TIMING = {
    P + "scrape_duration_seconds",
    P + "last_scrape_success_timestamp_seconds",
    P + "scrape_mode",
    P + "diagnosis",
}


def _get(url: str) -> httpx.Response:
    return httpx.get(url, headers={"Accept": ACCEPT}, timeout=10, follow_redirects=False)


def _quiet_bodies(server: VllmServer) -> tuple[bytes, httpx.Response, bytes]:
    """Full, filtered, full, back to back, until both full bodies say the same (vLLM idle)."""

    def attempt():
        full1 = _get(server.metrics_url).content
        names = request_names({s[0] for s in parse(full1, None, WANTED).samples})
        filt = _get(filtered_url(server.metrics_url, names))
        full2 = _get(server.metrics_url).content
        same = normalise(parse(full1, None, WANTED).samples) == normalise(parse(full2, None, WANTED).samples)
        return (full1, filt, full2) if same else None

    return wait_until(attempt, "two identical full bodies around a filtered one (vLLM idle)")


def test_vllm_honours_the_filter_with_the_same_numbers(vllm_on: VllmServer) -> None:
    traffic(vllm_on, requests=12, concurrency=3, shared_fraction=0.8, prefixes=2, seed=23)
    full, filt, _ = _quiet_bodies(vllm_on)
    parsed_full = parse(full, None, WANTED)
    names = request_names({s[0] for s in parsed_full.samples})
    assert "vllm:prefix_cache_queries_total" in names
    assert "vllm:time_to_first_token_seconds_bucket" in names

    assert filt.status_code == 200, filt.text[:300]
    parsed = parse(filt.content, filt.headers.get("Content-Type"), WANTED)
    verdict = check(200, [s[0] for s in parsed.samples], names, parsed.vllm_lines)
    assert verdict.honoured and not verdict.ignored, verdict
    assert len(filt.content) < len(full) / 2, (len(filt.content), len(full))
    # every requested sample line, exactly as in the full body
    assert sorted(parsed.samples, key=repr) == sorted(
        (s for s in parsed_full.samples if s[0] in names), key=repr
    )
    assert normalise(parsed.samples) == normalise(parsed_full.samples)
    # the exact route really ignores the query: the reason the slash matters
    exact = _get(vllm_on.metrics_url + "?" + filtered_url(vllm_on.metrics_url, names).split("?")[1])
    assert exact.status_code == 200 and len(exact.content) > len(filt.content) * 2


def _figures(text: str, target: str) -> dict:
    """The target's numbers that depend only on vLLM's body (no windowed rates: their spans
    depend on each target's scrape times), NaN as text."""
    out = {}
    for (name, labels), v in series(text).items():
        lab = dict(labels)
        if lab.pop("target", None) != target or name in TIMING:
            continue
        if lab.get("window", "lifetime") != "lifetime":
            continue
        out[(name, frozenset(lab.items()))] = "NaN" if math.isnan(v) else v
    return out


def test_filtered_and_full_targets_give_identical_figures(
    vllm_on: VllmServer, logs: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        json.dumps(
            {
                "targets": [
                    {"name": "filtered", "url": vllm_on.metrics_url},
                    {"name": "full", "url": vllm_on.metrics_url, "scrape_filter": "off"},
                ]
            }
        )
    )
    sidecar = SidecarProcess(
        ["--interval", f"{INTERVAL:g}", "--windows", WINDOWS, "--config", str(cfg)],
        log_path=logs / "sidecar-scrape-filter.log",
        ready=True,
        timeout=120.0,
    )
    try:
        traffic(vllm_on, requests=8, concurrency=2, shared_fraction=0.8, prefixes=2, seed=29)
        done = time.time()

        def settled():
            doc = json.loads(fetch(sidecar.base_url + "/api/v1/targets"))
            by = {t["name"]: t for t in doc["targets"]}
            if by["filtered"]["scrape_mode"] != "filtered" or by["full"]["scrape_mode"] != "full":
                return None
            if not all((by[n]["last_success"] or 0) > done + 2 * INTERVAL for n in by):
                return None
            text = fetch(sidecar.base_url + "/metrics")
            a, b = _figures(text, "filtered"), _figures(text, "full")
            return (text, a, b) if a == b else None

        text, filtered, full = wait_until(settled, "both targets scraped, idle, and equal")
        assert filtered == full
        data = series(text)
        assert data[(P + "scrape_mode", frozenset({("target", "filtered"), ("mode", "filtered")}))] == 1
        assert data[(P + "scrape_mode", frozenset({("target", "full"), ("mode", "full")}))] == 1
        queries = [v for (n, _), v in filtered.items() if n == P + "prefix_cache_queries_total"]
        assert queries and queries[0] > 0
        assert any(n == P + "prefix_cache_hit_ratio" for n, _ in filtered)
        assert "name[] filter" not in sidecar.log_tail(200)  # never fell back
    finally:
        code = sidecar.stop()
        assert code in (0, None), sidecar.log_tail()
