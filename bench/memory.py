"""Steady-state memory of N targets with full 5m history, and render time at that state.

A real run needs 5 minutes before the longest window is full; this process feeds the real
``TargetTracker`` 61 scrapes 5 s apart per target (each body freshly parsed and normalised, the
way the service does it) inside a process that imported everything the service imports, then
reports its RSS (and KiB per target) and the time to render the sidecar's part of ``/metrics``
for those snapshots:
as the service serves it (per-target fragments rendered after each scrape, joined per request),
with every fragment rendered afresh (the worst case), and with ``prometheus_client``'s
``generate_latest`` over the reference collector.

    python -m bench.memory --targets 1000
    python -m bench.memory --targets 1000 --busy

The capture has 5 bodies; after them every scrape repeats the last, an idle engine whose points
share their numbers. ``--busy`` instead grows every counter and bucket by one per further
scrape, so every point differs, as on a vLLM under steady load (the history's worst case).
RSS here is measured from source: with ``PYTHONDONTWRITEBYTECODE=1`` (this project's dev
environment) every module is compiled at start-up, ~1 MB more than the image, whose bytecode is
compiled at build time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import replace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

import sidecar.service  # noqa: F401 - the service's import footprint
from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker
from sidecar.exporter import SnapshotCollector, render, render_target
from sidecar.model import EngineMetrics, Histogram, ScrapeOutcome
from sidecar.scrape import parse_body

from .bodies import bodies
from .procs import rss_mb


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--points", type=int, default=61, help="scrapes per target (61 = 5m at 5s)")
    p.add_argument("--kind", default="one")
    p.add_argument("--busy", action="store_true", help="every scrape differs (see the docstring)")
    ns = p.parse_args()
    import os

    seq = bodies(ns.kind)
    windows = parse_windows("1m,5m")
    rss0 = rss_mb(os.getpid())
    trackers = [TargetTracker(f"t{i}", windows) for i in range(ns.targets)]
    t0 = 1.8e9
    for step in range(ns.points):
        body = seq[min(step, len(seq) - 1)]
        grow = max(0, step - len(seq) + 1) if ns.busy else 0
        for tr in trackers:
            tr.observe(_grown(parse_body(body, "text/plain; version=0.0.4", t0 + 5 * step, 0.01), grow))
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
                "kib_per_target": (rss - rss0) * 1024 / max(1, ns.targets),
                "busy": ns.busy,
                "render_ms": cached * 1e3,
                "render_all_fresh_ms": fresh * 1e3,
                "render_prometheus_client_ms": reference * 1e3,
                "render_bytes": len(render(frags)),
            }
        )
    )


def _grown(outcome: ScrapeOutcome, k: int) -> ScrapeOutcome:
    """``outcome`` with every engine's counters and histogram buckets ``k`` higher (monotonic,
    hits still within queries): ``k`` scrapes more of steady load."""
    if not k or outcome.normalised is None:
        return outcome
    engines = tuple(_grown_engine(m, k) for m in outcome.normalised.engines)
    return replace(outcome, normalised=replace(outcome.normalised, engines=engines))


def _grown_engine(m: EngineMetrics, k: int) -> EngineMetrics:
    counters = ("prefix_queries", "prefix_hits", "prompt_tokens", "generation_tokens", "preemptions")
    change: dict[str, Any] = {f: getattr(m, f) + k for f in counters if getattr(m, f) is not None}
    for f in ("request_success", "hits_by_source", "tier_queries", "tier_hits"):
        change[f] = tuple((key, x + k) for key, x in getattr(m, f))
    for f in ("ttft", "e2e", "queue", "prompt_len"):
        h: Histogram | None = getattr(m, f)
        if h is not None:
            change[f] = Histogram(h.bounds, tuple(c + k for c in h.counts), h.sum + k, h.count + k)
    return replace(m, **change)


def _median(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    return statistics.median(times)


if __name__ == "__main__":
    main()
