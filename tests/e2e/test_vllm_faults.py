"""A real vLLM misbehaving under the sidecar (issue 13, section 3): frozen, then killed.

Why with the real server: a hung target is a process that accepts connections and never answers
(SIGSTOP of the API server: the kernel still completes the TCP handshake), and a crashed one
refuses connections while its replacement loads the model (vLLM binds its port early but only
listens once the engine is ready). Fakes can imitate both; these tests prove the sidecar reads
the real thing as promised: a timeout at the deadline without stalling another target and
without a false restart, and after a crash exactly one restart, never a ratio outside [0, 1].

Both reuse the session's vLLM; the crash test restarts it and so runs last (``restarts_vllm``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import (
    BackgroundTraffic,
    Watcher,
    diagnoses,
    fetch,
    is_nan,
    one,
    scraped_after,
    series,
    target_doc,
    traffic,
    wait_until,
)

from demo.vllm_server import VllmServer, group_members
from testkit.replay import ReplayServer

pytestmark = pytest.mark.e2e

ERRORS = "vllm_sidecar_scrape_errors_total"
RESTARTS = "vllm_sidecar_target_restarts_total"
UP = "vllm_sidecar_target_up"
RATIO = "vllm_sidecar_prefix_cache_hit_ratio"


#: this repository's own capture: vLLM 0.32 with --data-parallel-size 2 (engines 0 and 1)
DP2 = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32.0-dp2" / "prefix_on_shared"


@pytest.fixture
def replay_url() -> Iterator[str]:
    """A healthy second target: a real capture replayed over HTTP (its last body repeats)."""
    server = ReplayServer()
    server.add_fixture("replay", DP2)
    with server:
        yield server.url("replay")


def api_server_pid(server: VllmServer) -> int:
    """The API server's PID, checked against vLLM's own log prefix ``(APIServer pid=N)``."""
    pid = server.api_server_pid
    assert pid is not None and server.running()
    assert f"(APIServer pid={pid})" in server.log_tail(400), server.log_tail()
    return pid


def errors(sidecar, reason: str, target: str = "live") -> float:
    return one(series(fetch(sidecar.base_url + "/metrics")), ERRORS, target=target, reason=reason)


def test_frozen_api_server_times_out_without_a_false_restart(replay_url, vllm_on, sidecar_for):
    sidecar = sidecar_for(vllm_on, replay_url, names=("live", "replay"))
    traffic(vllm_on, requests=8, concurrency=4, shared_fraction=0.8, seed=51)
    wait_until(scraped_after(sidecar, time.time()), "a good scrape before the freeze")
    before = series(fetch(sidecar.base_url + "/metrics"))
    restarts0 = one(before, RESTARTS, target="live")
    timeouts0 = one(before, ERRORS, target="live", reason="timeout")
    pid = api_server_pid(vllm_on)

    frozen_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        with Watcher(sidecar) as watch:
            wait_until(
                lambda: errors(sidecar, "timeout") >= timeouts0 + 3,
                "three timed-out scrapes of the frozen vLLM",
            )
            frozen = target_doc(sidecar, "live")
            replay = target_doc(sidecar, "replay")
            during = series(fetch(sidecar.base_url + "/metrics"))
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.time()
    wait_until(scraped_after(sidecar, resumed_at), "a good scrape after SIGCONT")
    after = series(fetch(sidecar.base_url + "/metrics"))

    # the hung target: timed out at the scrape deadline (0.8 x the 1 s interval), down
    assert not frozen["up"] and frozen["last_error_reason"] == "timeout"
    assert "0.8s" in frozen["last_error"], frozen["last_error"]
    assert one(during, UP, target="live") == 0
    assert "target_down" in diagnoses(during, "live")
    assert any("target_down" in d for d in watch.diagnoses(up=False))
    # the other target went on as before: up, scraped after the freeze began, never failed
    assert replay["up"] and replay["scrape_errors"] == {}
    assert [e["engine"] for e in replay["engines"]] == ["0", "1"]
    assert replay["last_success"] > frozen_at
    assert set(watch.values(UP, target="replay")) == {1.0}
    assert set(watch.values(ERRORS, target="replay")) == {0.0}
    # SIGCONT: back up; the engines never stopped, so no restart, ever
    assert one(after, UP, target="live") == 1
    assert "target_down" not in diagnoses(after, "live")
    assert set(watch.values(RESTARTS, target="live")) == {restarts0}
    assert one(after, RESTARTS, target="live") == restarts0
    assert one(after, ERRORS, target="live", reason="connect") == one(
        before, ERRORS, target="live", reason="connect"
    )


def loading_refuses(sidecar, server: VllmServer, spawned_at: float) -> dict | None:
    """A scrape begun after the new vLLM was spawned failed with ``connect``, and vLLM is still
    not healthy now (so it was loading when that scrape ran)."""
    doc = target_doc(sidecar)
    if doc["last_scrape"] <= spawned_at or doc["up"]:
        return None
    assert server.running(), server.log_tail()
    if fetch_health(server):
        pytest.fail("vLLM became healthy before the sidecar saw it loading")
    return doc


def fetch_health(server: VllmServer) -> bool:
    try:
        fetch(server.base_url + "/health")
        return True
    except OSError:
        return False


@pytest.mark.restarts_vllm
def test_killed_mid_traffic_and_restarted_counts_one_restart(vllm_on, sidecar_for):
    sidecar = sidecar_for(vllm_on)
    labels = dict(target="live", model_name="tiny", engine="0")
    wait_until(scraped_after(sidecar, time.time()), "a good scrape before the crash")
    before = series(fetch(sidecar.base_url + "/metrics"))
    restarts0 = one(before, RESTARTS, target="live")
    pid = api_server_pid(vllm_on)
    group = group_members(pid)
    assert pid in group and len(group) > 1, f"no engine-core child in {group}"

    with Watcher(sidecar) as watch:
        with BackgroundTraffic(vllm_on, concurrency=4, shared_fraction=0.8, seed=61) as load:
            wait_until(lambda: load.stats.ok >= 8, "traffic flowing before the kill")
            os.kill(pid, signal.SIGKILL)  # the API server only, with requests in flight
            wait_until(lambda: load.stats.failed > 0, "requests failing after the kill")
        vllm_on.stop()  # reaps the orphaned engine core, if it did not exit by itself
        assert group_members(pid) == [], "processes of the killed vLLM still alive"

        spawned_at = time.time()
        vllm_on.start(wait=False)
        loading = wait_until(
            lambda: loading_refuses(sidecar, vllm_on, spawned_at), "a failed scrape while the new vLLM loads"
        )
        loading_restarts = one(series(fetch(sidecar.base_url + "/metrics")), RESTARTS, target="live")
        vllm_on.wait_ready()
        traffic(vllm_on, requests=12, concurrency=4, shared_fraction=0.8, seed=63)
        wait_until(scraped_after(sidecar, time.time()), "a good scrape after the restart")
        after = series(fetch(sidecar.base_url + "/metrics"))

    assert load.stats.ok >= 8 and load.stats.failed > 0
    # while the new vLLM loaded: refused connections, no restart counted yet
    assert loading["last_error_reason"] == "connect", loading
    assert loading_restarts == restarts0
    # exactly one restart, seen only once the new vLLM answered
    assert one(after, RESTARTS, target="live") == restarts0 + 1
    assert set(watch.values(RESTARTS, target="live")) <= {restarts0, restarts0 + 1}
    assert one(after, UP, target="live") == 1
    assert "counter_reset" in diagnoses(after, "live")
    # every hit ratio the sidecar served during the episode (each window, lifetime, by source):
    # in [0, 1] or NaN
    assert watch.values(RATIO, **labels)
    ratios = [
        (n, dict(lab), v)
        for data in watch.seen
        for (n, lab), v in data.items()
        if "hit_ratio" in n and ("target", "live") in lab
    ]
    bad = [r for r in ratios if not is_nan(r[2]) and not 0 <= r[2] <= 1]
    assert not bad, f"hit ratios outside [0, 1]: {bad[:5]}"
