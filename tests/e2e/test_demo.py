"""``python -m demo`` against the session's vLLM: it prints live tables and cleans up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.procs import free_port, port_open

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_demo_with_existing_vllm_prints_tables_and_stops(vllm_on, tmp_path):
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            "--vllm-url",
            vllm_on.base_url,
            "--sidecar-port",
            str(port),
            "--duration",
            "12",
            "--refresh",
            "3",
            "--interval",
            "1",
            "--burst-every",
            "5",
            "--log-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.stdout
    assert proc.returncode == 0, out
    assert f"status page http://127.0.0.1:{port}/" in out
    assert f"metrics http://127.0.0.1:{port}/metrics" in out
    assert "target local: UP  vLLM 0.32.0  prefix caching on  block 128" in out
    # a row of hit ratios per window (1m, 5m, lifetime) with real percentages
    rows = re.findall(r"^  tiny/0 +(\S+) +(\S+) +(\S+) +(\S+)", out, re.M)
    assert rows, out
    last = rows[-1]
    assert all(v.endswith("%") for v in last), last
    assert 0 < float(last[2].rstrip("%")) <= 100  # lifetime ratio after shared-prefix traffic
    # the progress line counts requests, none failed
    done = re.findall(r"(\d+) requests \(shared (\d+), unique (\d+), failed (\d+)", out)
    assert done and int(done[-1][0]) > 0 and done[-1][3] == "0", done[-1:]
    # it stopped the sidecar it started, and left the vLLM it did not start running
    assert not port_open("127.0.0.1", port)
    assert vllm_on.running()
