"""Every kind of broken target at once, next to healthy ones, through the real service.

One :class:`~sidecar.service.Sidecar` scrapes a fault-injecting server (one target per fault), a
port nobody listens on, a replayed healthy vLLM and a healthy target of the fault server, while
the test polls ``/metrics`` over HTTP. The assertions read only what a Prometheus would read.
The scenario runs twice: through the service's own HTTP client and through aiohttp.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import aiohttp
import pytest
from faultserver import FaultServer, real_bodies, refused_url
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.settings import Config, TargetConfig
from sidecar.model import REASONS, Window
from sidecar.service import Sidecar
from testkit.replay import ReplayServer

INTERVAL = 0.5  # the scrape timeout is then 0.4 s (interval * 0.8)
MAX_BODY = 256 * 1024  # the real bodies are ~50 KiB
POLLS = 16
P = "vllm_sidecar_"

#: fault case (target name) -> the reason it must be counted under
EXPECTED = {
    "refused": "connect",
    "slow_headers": "timeout",
    "slow_body": "timeout",
    "reset_mid_body": "connect",
    "close_without_answer": "connect",
    "status_500": "http_status",
    "status_404": "http_status",
    "oversize_declared": "too_large",
    "oversize_chunked": "too_large",
    "non_utf8": "parse",
    "garbage": "parse",
    "duplicate_series": "parse",
    "no_vllm": "no_vllm_metrics",
}
HEALTHY = ("healthy", "ok")
#: series that carry numbers read from vLLM: never served for a target whose last scrape failed
ENGINE_SERIES = (
    P + "prefix_cache_queries_total",
    P + "prefix_cache_hits_total",
    P + "prefix_cache_hit_ratio",
    P + "kv_cache_usage_ratio",
    P + "prompt_tokens_total",
    P + "requests_running",
    P + "prefix_caching_enabled",
    P + "cache_config_info",
    P + "kv_cache_usage_delta",
)

Sample = tuple[str, dict[str, str], float]


@dataclass
class Run:
    polls: list[list[Sample]]
    replay_hits: int
    fault_requests: dict[str, int]
    seconds: float


def parse_exposition(text: str) -> list[Sample]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def of(poll: list[Sample], name: str, target: str, **labels: str) -> list[float]:
    return [
        v
        for n, lab, v in poll
        if n == name and lab.get("target") == target and all(lab.get(k) == x for k, x in labels.items())
    ]


def engine_series(poll: list[Sample], target: str) -> list[Sample]:
    return [s for s in poll if s[0] in ENGINE_SERIES and s[1].get("target") == target]


async def _scenario(own_client: bool) -> Run:
    faults = await FaultServer(MAX_BODY).start()
    replay = ReplayServer()
    replay.add("healthy", real_bodies())
    await replay.start()
    targets = [TargetConfig(case, faults.url(case)) for case in EXPECTED if case != "refused"]
    targets += [
        TargetConfig("refused", refused_url()),
        TargetConfig("healthy", replay.url("healthy")),
        TargetConfig("ok", faults.url("ok")),
        TargetConfig("nan_inf", faults.url("nan_inf")),
        TargetConfig("flapping", faults.url("flapping")),
        TargetConfig("goes_bad", faults.url("goes_bad")),
    ]
    config = Config(
        listen="127.0.0.1:0",
        interval=INTERVAL,
        windows=(Window("10s", 10.0),),
        targets=tuple(targets),
        max_body_bytes=MAX_BODY,
    )
    sidecar = Sidecar(config, own_client=own_client)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sidecar.start()
    polls = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(POLLS):
                await asyncio.sleep(INTERVAL / 2)
                async with http.get(f"http://127.0.0.1:{sidecar.port}/metrics") as resp:
                    assert resp.status == 200
                    polls.append(parse_exposition(await resp.text()))
    finally:
        await sidecar.stop()
        seconds = loop.time() - started
        await faults.stop()
        await replay.stop()
    return Run(polls, replay.fakes["healthy"].hits, dict(faults.requests), seconds)


@pytest.fixture(scope="module", params=[True, False], ids=["own_client", "aiohttp"])
def run(request: pytest.FixtureRequest) -> Run:
    """The whole scenario once per HTTP client: plain-HTTP targets go through the service's own
    client (:mod:`sidecar.httpget`) by default, through aiohttp when it is switched off; every
    assertion, the reasons above included, must hold for both."""
    return asyncio.run(_scenario(request.param))


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_each_fault_is_counted_under_its_reason(run: Run, case: str) -> None:
    last = run.polls[-1]
    counts = {r: of(last, P + "scrape_errors_total", case, reason=r) for r in REASONS}
    assert all(len(v) == 1 for v in counts.values()), counts  # every reason is exported, 0 or not
    assert counts[EXPECTED[case]][0] >= 2, counts  # failed on every cycle, not just once
    assert {r: v[0] for r, v in counts.items() if r != EXPECTED[case] and v[0]} == {}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_a_failing_target_is_down_and_serves_no_vllm_numbers(run: Run, case: str) -> None:
    scraped = [p for p in run.polls if of(p, P + "scrape_duration_seconds", case)]
    assert scraped, "the target was never scraped"
    for poll in scraped:
        assert of(poll, P + "target_up", case) == [0.0]
        assert engine_series(poll, case) == []
        assert of(poll, P + "last_scrape_success_timestamp_seconds", case) == []
    codes = {lab["code"] for n, lab, _ in scraped[-1] if n == P + "diagnosis" and lab.get("target") == case}
    assert ("no_vllm_metrics" if case == "no_vllm" else "target_down") in codes


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_targets_keep_updating_next_to_the_broken_ones(run: Run, name: str) -> None:
    scraped = [p for p in run.polls if of(p, P + "scrape_duration_seconds", name)]
    assert len(scraped) >= POLLS // 2
    for poll in scraped:
        assert of(poll, P + "target_up", name) == [1.0]
        assert sum(of(poll, P + "scrape_errors_total", name)) == 0
        ratios = of(poll, P + "prefix_cache_hit_ratio", name, window="lifetime")
        assert len(ratios) == 1 and (math.isnan(ratios[0]) or 0.0 <= ratios[0] <= 1.0)
    # the replayed bodies went from idle (no queries: NaN) to real traffic: a number now
    assert 0.0 <= of(scraped[-1], P + "prefix_cache_hit_ratio", name, window="lifetime")[0] <= 1.0
    stamps = [of(p, P + "last_scrape_success_timestamp_seconds", name)[0] for p in scraped]
    assert stamps == sorted(stamps)
    # It kept being scraped every cycle: the broken targets never held up its schedule. The bound
    # is deliberately loose (half the cycles) so a slow machine cannot fail it.
    assert len(set(stamps)) >= (run.seconds / INTERVAL) / 2 - 2


def test_the_replayed_target_was_scraped_on_its_schedule(run: Run) -> None:
    assert run.replay_hits >= (run.seconds / INTERVAL) / 2 - 2


def test_nan_and_inf_values_are_served_without_breaking_ratios(run: Run) -> None:
    last = run.polls[-1]
    assert of(last, P + "target_up", "nan_inf") == [1.0]
    assert sum(of(last, P + "scrape_errors_total", "nan_inf")) == 0
    ratios = of(last, P + "prefix_cache_hit_ratio", "nan_inf")
    for r in ratios:  # both counters are impossible here: any ratio left must still be valid
        assert math.isnan(r) or 0.0 <= r <= 1.0
    # NaN and infinite counters are impossible: never exported, counted instead
    # (contract "Impossible values")
    assert of(last, P + "prefix_cache_queries_total", "nan_inf") == []
    assert of(last, P + "prefix_cache_hits_total", "nan_inf") == []
    assert of(last, P + "out_of_range_values_total", "nan_inf", family="vllm:prefix_cache_hits")[0] >= 1
    assert of(last, P + "out_of_range_values_total", "nan_inf", family="vllm:prefix_cache_queries")[0] >= 1


def test_a_flapping_target_never_shows_old_numbers_while_down(run: Run) -> None:
    states = []
    for poll in run.polls:
        up = of(poll, P + "target_up", "flapping")
        if not up:
            continue
        states.append(up[0])
        if up[0] == 0.0:
            assert engine_series(poll, "flapping") == []
        else:
            assert of(poll, P + "kv_cache_usage_ratio", "flapping")
            assert of(poll, P + "prefix_cache_queries_total", "flapping")
    assert 0.0 in states and 1.0 in states
    errors = of(run.polls[-1], P + "scrape_errors_total", "flapping", reason="http_status")
    assert errors[0] >= 2


def test_a_target_that_went_bad_drops_its_numbers(run: Run) -> None:
    last = run.polls[-1]
    assert run.fault_requests["goes_bad"] > 2
    assert of(last, P + "target_up", "goes_bad") == [0.0]
    assert of(last, P + "last_scrape_success_timestamp_seconds", "goes_bad"), "it was good once"
    assert engine_series(last, "goes_bad") == []
    assert of(last, P + "scrape_errors_total", "goes_bad", reason="connect")[0] >= 1


def test_the_sidecars_own_counters_never_decrease(run: Run) -> None:
    seen: dict[tuple, float] = {}
    for poll in run.polls:
        for name, lab, v in poll:
            if name in (P + "scrape_errors_total", P + "target_restarts_total"):
                key = (name, tuple(sorted(lab.items())))
                assert v >= seen.get(key, 0.0), key
                seen[key] = v
    assert seen
