"""Helpers of the live e2e tests: read Prometheus text, poll, send traffic (no fixtures here)."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from demo.traffic import TrafficConfig, TrafficStats, run_traffic
from demo.vllm_server import VllmServer, VllmServerConfig
from testkit import procs
from testkit.procs import SidecarProcess

#: sidecar settings for the live tests: fast scrapes, short windows
INTERVAL = 1.0  # scrape timeout 0.8 s: room for a loaded 2-core machine
WINDOWS = "5s,30s"
SHORT, LONG = "5s", "30s"
#: safety net for polling loops only (a broken run must end); never a performance assertion
PATIENCE = 300.0

# -- reading /metrics ---------------------------------------------------------------------------
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str, accept: str = "text/plain;version=0.0.4") -> str:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def series(body: str) -> Series:
    """Every sample of a text-format body, keyed by (name, labels); parsed by prometheus_client."""
    out: Series = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(data: Series, name: str, **labels: str) -> list[float]:
    """Values of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return [v for (n, lab), v in data.items() if n == name and want <= lab]


def one(data: Series, name: str, **labels: str) -> float:
    vals = pick(data, name, **labels)
    assert len(vals) == 1, f"expected one {name}{labels}, found {vals}"
    return vals[0]


def diagnoses(data: Series, target: str) -> set[str]:
    return {
        dict(lab)["code"]
        for (n, lab), v in data.items()
        if n == "vllm_sidecar_diagnosis" and dict(lab).get("target") == target and v == 1
    }


def wait_until(check: Callable[[], Any], what: str, patience: float = PATIENCE, every: float = 0.25) -> Any:
    """:func:`testkit.procs.wait_until` with the live tests' patience; a sidecar busy or a
    target restarting (``OSError``, ``ValueError``) counts as "not yet"."""
    return procs.wait_until(check, what, timeout=patience, pause=every, tolerate=(OSError, ValueError))


def scraped_after(sidecar: SidecarProcess, t: float, target: str = "live") -> Callable[[], Any]:
    """A check: the sidecar finished a successful scrape that started after unix time ``t``."""

    def check() -> bool:
        doc = json.loads(fetch(sidecar.base_url + "/api/v1/targets"))
        for tgt in doc["targets"]:
            if tgt["name"] == target:
                return bool(tgt.get("last_success") and tgt["last_success"] > t)
        return False

    return check


def traffic(server: VllmServer, **kw: Any) -> TrafficStats:
    cfg = TrafficConfig(base_url=server.base_url, **kw)
    stats = asyncio.run(run_traffic(cfg))
    assert stats.failed == 0, f"traffic failed: {stats.last_error}\n{server.log_tail()}"
    return stats


def is_nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def start_vllm(model_dir: Path, logs: Path, name: str, prefix_caching: bool) -> VllmServer:
    """A real vLLM on a free port serving the tiny model as ``tiny``; waits until healthy."""
    server = VllmServer(
        VllmServerConfig(
            model=str(model_dir), prefix_caching=prefix_caching, log_path=str(logs / f"vllm-{name}.log")
        )
    )
    server.start()
    return server


class Watcher:
    """Reads the sidecar's ``/metrics`` every 0.2 s in a thread, keeping every answer.

    Tests then judge what the sidecar said *while* something happened, instead of betting that
    one read lands at the right moment on a busy machine.
    """

    def __init__(self, sidecar: SidecarProcess) -> None:
        import threading

        self.url = sidecar.base_url + "/metrics"
        self.seen: list[Series] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self.seen.append(series(fetch(self.url)))
            except (OSError, ValueError):
                pass
            self._done.wait(0.2)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def values(self, name: str, **labels: str) -> list[float]:
        return [v for data in self.seen for v in pick(data, name, **labels)]

    def diagnoses(self, target: str = "live", up: bool | None = None) -> list[set[str]]:
        """Active diagnosis codes per answer; ``up`` keeps only answers with that target_up."""
        return [
            diagnoses(data, target)
            for data in self.seen
            if up is None or pick(data, "vllm_sidecar_target_up", target=target) == [float(up)]
        ]


def target_doc(sidecar: SidecarProcess, name: str = "live") -> dict[str, Any]:
    """The sidecar's ``/api/v1/targets`` entry for target ``name``."""
    doc = json.loads(fetch(sidecar.base_url + "/api/v1/targets"))
    found = [t for t in doc["targets"] if t["name"] == name]
    assert len(found) == 1, f"target {name!r} not in {[t['name'] for t in doc['targets']]}"
    return found[0]


class BackgroundTraffic:
    """Traffic to vLLM on its own thread and event loop until :meth:`stop`.

    For faults "mid-traffic": the test kills or freezes vLLM while requests are in flight and
    reads :attr:`stats` (failures are counted, never raised) from its own thread.
    """

    def __init__(self, server: VllmServer, **kw: Any) -> None:
        import threading

        self.config = TrafficConfig(base_url=server.base_url, requests=None, **kw)
        self.stats = TrafficStats()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(run_traffic(self.config, self.stats, self._stop))
        self._loop.close()

    def __enter__(self) -> BackgroundTraffic:
        self._thread.start()
        return self

    def stop(self) -> TrafficStats:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        return self.stats

    def __exit__(self, *exc: object) -> None:
        self.stop()
