"""Why a diagnosis holds and what to do about it: titles, numbers, ranked causes and fixes.

Pure functions of a :class:`~sidecar.model.Diagnosis` and the :class:`~sidecar.model.TargetSnapshot`
it was computed on. The causes are the failures seen in the field (platform, model type, flags,
KV-transfer connectors, prefixes shorter than one KV block, stats disabled, old metric names,
restarts, KV pressure, idle servers); each cause is ranked by how well the numbers at hand support
it, and says which number made it rise. ``doctor``, the status page and ``--json`` all print
these, so a user sees the same reasoning everywhere.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .model import Diagnosis, TargetSnapshot

#: vLLM's CPU backend uses 128-token KV blocks; GPU backends usually 16.
CPU_BLOCK_SIZE = 128
GPU_BLOCK_SIZE = 16
#: label values vLLM prints for "not set" in ``vllm:cache_config_info``
UNSET = ("", "none", "null", "0", "false", "[]")


@dataclass(frozen=True)
class Cause:
    """One possible reason; ``because`` names the evidence that raised it (empty = generic)."""

    text: str
    weight: int
    because: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "because": self.because or None, "weight": self.weight}


@dataclass(frozen=True)
class Explanation:
    """Everything a person needs to act on one diagnosis."""

    code: str
    severity: str
    title: str
    summary: str
    numbers: tuple[str, ...]  # what the numbers show, one sentence each
    causes: tuple[Cause, ...]  # most likely first
    fix: tuple[str, ...]  # steps, in order
    confirm: str = ""  # how to check the fix worked

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "summary": self.summary,
            "numbers": list(self.numbers),
            "causes": [c.as_dict() for c in self.causes],
            "fix": list(self.fix),
            "confirm": self.confirm,
        }


# ------------------------------------------------------------------------------ evidence helpers
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if math.isnan(x) or math.isinf(x):
        return None
    return float(x)


def _seq(x: Any) -> tuple[Any, ...]:
    """Evidence that should be a list, whatever shape it arrived in."""
    if x is None:
        return ()
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return (x,)


def fmt_count(x: float | None) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v * 100:.{digits}f}%"


def config_values(s: TargetSnapshot, key: str) -> list[str]:
    """Values of one ``vllm:cache_config_info`` label across engines (unset ones dropped)."""
    out = []
    for c in s.cache_configs:
        v = dict(c.labels).get(key)
        if v is not None and v.strip().lower() not in UNSET and v not in out:
            out.append(v)
    return out


def block_size(s: TargetSnapshot, ev: dict[str, Any] | None = None) -> int | None:
    b = _num((ev or {}).get("block_size"))
    if b:
        return int(b)
    sizes = [c.block_size for c in s.cache_configs if c.block_size]
    return max(sizes) if sizes else None


def mean_prompt_tokens(s: TargetSnapshot, ev: dict[str, Any] | None = None) -> float | None:
    """Mean prompt length: the diagnosis' own figure, else the shortest window, else lifetime."""
    m = _num((ev or {}).get("mean_prompt_tokens"))
    if m is not None:
        return m
    vals = [
        w.mean_prompt_tokens
        for e in s.engines
        for w in e.windows[:1]
        if _num(w.mean_prompt_tokens) is not None
    ]
    if vals:
        return sum(vals) / len(vals)
    for e in s.engines:
        h = e.current.prompt_len
        if h is not None and h.count > 0 and _num(h.sum) is not None:
            return h.sum / h.count
    return None


def cpu_build_hint(s: TargetSnapshot) -> str:
    """Why we think this is a vLLM CPU build ('' when nothing says so)."""
    space = config_values(s, "cpu_kvcache_space_bytes")
    if space:
        return f"cache_config_info sets cpu_kvcache_space_bytes={space[0]} (a CPU build)"
    if block_size(s) == CPU_BLOCK_SIZE:
        return (
            f"block_size is {CPU_BLOCK_SIZE}, the default of vLLM CPU builds "
            f"(GPUs usually use {GPU_BLOCK_SIZE})"
        )
    return ""


def hybrid_hint(s: TargetSnapshot) -> str:
    """Evidence of a hybrid / Mamba / attention-free model in ``cache_config_info``."""
    if any(v.lower() == "true" for v in config_values(s, "is_attention_free")):
        return "cache_config_info says is_attention_free=True"
    for key in ("mamba_block_size", "mamba_page_size_padded", "mamba_cache_mode"):
        vals = config_values(s, key)
        if vals:
            return f"cache_config_info sets {key}={vals[0]} (a hybrid / Mamba model)"
    return ""


def sliding_hint(s: TargetSnapshot) -> str:
    vals = config_values(s, "sliding_window")
    return f"cache_config_info sets sliding_window={vals[0]}" if vals else ""


def _confirm_config(s: TargetSnapshot) -> str:
    return (
        f'curl -s {s.url} | grep vllm:cache_config_info  -> the line must show enable_prefix_caching="True"'
    )


def _rank(causes: list[Cause]) -> tuple[Cause, ...]:
    return tuple(sorted(causes, key=lambda c: -c.weight))


# ------------------------------------------------------------------------------ per code
def _target_down(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    reason = str(ev.get("reason") or s.last_error_reason or "unknown")
    error = str(ev.get("error") or s.last_error or "")
    nums = [f"The last scrape of {s.url} failed with reason '{reason}': {error}".rstrip(": ")]
    if s.last_success:
        nums.append(
            "It was reachable earlier (last good scrape at "
            f"{_clock(s.last_success)}), so the server went away or is restarting."
        )
    else:
        nums.append("No scrape of this target has succeeded yet.")
    by_reason: dict[str, list[str]] = {
        "connect": [
            "vLLM is not running, crashed, or is still loading the model (the API server "
            "opens its port only once the engine is up)",
            "the URL points at the wrong host or port (vLLM serves on port 8000 by "
            "default; --port changes it)",
            "a firewall or Kubernetes NetworkPolicy blocks the sidecar",
        ],
        "timeout": [
            "the server is overloaded and answers /metrics too slowly, or the timeout is "
            "too short for a large body",
            "a proxy or load balancer in front of vLLM holds the connection",
        ],
        "http_status": [
            "the path is wrong (vLLM serves metrics at /metrics of its API port)",
            "a proxy in front of vLLM needs authentication (bearer_token_file / "
            "basic_auth in the target config)",
            "vLLM or a proxy in front of it fails with a server error",
        ],
        "too_large": [
            "the body exceeds --max-body-bytes: very many series (LoRA adapters, many "
            "engines) or not a vLLM endpoint"
        ],
        "parse": ["the URL is not a Prometheus endpoint (an HTML page, a JSON API, a proxy error page)"],
    }
    matching = by_reason.get(reason)
    if matching:
        causes = [
            Cause(t, 3 - min(i, 1), f"scrape failed with '{reason}'" if i == 0 else "")
            for i, t in enumerate(matching)
        ]
    else:  # an unknown reason: the first suspect of each kind
        causes = [Cause(items[0], 1) for items in by_reason.values()]
    status = re.search(r"HTTP (\d{3})", error) if reason == "http_status" else None
    if status:
        code = int(status.group(1))
        pick = 0 if code in (404, 405) else 1 if code in (401, 403, 407) else 2 if code >= 500 else None
        if pick is not None:
            causes = [
                Cause(c.text, 4 if i == pick else 2, f"HTTP {code}" if i == pick else "")
                for i, c in enumerate(causes)
            ]
    if reason == "http_status" and "data-parallel supervisor" in error:
        causes.insert(
            0,
            Cause(
                "a data-parallel supervisor port: with "
                "--data-parallel-multi-port-external-lb vLLM runs one API server "
                "per local rank on port + i (each with its own /metrics); the "
                "supervisor port answers /health but has no /metrics",
                6,
                "/metrics 404 while /health answers 200",
            ),
        )
    if reason == "connect" and s.last_success:
        causes.insert(
            0, Cause("vLLM crashed or is restarting", 4, f"it answered until {_clock(s.last_success)}")
        )
    dp = (
        [
            "Scrape each data-parallel rank directly: one target per rank at port + i "
            "(rank 0 on the --port, rank 1 on --port + 1, ...); see docs/deploy.md, Topologies."
        ]
        if "data-parallel supervisor" in error
        else []
    )
    fix = dp + [
        "Check the server is up: curl -s -o /dev/null -w '%{http_code}' "
        + s.url.rsplit("/", 1)[0]
        + "/health  (200 when the engine is ready)",
        "Check the process/pod logs for a crash (out of memory, CUDA errors) or a slow model load.",
        "Fix the target URL/port, the network path or the credentials, whichever the reason points to.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "vLLM target unreachable",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        f"curl -s {s.url} | head",
    )


def _no_vllm(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    nums = [f"{s.url} answers HTTP 200 but its body holds no vllm: series."]
    earlier = s.last_success is not None
    if earlier:
        nums.append(f"It exposed vLLM metrics before (last at {_clock(s.last_success)}).")
    causes = [
        Cause(
            "the server is still starting: vLLM registers its vllm: series only once the engine "
            "has loaded the model and profiled memory",
            3 if earlier else 2,
            "it exposed vllm: series earlier, so it is most likely restarting" if earlier else "",
        ),
        Cause(
            "stats are disabled: vLLM was started with --disable-log-stats, which turns off "
            "the engine's metrics",
            1 if earlier else 2,
        ),
        Cause(
            "the URL points at another exporter (a proxy, a router, a different process) "
            "that is not vLLM's API server",
            1,
        ),
    ]
    fix = [
        "Wait for start-up to finish: GET /health returns 200 when the engine is ready.",
        "Remove --disable-log-stats from the vLLM command line (or disable_log_stats=False "
        "for vllm.LLM) and restart it.",
        "Point the target at vLLM's own API server port (default 8000), path /metrics.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "No vLLM metrics exposed",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        f"curl -s {s.url} | grep -c '^vllm:'  -> must be greater than 0",
    )


def _caching_disabled(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    engines = _seq(ev.get("engines"))
    nums = [
        f'vllm:cache_config_info reports enable_prefix_caching="False" on engine(s) '
        f"{', '.join(map(str, engines)) or '?'}: every prompt is computed from scratch and "
        f"the prefix-cache hit ratio stays empty (n/a)."
    ]
    b = block_size(s, ev)
    if b:
        nums.append(f"KV block size is {b} tokens.")
    hybrid, sliding, cpu = hybrid_hint(s), sliding_hint(s), cpu_build_hint(s)
    causes = [
        Cause(
            "the flags: vLLM was started without --enable-prefix-caching where it is off by "
            "default (the V0 engine, older releases) or with --no-enable-prefix-caching / "
            "enable_prefix_caching=False",
            3,
        ),
        Cause(
            "the model type: for hybrid / Mamba (state-space) and attention-free models vLLM "
            "turns prefix caching off (newer releases support it only for some of them)",
            5 if hybrid else 1,
            hybrid,
        ),
        Cause(
            "sliding-window attention: some vLLM versions turn prefix caching off for models "
            "that use a sliding window",
            4 if sliding else 1,
            sliding,
        ),
        Cause(
            "the platform: vLLM V1 turns prefix caching off on ARM (aarch64), POWER (ppc64le), "
            "s390x and RISC-V CPUs and logs that it did so at start-up",
            3 if cpu else 1,
            cpu,
        ),
    ]
    fix = [
        "Start vLLM with --enable-prefix-caching (remove any --no-enable-prefix-caching; "
        "for vllm.LLM pass enable_prefix_caching=True).",
        "Read vLLM's start-up log for the line that says prefix caching was disabled and why "
        "(platform, model type or sliding window): flags cannot override those; use a "
        "supported platform (x86-64 CPU or a GPU), a newer vLLM, or a model without the "
        "limitation.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "Prefix caching is disabled",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        _confirm_config(s),
    )


def _zero_numbers(ev: dict[str, Any], s: TargetSnapshot) -> tuple[list[str], int | None, float | None]:
    """What the numbers show, and the prefix unit and mean prompt they were judged on."""
    window = ev.get("window", "window")
    if "queries" in ev:
        nums = [
            f"In the last {window} vLLM looked up {fmt_count(ev.get('queries'))} prompt "
            f"tokens in the prefix cache and found {fmt_count(ev.get('hits'))}: a hit "
            f"ratio of 0%."
        ]
    else:
        nums = [
            f"In the last {window} vLLM received {fmt_count(ev.get('prompt_tokens'))} "
            f"prompt tokens while its (V0) prefix-cache hit rate stayed at 0."
        ]
    b = block_size(s, ev)
    units = [c.prefix_match_unit for c in s.cache_configs if c.prefix_match_unit]
    if units:  # hybrid models: prefixes match in units of prefix_match_unit, not whole blocks
        b = max(units)
    mean = mean_prompt_tokens(s, ev)
    if b and mean is not None:
        what = "prefix_match_unit" if units else "KV block size"
        nums.append(f"Mean prompt length {mean:,.0f} tokens; {what} {b} tokens ({mean / b:.1f} per prompt).")
    elif b:
        nums.append(f"KV block size {b} tokens; the prompt length is unknown.")
    return nums, b, mean


def _short_prefix_cause(b: int | None, mean: float | None) -> Cause:
    """Prompts shorter than a block or two: ranked by how short they are against the block."""
    short, weight = "", 1
    if b and mean is not None:
        if mean <= b:
            short, weight = f"mean prompt {mean:,.0f} tokens <= one {b}-token block", 5
        elif mean < 2 * b:
            short, weight = f"mean prompt {mean:,.0f} tokens is under two {b}-token blocks", 3
    return Cause(
        f"the shared prefix is shorter than one KV block: vLLM caches and reuses only full "
        f"blocks of {b or 'block_size'} tokens (128 on vLLM CPU builds, usually 16 on GPUs), so "
        f"prompts that share fewer than that many leading tokens can never hit",
        weight,
        short,
    )


def _eviction(s: TargetSnapshot) -> str:
    """Evidence that cached blocks are recycled before reuse ('' when there is none)."""
    kv = [u for u in (_num(e.current.kv_usage) for e in s.engines) if u is not None]
    if kv and max(kv) >= 0.9:
        return f"KV usage {fmt_pct(max(kv))}"
    pre = sum(w.preemptions for e in s.engines for w in e.windows[:1])
    return f"{pre:.0f} preemptions" if pre > 0 else ""


def _deployment_causes(s: TargetSnapshot) -> list[Cause]:
    """Restarts, a KV connector, several engines: causes the deployment raises."""
    causes = []
    if s.restart_times:
        causes.append(
            Cause(
                "vLLM restarted recently and its cache starts empty",
                3,
                f"{len(s.restart_times)} restart(s) in the longest window",
            )
        )
    ext = sum(e.current.external_hits or 0.0 for e in s.engines)
    if ext > 0:
        causes.append(
            Cause(
                "a KV-transfer connector serves the prefixes: its hits count as external, not local",
                4,
                f"{ext:,.0f} external prefix-cache hits",
            )
        )
    if len(s.engines) > 1:
        causes.append(
            Cause(
                "requests are spread over several engines/replicas without "
                "prefix-aware routing, so each sees the prefix cold",
                3,
                f"{len(s.engines)} engines",
            )
        )
    return causes


def _zero_hits(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    nums, b, mean = _zero_numbers(ev, s)
    short = _short_prefix_cause(b, mean)
    evict = _eviction(s)
    causes = [
        short,
        Cause(
            "the prompts share no prefix: something differs near the start (a timestamp, request "
            "id or user name at the top of the system prompt, per-user text before the shared "
            "instructions, different chat templates or tools)",
            2,
        ),
        Cause(
            "cached blocks are evicted before they are reused: the KV cache is too small for the "
            "traffic, so free blocks holding prefixes are recycled",
            4 if evict else 1,
            evict,
        ),
        *_deployment_causes(s),
        Cause(
            "requests set different cache_salt values or use different LoRA "
            "adapters; their caches are isolated by design",
            1,
        ),
    ]
    weight_short = short.weight
    order = {"short": weight_short, "layout": 2, "room": 4 if evict else 1}
    fixes = {
        "layout": "Put the shared, unchanging text first (system prompt, instructions, documents) "
        "and everything per-request after it; keep it byte-identical (no timestamps "
        "or ids).",
        "short": f"Make the shared prefix at least one block long ({b or 'block_size'} tokens), "
        f"or use a smaller --block-size where the backend allows it.",
        "room": "If KV usage is high, give the cache more room (--gpu-memory-utilization, fewer "
        "--max-num-seqs, VLLM_CPU_KVCACHE_SPACE on CPU) so prefixes survive until reuse.",
    }
    fix = [fixes[k] for k in sorted(fixes, key=lambda k: -order[k])]
    return Explanation(
        d.code,
        d.severity,
        "Prefix cache finds no hits",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "Send two requests with the same long prefix and run doctor again: hits must grow.",
    )


def _cache_unused(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    window = ev.get("window", "window")
    engines = ", ".join(map(str, _seq(ev.get("engines")))) or "?"
    flag = str(ev.get("flag") or "absent")
    nums = [
        f"In the last {window} vLLM processed {fmt_count(ev.get('prompt_tokens'))} prompt "
        f"tokens ({engines}) but its prefix-cache query counter did not move: no prompt "
        "was looked up in the cache, so there is no hit ratio to alert on.",
        f"vllm:cache_config_info says {flag}; the counters win: the flag is filled in the "
        "API-server process and does not see what the engine decided.",
    ]
    connector = [v for v in config_values(s, "kv_connector") + config_values(s, "kv_transfer_config")]
    ext = sum(e.current.external_queries or 0.0 for e in s.engines)
    kv = (
        f"{fmt_count(ext)} external (connector) queries"
        if ext
        else (f"kv connector {connector[0]}" if connector else "")
    )
    causes = [
        Cause(
            "the engine turned prefix caching off itself (platform, model type, batch-invariant "
            "mode, pooling or encoder-decoder models) while the API server's flag still says "
            "True",
            3 if "True" in flag else 2,
            f"flag says {flag}",
        ),
        Cause(
            "a KV-transfer setup bypasses the local cache: in a prefill/decode (P/D) "
            "deployment such as llm-d with a NIXL connector, the decode side receives the KV "
            "from the prefill side and never looks up its own cache",
            4 if kv else 2,
            kv,
        ),
        Cause(
            "a fork or patched scheduler lost the prefix-cache stats call: counters stay 0 "
            "while caching may work",
            1,
        ),
        Cause("requests skip cache reads (prompt_logprobs requests do)", 1),
    ]
    fix = [
        "Read the engine's start-up log for a line saying prefix caching was disabled, and "
        "why; on the engine side no API flag overrides it.",
        "In a P/D deployment, judge caching on the prefill instances (and the connector's "
        "external hits), not on the decode instances.",
        "On a fork, check that the scheduler still records prefix-cache stats: send the same "
        "long prompt twice and watch vllm:prefix_cache_queries_total.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "Prefix cache not in use",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "vllm:prefix_cache_queries_total grows with the prompt tokens.",
    )


def _below_block(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    mean, unit = _num(ev.get("mean_prompt_tokens")), _num(ev.get("unit"))
    name = str(ev.get("unit_name") or "block_size")
    nums = [
        f"Mean prompt length {fmt_count(mean)} tokens; the smallest prefix that can hit is "
        f"one {name} of {fmt_count(unit)} tokens.",
        "vLLM caches whole blocks only and never a prompt's last token, so a prompt of at "
        "most one block can never hit: the 0 % is structural, not bad luck.",
    ]
    hybrid = hybrid_hint(s)
    causes = [
        Cause(
            "prompts shorter than one KV block (the shared prefix would have to be a whole block)",
            4,
            f"mean {fmt_count(mean)} <= {fmt_count(unit)}",
        ),
        Cause(
            "a hybrid (Mamba / linear-attention) model whose attention block size is "
            "inflated to the state page size (hundreds to thousands of tokens)",
            5 if hybrid or (unit or 0) > 256 else 1,
            hybrid,
        ),
    ]
    fix = [
        "Make the shared prefix longer than one block (put the long, unchanging text first).",
        "Use a smaller --block-size where the backend allows it.",
        "On hybrid models set --prefix-match-unit (where your vLLM has it) so prefixes match "
        "at a finer granularity than the state page.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "Prompts shorter than one KV block",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "Send two requests sharing a prefix of several blocks: hits must grow.",
    )


#: people's words for vLLM's hit sources (``prompt_tokens_cached_by_source{source}``)
SOURCE_WORDS = {
    "device": "engine KV memory (GPU; CPU memory on CPU builds)",
    "host": "CPU offload",
    "disk": "disk",
    "p2p": "peer (p2p)",
    "external_unspecified": "external",
}
SOURCE_ORDER = ("device", "host", "disk", "p2p", "external_unspecified")


def tier_split(w: Any, short: bool = False) -> list[tuple[str, str, float]]:
    """(source, words, ratio) per hit source of a window: device, then host, disk, p2p, external.
    Where vLLM does not count by source, the local and connector ratios stand in."""

    def word(src: str) -> str:
        text = SOURCE_WORDS.get(src, src)
        return text.split(" (")[0] if short else text

    by = dict(w.source_ratios())
    if by:
        order = [x for x in SOURCE_ORDER if x in by] + sorted(x for x in by if x not in SOURCE_ORDER)
        return [(src, word(src), by[src]) for src in order]
    out = [("device", word("device"), w.hit_ratio)]
    if w.external_queries > 0:
        out.append(("external", "external (connector)", w.external_hit_ratio))
    return out


def exposer_note(s: TargetSnapshot) -> str:
    """What to know when the target is not a vLLM API server itself ('' when it is)."""
    if s.exposer == "production-stack-router":
        return (
            "This target is a vLLM production-stack router, not an engine: its vllm: series "
            "are per-backend gauges (one engine per `server`, no model_name). Scrape the "
            "engines directly for full detail (windows, latency, cache config)."
        )
    if s.exposer == "ray-serve":
        return (
            "This target is Ray Serve LLM's metrics port (ray_vllm_* names): one engine per "
            "ReplicaId/WorkerId."
        )
    return ""


def _no_traffic(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    window = ev.get("window", "window")
    nums = [f"No prompt tokens arrived in the last {window}; hit ratios for it are n/a."]
    running = sum(e.current.running or 0.0 for e in s.engines)
    if running:
        nums.append(f"{running:.0f} request(s) are running: their prompts arrived earlier.")
    causes = [
        Cause("nobody is sending requests right now (an idle or new server)", 2),
        Cause("the load balancer routes traffic to other replicas than this one", 1),
        Cause("clients call a different port or service than the one scraped", 1),
    ]
    if running:
        causes.insert(
            0,
            Cause(
                "long requests are still decoding; the window is shorter than a request",
                3,
                f"{running:.0f} running",
            ),
        )
    fix = [
        "Nothing is wrong with caching: send traffic (or wait for it) before judging the hit ratio.",
        "If traffic is expected, check that clients and the load balancer reach this vLLM instance.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "No traffic",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "vllm:prompt_tokens_total grows when requests arrive.",
    )


def _reset(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    n = ev.get("restarts", len(s.restart_times))
    last = _num(ev.get("last_restart"))
    longest = s.windows[-1] if s.windows else "window"
    nums = [
        f"vLLM's counters went back to zero {n} time(s) in the last {longest}"
        + (f", last at {_clock(last)}" if last else "")
        + ".",
        "A restarted vLLM starts with an empty prefix cache; its lifetime hit ratio starts "
        "over (windowed figures stay correct across the restart).",
    ]
    causes = [
        Cause("a crash: out of memory (host OOM-kill or GPU OOM) or an engine error", 2),
        Cause("a rollout, a manual restart or autoscaling replaced the process", 2),
        Cause("a liveness probe killed the pod while the model was loading", 1),
    ]
    if _num(n) and n > 1:
        causes[0] = Cause(causes[0].text, 3, f"{n} restarts in {longest}: a crash loop")
    fix = [
        "Check the logs / `kubectl describe pod` for OOMKilled, probe failures or tracebacks.",
        "Give model loading a startupProbe long enough; fix the memory limit if it was an OOM.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "vLLM restarted",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "vllm_sidecar_target_restarts_total stops growing.",
    )


def _kv_pressure(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    usage = _num(ev.get("kv_usage"))
    pre = _num(ev.get("preemptions")) or 0.0
    nums = [f"KV-cache usage is {fmt_pct(usage)} (the pressure threshold is 90%)."]
    if pre:
        nums.append(
            f"{pre:,.0f} request(s) were preempted in the shortest window: their KV "
            f"blocks were freed and they are recomputed later."
        )
    waiting = sum(e.current.waiting or 0.0 for e in s.engines)
    if waiting:
        nums.append(f"{waiting:.0f} request(s) are waiting for KV space.")
    nums.append("Under pressure vLLM evicts cached prefix blocks first, so the hit ratio drops.")
    cpu = cpu_build_hint(s)
    causes = [
        Cause(
            "more concurrent or longer sequences than the KV cache holds (--max-num-seqs, "
            "--max-model-len too high for the memory)",
            3 if pre else 2,
            f"{pre:,.0f} preemptions" if pre else "",
        ),
        Cause(
            "too little memory given to the KV cache (--gpu-memory-utilization, or "
            "VLLM_CPU_KVCACHE_SPACE on CPU builds)",
            3 if cpu else 2,
            cpu,
        ),
        Cause("a traffic burst; usage falls once it passes", 1),
    ]
    fix = [
        "Give the KV cache more memory: raise --gpu-memory-utilization (GPU) or "
        "VLLM_CPU_KVCACHE_SPACE (CPU), or use --kv-cache-dtype fp8 where supported.",
        "Lower --max-num-seqs or --max-model-len, or add replicas / tensor parallelism.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "KV cache under pressure",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "vllm_sidecar_kv_cache_usage_ratio stays below 0.9 and vllm_sidecar_preemptions_total stops growing.",
    )


def _external(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    q, h = _num(ev.get("external_queries")) or 0.0, _num(ev.get("external_hits")) or 0.0
    ratio = h / q if q else None
    nums = [
        f"External (KV-connector) prefix-cache lookups since start: {fmt_count(q)} tokens, "
        f"{fmt_count(h)} hits ({fmt_pct(ratio)})."
    ]
    lq = sum(e.current.prefix_queries or 0.0 for e in s.engines)
    lh = sum(e.current.prefix_hits or 0.0 for e in s.engines)
    if lq:
        nums.append(
            f"Local prefix cache: {fmt_count(lq)} queried, {fmt_count(lh)} hits "
            f"({fmt_pct(lh / lq)}); tokens served by the connector are not local hits."
        )
    causes = [
        Cause(
            "a KV-transfer connector is configured next to local caching "
            "(--kv-transfer-config, e.g. NIXL for disaggregated prefill, LMCache or an "
            "offloading connector)",
            4,
            f"{fmt_count(q)} external queries",
        )
    ]
    if h == 0:
        causes.append(
            Cause(
                "the connector is configured but finds nothing: peers unreachable "
                "(NIXL side channel), an empty or misconfigured remote store",
                3,
                "0 external hits",
            )
        )
    fix = [
        "Judge caching on local and external hits together; a low local hit ratio is "
        "expected when the connector supplies the prefix.",
        "If the connector is not intended, remove --kv-transfer-config; if its hits stay 0, "
        "check the connector's logs and that its peers / store are reachable.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "KV-transfer connector in use",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        "vllm:external_prefix_cache_hits_total grows with repeated prefixes.",
    )


_ERAS = {
    "v0": "the V0 engine's gauges (VLLM_USE_V1=0, or a vLLM from before V1 became the "
    "default): no prefix-cache counters, only gpu_prefix_cache_hit_rate, a block ratio "
    "since start",
    "v1-legacy": "the first V1 names gpu_prefix_cache_* (vLLM 0.7.3 - 0.9.1; they counted "
    "blocks, not tokens, before 0.9.0)",
    "v1-dual": "old and new names side by side with equal values (vLLM 0.9.2 - 0.11)",
}


def _legacy(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    names = _seq(ev.get("names"))
    schema = str(ev.get("schema") or s.schema)
    nums = [f"Metric-name era: {schema}" + (f" — {_ERAS[schema]}" if schema in _ERAS else "") + "."]
    if names:
        nums.append(f"Deprecated names in the body: {', '.join(map(str, names))}.")
    if s.version:
        nums.append(f"vLLM reports version {s.version}.")
    causes = [
        Cause("an older vLLM release", 3 if schema in ("v0", "v1-legacy") else 2, f"schema {schema}"),
        Cause(
            "--show-hidden-metrics-for-version re-enables names that newer vLLM hides",
            2 if any("cpu_" in str(n) or "swapped" in str(n) for n in names) else 1,
        ),
    ]
    fix = [
        "Nothing breaks: the sidecar maps every era onto the same vllm_sidecar_* series; "
        "build dashboards and alerts on those, not on raw vllm: names.",
        "Upgrade vLLM when convenient (token-based prefix_cache_* counters since 0.9.2), and "
        "drop --show-hidden-metrics-for-version once nothing reads the old names.",
    ]
    return Explanation(
        d.code,
        d.severity,
        "Old vLLM metric names",
        d.summary,
        tuple(nums),
        _rank(causes),
        tuple(fix),
        f"after an upgrade, curl -s {s.url} | grep -c '^vllm:prefix_cache_queries_total' is greater than 0",
    )


def _generic(d: Diagnosis, ev: dict[str, Any], s: TargetSnapshot) -> Explanation:
    return Explanation(
        d.code, d.severity, d.code.replace("_", " ").capitalize(), d.summary, (d.summary,), (), ()
    )


def _clock(t: float | None) -> str:
    """Wall-clock time of day of a unix time; '?' for anything that is not one."""
    v = _num(t)
    try:
        return "?" if v is None else time.strftime("%H:%M:%S UTC", time.gmtime(v))
    except (OverflowError, OSError, ValueError):
        return "?"


EXPLAINERS: dict[str, Callable[[Diagnosis, dict[str, Any], TargetSnapshot], Explanation]] = {
    "target_down": _target_down,
    "no_vllm_metrics": _no_vllm,
    "prefix_caching_disabled": _caching_disabled,
    "zero_hit_rate": _zero_hits,
    "no_traffic": _no_traffic,
    "counter_reset": _reset,
    "kv_cache_pressure": _kv_pressure,
    "external_kv_connector": _external,
    "legacy_metric_names": _legacy,
    "prefix_cache_unused": _cache_unused,
    "prefix_below_block": _below_block,
}


def explain(diagnosis: Diagnosis, snapshot: TargetSnapshot) -> Explanation:
    """The explanation of one diagnosis, judged on the snapshot it was made from."""
    fn = EXPLAINERS.get(diagnosis.code, _generic)
    return fn(diagnosis, diagnosis.evidence_dict(), snapshot)


def explain_all(snapshot: TargetSnapshot) -> tuple[Explanation, ...]:
    """Every active diagnosis of a target, worst first."""
    order = {"critical": 0, "warning": 1, "info": 2}
    ds = sorted(snapshot.diagnoses, key=lambda d: order.get(d.severity, 3))
    return tuple(explain(d, snapshot) for d in ds)
