"""Prometheus itself as the anchor: Debian's ``prometheus`` scraping the same replayed targets.

Why: what a user runs instead of the sidecar is Prometheus scraping vLLM directly (and, to get
the same figures, recording rules over the raw ``vllm:`` series). The bench runs it side by side
with the sidecar, each on its own N targets of one replay server at the same interval, and
compares CPU seconds per target-scrape of the two processes.

Prometheus gets a file_sd list of the N targets (one ``host:port`` with ``__metrics_path__``
``/<name>/metrics`` and its own ``instance`` label per target, so the series do not collide), a
temporary TSDB with a short retention, 127.0.0.1 only; it is stopped afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

from . import procs

BINARY = "prometheus"

#: latency/length histograms the sidecar derives a mean and p50/p90/p99 from (``normalize.ALIASES``)
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prompt_tokens",
)
#: counters the sidecar turns into per-window rates
RATES = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
)
BY = "instance, model_name, engine"


def available() -> str | None:
    """The binary's path, or None when Prometheus is not installed."""
    return shutil.which(BINARY)


def version() -> str:
    out = subprocess.run([BINARY, "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"


def _window_rules(w: str) -> list[dict]:
    """The sidecar's per-window figures for one window ``w`` as recording rules."""

    def ratio(hits: str, queries: str) -> str:
        return f"sum by ({BY}) (rate({hits}[{w}])) / sum by ({BY}) (rate({queries}[{w}]))"

    rules = [
        {
            "record": f"bench:prefix_cache_hit_ratio:{w}",
            "expr": ratio("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
        },
        {
            "record": f"bench:external_prefix_cache_hit_ratio:{w}",
            "expr": ratio(
                "vllm:external_prefix_cache_hits_total", "vllm:external_prefix_cache_queries_total"
            ),
        },
        {"record": f"bench:kv_cache_usage_delta:{w}", "expr": f"delta(vllm:kv_cache_usage_perc[{w}])"},
    ]
    for c in RATES:
        rules.append(
            {"record": f"bench:{c.split(':', 1)[1]}:rate{w}", "expr": f"sum by ({BY}) (rate({c}[{w}]))"}
        )
    for h in HISTOGRAMS:
        base = h.split(":", 1)[1]
        rules.append(
            {
                "record": f"bench:{base}:mean{w}",
                "expr": f"sum by ({BY}) (rate({h}_sum[{w}])) / sum by ({BY}) (rate({h}_count[{w}]))",
            }
        )
        for q in (0.5, 0.9, 0.99):
            rules.append(
                {
                    "record": f"bench:{base}:p{round(q * 100)}_{w}",
                    "expr": f"histogram_quantile({q}, sum by ({BY}, le) (rate({h}_bucket[{w}])))",
                }
            )
    return rules


def rules_doc(windows: tuple[str, ...] = ("1m", "5m")) -> dict:
    """Recording rules computing what the sidecar derives, per target, from the raw series:
    prefix-cache and external hit ratios per window and for the lifetime, KV usage delta, token,
    preemption and request rates, latency means and p50/p90/p99 per window."""
    rules = [
        {
            "record": "bench:prefix_cache_hit_ratio:lifetime",
            "expr": f"sum by ({BY}) (vllm:prefix_cache_hits_total) / "
            f"sum by ({BY}) (vllm:prefix_cache_queries_total)",
        }
    ]
    for w in windows:
        rules.extend(_window_rules(w))
    return {"groups": [{"name": "bench", "rules": rules}]}


def write_config(d: Path, rport: int, names: list[str], interval: float, rules: bool) -> Path:
    """prometheus.yml + targets.json (+ rules.yml) in ``d``; JSON is valid YAML."""
    d.mkdir(parents=True, exist_ok=True)
    sd = [
        {"targets": [f"127.0.0.1:{rport}"], "labels": {"__metrics_path__": f"/{n}/metrics", "instance": n}}
        for n in names
    ]
    (d / "targets.json").write_text(json.dumps(sd))
    cfg: dict = {
        "global": {
            "scrape_interval": f"{interval:g}s",
            "evaluation_interval": f"{interval:g}s",
            "scrape_timeout": f"{min(interval, 10.0):g}s",
        },
        "scrape_configs": [{"job_name": "vllm", "file_sd_configs": [{"files": [str(d / "targets.json")]}]}],
    }
    if rules:
        (d / "rules.yml").write_text(json.dumps(rules_doc()))
        cfg["rule_files"] = [str(d / "rules.yml")]
    path = d / "prometheus.yml"
    path.write_text(json.dumps(cfg))
    return path


def start(d: Path, config: Path) -> tuple[subprocess.Popen, int]:
    """Prometheus on 127.0.0.1:<free port>, TSDB in ``d/data`` (15 min retention); log in
    ``d/prometheus.log``."""
    port = procs.free_port()
    log = open(d / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            BINARY,
            f"--config.file={config}",
            f"--storage.tsdb.path={d / 'data'}",
            "--storage.tsdb.retention.time=15m",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=d,
    )
    log.close()
    proc.log_path = d / "prometheus.log"  # type: ignore[attr-defined]
    return proc, port


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = Path(proc.log_path).read_text()[-2000:]  # type: ignore[attr-defined]
            raise RuntimeError(f"prometheus exited {proc.returncode}: {tail}")
        try:
            if procs.get(f"http://127.0.0.1:{port}/-/ready", 5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("prometheus not ready")


def query(port: int, expr: str) -> float:
    """One instant query's scalar result (the first sample), NaN if empty or failed."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        _, body = procs.get(url, 30)
        result = json.loads(body)["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")
    except (OSError, ValueError, KeyError, IndexError):
        return float("nan")


def confirm(port: int) -> dict:
    """Prometheus' own view, to confirm what the replay server saw: targets up, samples per
    scrape, rule result series and head series. Asked after the measured window: queries cost
    Prometheus CPU."""
    return {
        "targets_up": query(port, 'count(up{job="vllm"} == 1)'),
        "samples_per_scrape": query(port, 'avg(scrape_samples_scraped{job="vllm"})'),
        "rule_series": query(port, 'count({__name__=~"bench:.*"})'),
        "head_series": _head_series(port),
    }


def _head_series(port: int) -> float:
    try:
        _, body = procs.get(f"http://127.0.0.1:{port}/api/v1/status/tsdb", 30)
        return float(json.loads(body)["data"]["headStats"]["numSeries"])
    except (OSError, ValueError, KeyError):
        return float("nan")
