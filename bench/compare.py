"""CPU per scrape of the service from two (or more) source trees, same replayed targets.

For judging an optimisation before it lands: copy ``sidecar/`` to a scratch directory, change
it, and compare it with the tree you have, alternating runs so both see the same machine:

    python -m bench.compare committed=. candidate=/tmp/scratch --targets 1000 --rounds 2

Each tree must hold a ``sidecar/`` package; the service runs with that tree as its working
directory (``python -m sidecar run``).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from . import procs

#: how often Prometheus reads the sidecar's /metrics in the benchmarks (its default interval)
READ_EVERY = 15.0


class MetricsReader:
    """Reads the sidecar's ``/metrics`` every ``every`` seconds (the first at once) while in a
    ``with`` block, as a Prometheus scraping it would: whatever the sidecar spends on serving
    (or lazily rendering) its body is then in the CPU measured. ``every <= 0`` reads nothing."""

    def __init__(self, port: int, every: float = READ_EVERY) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _ = procs.get(self.url, 60)
            self.reads += status == 200
            self._stop.wait(self.every)

    def __enter__(self) -> MetricsReader:
        if self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def measure(
    cwd: str, n: int, interval: float, seconds: float, tmp: Path, read_every: float = READ_EVERY
) -> dict:
    replay, rport = procs.start_replay(n, "one", prefix="s")
    cfg = procs.write_config(
        tmp / "compare.yaml", {f"s{i}": f"http://127.0.0.1:{rport}/s{i}/metrics" for i in range(n)}
    )
    port = procs.free_port()
    with open(tmp / "compare.log", "w") as log:
        side = subprocess.Popen(
            [
                procs.PY,
                "-m",
                "sidecar",
                "run",
                "--config",
                str(cfg),
                "--listen",
                f"127.0.0.1:{port}",
                "--interval",
                f"{interval:g}",
                "--windows",
                "1m,5m",
                "--log-level",
                "warning",
            ],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        procs.wait_ready(port, side)
        time.sleep(interval + 1)
        with MetricsReader(port, read_every) as reader:
            c0, t0 = procs.cpu_seconds(side.pid), time.time()
            time.sleep(seconds)
            c1, t1 = procs.cpu_seconds(side.pid), time.time()
        scrapes = sum(len(v) for v in procs.replay_hits(rport, t0, t1).values())
        return {
            "cpu_per_scrape_ms": 1e3 * (c1 - c0) / max(1, scrapes),
            "scrapes": scrapes,
            "metrics_reads": reader.reads,
            "cores": (c1 - c0) / (t1 - t0),
            "loadavg": procs.loadavg(),
            "rss_mb": procs.rss_mb(side.pid),
        }
    finally:
        procs.stop(side)
        procs.stop(replay)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trees", nargs="+", metavar="LABEL=DIR")
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--read-every",
        type=float,
        default=READ_EVERY,
        help="read the sidecar's /metrics every this many seconds in the window, as Prometheus "
        "would (0: never)",
    )
    ns = p.parse_args()
    trees = [t.split("=", 1) if "=" in t else (t, t) for t in ns.trees]
    with tempfile.TemporaryDirectory(prefix="sidecar-compare-") as d:
        for rnd in range(ns.rounds):
            for label, tree in trees:
                r = measure(
                    str(Path(tree).resolve()), ns.targets, ns.interval, ns.seconds, Path(d), ns.read_every
                )
                print(
                    f"round {rnd + 1} {label}: {r['cpu_per_scrape_ms']:.3f} ms CPU per scrape "
                    f"({r['scrapes']} scrapes, {r['metrics_reads']} /metrics reads, "
                    f"{r['cores']:.3f} cores, RSS {r['rss_mb']:.0f} MB, "
                    f"load {r['loadavg']:.1f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
