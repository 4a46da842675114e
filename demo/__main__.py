"""``make demo``: a real vLLM on CPU, the sidecar next to it, traffic, and a live table.

Why: the fastest way to trust the sidecar is to watch it read a real vLLM. This builds (once) a
tiny random-weight Llama, starts vLLM on 127.0.0.1:8000 with prefix caching, starts the sidecar on
127.0.0.1:9490 exactly as a user would (``python -m sidecar run ...``), sends a mix of
shared-prefix and unique prompts plus an occasional burst of long requests (so KV usage moves),
and every few seconds prints what the sidecar says (``/api/v1/targets``). Ctrl-C stops everything
it started, and only that.

    python -m demo                       # everything, until Ctrl-C
    python -m demo --no-prefix-caching   # watch the prefix_caching_disabled diagnosis
    python -m demo --shared-fraction 0   # unique prompts only: zero_hit_rate
    python -m demo --vllm-url http://127.0.0.1:8000   # use a vLLM that is already running
    python -m demo --duration 120        # stop by itself after two minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from demo import tinymodel
from demo.traffic import PromptMaker, TrafficConfig, TrafficStats, run_traffic
from demo.vllm_server import VllmServer, VllmServerConfig
from testkit.procs import SidecarProcess, StartError, port_open

BAR = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    p.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="start vLLM with prefix caching disabled (shows the diagnosis)",
    )
    p.add_argument("--vllm-url", help="use this running vLLM (base URL) instead of starting one")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds of traffic, then stop (default: until Ctrl-C)"
    )
    p.add_argument("--vllm-port", type=int, default=8000)
    p.add_argument("--sidecar-port", type=int, default=9490)
    p.add_argument("--interval", type=float, default=2.0, help="sidecar scrape interval")
    p.add_argument("--windows", default="1m,5m")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between tables")
    p.add_argument("--rate", type=float, default=4.0, help="requests started per second")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument(
        "--shared-fraction",
        type=float,
        default=0.7,
        help="share of prompts with a shared prefix (0: unique prompts only)",
    )
    p.add_argument(
        "--burst-every",
        type=float,
        default=30.0,
        help="seconds between bursts of long concurrent requests (0: none)",
    )
    p.add_argument("--log-dir", default=".artifacts/demo")
    return p.parse_args(argv)


# -- reading the sidecar ---------------------------------------------------------------------
def fetch_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "  n/a"
    return f"{100 * x:5.1f}%"


def _signed_pct(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f}%"


def format_targets(doc: dict[str, Any]) -> list[str]:
    """A compact table of the sidecar's ``/api/v1/targets`` answer."""
    lines: list[str] = []
    for t in doc.get("targets", []):
        flag = t.get("prefix_caching_enabled")
        caching = "unknown" if flag is None else ("on" if flag else "OFF")
        blocks = {c.get("block_size") for c in t.get("cache_config", []) if c.get("block_size")}
        lines.append(
            f"target {t['name']}: {'UP' if t.get('up') else 'DOWN'}"
            f"  vLLM {t.get('version') or '?'}  prefix caching {caching}"
            f"  block {'/'.join(map(str, sorted(blocks))) or '?'}"
            f"  restarts {t.get('restarts', 0)}"
        )
        windows = t.get("windows", [])
        header = (
            "  "
            + "model/engine".ljust(16)
            + "".join(f"{w:>8}" for w in windows + ["life"])
            + "  KV use"
            + "".join(f"{'Δ' + w:>8}" for w in windows)
            + "  run/wait"
        )
        lines.append(header)
        for e in t.get("engines", []):
            ratios = e.get("hit_ratio", {})
            deltas = {w["window"]: w.get("kv_cache_usage_delta") for w in e.get("windows", [])}
            lines.append(
                "  "
                + f"{e['model_name']}/{e['engine']}"[:16].ljust(16)
                + "".join(f"{_pct(ratios.get(w)):>8}" for w in windows)
                + f"{_pct(ratios.get('lifetime')):>8}"
                + f"  {_pct(e.get('kv_cache_usage'))}"
                + "".join(f"{_signed_pct(deltas.get(w)):>8}" for w in windows)
                + f"  {e.get('requests_running') or 0:.0f}/{e.get('requests_waiting') or 0:.0f}"
            )
        diags = t.get("diagnoses", [])
        if diags:
            for d in diags:
                lines.append(f"  [{d['severity']}] {d['code']}: {d.get('summary', '')}")
        else:
            lines.append("  diagnoses: none")
    return lines


def progress_line(stats: TrafficStats, duration: float | None) -> str:
    elapsed = stats.elapsed
    if duration:
        filled = min(BAR, int(BAR * elapsed / duration))
        bar = "#" * filled + "." * (BAR - filled)
        when = f"{elapsed:4.0f}/{duration:.0f} s"
    else:
        pos = int(elapsed) % BAR
        bar = "." * pos + "#" + "." * (BAR - pos - 1)
        when = f"{elapsed:4.0f} s"
    rate = stats.done / elapsed if elapsed > 0 else 0.0
    line = (
        f"[{bar}] {when}  {stats.done} requests (shared {stats.shared}, unique "
        f"{stats.unique}, failed {stats.failed}, in flight {stats.in_flight})  {rate:.1f}/s"
    )
    if stats.failed and stats.last_error:
        line += f"\n  last error: {stats.last_error}"
    return line


# -- the run ---------------------------------------------------------------------------------
async def _bursts(
    base: TrafficConfig, every: float, stop: asyncio.Event, stats: TrafficStats, max_tokens: int
) -> None:
    """Every ``every`` seconds, 64 long requests, 32 at a time: KV usage rises, then falls."""
    n = 0
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        n += 1
        burst = TrafficConfig(
            base_url=base.base_url,
            model=base.model,
            requests=64,
            concurrency=32,
            shared_fraction=base.shared_fraction,
            prefix_words=base.prefix_words,
            max_tokens=max_tokens,
            seed=base.seed,
        )
        await run_traffic(burst, stats=stats, stop=stop)


async def _report_loop(
    sidecar_url: str, stats: TrafficStats, duration: float | None, refresh: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), refresh)
        if stop.is_set():
            return
        print_status(sidecar_url, stats, duration)


def print_status(sidecar_url: str, stats: TrafficStats, duration: float | None) -> None:
    out = ["", time.strftime("%H:%M:%S ") + progress_line(stats, duration)]
    try:
        out += format_targets(fetch_json(sidecar_url + "/api/v1/targets"))
    except Exception as exc:  # keep the demo alive while the sidecar restarts or is slow
        out.append(f"  (sidecar not answering: {exc})")
    out.append(f"  status page {sidecar_url}/   metrics {sidecar_url}/metrics")
    print("\n".join(out), flush=True)


def _models(base_url: str) -> tuple[str, int | None]:
    """The served model id and its max_model_len, from vLLM's /v1/models."""
    doc = fetch_json(base_url.rstrip("/") + "/v1/models")
    first = doc["data"][0]
    return first["id"], first.get("max_model_len")


def _token_count(base_url: str, model: str, prompt: str) -> int | None:
    """Tokens of ``prompt`` for this model (vLLM's /tokenize); None if it cannot say."""
    req = urllib.request.Request(
        base_url.rstrip("/") + "/tokenize",
        data=json.dumps({"model": model, "prompt": prompt}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(json.load(resp)["count"])
    except Exception:  # an older vLLM or another server: fall back to the word count
        return None


def plan_prompts(vllm_url: str, model: str, max_len: int | None) -> tuple[int, int]:
    """(prefix words, long-request max_tokens) that fit this model's context.

    Another model's tokenizer may spend several tokens per pseudo-word: measure one prompt and
    shrink the prefix until a prompt takes at most half the context.
    """
    limit = max_len or 1024
    words = 300
    tokens = words * 2
    for _ in range(6):
        probe = PromptMaker(TrafficConfig(base_url=vllm_url, prefix_words=words, shared_fraction=1))
        counted = _token_count(vllm_url, model, probe.next()[1])
        tokens = counted if counted is not None else words * 2
        if tokens <= limit // 2 or words <= 20:
            break
        words = max(20, int(words * (limit // 2) / tokens * 0.9))
    long_tokens = max(16, min(400, limit - tokens - 64))
    return words, long_tokens


async def drive(args: argparse.Namespace, vllm_url: str, sidecar_url: str) -> TrafficStats:
    model, max_len = _models(vllm_url)
    prefix_words, long_tokens = plan_prompts(vllm_url, model, max_len)
    cfg = TrafficConfig(
        base_url=vllm_url,
        model=model,
        requests=None,
        duration=args.duration,
        concurrency=args.concurrency,
        shared_fraction=args.shared_fraction,
        prefix_words=prefix_words,
        rate=args.rate,
        max_tokens=16,
    )
    stop = asyncio.Event()
    stats = TrafficStats()
    side = [asyncio.create_task(_report_loop(sidecar_url, stats, args.duration, args.refresh, stop))]
    if args.burst_every > 0:
        side.append(asyncio.create_task(_bursts(cfg, args.burst_every, stop, stats, long_tokens)))
    try:
        await run_traffic(cfg, stats=stats, stop=stop)
    finally:
        stop.set()
        await asyncio.gather(*side, return_exceptions=True)
    return stats


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = Path(args.log_dir)
    vllm: VllmServer | None = None
    sidecar: SidecarProcess | None = None
    # SIGTERM behaves like Ctrl-C, so `kill <demo pid>` cleans up too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if port_open("127.0.0.1", args.sidecar_port):
            print(
                f"port {args.sidecar_port} is busy: is a sidecar already running? Stop it or "
                f"use --sidecar-port N."
            )
            return 2
        if args.vllm_url:
            vllm_url = args.vllm_url.rstrip("/")
            if vllm_url.endswith("/metrics"):
                vllm_url = vllm_url[: -len("/metrics")]
            if args.no_prefix_caching:
                print("note: --no-prefix-caching only applies to a vLLM the demo starts")
        else:
            if port_open("127.0.0.1", args.vllm_port):
                print(
                    f"port {args.vllm_port} is busy: is a vLLM already running? Use "
                    f"--vllm-url http://127.0.0.1:{args.vllm_port} or --vllm-port N."
                )
                return 2
            print(
                "tiny model:",
                "reusing" if tinymodel.is_built(tinymodel.default_dir()) else "building (first run only)",
                tinymodel.default_dir(),
                flush=True,
            )
            model_dir = tinymodel.build()
            vllm = VllmServer(
                VllmServerConfig(
                    model=str(model_dir),
                    port=args.vllm_port,
                    prefix_caching=not args.no_prefix_caching,
                    log_path=str(log_dir / "vllm.log"),
                )
            )
            print(
                f"starting vLLM on 127.0.0.1:{args.vllm_port} (prefix caching "
                f"{'off' if args.no_prefix_caching else 'on'}; ~1 min on CPU; log "
                f"{vllm.log_path}) ...",
                flush=True,
            )
            t0 = time.monotonic()
            vllm.start()
            print(f"vLLM ready after {time.monotonic() - t0:.0f} s", flush=True)
            vllm_url = vllm.base_url
        sidecar = SidecarProcess(
            [
                "--target",
                f"local={vllm_url}/metrics",
                "--interval",
                f"{args.interval:g}",
                "--windows",
                args.windows,
            ],
            listen=f"127.0.0.1:{args.sidecar_port}",
            log_path=log_dir / "sidecar.log",
            ready=True,
            new_session=True,
            timeout=120.0,
            start=False,
        )
        sidecar.start()
        print(
            f"sidecar ready: status page {sidecar.base_url}/  metrics {sidecar.base_url}/metrics"
            f"  (log {sidecar.log_path})",
            flush=True,
        )
        print("sending traffic; Ctrl-C stops everything", flush=True)
        stats = asyncio.run(drive(args, vllm_url, sidecar.base_url))
        time.sleep(args.interval + 0.5)  # let the sidecar scrape the last requests
        print_status(sidecar.base_url, stats, args.duration)
        return 0
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 130
    except StartError as exc:  # vLLM's or the sidecar's
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if sidecar is not None:
            sidecar.stop()
        if vllm is not None:
            vllm.stop()
            print("stopped vLLM and the sidecar", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
