"""``python -m bench`` (``make bench``): measure the sidecar against the targets of issues 7 and 11.

One run measures, each against real captured vLLM bodies served by a replay process on loopback
(which answers ``/metrics/?name[]=`` as vLLM's prometheus_client app does, so the sidecar runs in
its filtered mode):

0. The anchors of issue 11, side by side in the same seconds: the sidecar vs Prometheus itself
   (Debian's ``prometheus``) scraping the same replayed targets at the same interval, and
   Prometheus with recording rules for the sidecar's figures (:mod:`bench.anchors`); CPU ms per
   target-scrape and live RSS of each; and what one scrape costs a real vLLM's API server, full
   ``/metrics`` vs the sidecar's filtered GET (:mod:`bench.vllmcost`; needs vLLM installed).
1. CPU per target-scrape of the sidecar process vs. the naive baseline process (aiohttp +
   ``text_string_to_metric_families`` + the same arithmetic), same replay server, same load,
   for a one-engine body and an 8-engine body; plus the in-process parse+derive cost alone.
2. 100 / 1,000 / 5,000 targets at a 5 s interval: CPU seconds per wall second of the sidecar
   process, and whether every target's scrapes stayed on time (gaps seen by the replay server).
3. RSS with 1 and 1,000 targets (the live process after its first cycles, and the steady state
   with a full 5m history simulated in-process by :mod:`bench.memory`).
4. ``/metrics`` render time with 1,000 targets (live process, and full history).
5. ``/metrics`` under concurrent load (``wrk``, else a Python client) while scrape cycles are
   checked for staying on time.

``--quick``: one run of each anchor at small N (100 @ 1 s, 300 @ 5 s), short windows, no vLLM
unless ``--vllm on``, no 2,500/5,000 steps. It prints tables; nothing is asserted (timings depend
on the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import anchors, procs, prom, vllmcost
from .bodies import bodies, filtered

WINDOWS = "1m,5m"


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------ on-time analysis


def on_time(hits: dict[str, list[float]], names: list[str], t0: float, t1: float, interval: float) -> dict:
    """Per target, the gaps between consecutive scrapes inside [t0, t1] (+ the edges).

    A target is on time when it was scraped at least ``floor(span/interval) - 1`` times and no gap
    exceeded 1.5 intervals (the service skips a missed cycle rather than bursting).
    """
    gaps: list[float] = []
    late = 0
    expected = int((t1 - t0) // interval) - 1
    for name in names:
        ts = sorted(hits.get(name, []))
        g = [b - a for a, b in zip(ts, ts[1:])]
        gaps.extend(g)
        if len(ts) < expected or any(x > 1.5 * interval for x in g):
            late += 1
    gaps.sort()
    return {
        "targets": len(names),
        "late_targets": late,
        "on_time_pct": 100.0 * (len(names) - late) / max(1, len(names)),
        "gap_p50": gaps[len(gaps) // 2] if gaps else float("nan"),
        "gap_p99": gaps[int(len(gaps) * 0.99)] if gaps else float("nan"),
        "gap_max": gaps[-1] if gaps else float("nan"),
    }


# ------------------------------------------------------------------ measurements


def measure_process(pid: int, seconds: float) -> tuple[float, float, float]:
    """(CPU seconds used, t0, t1) over ``seconds`` of wall time."""
    c0, t0 = procs.cpu_seconds(pid), time.time()
    time.sleep(seconds)
    c1, t1 = procs.cpu_seconds(pid), time.time()
    return c1 - c0, t0, t1


def cpu_per_scrape(kind: str, n: int, interval: float, warm: float, dur: float, tmp: Path) -> dict:
    """Sidecar and baseline side by side, each scraping its own N replayed targets of one replay
    server, measured over the same seconds: whatever else runs on the machine hits both alike."""
    replay, rport = procs.start_replay(2 * n, kind, prefix="c")
    side_names = [f"c{i}" for i in range(n)]
    base_names = [f"c{i}" for i in range(n, 2 * n)]
    url = f"http://127.0.0.1:{rport}/{{}}/metrics".format
    out: dict = {"kind": kind, "targets": n, "interval": interval}
    procs_: list[subprocess.Popen] = []
    try:
        cfg = procs.write_config(tmp / f"cpu-{kind}.yaml", {nm: url(nm) for nm in side_names})
        side, sport = procs.start_sidecar(cfg, interval, WINDOWS)
        procs_.append(side)
        (tmp / "urls.txt").write_text("\n".join(url(nm) for nm in base_names) + "\n")
        base = subprocess.Popen(
            [
                procs.PY,
                "-m",
                "bench.baseline",
                "--urls-file",
                str(tmp / "urls.txt"),
                "--interval",
                f"{interval:g}",
                "--windows",
                "60,300",
            ],
            cwd=procs.REPO,
        )
        procs_.append(base)
        procs.wait_ready(sport, side)
        time.sleep(warm)
        c0 = {p.pid: procs.cpu_seconds(p.pid) for p in procs_}
        t0 = time.time()
        time.sleep(dur)
        c1 = {p.pid: procs.cpu_seconds(p.pid) for p in procs_}
        t1 = time.time()
        hits = procs.replay_hits(rport, t0, t1)
        out["loadavg"] = procs.loadavg()
        for label, p, names in (("sidecar", side, side_names), ("baseline", base, base_names)):
            cpu = c1[p.pid] - c0[p.pid]
            scrapes = sum(len(hits.get(nm, [])) for nm in names)
            out[label] = {
                "cpu_s": cpu,
                "scrapes": scrapes,
                "cpu_per_scrape_ms": 1e3 * cpu / max(1, scrapes),
                "on_time": on_time(hits, names, t0, t1, interval),
            }
    finally:
        for p in procs_:
            procs.stop(p)
        procs.stop(replay)
    out["ratio"] = out["sidecar"]["cpu_per_scrape_ms"] / out["baseline"]["cpu_per_scrape_ms"]
    return out


def inprocess(kind: str, reps: int) -> dict:
    """CPU of the pure work per body (no HTTP): sidecar parse+normalise+derive vs. baseline."""
    from collections import deque

    from sidecar.config.settings import parse_windows
    from sidecar.derive import TargetTracker
    from sidecar.scrape import Memo, parse_body

    from .baseline import derive, extract

    seq = bodies(kind)
    tracker, memo = TargetTracker("x", parse_windows(WINDOWS)), Memo()  # a target as the service has it
    s = time.process_time()
    for i in range(reps):
        body = seq[min(i, len(seq) - 1)]
        tracker.observe(parse_body(body, "text/plain; version=0.0.4", 1.8e9 + 5 * i, 0.01, memo=memo))
    side = (time.process_time() - s) / reps
    fseq = filtered(seq)
    tracker, memo = TargetTracker("y", parse_windows(WINDOWS)), Memo()
    s = time.process_time()
    for i in range(reps):
        body = fseq[min(i, len(fseq) - 1)]
        tracker.observe(parse_body(body, "text/plain; version=0.0.4", 1.8e9 + 5 * i, 0.01, memo=memo))
    side_filtered = (time.process_time() - s) / reps
    hist: dict = {}
    s = time.process_time()
    for i in range(reps):
        for key, values in extract(seq[min(i, len(seq) - 1)].decode("utf-8")).items():
            h = hist.setdefault(key, deque())
            h.append((1.8e9 + 5 * i, values))
            while len(h) >= 2 and h[1][0] <= 1.8e9 + 5 * i - 300:
                h.popleft()
            derive(h, [60.0, 300.0])
    base = (time.process_time() - s) / reps
    return {
        "kind": kind,
        "sidecar_ms": side * 1e3,
        "baseline_ms": base * 1e3,
        "ratio": side / base,
        "sidecar_filtered_ms": side_filtered * 1e3,
        "filtered_bytes": len(fseq[-1]),
        "full_bytes": len(seq[-1]),
    }


def wrk_load(url: str, seconds: int, conns: int) -> dict:
    if shutil.which("wrk"):
        r = subprocess.run(
            ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s", "--latency", url],
            capture_output=True,
            text=True,
        )
        rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
        p50 = re.search(r"50%\s+([\d.]+)(\w+)", r.stdout)
        p99 = re.search(r"99%\s+([\d.]+)(\w+)", r.stdout)

        def ms(m: re.Match | None) -> float:
            if not m:
                return float("nan")
            return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]

        return {
            "tool": "wrk",
            "connections": conns,
            "rps": float(rps.group(1)) if rps else 0.0,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
        }
    lat: list[float] = []
    stop_at = time.time() + seconds

    def worker() -> None:
        while time.time() < stop_at:
            s = time.perf_counter()
            procs.get(url)
            lat.append(time.perf_counter() - s)

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return {
        "tool": "python-urllib",
        "connections": conns,
        "rps": len(lat) / seconds,
        "p50_ms": 1e3 * lat[len(lat) // 2],
        "p99_ms": 1e3 * lat[int(len(lat) * 0.99)],
    }


def scale(
    n: int,
    interval: float,
    warm: float,
    dur: float,
    tmp: Path,
    *,
    render: bool = False,
    load_seconds: int = 0,
) -> dict:
    replay, rport = procs.start_replay(n, "one", prefix="s")
    names = [f"s{i}" for i in range(n)]
    urls = {name: f"http://127.0.0.1:{rport}/{name}/metrics" for name in names}
    out: dict = {"targets": n, "interval": interval}
    try:
        cfg = procs.write_config(tmp / f"scale-{n}.yaml", urls)
        side, sport = procs.start_sidecar(cfg, interval, WINDOWS)
        try:
            s = time.time()
            out["ready"] = procs.wait_ready(sport, side)
            out["ready_s"] = time.time() - s
            time.sleep(warm)
            rc0 = procs.cpu_seconds(replay.pid)
            cpu, t0, t1 = measure_process(side.pid, dur)
            out["replay_cpu_per_wall_s"] = (procs.cpu_seconds(replay.pid) - rc0) / (t1 - t0)
            out["cpu_per_wall_s"] = cpu / (t1 - t0)
            out["loadavg"] = procs.loadavg()
            hits = procs.replay_hits(rport, t0, t1)
            out["on_time"] = on_time(hits, names, t0, t1, interval)
            scrapes = sum(len(v) for v in hits.values())
            out["scrapes_per_s"] = scrapes / (t1 - t0)
            # what the full schedule costs, from the CPU per scrape actually measured: unlike
            # the on-time figure, this does not depend on how much CPU other processes leave us
            out["cores_needed"] = cpu / max(1, scrapes) * n / interval
            out["rss_mb"] = procs.rss_mb(side.pid)
            metrics = f"http://127.0.0.1:{sport}/metrics"
            if render:
                times: list[float] = []
                while len(times) < 10 and sum(times) < 20:
                    s = time.perf_counter()
                    _, body = procs.get(metrics)
                    times.append(time.perf_counter() - s)
                out["render_ms"] = 1e3 * statistics.median(times)
                out["render_bytes"] = len(body)
                out["render_series"] = sum(1 for ln in body.split(b"\n") if ln and ln[:1] != b"#")
            if load_seconds:
                c0, t0 = procs.cpu_seconds(side.pid), time.time()
                out["load"] = wrk_load(metrics, load_seconds, 8)
                t1 = time.time()
                out["load"]["cpu_per_wall_s"] = (procs.cpu_seconds(side.pid) - c0) / (t1 - t0)
                out["load"]["on_time"] = on_time(procs.replay_hits(rport, t0, t1), names, t0, t1, interval)
        finally:
            procs.stop(side)
    finally:
        procs.stop(replay)
    return out


def memory(n: int) -> dict:
    r = subprocess.run(
        [procs.PY, "-m", "bench.memory", "--targets", str(n)],
        cwd=procs.REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout)


# ------------------------------------------------------------------ report


def _fmt(x: float, unit: str = "", digits: int = 2) -> str:
    return f"{x:.{digits}f}{unit}" if x == x else "n/a"


def table(res: dict) -> str:
    failed = [r for k in ("cpu", "scale", "memory") for r in res.get(k, []) if "error" in r]
    res = {k: [r for r in v if "error" not in r] if isinstance(v, list) else v for k, v in res.items()}
    rows: list[tuple[str, str, str, str, str]] = []
    for f in failed:
        rows.append((f"FAILED: {' '.join(f['args'][:1])}", f["error"][:60], "", "", ""))
    for c in res.get("cpu", []):
        rows.append(
            (
                f"CPU per target-scrape, {c['kind']}-engine body ({c['targets']} targets @ "
                f"{c['interval']:g}s)",
                _fmt(c["sidecar"]["cpu_per_scrape_ms"], " ms", 3),
                _fmt(c["baseline"]["cpu_per_scrape_ms"], " ms", 3),
                _fmt(c["ratio"], "", 3),
                "<= 0.100",
            )
        )
    for c in res.get("inprocess", []):
        rows.append(
            (
                f"parse+derive only (no HTTP), {c['kind']}-engine body, full",
                _fmt(c["sidecar_ms"], " ms", 3),
                _fmt(c["baseline_ms"], " ms", 3),
                _fmt(c["ratio"], "", 3),
                "(info)",
            )
        )
        if "sidecar_filtered_ms" in c:
            rows.append(
                (
                    f"parse+derive only (no HTTP), {c['kind']}-engine body, filtered "
                    f"({c['filtered_bytes'] // 1024} of {c['full_bytes'] // 1024} KiB)",
                    _fmt(c["sidecar_filtered_ms"], " ms", 3),
                    "",
                    "",
                    "(info)",
                )
            )
    for s in res.get("scale", []):
        ot = s["on_time"]
        rows.append(
            (
                f"{s['targets']} targets @ {s['interval']:g}s: CPU s per wall s; on time",
                f"{_fmt(s['cpu_per_wall_s'], '', 3)} cores used, "
                f"{_fmt(s.get('cores_needed', math.nan), '', 3)} needed; "
                f"{ot['on_time_pct']:.1f}% on time (gap p50 {_fmt(ot['gap_p50'], 's')}, "
                f"max {_fmt(ot['gap_max'], 's')}); load avg {s.get('loadavg', math.nan):.1f}",
                "",
                "",
                "< 1 core, on time" if s["targets"] == 1000 else "(info)",
            )
        )
    for s in res.get("scale", []):
        rows.append(
            (
                f"RSS, live process, {s['targets']} targets (first cycles; measured)",
                _fmt(s["rss_mb"], " MB", 1),
                "",
                "",
                {1: "<= 40 MB", 1000: "<= 60 MB"}.get(s["targets"], "(info)"),
            )
        )
    for m in res.get("memory", []):
        rows.append(
            (
                f"RSS, steady state (full 5m history; simulated in-process by "
                f"bench.memory), {m['targets']} targets",
                _fmt(m["rss_mb"], " MB", 1),
                "",
                "",
                {1: "<= 40 MB", 1000: "<= 60 MB"}.get(m["targets"], "(info)"),
            )
        )
    for s in res.get("scale", []):
        if "render_ms" in s:
            rows.append(
                (
                    f"/metrics render, live, {s['targets']} targets "
                    f"({s['render_series']} series, {s['render_bytes'] // 1024} KiB)",
                    _fmt(s["render_ms"], " ms", 1),
                    "",
                    "",
                    "< 50 ms",
                )
            )
    for m in res.get("memory", []):
        if m["targets"] >= 1000:
            rows.append(
                (
                    f"/metrics render, full history, {m['targets']} targets "
                    f"({m['render_bytes'] // 1024} KiB): cached fragments; all fresh; "
                    "prometheus_client",
                    f"{_fmt(m['render_ms'], ' ms', 1)}; "
                    f"{_fmt(m['render_all_fresh_ms'], ' ms', 0)}; "
                    f"{_fmt(m['render_prometheus_client_ms'], ' ms', 0)}",
                    "",
                    "",
                    "< 50 ms",
                )
            )
    for s in res.get("scale", []):
        if "load" in s:
            ld = s["load"]
            rows.append(
                (
                    f"/metrics under load ({ld['tool']}, {ld['connections']} conns), {s['targets']} targets",
                    f"{ld['rps']:.1f} req/s, p50 {_fmt(ld['p50_ms'], ' ms', 0)}, p99 "
                    f"{_fmt(ld['p99_ms'], ' ms', 0)}; {ld['cpu_per_wall_s']:.2f} cores; "
                    f"scrapes on time {ld['on_time']['on_time_pct']:.1f}% (gap max "
                    f"{_fmt(ld['on_time']['gap_max'], 's')})",
                    "",
                    "",
                    "cycles on time",
                )
            )
    head = ("measurement", "sidecar", "baseline", "ratio", "target")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    )


def guarded(fn, *args, **kw) -> dict:
    """One measurement; a failure is reported in the results instead of ending the run."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - a bench keeps going and says what broke
        print(f"{fn.__name__}{args}: FAILED: {exc!r}", file=sys.stderr, flush=True)
        return {"error": repr(exc), "args": [str(a) for a in args]}


def _cell(r: dict, label: str) -> str:
    x = r.get(label)
    return _fmt(x["cpu_per_scrape_ms"], " ms", 2) if x else "n/a"


def _mode(r: dict) -> str:
    """The sidecar's mode: its own ``vllm_sidecar_scrape_mode`` series (targets per mode, last
    run) and the share of its scrapes the replay server saw filtered."""
    side = r["sidecar"]
    modes = side["modes"][-1] or {}
    share = sum(side["filtered_scrapes"]) / max(1, sum(side["scrapes"]))
    done = sum(side["scrapes"]) / max(1, sum(side["expected_scrapes"]))
    return (
        ", ".join(f"{k} {v}" for k, v in sorted(modes.items())) or "?"
    ) + f"; {100 * share:.0f}% filtered GETs; {100 * done:.0f}% of due scrapes done"


def anchor_table(res: dict) -> str:
    """Issue 11's table: per configuration, sidecar vs Prometheus (medians over the runs)."""
    head = (
        "N targets @ interval",
        "sidecar CPU/scrape",
        "Prometheus CPU/scrape",
        "sidecar/Prom",
        "Prom+rules CPU/scrape",
        "sidecar/(Prom+rules)",
        "RSS sidecar / Prom / Prom+rules (live)",
        "sidecar mode",
        "runs; load avg",
    )
    rows: list[tuple[str, ...]] = []
    for r in res.get("anchors", []):
        if "error" in r:
            rows.append(("FAILED", r["error"][:60]) + ("",) * (len(head) - 2))
            continue
        rss = " / ".join(
            _fmt(r[lb]["rss_mb"], " MB", 0) if lb in r else "n/a"
            for lb in ("sidecar", "prometheus", "prometheus_rules")
        )
        rows.append(
            (
                f"{r['targets']} @ {r['interval']:g} s",
                _cell(r, "sidecar"),
                _cell(r, "prometheus"),
                _fmt(r.get("ratio_prometheus", math.nan), "", 2),
                _cell(r, "prometheus_rules"),
                _fmt(r.get("ratio_prometheus_rules", math.nan), "", 2),
                rss,
                _mode(r),
                f"{r['n_runs']}; " + ", ".join(f"{x:.1f}" for x in r["loadavg"]),
            )
        )
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    )


def vllm_table(v: dict) -> str:
    """What one scrape costs the real vLLM's API-server process, full vs filtered."""
    if "full_ms_median" not in v:
        return f"vLLM API-server CPU per GET: {v.get('skipped') or v.get('error', '?')}"
    rows = [
        ("GET", "API-server CPU per GET (median)", "each round", "body", "samples"),
        (
            "full /metrics",
            _fmt(v["full_ms_median"], " ms", 2),
            ", ".join(f"{x:.2f}" for x in v["full_ms"]) + " ms",
            f"{v['full_bytes']} B",
            str(v["full_lines"]),
        ),
        (
            f"filtered /metrics/?name[]= ({v['names']} names, query {v['query_bytes']} B)",
            _fmt(v["filtered_ms_median"], " ms", 2),
            ", ".join(f"{x:.2f}" for x in v["filtered_ms"]) + " ms",
            f"{v['filtered_bytes']} B",
            str(v["filtered_lines"]),
        ),
        (
            "filtered / full",
            _fmt(v["ratio"], "", 2),
            f"{v['rounds']} rounds x {v['gets']} GETs",
            f"load avg {v['loadavg']:.1f}",
            "",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]]
    )


def run_anchors(
    configs: list[tuple[int, float]],
    runs: int,
    dur: float,
    tmp: Path,
    rules: bool = True,
    read_every: float = anchors.READ_EVERY,
) -> list[dict]:
    """Each configuration ``runs`` times (interleaved, so a noisy minute hits one run of each,
    not all runs of one), then medians."""
    if not prom.available():
        print(
            "anchors: skipped, no `prometheus` on PATH (apt-get install prometheus)",
            file=sys.stderr,
            flush=True,
        )
        return [{"error": "prometheus not installed", "args": []}]
    done: dict[tuple[int, float], list[dict]] = {c: [] for c in configs}
    for k in range(runs):
        for n, interval in configs:
            warm = 2 * interval + 3.0
            r = guarded(anchors.run_once, n, interval, warm, dur, tmp, rules, read_every)
            done[(n, interval)].append(r)
            print(f"anchors run {k + 1}/{runs}:", json.dumps(r), flush=True)
    return [anchors.median_of(v) for v in done.values()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one run, small N, short windows, no 2,500/5,000 (for trying out)",
    )
    p.add_argument("--scale", default="100,1000,2500,5000", help="target counts at 5 s")
    p.add_argument("--runs", type=int, help="runs of each anchor (default 3; 1 with --quick)")
    p.add_argument(
        "--anchors",
        help="anchor configurations N@interval, comma separated "
        "(default 100@1,1000@5; with --quick 100@1,300@5)",
    )
    p.add_argument(
        "--no-rules",
        action="store_true",
        help="anchors without the Prometheus + recording rules process (less load on a small machine)",
    )
    p.add_argument(
        "--vllm",
        choices=("auto", "on", "off"),
        default="auto",
        help="the real-vLLM part: auto = on unless --quick (skipped when vLLM is not installed)",
    )
    p.add_argument(
        "--only",
        default="anchors,vllm,cpu,scale,memory",
        help="comma list of parts to run (anchors, vllm, cpu, scale, memory)",
    )
    p.add_argument(
        "--read-every",
        type=float,
        default=anchors.READ_EVERY,
        help="seconds between the anchors' reads of the sidecar's /metrics (0: none)",
    )
    p.add_argument("--json", help="also write the raw results here")
    ns = p.parse_args(argv)
    q = ns.quick
    only = set(ns.only.split(","))
    dur, warm = (8.0, 3.0) if q else (20.0, 5.0)
    res: dict = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": sys.argv[1:] if argv is None else argv,
    }
    if prom.available():
        res["machine"]["prometheus"] = prom.version()
    print(f"machine: {res['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as d:
        tmp = Path(d)
        if "anchors" in only:
            spec = ns.anchors or ("100@1,300@5" if q else "100@1,1000@5")
            configs = [(int(c.split("@")[0]), float(c.split("@")[1])) for c in spec.split(",")]
            res["anchors"] = run_anchors(
                configs, ns.runs or (1 if q else 3), 12.0 if q else 30.0, tmp, not ns.no_rules, ns.read_every
            )
        if "vllm" in only and (ns.vllm == "on" or (ns.vllm == "auto" and not q)):
            res["vllm"] = guarded(vllmcost.run, 200, 2, tmp)
            print("vllm:", res["vllm"], flush=True)
        elif "vllm" in only:
            res["vllm"] = {
                "skipped": "skipped in quick mode (--vllm on to include it)"
                if ns.vllm == "auto"
                else "skipped (--vllm off)"
            }
        if "cpu" in only:
            res["inprocess"] = [inprocess(k, 60 if q else 300) for k in ("one", "eight")]
            print("in-process:", res["inprocess"], flush=True)
            res["cpu"] = []
            for kind, n in (("one", 250), ("eight", 25)):
                res["cpu"].append(guarded(cpu_per_scrape, kind, n, 5.0, warm, dur, tmp))
                print("cpu:", res["cpu"][-1], flush=True)
        if "scale" in only:
            res["scale"] = []
            counts = [int(x) for x in ns.scale.split(",")]
            if q:
                counts = [c for c in counts if c <= 1000]
            for n in [1] + counts:
                r = guarded(
                    scale,
                    n,
                    5.0,
                    5.0 if n > 1 else 2.0,
                    (15.0 if q else 25.0) if n > 1 else 10.0,
                    tmp,
                    render=n == 1000,
                    load_seconds=(8 if q else 20) if n == 1000 else 0,
                )
                res["scale"].append(r)
                print("scale:", r, flush=True)
        if "memory" in only:
            res["memory"] = [guarded(memory, 1), guarded(memory, 1000)]
            print("memory:", res["memory"], flush=True)
    print(
        f"\nmachine: nproc {res['machine']['nproc']}, {res['machine']['cpu']}; "
        f"{res['machine'].get('prometheus', 'no prometheus')}; shared VM: see the load averages"
    )
    if "anchors" in res:
        print()
        print(anchor_table(res))
    if "vllm" in res:
        print()
        print(vllm_table(res["vllm"]))
    if any(k in res for k in ("cpu", "scale", "memory")):
        print()
        print(table(res))
    if ns.json:
        Path(ns.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
