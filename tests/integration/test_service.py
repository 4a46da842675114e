"""The real scrape loop and HTTP server against replayed real captures, side by side with a dead,
a slow and a garbage target. The sidecar runs as a subprocess exactly as users start it."""

from __future__ import annotations

import math
import signal
import time

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from testkit.bodies import multi_engine, no_hits
from testkit.captures import FIXTURES, load_capture
from testkit.procs import SidecarProcess, wait_until
from testkit.replay import ReplayServer

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    for s in samples(text):
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def wait_for(fn, what: str):
    """Poll ``fn`` until truthy; a guard against hanging, never a timing assertion."""
    return wait_until(fn, what, timeout=30.0)


@pytest.fixture()
def replay():
    with ReplayServer() as rs:
        yield rs


@pytest.fixture()
def sidecar_proc():
    """Start the real service (``SidecarProcess``) on the given ``--target`` specs; every one
    started is stopped with SIGTERM at the end of the test."""
    started: list[SidecarProcess] = []

    def start(*targets: str, interval="0.3", windows="3s,6s", extra=()):
        args = ["--interval", interval, "--windows", windows, *extra]
        for t in targets:
            args += ["--target", t]
        sidecar = SidecarProcess(args)
        started.append(sidecar)
        wait_for(lambda: _get(sidecar.base + "/healthz"), "/healthz answers")
        return sidecar, sidecar.base

    yield start
    for sidecar in started:
        sidecar.stop(10)


def _get(url: str):
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def metrics(base: str) -> str:
    return httpx.get(base + "/metrics", timeout=5).text


def until(base: str, cond) -> str:
    """The sidecar's /metrics text once ``cond(text)`` holds."""

    def check():
        text = metrics(base)
        return text if cond(text) else None

    return wait_for(check, "the condition on /metrics")


def test_side_by_side_good_restart_engines_dead_slow_garbage(replay, sidecar_proc):
    caps = load_capture("vllm-0.32.0/prefix_on_shared")
    bodies = [c.body for c in caps]
    # a restart: the counters fall back to round 1 after round 4, then grow again
    replay.add("restart", [bodies[2], bodies[4], bodies[1], bodies[3]])
    replay.add("dp", [multi_engine([b, no_hits(b)]) for b in bodies])
    replay.add("slow", [bodies[-1]], delay=5.0)
    replay.add("garbage", [b"\x00\x01 this is not prometheus\n"])
    proc, base = sidecar_proc(
        f"restart={replay.url('restart')}",
        f"dp={replay.url('dp')}",
        f"slow={replay.url('slow')}",
        f"garbage={replay.url('garbage')}",
        "dead=http://127.0.0.1:1/metrics",
    )
    # every target scraped once -> ready
    wait_for(lambda: (_get(base + "/readyz") or httpx.Response(500)).status_code == 200, "/readyz says ready")
    final_q = value(bodies[3].decode(), Q)
    text = until(
        base, lambda t: value(t, "vllm_sidecar_prefix_cache_queries_total", target="restart") == final_q
    )
    # restart: counters pass through, restart counted once, windowed ratio spans the restart
    assert value(text, "vllm_sidecar_target_restarts_total", target="restart") == 1
    expect_q = (value(bodies[4].decode(), Q) - value(bodies[2].decode(), Q)) + value(bodies[3].decode(), Q)
    expect_h = (value(bodies[4].decode(), H) - value(bodies[2].decode(), H)) + value(bodies[3].decode(), H)
    ratio = value(text, "vllm_sidecar_prefix_cache_hit_ratio", target="restart", window="6s")
    assert ratio == pytest.approx(expect_h / expect_q)
    assert value(text, "vllm_sidecar_diagnosis", target="restart", code="counter_reset") == 1
    # two engines: one series each, never summed
    text = until(
        base,
        lambda t: (
            value(t, "vllm_sidecar_prefix_cache_hits_total", target="dp", engine="0")
            == value(bodies[-1].decode(), H)
        ),
    )
    assert value(text, "vllm_sidecar_prefix_cache_hits_total", target="dp", engine="1") == 0
    assert value(text, "vllm_sidecar_prefix_caching_enabled", target="dp", engine="1") == 1
    # dead, slow (timeout < interval), garbage: up 0 with the right reason, nothing stale
    for target, reason in (("dead", "connect"), ("slow", "timeout"), ("garbage", "parse")):

        def failed(target=target, reason=reason):
            t = metrics(base)
            return (
                t
                if (value(t, "vllm_sidecar_scrape_errors_total", target=target, reason=reason) or 0) >= 1
                else None
            )

        text = wait_for(failed, f"{target} failed with {reason}")
        assert value(text, "vllm_sidecar_target_up", target=target) == 0
        assert value(text, "vllm_sidecar_diagnosis", target=target, code="target_down") == 1
        assert value(text, "vllm_sidecar_prefix_cache_hit_ratio", target=target) is None
    # the good targets kept being scraped on time despite the slow one
    before = value(metrics(base), "vllm_sidecar_last_scrape_success_timestamp_seconds", target="dp")
    time.sleep(1.2)
    after = value(metrics(base), "vllm_sidecar_last_scrape_success_timestamp_seconds", target="dp")
    assert after - before >= 0.6
    assert value(metrics(base), "vllm_sidecar_target_up", target="restart") == 1
    doc = httpx.get(base + "/api/v1/targets").json()
    garbage = next(t for t in doc["targets"] if t["name"] == "garbage")
    assert garbage["last_error_reason"] == "parse" and "line 1" in garbage["last_error"]


def test_openmetrics_negotiation_and_text_default(replay, sidecar_proc):
    replay.add_fixture("on", FIXTURES / "vllm-0.32.0/prefix_on_shared")
    _, base = sidecar_proc(f"on={replay.url('on')}")
    wait_for(lambda: value(metrics(base), "vllm_sidecar_target_up", target="on") == 1, "target on up")
    plain = httpx.get(base + "/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    om = httpx.get(base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    names = {s.name for fam in om_families(om.text) for s in fam.samples}
    assert "vllm_sidecar_prefix_cache_queries_total" in names
    assert "vllm_sidecar_target_up" in names


def test_openmetrics_and_v1_text_answers_from_vllm_are_accepted(replay, sidecar_proc):
    om_body = (
        b"# TYPE vllm:prefix_cache_queries counter\n"
        b'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 10.0\n'
        b'vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e9\n'
        b"# TYPE vllm:prefix_cache_hits counter\n"
        b'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 4.0 # {trace_id="a"} 1.0\n'
        b"# EOF\n"
    )
    replay.add("om", [om_body], content_type="application/openmetrics-text; version=1.0.0; charset=utf-8")
    replay.add_fixture("v1text", FIXTURES / "vllm-0.32.0/prefix_on_shared")  # text/plain; version=1.0.0
    _, base = sidecar_proc(f"om={replay.url('om')}", f"v1text={replay.url('v1text')}")
    text = until(
        base,
        lambda t: (
            value(t, "vllm_sidecar_target_up", target="om") == 1
            and value(t, "vllm_sidecar_target_up", target="v1text") == 1
        ),
    )
    assert value(text, "vllm_sidecar_prefix_cache_hit_ratio", target="om", window="lifetime") == 0.4


def test_no_vllm_metrics_and_http_status(replay, sidecar_proc):
    replay.add("empty", [b"# HELP process_open_fds x\nprocess_open_fds 3.0\n"])
    replay.add("err", [b""], status=500)
    _, base = sidecar_proc(f"empty={replay.url('empty')}", f"err={replay.url('err')}")
    text = until(
        base,
        lambda t: (
            (value(t, "vllm_sidecar_scrape_errors_total", target="err", reason="http_status") or 0) >= 1
            and (value(t, "vllm_sidecar_scrape_errors_total", target="empty", reason="no_vllm_metrics") or 0)
            >= 1
        ),
    )
    assert value(text, "vllm_sidecar_diagnosis", target="empty", code="no_vllm_metrics") == 1
    assert value(text, "vllm_sidecar_target_up", target="empty") == 0


def test_too_large_body_is_refused(replay, sidecar_proc):
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    replay.add("big", [body])
    _, base = sidecar_proc(f"big={replay.url('big')}", extra=("--max-body-bytes", "4096"))
    text = until(
        base,
        lambda t: (value(t, "vllm_sidecar_scrape_errors_total", target="big", reason="too_large") or 0) >= 1,
    )
    assert value(text, "vllm_sidecar_target_up", target="big") == 0


def test_sigterm_stops_cleanly(replay, sidecar_proc):
    replay.add("slow", [b"x 1\n"], delay=5.0)
    sidecar, base = sidecar_proc(f"slow={replay.url('slow')}", interval="2", windows="10s")
    time.sleep(0.5)  # a scrape is in flight
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(10) == 0
    sidecar.stop()  # already exited: collects the rest of its output
    assert "Traceback" not in sidecar.logs


def test_nan_ratio_rendered_as_nan(replay, sidecar_proc):
    off = load_capture("vllm-0.32.0/prefix_off")
    replay.add("off", [c.body for c in off])
    _, base = sidecar_proc(f"off={replay.url('off')}")
    text = until(base, lambda t: value(t, "vllm_sidecar_target_up", target="off") == 1)
    assert math.isnan(value(text, "vllm_sidecar_prefix_cache_hit_ratio", target="off", window="lifetime"))
    assert value(text, "vllm_sidecar_prefix_caching_enabled", target="off") == 0
