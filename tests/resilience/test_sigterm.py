"""SIGTERM while scrapes are in flight: the service must stop cleanly (exit 0, no traceback).

The sidecar runs as a real process (``python -m sidecar run``) against targets that hold their
requests open (headers that never come, a body that stalls) next to a healthy one; the signal
arrives while the fault server sees those requests still open.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from faultserver import FaultServer

from testkit.procs import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    """Poll ``cond``; fail if the process died or it never held (a guard against hanging only)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"sidecar exited early: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.05)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


#: ``python -m sidecar`` with the service's HTTP client for plain targets switched off or on
LAUNCH = {
    "own_client": [sys.executable, "-m", "sidecar"],
    "aiohttp": [
        sys.executable,
        "-c",
        "import sys, sidecar.service as s; s.OWN_CLIENT = False; "
        "from sidecar.cli import main; sys.exit(main())",
    ],
}


@pytest.mark.parametrize("client", sorted(LAUNCH))
def test_sigterm_mid_scrape_exits_cleanly(client: str) -> None:
    with FaultServer() as faults:
        port = free_port()
        proc = subprocess.Popen(
            [
                *LAUNCH[client],
                "run",
                "--target",
                f"hang_headers={faults.url('slow_headers')}",
                "--target",
                f"hang_body={faults.url('slow_body')}",
                "--target",
                f"ok={faults.url('ok')}",
                "--listen",
                f"127.0.0.1:{port}",
                "--interval",
                "5",
                "--windows",
                "10s,30s",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: healthy(port), proc, "/healthz answering")
            wait_for(
                lambda: (
                    faults.inflight["slow_headers"] >= 1
                    and faults.inflight["slow_body"] >= 1
                    and faults.requests["ok"] >= 1
                ),
                proc,
                "scrapes in flight",
            )
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)  # a hang guard, not a time limit under test
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
