"""Steady-state memory of N targets with full 5m history, and render time at that state.

A real run needs 5 minutes before the longest window is full; this process feeds the real
``TargetTracker`` 61 scrapes 5 s apart per target (each body freshly parsed and normalised, the
way the service does it) inside a process that imported everything the service imports, then
reports its RSS and the time to render the sidecar's part of ``/metrics`` for those snapshots:
as the service serves it (per-target fragments rendered after each scrape, joined per request),
with every fragment rendered afresh (the worst case), and with ``prometheus_client``'s
``generate_latest`` over the reference collector.

    python -m bench.memory --targets 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

import sidecar.service  # noqa: F401 - the service's import footprint
from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker
from sidecar.exporter import SnapshotCollector, render, render_target
from sidecar.scrape import parse_body

from .bodies import bodies
from .procs import rss_mb


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--points", type=int, default=61, help="scrapes per target (61 = 5m at 5s)")
    p.add_argument("--kind", default="one")
    ns = p.parse_args()
    import os

    seq = bodies(ns.kind)
    windows = parse_windows("1m,5m")
    rss0 = rss_mb(os.getpid())
    trackers = [TargetTracker(f"t{i}", windows) for i in range(ns.targets)]
    t0 = 1.8e9
    for step in range(ns.points):
        body = seq[min(step, len(seq) - 1)]
        for tr in trackers:
            tr.observe(parse_body(body, "text/plain; version=0.0.4", t0 + 5 * step, 0.01))
    gc.collect()
    rss = rss_mb(os.getpid())
    snaps = [t.snapshot for t in trackers]
    frags = [render_target(sn) for sn in snaps]  # what the service caches after each scrape
    cached = _median(lambda: render(frags))
    fresh = _median(lambda: render([render_target(sn) for sn in snaps]))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snaps))
    reference = _median(lambda: generate_latest(registry), 3)
    print(
        json.dumps(
            {
                "targets": ns.targets,
                "points": ns.points,
                "rss_mb": rss,
                "rss_before_targets_mb": rss0,
                "render_ms": cached * 1e3,
                "render_all_fresh_ms": fresh * 1e3,
                "render_prometheus_client_ms": reference * 1e3,
                "render_bytes": len(render(frags)),
            }
        )
    )


def _median(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    return statistics.median(times)


if __name__ == "__main__":
    main()
