"""The sidecar next to Prometheus, measured in the same seconds on the same replayed targets.

One replay server serves 2N (or 3N) targets; the sidecar scrapes the first N, Prometheus the
next N and, when asked, a second Prometheus with recording rules for the sidecar's figures the
last N, all at the same interval. After a warm-up (every target scraped at least once: series
created, the sidecar's filter probed), CPU seconds of each process (``/proc/<pid>/stat``
utime+stime) over the measured window are divided by the scrapes the replay server saw from it in
that window. The sidecar scrapes ``/metrics/?name[]=...`` once its probe is done (the replay
server answers that route as vLLM's prometheus_client does); the replay server counts its filtered
GETs, and the sidecar's own ``vllm_sidecar_scrape_mode`` series say which mode each target is in.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from . import procs, prom
from .compare import READ_EVERY, MetricsReader

WINDOWS = "1m,5m"
_MODE = re.compile(r'^vllm_sidecar_scrape_mode\{[^}]*mode="(\w+)"[^}]*\} 1(?:\.0)?$', re.M)


def sidecar_modes(port: int) -> dict[str, int]:
    """How many targets the sidecar reports in each scrape mode (its ``/metrics``)."""
    _, body = procs.get(f"http://127.0.0.1:{port}/metrics", 60)
    modes: dict[str, int] = {}
    for m in _MODE.finditer(body.decode("utf-8", "replace")):
        modes[m.group(1)] = modes.get(m.group(1), 0) + 1
    return modes


def _start_prometheus(
    tmp: Path, rport: int, label: str, names: list[str], interval: float
) -> tuple[subprocess.Popen, int]:
    d = tmp / f"anchor-{label}"
    shutil.rmtree(d, ignore_errors=True)
    config = prom.write_config(d, rport, names, interval, rules=label == "prometheus_rules")
    return prom.start(d, config)


def _fallbacks(proc: subprocess.Popen) -> int:
    """Targets the sidecar's log says fell back to full scrapes (until the next probe)."""
    try:
        text = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    except OSError:
        return -1
    return text.count("scraping in full until the next probe")


def run_once(
    n: int,
    interval: float,
    warm: float,
    dur: float,
    tmp: Path,
    rules: bool = True,
    read_every: float = READ_EVERY,
) -> dict:
    """One side-by-side measurement of N targets @ ``interval``; the sidecar's ``/metrics`` is
    read every ``read_every`` seconds in the window, as the Prometheus that scrapes it would.

    Prometheus starts first and gets one interval to create its series (a one-off burst of CPU,
    ~0.4 M series at 1,000 targets); the sidecar starts after it, so that burst does not starve
    the sidecar's first cycles (a filtered GET that times out sends a target to full scrapes until
    the next probe, 10 minutes later, which would measure the wrong mode)."""
    labels = ["sidecar", "prometheus"] + (["prometheus_rules"] if rules else [])
    replay, rport = procs.start_replay(len(labels) * n, "one", prefix="a")
    groups = {lb: [f"a{i}" for i in range(k * n, (k + 1) * n)] for k, lb in enumerate(labels)}
    url = f"http://127.0.0.1:{rport}/{{}}/metrics".format
    out: dict = {"targets": n, "interval": interval}
    running: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for label in labels[1:]:
            running[label] = _start_prometheus(tmp, rport, label, groups[label], interval)
            prom.wait_ready(running[label][1], running[label][0])
        time.sleep(interval + 3.0)
        cfg = procs.write_config(tmp / "anchor-sidecar.yaml", {nm: url(nm) for nm in groups["sidecar"]})
        running["sidecar"] = procs.start_sidecar(cfg, interval, WINDOWS)
        out["sidecar_ready"] = procs.wait_ready(running["sidecar"][1], running["sidecar"][0])
        time.sleep(warm)
        pids = {lb: p.pid for lb, (p, _) in running.items()}
        with MetricsReader(running["sidecar"][1], read_every) as reader:
            c0 = {lb: procs.cpu_seconds(pid) for lb, pid in pids.items()}
            r0, t0 = procs.cpu_seconds(replay.pid), time.time()
            time.sleep(dur)
            c1 = {lb: procs.cpu_seconds(pid) for lb, pid in pids.items()}
            r1, t1 = procs.cpu_seconds(replay.pid), time.time()
        out["sidecar_metrics_reads"] = reader.reads
        out["loadavg"] = procs.loadavg()
        out["replay_cores"] = (r1 - r0) / (t1 - t0)
        hits = procs.replay_hits(rport, t0, t1)
        filtered = procs.replay_hits(rport, t0, t1, filtered=True)
        for label, names in groups.items():
            cpu = c1[label] - c0[label]
            scrapes = sum(len(hits.get(nm, [])) for nm in names)
            out[label] = {
                "cpu_s": cpu,
                "scrapes": scrapes,
                "expected_scrapes": n * (t1 - t0) / interval,
                "filtered_scrapes": sum(len(filtered.get(nm, [])) for nm in names),
                "cpu_per_scrape_ms": 1e3 * cpu / max(1, scrapes),
                "cores": cpu / (t1 - t0),
                "rss_mb": procs.rss_mb(pids[label]),
            }
        # asked after the window: these cost the processes CPU
        out["sidecar"]["modes"] = sidecar_modes(running["sidecar"][1])
        out["sidecar"]["filter_fallbacks"] = _fallbacks(running["sidecar"][0])
        for label in labels[1:]:
            out[label]["confirm"] = prom.confirm(running[label][1])
    finally:
        for p, _ in running.values():
            procs.stop(p)
        procs.stop(replay)
    return out


def median_of(runs: list[dict]) -> dict:
    """Per scraper, the median CPU per scrape and RSS over the runs (each run kept as well)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"targets": None, "runs": runs, "error": runs[0].get("error", "no run")}
    out: dict = {
        "targets": ok[0]["targets"],
        "interval": ok[0]["interval"],
        "runs": runs,
        "n_runs": len(ok),
        "loadavg": [r["loadavg"] for r in ok],
    }
    for label in ("sidecar", "prometheus", "prometheus_rules"):
        if label not in ok[0]:
            continue
        xs = [r[label] for r in ok]
        out[label] = {
            "cpu_per_scrape_ms": statistics.median(x["cpu_per_scrape_ms"] for x in xs),
            "cpu_per_scrape_ms_all": [x["cpu_per_scrape_ms"] for x in xs],
            "rss_mb": statistics.median(x["rss_mb"] for x in xs),
            "scrapes": [x["scrapes"] for x in xs],
            "expected_scrapes": [round(x["expected_scrapes"]) for x in xs],
            "cores": [round(x["cores"], 3) for x in xs],
            "filtered_scrapes": [x["filtered_scrapes"] for x in xs],
        }
        if label == "sidecar":
            out[label]["modes"] = [x.get("modes") for x in xs]
            out[label]["filter_fallbacks"] = [x.get("filter_fallbacks") for x in xs]
        else:
            out[label]["confirm"] = [x.get("confirm") for x in xs]
    side = out["sidecar"]["cpu_per_scrape_ms"]
    for label in ("prometheus", "prometheus_rules"):
        if label in out:
            out[f"ratio_{label}"] = side / out[label]["cpu_per_scrape_ms"]
    return out
