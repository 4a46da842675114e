"""Process plumbing for the bench: start/stop helpers, /proc CPU and RSS, free ports, HTTP gets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testkit.procs import free_port

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all threads) from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loadavg() -> float:
    """The 1-minute load average: other work on the machine skews every timing."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def start_replay(n: int, kind: str, prefix: str = "t") -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [PY, "-m", "bench.replayproc", "--targets", str(n), "--kind", kind, "--prefix", prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def replay_hits(port: int, since: float, until: float, filtered: bool = False) -> dict[str, list[float]]:
    """Per target, when it was scraped in [since, until] (only filtered GETs if ``filtered``)."""
    _, body = get(f"http://127.0.0.1:{port}/_stats?since={since}" + ("&filtered=1" * filtered))
    return {k: [t for t in v if t <= until] for k, v in json.loads(body).items()}


def write_config(path: Path, urls: dict[str, str]) -> Path:
    lines = ["targets:"]
    for name, url in urls.items():
        lines.append(f"  - name: {name}\n    url: {url}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_sidecar(config: Path, interval: float, windows: str) -> tuple[subprocess.Popen, int]:
    """The real service (``python -m sidecar run``); its log goes to ``<config>.log``."""
    port = free_port()
    log = open(config.with_suffix(".log"), "w")  # a file, never a pipe nobody drains
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "sidecar",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            f"{interval:g}",
            "--windows",
            windows,
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    proc.log_path = config.with_suffix(".log")  # type: ignore[attr-defined]
    log.close()
    return proc, port


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Wait for ``/readyz``; False if it never came (the bench measures anyway and says so)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log = Path(getattr(proc, "log_path", "/dev/null")).read_text()[-2000:]
            raise RuntimeError(f"sidecar exited {proc.returncode}: {log}")
        try:
            if get(f"http://127.0.0.1:{port}/readyz", 5)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
