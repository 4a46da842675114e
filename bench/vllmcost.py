"""What one scrape costs vLLM: a full ``GET /metrics`` vs the sidecar's filtered GET.

Why: the sidecar asks vLLM only for the samples it reads (``/metrics/?name[]=...``, see
:mod:`sidecar.scrapefilter`); the point is to lower the load on the server being monitored. This
measures it on a real vLLM, set up as ``make demo`` does (:class:`demo.vllm_server.VllmServer`
with the tiny local model of :mod:`demo.tinymodel`, started with
``python -m vllm.entrypoints.openai.api_server``, ``VLLM_CPU_KVCACHE_SPACE=1``, on a free port):
a few completions fill the histograms, a full probe body gives the names exactly as the sidecar
builds them (``scrapefilter.request_names`` over the probe's sample names), then CPU seconds of the
API-server process alone (utime+stime of its PID; the engine-core child is not counted: it does
not serve ``/metrics``) over ``gets`` keep-alive GETs of each URL, alternating full and filtered,
``rounds`` times.

    python -m bench.vllmcost [--gets 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from . import procs


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _complete(base: str, n: int) -> None:
    """A few completions (two sharing a prefix) so counters and histograms hold real values."""
    prompt = "ka lo mi ne ru sa ti vo ze pa do fi gu he ja bo ce wi xu yo " * 4
    for i in range(n):
        req = urllib.request.Request(
            base + "/v1/completions",
            method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps(
                {"model": "tiny", "prompt": prompt + str(i % 2), "max_tokens": 8, "temperature": 0}
            ).encode(),
        )
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback only
            resp.read()


def filtered_path(metrics_url: str, body: bytes, content_type: str | None) -> tuple[str, int]:
    """The sidecar's filtered URL path for this probe body, and how many names it asks for."""
    from sidecar.parser import parse
    from sidecar.scrapefilter import filtered_url, request_names

    names = request_names({s[0] for s in parse(body, content_type).samples})
    url = urllib.parse.urlsplit(filtered_url(metrics_url, names))
    return f"{url.path}?{url.query}", len(names)


def _gets(conn: http.client.HTTPConnection, path: str, n: int) -> tuple[int, int]:
    """``n`` GETs on one keep-alive connection; (bytes, sample lines) of the last answer."""
    body = b""
    for _ in range(n):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path[:60]} answered {resp.status}")
    lines = sum(1 for ln in body.split(b"\n") if ln and not ln.startswith(b"#"))
    return len(body), lines


def measure(port: int, pid: int, full: str, filtered: str, gets: int, rounds: int) -> dict:
    """Alternate ``gets`` full and filtered GETs, ``rounds`` times; API-server CPU ms per GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: dict = {"full_ms": [], "filtered_ms": []}
    try:
        _gets(conn, full, 5)  # warm both routes
        _gets(conn, filtered, 5)
        for _ in range(rounds):
            for kind, path in (("full", full), ("filtered", filtered)):
                c0 = procs.cpu_seconds(pid)
                size, lines = _gets(conn, path, gets)
                out[f"{kind}_ms"].append(1e3 * (procs.cpu_seconds(pid) - c0) / gets)
                out[f"{kind}_bytes"], out[f"{kind}_lines"] = size, lines
    finally:
        conn.close()
    out["loadavg"] = procs.loadavg()
    out["full_ms_median"] = statistics.median(out["full_ms"])
    out["filtered_ms_median"] = statistics.median(out["filtered_ms"])
    out["ratio"] = out["filtered_ms_median"] / out["full_ms_median"]
    return out


def run(gets: int = 200, rounds: int = 2, log_dir: Path | None = None) -> dict:
    """Start one vLLM (stopped in ``finally``), measure, return the figures."""
    if not installed():
        return {"skipped": "vLLM is not installed in this environment (make vllm)"}
    from demo import tinymodel
    from demo.vllm_server import VllmServer, VllmServerConfig

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    model = tinymodel.build()
    server = VllmServer(
        VllmServerConfig(
            model=str(model), log_path=str(log_dir / "vllm.log"), env={"VLLM_CPU_KVCACHE_SPACE": "1"}
        )
    )
    t0 = time.monotonic()
    try:
        server.start(timeout=600)
        startup = time.monotonic() - t0
        assert server.proc is not None
        _complete(server.base_url, 6)
        status, body = procs.get(server.metrics_url)
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        filtered, n_names = filtered_path(server.metrics_url, body, "text/plain; version=0.0.4")
        out = measure(server.port, server.proc.pid, "/metrics", filtered, gets, rounds)
        out.update(
            {
                "names": n_names,
                "query_bytes": len(filtered.split("?", 1)[1]),
                "gets": gets,
                "rounds": rounds,
                "startup_s": startup,
                "api_server_pid_only": True,
            }
        )
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.vllmcost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gets", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    ns = p.parse_args(argv)
    print(json.dumps(run(ns.gets, ns.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
