"""Where the live sidecar's CPU goes per scrape: py-spy on the real service, summarised by module.

Why: the anchors say how far the sidecar is from Prometheus; this says which part of the scrape
path to work on. It starts a replay server and the service (N targets @ interval, filtered mode),
samples the service with py-spy (``--nonblocking``, a tool outside the project: pass its path
with ``--py-spy`` or put it on PATH; ``pip install py-spy``), and prints the inclusive share of
samples per part of the path.

    python -m bench.profile --targets 100 --interval 1 --seconds 20 --py-spy /path/to/py-spy
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import procs

#: part of the scrape path -> substrings of a frame ("function (file:line)") that belong to it
PARTS = {
    "parse (sidecar/parser.py)": ("sidecar/parser.py",),
    "normalise (sidecar/normalize.py)": ("sidecar/normalize.py",),
    "derive (sidecar/derive.py)": ("sidecar/derive.py",),
    "render fragments (sidecar/exporter.py)": ("sidecar/exporter.py",),
    "filter check (sidecar/scrapefilter.py)": ("sidecar/scrapefilter.py",),
    "aiohttp client": (
        "aiohttp/client",
        "aiohttp/connector",
        "aiohttp/streams",
        "yarl/",
        "multidict",
        "aiohttp/helpers",
        "aiohttp/http_parser",
    ),
    "asyncio transport write/read": ("selector_events.py",),
}


def summarise(raw: str) -> dict:
    """Inclusive share of samples per part, and the share whose innermost frame is asyncio's
    own loop code (scheduling overhead)."""
    total = 0
    counts = dict.fromkeys(PARTS, 0)
    loop_self = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        total += k
        for part, keys in PARTS.items():
            if any(key in stack for key in keys):
                counts[part] += k
        if "asyncio/" in stack.split(";")[-1]:
            loop_self += k
    share = {part: round(100 * c / max(1, total), 1) for part, c in counts.items()}
    share["asyncio loop code, self"] = round(100 * loop_self / max(1, total), 1)
    return {"samples": total, "inclusive_pct": share}


def top_self(raw: str, n: int) -> dict[str, float]:
    """The ``n`` innermost frames ("function (file:line)" without the line) with most samples."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, k = line.rpartition(" ")
        if not stack or not k.isdigit():
            continue
        frame = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        counts[frame] = counts.get(frame, 0) + int(k)
        total += int(k)
    best = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return {f: round(100 * c / max(1, total), 1) for f, c in best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here (for flame graphs)")
    p.add_argument("--top", type=int, default=0, help="also print the N functions with most self samples")
    ns = p.parse_args(argv)
    replay, rport = procs.start_replay(ns.targets, "one", prefix="p")
    side = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as d:
            cfg = procs.write_config(
                Path(d) / "p.yaml",
                {f"p{i}": f"http://127.0.0.1:{rport}/p{i}/metrics" for i in range(ns.targets)},
            )
            side, sport = procs.start_sidecar(cfg, ns.interval, "1m,5m")
            procs.wait_ready(sport, side)
            time.sleep(2 * ns.interval + 3)
            out = Path(d) / "raw.txt"
            c0 = procs.cpu_seconds(side.pid)
            subprocess.run(
                [
                    ns.py_spy,
                    "record",
                    "-p",
                    str(side.pid),
                    "-d",
                    str(ns.seconds),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
            )
            raw = out.read_text()
            if ns.raw is not None:
                ns.raw.write_text(raw)
            res = summarise(raw)
            if ns.top:
                res["top_self_pct"] = top_self(raw, ns.top)
            res.update(
                {
                    "targets": ns.targets,
                    "interval": ns.interval,
                    "cpu_s": procs.cpu_seconds(side.pid) - c0,
                    "loadavg": procs.loadavg(),
                }
            )
            print(json.dumps(res, indent=2))
    finally:
        if side is not None:
            procs.stop(side)
        procs.stop(replay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
