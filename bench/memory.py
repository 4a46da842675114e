"""Steady-state memory of N targets with full 5m history, and render time at that state.

A real run needs 5 minutes before the longest window is full; this process feeds the real
``TargetTracker`` 61 scrapes 5 s apart per target (each body freshly parsed and normalised, the
way the service does it) inside a process that imported everything the service imports, then
reports its RSS and the time to render ``/metrics`` (``generate_latest`` over the service's
registry) for those snapshots.

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
from sidecar.config import parse_windows
from sidecar.derive import TargetTracker
from sidecar.exporter import SnapshotCollector
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
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: [t.snapshot for t in trackers]))
    times = []
    for _ in range(5):
        s = time.perf_counter()
        out = generate_latest(registry)
        times.append(time.perf_counter() - s)
    print(json.dumps({"targets": ns.targets, "points": ns.points, "rss_mb": rss,
                      "rss_before_targets_mb": rss0, "render_ms": statistics.median(times) * 1e3,
                      "render_bytes": len(out)}))


if __name__ == "__main__":
    main()
