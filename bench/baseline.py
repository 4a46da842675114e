"""The naive baseline the sidecar is measured against, run as its own process.

What a straightforward exporter would do: aiohttp GET, ``prometheus_client.parser.
text_string_to_metric_families`` over the whole body, then the same arithmetic as the sidecar
(per engine: lifetime and windowed prefix-cache hit ratios, KV usage delta, token / preemption /
request rates, latency mean and p50/p90/p99 from histogram bucket increases). One task per
target on a fixed schedule, like the sidecar. It keeps results in memory and serves nothing.

    python -m bench.baseline --urls-file urls.txt --interval 1 --windows 60,300
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import deque

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sidecar.derive import histogram_quantile

ACCEPT = "text/plain;version=0.0.4"
COUNTERS = {
    "vllm:prefix_cache_queries": "q",
    "vllm:prefix_cache_hits": "h",
    "vllm:prompt_tokens": "p",
    "vllm:generation_tokens": "g",
    "vllm:num_preemptions": "pre",
}
GAUGES = {
    "vllm:kv_cache_usage_perc": "kv",
    "vllm:num_requests_running": "run",
    "vllm:num_requests_waiting": "wait",
}
HISTS = {
    "vllm:time_to_first_token_seconds": "ttft",
    "vllm:e2e_request_latency_seconds": "e2e",
    "vllm:request_queue_time_seconds": "queue",
}


def extract(text: str) -> dict[tuple[str, str], dict]:
    """Per (model_name, engine): counters, gauges, histograms and finished requests by reason."""
    engines: dict[tuple[str, str], dict] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.labels.get("model_name", ""), s.labels.get("engine", "0"))
            if fam.name in COUNTERS and s.name.endswith("_total"):
                engines.setdefault(key, {})[COUNTERS[fam.name]] = s.value
            elif fam.name in GAUGES:
                engines.setdefault(key, {})[GAUGES[fam.name]] = s.value
            elif fam.name == "vllm:request_success" and s.name.endswith("_total"):
                e = engines.setdefault(key, {})
                e.setdefault("succ", {})[s.labels.get("finished_reason", "")] = s.value
            elif fam.name in HISTS:
                h = engines.setdefault(key, {}).setdefault(HISTS[fam.name], {"b": {}})
                if s.name.endswith("_bucket"):
                    h["b"][float(s.labels["le"])] = s.value
                elif s.name.endswith("_sum"):
                    h["sum"] = s.value
                elif s.name.endswith("_count"):
                    h["count"] = s.value
    return engines


def _ratio(h: float, q: float) -> float:
    return min(1.0, max(0.0, h / q)) if q > 0 else float("nan")


def derive(history: deque, windows: list[float]) -> dict:
    """The sidecar's derived numbers for one engine from its (t, values) history."""
    t, cur = history[-1]
    out = {"lifetime": _ratio(cur.get("h", 0.0), cur.get("q", 0.0))}
    for w in windows:
        base_t, base = history[0]
        for pt, pv in history:
            if pt <= t - w:
                base_t, base = pt, pv
        span = t - base_t
        d = {k: cur.get(k, 0.0) - base.get(k, 0.0) for k in COUNTERS.values()}
        res = {"ratio": _ratio(d["h"], d["q"]), "kv_delta": cur.get("kv", 0.0) - base.get("kv", 0.0)}
        if span > 0:
            for k in ("p", "g", "pre"):
                res[k + "_rate"] = d[k] / span
            res["req"] = {
                r: (v - base.get("succ", {}).get(r, 0.0)) / span for r, v in cur.get("succ", {}).items()
            }
        for phase in HISTS.values():
            ch, bh = cur.get(phase), base.get(phase)
            if not ch or not bh:
                continue
            bounds = sorted(ch["b"])
            counts = [ch["b"][b] - bh["b"].get(b, 0.0) for b in bounds]
            n = ch.get("count", 0.0) - bh.get("count", 0.0)
            res[phase] = (
                (ch.get("sum", 0.0) - bh.get("sum", 0.0)) / n if n > 0 else float("nan"),
                [histogram_quantile(q, bounds, counts) for q in (0.5, 0.9, 0.99)],
            )
        out[w] = res
    return out


async def loop(
    session: aiohttp.ClientSession, url: str, interval: float, windows: list[float], results: dict
) -> None:
    ev = asyncio.get_running_loop()
    histories: dict[tuple[str, str], deque] = {}
    next_at = ev.time() + random.uniform(0, min(interval, 1.0))
    while True:
        delay = next_at - ev.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = ev.time()
        try:
            async with asyncio.timeout(interval * 0.8):
                async with session.get(url, headers={"Accept": ACCEPT}) as resp:
                    body = await resp.read()
            for key, values in extract(body.decode("utf-8")).items():
                h = histories.setdefault(key, deque())
                h.append((now, values))
                while len(h) >= 2 and h[1][0] <= now - max(windows):
                    h.popleft()
                results[(url, key)] = derive(h, windows)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            results[(url, None)] = "down"
        next_at += interval
        if next_at < ev.time():
            next_at = ev.time() + interval


async def main_async(urls: list[str], interval: float, windows: list[float]) -> None:
    results: dict = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(loop(session, u, interval, windows, results) for u in urls))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--urls-file", required=True)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--windows", default="60,300")
    ns = p.parse_args()
    urls = [u.strip() for u in open(ns.urls_file) if u.strip()]
    try:
        asyncio.run(main_async(urls, ns.interval, [float(w) for w in ns.windows.split(",")]))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
