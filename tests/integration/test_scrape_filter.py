"""The name[] filter through the real scrape loop: one :class:`~sidecar.service.Sidecar` scrapes the
same real vLLM 0.32 body from replayed targets whose ``/metrics/`` route honours the filter as
prometheus_client does, ignores it, 404s, redirects, answers empty or 500s, plus one target with
``scrape_filter: off``. The assertions read the sidecar's own ``/metrics`` and what the replay
server was asked."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.settings import Config, TargetConfig
from sidecar.model import Window
from sidecar.normalize import WANTED
from sidecar.parser import parse
from sidecar.scrapefilter import request_names
from sidecar.service import Sidecar
from testkit.bodies import get_value, set_value
from testkit.captures import FIXTURES
from testkit.replay import ReplayServer

P = "vllm_sidecar_"
BODY = FIXTURES / "vllm-0.32.0" / "prefix_on_shared" / "004.prom"
#: target -> how its /metrics/ route answers
ROUTES = {
    "filtered": "filter",
    "ignores": "ignore",
    "notfound": "404",
    "redirects": "redirect",
    "empty": "empty",
    "err500": "500",
}
FALLBACK = ("notfound", "redirects", "empty", "err500")
#: target-level series that legitimately differ between targets (timing, the mode itself)
DIFFERENT = {P + "scrape_duration_seconds", P + "last_scrape_success_timestamp_seconds", P + "scrape_mode"}
SCRAPES = 6  # cycles per target before the final look

Sample = tuple[str, dict[str, str], float]


@dataclass
class Run:
    polls: list[list[Sample]]
    fakes: dict
    filter_logs: list[str]


def _samples(text: str) -> list[Sample]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


async def _scenario(logged: _ListHandler) -> Run:
    replay = ReplayServer()
    body = BODY.read_bytes()
    for name, route in ROUTES.items():
        replay.add(name, [body], slash_route=route)
    replay.add("off", [body])
    start = get_value(body, "process_start_time_seconds")
    replay.add("restarts", [body] * 3 + [set_value(body, "process_start_time_seconds", start + 60)])
    await replay.start()
    targets = [TargetConfig(n, replay.url(n)) for n in ROUTES]
    targets.append(TargetConfig("off", replay.url("off"), scrape_filter="off"))
    targets.append(TargetConfig("restarts", replay.url("restarts")))
    # 1 s: a scrape timeout of 0.8 s, room for a loaded 2-core machine (a timeout would be an error)
    config = Config(
        listen="127.0.0.1:0", interval=1.0, windows=(Window("10s", 10.0),), targets=tuple(targets)
    )
    sidecar = Sidecar(config)
    polls: list[list[Sample]] = []
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):  # a guard against hanging only
                await asyncio.sleep(0.25)
                async with http.get(f"http://127.0.0.1:{sidecar.port}/metrics") as resp:
                    polls.append(_samples(await resp.text()))
                if min(f.hits for f in replay.fakes.values()) >= SCRAPES:
                    break
    finally:
        await sidecar.stop()
        await replay.stop()
    logs = [r.getMessage() for r in logged.records if "name[] filter" in r.getMessage()]
    return Run(polls, replay.fakes, logs)


@pytest.fixture(scope="module")
def run() -> Run:
    handler = _ListHandler()
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    try:
        result = asyncio.run(_scenario(handler))
    finally:
        logger.removeHandler(handler)
    return result


class _ListHandler(logging.Handler):
    """Keeps the sidecar's log records (the module fixture cannot use pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def of(poll: list[Sample], name: str, target: str, **labels: str) -> list[float]:
    return [
        v
        for n, lab, v in poll
        if n == name and lab.get("target") == target and all(lab.get(k) == x for k, x in labels.items())
    ]


def mode(poll: list[Sample], target: str) -> dict[str, float]:
    return {lab["mode"]: v for n, lab, v in poll if n == P + "scrape_mode" and lab.get("target") == target}


def figures(poll: list[Sample], target: str) -> list[tuple[str, tuple, float | str]]:
    """Every series of ``target`` but timing and mode, without the target label (NaN as text)."""
    out = []
    for n, lab, v in poll:
        if lab.get("target") != target or n in DIFFERENT:
            continue
        key = tuple(sorted((k, x) for k, x in lab.items() if k != "target"))
        out.append((n, key, "NaN" if math.isnan(v) else v))
    return sorted(out, key=repr)


def test_the_filter_asks_exactly_for_the_wanted_names_the_probe_held(run: Run) -> None:
    fake = run.fakes["filtered"]
    present = {s[0] for s in parse(BODY.read_bytes(), None, WANTED).samples}
    assert fake.last_names == request_names(present)
    assert fake.filtered_hits >= SCRAPES - 2  # one probe, then filtered scrapes
    assert fake.hits - fake.filtered_hits >= 1  # the probe
    assert mode(run.polls[-1], "filtered") == {"filtered": 1.0, "full": 0.0}


def test_filtered_and_full_scrapes_give_identical_figures(run: Run) -> None:
    last = run.polls[-1]
    full = figures(last, "off")
    assert any(n == P + "prefix_cache_queries_total" for n, _, _ in full)
    assert any(n == P + "cache_config_info" for n, _, _ in full)
    for target in ROUTES:
        assert figures(last, target) == full, target


def test_a_restart_seen_in_a_filtered_scrape_makes_the_next_scrape_a_probe(run: Run) -> None:
    fake = run.fakes["restarts"]
    assert of(run.polls[-1], P + "target_restarts_total", "restarts") == [1.0]
    assert fake.hits - fake.filtered_hits == 2  # the first probe, and one after the restart
    assert fake.hits >= SCRAPES
    assert mode(run.polls[-1], "restarts") == {"filtered": 1.0, "full": 0.0}


def test_scrape_filter_off_never_sends_the_query(run: Run) -> None:
    assert run.fakes["off"].slash_hits == 0
    assert mode(run.polls[-1], "off") == {"filtered": 0.0, "full": 1.0}


@pytest.mark.parametrize("target", ["ignores", *FALLBACK])
def test_a_filter_not_used_falls_back_to_full_once_without_an_error(run: Run, target: str) -> None:
    fake = run.fakes[target]
    assert fake.slash_hits == 1  # tried once after the probe, then full until the next probe
    assert fake.hits >= SCRAPES
    assert mode(run.polls[-1], target) == {"filtered": 0.0, "full": 1.0}
    seen = [p for p in run.polls if of(p, P + "target_up", target)]
    assert seen and all(of(p, P + "target_up", target) == [1.0] for p in seen)  # never down
    errors = of(run.polls[-1], P + "scrape_errors_total", target)
    assert len(errors) == 6 and set(errors) == {0.0}
    logged = [m for m in run.filter_logs if f"target {target}:" in m]
    assert len(logged) == 1, run.filter_logs


def test_a_server_that_ignores_the_filter_is_honoured_but_not_kept_filtered(run: Run) -> None:
    """Its full answer to the filtered request is used (a 200 holding every family: honoured,
    no retry), but it saved nothing, so the target scrapes the plain /metrics until the next
    probe and says so."""
    fake = run.fakes["ignores"]
    assert fake.filtered_hits == 1
    (msg,) = [m for m in run.filter_logs if "target ignores:" in m]
    assert "ignored" in msg


def test_the_reason_of_each_fallback_is_logged(run: Run) -> None:
    text = "\n".join(run.filter_logs)
    for target, word in (
        ("notfound", "HTTP 404"),
        ("redirects", "redirect"),
        ("empty", "empty"),
        ("err500", "HTTP 500"),
    ):
        assert f"target {target}: name[] filter: " in text
        line = next(m for m in run.filter_logs if f"target {target}:" in m)
        assert word in line, line
    assert not [m for m in run.filter_logs if "target filtered:" in m or "target off:" in m]


async def _doctor() -> tuple[list, dict]:
    from sidecar.doctor import observe

    replay = ReplayServer()
    replay.add_fixture("live", FIXTURES / "vllm-0.32.0" / "prefix_on_shared")
    replay.add("proxied", [BODY.read_bytes()], slash_route="404")
    await replay.start()
    try:
        reports = await observe(
            [TargetConfig("live", replay.url("live")), TargetConfig("proxied", replay.url("proxied"))],
            duration=1.0,
        )
    finally:
        await replay.stop()
    return reports, replay.fakes


def test_doctor_filters_like_the_service_and_shows_the_mode() -> None:
    from sidecar.api import target_dict
    from sidecar.doctor import Style, render_text
    from sidecar.statuspage import target_block

    reports, fakes = asyncio.run(_doctor())
    live, proxied = reports
    assert fakes["live"].filtered_hits >= 1 and fakes["proxied"].slash_hits == 1
    assert (live.snapshot.scrape_mode, proxied.snapshot.scrape_mode) == ("filtered", "full")
    assert live.ok_scrapes == live.scrapes and proxied.ok_scrapes == proxied.scrapes
    text = render_text(reports, 1.0, Style(False))
    assert "scrape mode filtered" in text and "scrape mode full" in text
    assert target_dict(live.snapshot)["scrape_mode"] == "filtered"
    assert '<span class="mode">filtered</span>' in target_block(live.snapshot, 0.0)
