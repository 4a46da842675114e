"""``python -m bench.soak`` (``make soak``): the real service for an hour, watched every minute.

Does the sidecar stay flat when it runs for a long time against a fleet that changes? The soak
starts a replay process serving real captured vLLM bodies for many targets on loopback
(:mod:`bench.replayproc`), and the service (``python -m sidecar run`` with ``--targets-file``;
via :mod:`bench.soakprobe` so its asyncio tasks can be counted) scraping N of them. Then, for
``--duration``:

- every ``--churn-every`` seconds it replaces ``--churn-fraction`` of the targets with targets of
  new names, by rewriting the Prometheus ``file_sd`` targets file the service watches;
- every ``--interval`` a reader GETs the service's ``/metrics``, as a Prometheus would;
- every minute it appends a row to a CSV: RSS, CPU, open fds, TCP connections, asyncio tasks,
  tracked targets, scrapes and scrape lateness (gaps between scrapes, as the replay server saw
  them), ``/metrics`` latency, load average.

At the end it prints the slope of RSS (least squares, MB per hour and relative to the mean) over
the last 40 minutes, or the last 2/3 of the run when that is shorter, the peaks, and whether fds,
connections, tasks or tracked targets grew inside that window. It reports and never judges: the
exit status is 0 whenever the run completed. ``--summarize FILE.csv`` prints the summary of an
earlier run again.

    python -m bench.soak --targets 1000 --interval 5 --duration 3600 --churn-every 180
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import procs

WINDOWS = "1m,5m"
SAMPLE_EVERY = 60.0
#: the RSS slope is fitted over the last 40 minutes, or the last 2/3 of a shorter run
SLOPE_WINDOW_S = 2400.0
CHURN_OFFSET = 30.0
LATE = 1.5  # a gap longer than 1.5 intervals is a missed cycle, as in ``python -m bench``
_UP_RE = re.compile(
    rb'^vllm_sidecar_target_up\{(?:[^}]*,)?target="((?:[^"\\]|\\.)*)"[^}]*\}\s+(\S+)', re.MULTILINE
)


# ------------------------------------------------------------------ one minute's row


@dataclass
class Row:
    """One CSV row: the state of the service at ``elapsed_s`` and what happened in the minute."""

    elapsed_s: float
    rss_mb: float
    cpu_s: float  # utime + stime since start
    cpu_frac: float  # cores used over the minute
    fds: int
    tcp_conns: int  # the process's TCP sockets other than listening ones
    tcp_established: int
    tasks: int | str  # live asyncio tasks, or "n/a"
    scrape_tasks: int | str
    targets_configured: int  # in the targets file
    targets_tracked: int  # distinct ``target`` of vllm_sidecar_target_up in /metrics
    targets_up: int
    churns: int  # churn rounds so far
    scrapes: int  # GETs the replay server saw in the minute
    late_targets: int  # of the targets present all minute: a gap > 1.5 intervals or none since
    gap_max_ratio: float  # longest gap / interval among them
    gap_p99_ratio: float
    metrics_gets: int
    metrics_errors: int
    metrics_max_ms: float
    loadavg: float


COLUMNS = [f.name for f in fields(Row)]


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets ``pid`` holds open (``/proc/<pid>/fd`` links ``socket:[N]``)."""
    out = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(fd_dir / fd)
        except OSError:  # closed between listdir and readlink
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def tcp_counts(pid: int) -> tuple[int, int]:
    """(non-listening TCP sockets, established ones) owned by ``pid``: the rows of
    ``/proc/<pid>/net/tcp{,6}`` whose inode is one of the process's sockets (psutil is not a
    dependency of the project, and /proc says the same)."""
    inodes = socket_inodes(pid)
    conns = established = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes and cols[3] != "0A":  # 0A: LISTEN
                conns += 1
                established += cols[3] == "01"
    return conns, established


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tracked_targets(body: bytes) -> tuple[int, int]:
    """(distinct targets, targets up) in a ``/metrics`` body, from ``vllm_sidecar_target_up``."""
    seen: dict[bytes, bool] = {}
    for m in _UP_RE.finditer(body):
        seen[m.group(1)] = float(m.group(2)) == 1.0
    return len(seen), sum(seen.values())


@dataclass
class Lateness:
    scrapes: int
    late_targets: int
    gap_max_ratio: float
    gap_p99_ratio: float


def lateness(
    hits: dict[str, list[float]], names: list[str], t0: float, t1: float, interval: float
) -> Lateness:
    """Scrape gaps of ``names`` (targets present for the whole of [t0, t1]) that end in the
    minute, plus each one's open gap at ``t1`` when that is already overdue: a target nobody
    scrapes any more shows up as late instead of vanishing from the figures."""
    gaps: list[float] = []
    late = 0
    worst = 0.0
    for name in names:
        ts = sorted(hits.get(name, []))
        closed = [b - a for a, b in zip(ts, ts[1:]) if b >= t0]
        open_gap = t1 - ts[-1] if ts else t1 - t0 + interval
        longest = max(closed + ([open_gap] if open_gap > LATE * interval else []), default=0.0)
        late += longest > LATE * interval
        worst = max(worst, longest)
        gaps.extend(closed)
    gaps.sort()
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] if gaps else math.nan
    scrapes = sum(1 for ts in hits.values() for t in ts if t0 <= t < t1)
    return Lateness(scrapes, late, worst / interval if names else math.nan, p99 / interval)


# ------------------------------------------------------------------ the moving parts


class MetricsReader(threading.Thread):
    """GETs the service's ``/metrics`` every ``interval`` on a fixed schedule, as Prometheus does;
    keeps the last body (for the tracked-target count) and per-minute counts and latencies."""

    def __init__(self, url: str, interval: float):
        super().__init__(name="metrics-reader", daemon=True)
        self.url, self.interval = url, interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.last_body = b""
        self.gets = self.errors = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            s = time.perf_counter()
            try:
                status, body = procs.get(self.url, timeout=max(10.0, 2 * self.interval))
            except OSError:
                status, body = 0, b""
            took = time.perf_counter() - s
            with self.lock:
                self.gets += 1
                self.latencies.append(took)
                if status == 200:
                    self.last_body = body
                else:
                    self.errors += 1
            next_at += self.interval
            if next_at < time.monotonic():  # fell behind: skip, as Prometheus does
                next_at = time.monotonic() + self.interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def take(self) -> tuple[bytes, int, int, float]:
        """(last body, GETs, errors, slowest ms) since the previous call."""
        with self.lock:
            out = (self.last_body, self.gets, self.errors, 1e3 * max(self.latencies, default=math.nan))
            self.gets = self.errors = 0
            self.latencies = []
        return out


@dataclass
class Fleet:
    """The targets file: which replayed names are configured, since when, and fresh names to
    churn in. Every name ever added is new: a removed name never comes back."""

    path: Path
    port: int
    pool: list[str]
    rng: random.Random
    active: dict[str, float] = field(default_factory=dict)  # name -> when it was added
    churns: int = 0

    def start(self, n: int) -> None:
        """The first ``n`` names, present from the start (readiness means each was scraped)."""
        self.active = {self.pool.pop(0): 0.0 for _ in range(n)}
        self.write()

    def churn(self, fraction: float) -> None:
        k = min(len(self.pool), max(1, round(len(self.active) * fraction)))
        for name in self.rng.sample(sorted(self.active), k):
            del self.active[name]
        now = time.time()
        for _ in range(k):
            self.active[self.pool.pop(0)] = now
        self.churns += 1
        self.write()

    def write(self) -> None:
        """Atomically, as a ConfigMap swap or ``mv`` would: the watcher never reads half a file."""
        groups = [
            {
                "targets": [f"127.0.0.1:{self.port}"],
                "labels": {"name": name, "__metrics_path__": f"/{name}/metrics"},
            }
            for name in self.active
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, self.path)

    def steady(self, since: float) -> list[str]:
        """Names configured since before ``since`` (their first scrape is behind them)."""
        return [n for n, t in self.active.items() if t <= since]


def read_tasks(pid: int, path: Path, wait: float = 3.0) -> tuple[int | str, int | str]:
    """Ask :mod:`bench.soakprobe` in ``pid`` for its task counts (SIGUSR1, answer in ``path``)."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.time() + wait
    while time.time() < deadline:
        if path.exists():
            total, scrape = path.read_text().split()
            return int(total), int(scrape)
        time.sleep(0.05)
    return "n/a", "n/a"


def start_service(
    targets_file: Path, interval: float, log_path: Path, probe: bool, tasks_file: Path
) -> tuple[subprocess.Popen, int]:
    port = procs.free_port()
    module = "bench.soakprobe" if probe else "sidecar"
    env = {**os.environ, "SOAK_TASKS_FILE": str(tasks_file)}
    with open(log_path, "w") as log:  # a file, never a pipe nobody drains
        proc = subprocess.Popen(
            [
                procs.PY,
                "-m",
                module,
                "run",
                "--targets-file",
                str(targets_file),
                "--listen",
                f"127.0.0.1:{port}",
                "--interval",
                f"{interval:g}",
                "--windows",
                WINDOWS,
                "--log-level",
                "warning",
            ],
            cwd=procs.REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc, port


# ------------------------------------------------------------------ the run


@dataclass
class Settings:
    targets: int
    interval: float
    duration: float
    churn_every: float
    churn_fraction: float
    out: Path
    probe: bool
    seed: int


def sample(
    s: Settings,
    pid: int,
    rport: int,
    fleet: Fleet,
    reader: MetricsReader,
    t_start: float,
    t_prev: float,
    cpu_prev: float,
    tasks_file: Path,
) -> Row:
    now = time.time()
    cpu = procs.cpu_seconds(pid)
    body, gets, errors, slowest = reader.take()
    tracked, up = tracked_targets(body)
    conns, established = tcp_counts(pid)
    tasks, scrape_tasks = read_tasks(pid, tasks_file) if s.probe else ("n/a", "n/a")
    hits = procs.replay_hits(rport, t_prev - 3 * s.interval, now)
    late = lateness(hits, fleet.steady(t_prev - 3 * s.interval), t_prev, now, s.interval)
    return Row(
        elapsed_s=round(now - t_start, 1),
        rss_mb=round(procs.rss_mb(pid), 2),
        cpu_s=round(cpu, 2),
        cpu_frac=round((cpu - cpu_prev) / (now - t_prev), 4),
        fds=fd_count(pid),
        tcp_conns=conns,
        tcp_established=established,
        tasks=tasks,
        scrape_tasks=scrape_tasks,
        targets_configured=len(fleet.active),
        targets_tracked=tracked,
        targets_up=up,
        churns=fleet.churns,
        scrapes=late.scrapes,
        late_targets=late.late_targets,
        gap_max_ratio=round(late.gap_max_ratio, 3),
        gap_p99_ratio=round(late.gap_p99_ratio, 3),
        metrics_gets=gets,
        metrics_errors=errors,
        metrics_max_ms=round(slowest, 1),
        loadavg=procs.loadavg(),
    )


def run(s: Settings, csv_path: Path) -> None:
    """The soak itself, one row a minute appended to ``csv_path``."""
    stamp = csv_path.stem.removeprefix("soak-")
    churn_k = max(1, round(s.targets * s.churn_fraction))
    rounds = int(s.duration // s.churn_every) + 1 if s.churn_every > 0 else 0
    pool_size = s.targets + churn_k * rounds
    replay, rport = procs.start_replay(pool_size, "one", prefix="s")
    fleet = Fleet(
        s.out / f"targets-{stamp}.json", rport, [f"s{i}" for i in range(pool_size)], random.Random(s.seed)
    )
    fleet.start(s.targets)
    tasks_file = s.out / f"tasks-{stamp}.txt"
    side, sport = start_service(fleet.path, s.interval, s.out / f"sidecar-{stamp}.log", s.probe, tasks_file)
    reader = MetricsReader(f"http://127.0.0.1:{sport}/metrics", s.interval)
    try:
        t_launch = time.time()
        ready = procs.wait_ready(sport, side, timeout=300)
        print(
            f"service pid {side.pid} ready={ready} after {time.time() - t_launch:.1f}s; "
            f"replay pid {replay.pid} on port {rport} serving {pool_size} names; csv {csv_path}",
            flush=True,
        )
        reader.start()
        _loop(s, side, rport, fleet, reader, tasks_file, csv_path)
    finally:
        reader.stop.set()
        procs.stop(side)
        procs.stop(replay)
        tasks_file.unlink(missing_ok=True)


def _loop(
    s: Settings,
    side: subprocess.Popen,
    rport: int,
    fleet: Fleet,
    reader: MetricsReader,
    tasks_file: Path,
    csv_path: Path,
) -> None:
    t_start = t_prev = time.time()
    cpu_prev = procs.cpu_seconds(side.pid)
    next_sample, end = t_start + SAMPLE_EVERY, t_start + s.duration
    # churn half a minute off the samples, so no sample catches a reload half applied
    next_churn = t_start + s.churn_every + CHURN_OFFSET if s.churn_every > 0 else math.inf
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        while next_sample <= end + 1e-6:
            time.sleep(max(0.0, min(next_sample, next_churn) - time.time()))
            if side.poll() is not None:
                print(
                    f"service exited with {side.returncode}; see {side.log_path}",  # type: ignore[attr-defined]
                    flush=True,
                )
                return
            if time.time() >= next_churn:
                fleet.churn(s.churn_fraction)
                next_churn += s.churn_every
                continue
            row = sample(s, side.pid, rport, fleet, reader, t_start, t_prev, cpu_prev, tasks_file)
            w.writerow(asdict(row))
            f.flush()
            print(" ".join(f"{k}={v}" for k, v in asdict(row).items()), flush=True)
            t_prev, cpu_prev = time.time(), row.cpu_s
            next_sample += SAMPLE_EVERY


# ------------------------------------------------------------------ the summary


@dataclass
class Trend:
    """A column inside the settled window: first, last, peak, least-squares slope per hour, and
    whether it grew: the median of the window's last third above the peak of its first third,
    with a slope above twice its standard error (a count that wanders by a few, as in-flight
    tasks do, is not growth; one that climbs with every churn is)."""

    first: float
    last: float
    peak: float
    slope_per_h: float
    grew: bool


@dataclass
class Summary:
    minutes: int
    window_from_s: float
    window_to_s: float
    rss_slope_mb_h: float
    rss_slope_se_mb_h: float  # standard error of the slope: the noise it should be read against
    rss_mean_mb: float
    rss_slope_rel_pct_h: float
    peaks: dict[str, float]
    trends: dict[str, Trend]
    late_minutes: int  # minutes with at least one late target
    gap_max_ratio: float
    gap_p99_ratio: float  # the worst minute's p99
    load_min: float


def _num(v: str) -> float:
    try:
        return float(v)
    except ValueError:  # "n/a"
        return math.nan


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys over xs and its standard error (nan when it cannot be fitted)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return math.nan, math.nan
    slope, intercept = statistics.linear_regression(xs, ys)
    if len(xs) < 3:
        return slope, math.nan
    xm = statistics.fmean(xs)
    resid = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(resid / (len(xs) - 2) / sum((x - xm) ** 2 for x in xs))


def trend(rows: list[dict[str, float]], col: str) -> Trend:
    pts = [(r["elapsed_s"], r[col]) for r in rows if not math.isnan(r[col])]
    if not pts:
        return Trend(math.nan, math.nan, math.nan, math.nan, False)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    slope, se = fit(xs, ys)
    third = max(1, len(ys) // 3)
    grew = (
        len(ys) >= 3
        and statistics.median(ys[-third:]) > max(ys[:third])
        and slope > 0
        and not slope <= 2 * se
    )  # se is nan with 2 points, 0 on a line
    return Trend(ys[0], ys[-1], max(ys), slope * 3600, grew)


def settled(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """The rows of the last 40 minutes, or of the last 2/3 of a run shorter than an hour."""
    if not rows:
        return []
    end = rows[-1]["elapsed_s"]
    start = end - min(SLOPE_WINDOW_S, end * 2 / 3)
    return [r for r in rows if r["elapsed_s"] >= start]


def summarize(rows: list[dict[str, float]]) -> Summary:
    win = settled(rows)
    xs = [r["elapsed_s"] for r in win]
    rss = [r["rss_mb"] for r in win]
    slope, se = fit(xs, rss)
    mean = statistics.fmean(rss) if rss else math.nan
    peaks = {
        c: max((r[c] for r in rows if not math.isnan(r[c])), default=math.nan)
        for c in COLUMNS
        if c != "elapsed_s"
    }
    cols = ("rss_mb", "fds", "tcp_conns", "tcp_established", "tasks", "targets_tracked")
    return Summary(
        minutes=len(rows),
        window_from_s=xs[0] if xs else math.nan,
        window_to_s=xs[-1] if xs else math.nan,
        rss_slope_mb_h=slope * 3600,
        rss_slope_se_mb_h=se * 3600,
        rss_mean_mb=mean,
        rss_slope_rel_pct_h=100 * slope * 3600 / mean if mean else math.nan,
        peaks=peaks,
        trends={c: trend(win, c) for c in cols},
        late_minutes=sum(1 for r in rows if r["late_targets"] > 0),
        gap_max_ratio=peaks["gap_max_ratio"],
        gap_p99_ratio=peaks["gap_p99_ratio"],
        load_min=min((r["loadavg"] for r in rows), default=math.nan),
    )


def report(sm: Summary) -> str:
    lines = [
        f"minutes recorded: {sm.minutes}; settled window {sm.window_from_s / 60:.1f}-"
        f"{sm.window_to_s / 60:.1f} min",
        f"RSS slope over the window: {sm.rss_slope_mb_h:+.2f} MB/h (standard error "
        f"{sm.rss_slope_se_mb_h:.2f}), {sm.rss_slope_rel_pct_h:+.2f} %/h of the mean "
        f"{sm.rss_mean_mb:.1f} MB",
        "in the window (first -> last, peak, slope per hour; grew = the last third's median above "
        "the first third's peak and a slope above 2 standard errors):",
    ]
    for col, t in sm.trends.items():
        lines.append(
            f"  {col:16} {t.first:g} -> {t.last:g}, peak {t.peak:g}, "
            f"{t.slope_per_h:+.2f}/h, grew: {'yes' if t.grew else 'no'}"
        )
    lines.append(
        f"scrape cycles: {sm.late_minutes} of {sm.minutes} minutes had a late target; "
        f"worst gap {sm.gap_max_ratio:.2f} intervals, worst minute's p99 gap "
        f"{sm.gap_p99_ratio:.2f} intervals"
    )
    lines.append(
        f"load average over the run: {sm.load_min:g}-{sm.peaks['loadavg']:g} on "
        f"{os.cpu_count()} CPUs (neighbours slow every figure above)"
    )
    lines.append("peaks over the whole run: " + ", ".join(f"{k}={v:g}" for k, v in sm.peaks.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--interval", type=float, default=5.0, help="scrape interval, seconds")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds")
    p.add_argument("--churn-every", type=float, default=180.0, help="seconds; 0: no churn")
    p.add_argument("--churn-fraction", type=float, default=0.1, help="of the targets per churn")
    p.add_argument("--out", type=Path, default=procs.REPO / ".artifacts" / "soak")
    p.add_argument(
        "--plain",
        action="store_true",
        help="run `python -m sidecar` itself (no task counts) instead of bench.soakprobe",
    )
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--summarize", type=Path, metavar="CSV", help="only print a CSV's summary")
    ns = p.parse_args(argv)
    if ns.summarize:
        print(report(summarize(read_csv(ns.summarize))))
        return 0
    s = Settings(
        ns.targets, ns.interval, ns.duration, ns.churn_every, ns.churn_fraction, ns.out, not ns.plain, ns.seed
    )
    print(f"machine: nproc={os.cpu_count()} load average {procs.loadavg():.2f}; {s}", flush=True)
    s.out.mkdir(parents=True, exist_ok=True)
    csv_path = s.out / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv"
    try:
        run(s, csv_path)
    except Exception as exc:  # noqa: BLE001 - a soak reports what it has and says what broke
        print(f"soak stopped early: {exc!r}", flush=True)
    if not csv_path.exists():
        return 0
    rows = read_csv(csv_path)
    text = report(summarize(rows)) if rows else "no minute recorded"
    print(f"\n{csv_path}\n{text}")
    csv_path.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
