"""The contract's diagnosis rules, computed from a target's derived state (pure).

Each rule returns a :class:`~sidecar.model.Diagnosis` with a one-line summary and the evidence
(numbers) that made it hold; :mod:`sidecar.explain` turns codes + evidence into titles, ranked
causes and fixes for people.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from .model import CacheConfig, Diagnosis, EngineState, Refused, TargetSnapshot, WindowStats
from .normalize import EXPOSER_ROUTER, SCHEMA_V0, SCHEMA_V1_LEGACY

#: code -> severity, exactly as the contract fixes them
CODES: dict[str, str] = {
    "target_down": "critical",
    "no_vllm_metrics": "critical",
    "prefix_caching_disabled": "warning",
    "zero_hit_rate": "warning",
    "no_traffic": "info",
    "counter_reset": "info",
    "kv_cache_pressure": "warning",
    "external_kv_connector": "info",
    "legacy_metric_names": "info",
    "prefix_cache_unused": "warning",
    "prefix_below_block": "warning",
}

KV_PRESSURE = 0.9


def _d(code: str, summary: str, **evidence: object) -> Diagnosis:
    return Diagnosis(code, CODES[code], summary, tuple(sorted(evidence.items())))


def _shortest(engines: Iterable[EngineState]) -> list[WindowStats]:
    return [e.windows[0] for e in engines if e.windows and e.windows[0].span > 0]


def _sum(ws: list[WindowStats], attr: str) -> float:
    return float(sum(getattr(w, attr) for w in ws))


def window_mean_prompt(ws: list[WindowStats]) -> float | None:
    """Mean prompt length of the requests that finished in the window, over all engines given
    (weighted by requests); None when none finished."""
    n = sum(w.prompts_finished for w in ws if not math.isnan(w.mean_prompt_tokens))
    if n <= 0:
        return None
    return (
        sum(w.mean_prompt_tokens * w.prompts_finished for w in ws if not math.isnan(w.mean_prompt_tokens)) / n
    )


def _mean_prompt(ws: list[WindowStats], engines: tuple[EngineState, ...]) -> float | None:
    """The window's mean prompt, else (to explain, never to decide) the lifetime one."""
    mean = window_mean_prompt(ws)
    if mean is not None:
        return mean
    for e in engines:  # fall back to the lifetime histogram
        h = e.current.prompt_len
        if h is not None and h.count > 0 and not math.isnan(h.sum):
            return h.sum / h.count
    return None


def _block_size(s: TargetSnapshot) -> int | None:
    sizes = [c.block_size for c in s.cache_configs if c.block_size]
    return max(sizes) if sizes else None


def _match_unit(s: TargetSnapshot) -> tuple[int, str] | None:
    """The smallest prefix that can hit: ``prefix_match_unit`` where set, else ``block_size``."""
    units = [c.prefix_match_unit for c in s.cache_configs if c.prefix_match_unit]
    if units:
        return max(units), "prefix_match_unit"
    size = _block_size(s)
    return (size, "block_size") if size else None


def engine_name(e: EngineState | CacheConfig | Refused) -> str:
    """``engine 0`` or ``engine 0 (ReplicaId=r1,...)``: how findings name one engine identity."""
    return f"engine {e.engine}" + (f" ({e.replica})" if e.replica else "")


def _config_of(s: TargetSnapshot, e: EngineState) -> CacheConfig | None:
    for c in s.cache_configs:
        if c.engine == e.engine and c.replica == e.replica:
            return c
    return None


def _flag_text(c: CacheConfig | None) -> str:
    if c is None or c.enable_prefix_caching is None:
        return "absent"
    return f'enable_prefix_caching="{c.enable_prefix_caching}"'


def rule_down(s: TargetSnapshot) -> Diagnosis | None:
    if s.up or not s.scraped or s.last_error_reason in (None, "no_vllm_metrics"):
        return None
    return _d(
        "target_down",
        f"last scrape failed ({s.last_error_reason}): {s.last_error}",
        reason=s.last_error_reason,
        error=s.last_error,
    )


def rule_no_vllm(s: TargetSnapshot) -> Diagnosis | None:
    if s.last_error_reason != "no_vllm_metrics":
        return None
    detail = f": {s.last_error}" if s.last_error else ""
    return _d(
        "no_vllm_metrics", f"the target answers but exposes no vllm: series{detail}", error=s.last_error
    )


def hits_grew(s: TargetSnapshot, c: CacheConfig) -> bool:
    """Did this engine's prefix-cache hits grow in the shortest window (caching works)?"""
    return any(
        e.engine == c.engine
        and e.replica == c.replica
        and e.windows
        and e.windows[0].span > 0
        and e.windows[0].hits > 0
        for e in s.engines
    )


def rule_caching_disabled(s: TargetSnapshot) -> Diagnosis | None:
    """The flag says off, unless that engine's prefix-cache hits grow: the counters win."""
    off = [c for c in s.cache_configs if c.enable_prefix_caching is False and not hits_grew(s, c)]
    if not off:
        return None
    names = ", ".join(engine_name(c) for c in off)
    return _d(
        "prefix_caching_disabled",
        f'vllm:cache_config_info says enable_prefix_caching="False" ({names})',
        engines=tuple(c.engine for c in off),
        block_size=_block_size(s),
    )


def rule_cache_unused(s: TargetSnapshot) -> Diagnosis | None:
    """Prompt tokens grew in the shortest window but prefix-cache queries did not: the cache is not
    in use, whatever the flag says (it is filled in the API server; the engine decides)."""
    if rule_caching_disabled(s) is not None:
        return None
    idle = [
        e
        for e in s.engines
        if e.current.prefix_queries is not None
        and e.windows
        and e.windows[0].span > 0
        and e.windows[0].prompt_tokens > 0
        and e.windows[0].queries <= 0
    ]
    if not idle:
        return None
    window = idle[0].windows[0].window
    prompts = sum(e.windows[0].prompt_tokens for e in idle)
    flags = sorted({_flag_text(_config_of(s, e)) for e in idle})
    names = ", ".join(engine_name(e) for e in idle)
    return _d(
        "prefix_cache_unused",
        f"{prompts:.0f} prompt tokens but no prefix-cache queries in the last {window} "
        f"({names}); vllm:cache_config_info says {' / '.join(flags)}",
        window=window,
        prompt_tokens=prompts,
        engines=tuple(engine_name(e) for e in idle),
        flag=" / ".join(flags),
    )


def _flag_off(s: TargetSnapshot, replica: str) -> bool:
    """Every engine of this replica (one vLLM) says caching is off."""
    flags = [
        c.enable_prefix_caching
        for c in s.cache_configs
        if c.replica == replica and c.enable_prefix_caching is not None
    ]
    return bool(flags) and not any(flags)


def rule_zero_hits(s: TargetSnapshot) -> Diagnosis | None:
    """Per vLLM (replica): its engines looked prefixes up and no tier of it served a hit. Data-
    parallel engines of one vLLM are judged together (one cold engine next to warm ones is
    routing); replicas behind a router or Ray Serve are separate vLLMs."""
    ws = _shortest(s.engines)
    if not ws:
        return None
    window = ws[0].window
    v1 = [e for e in s.engines if e.current.prefix_queries is not None]
    if v1:
        by_replica: dict[str, list[EngineState]] = {}
        for e in v1:
            by_replica.setdefault(e.replica, []).append(e)
        cold = []
        for replica, es in sorted(by_replica.items()):
            w1 = _shortest(es)
            # a hit from any tier (CPU offload, LMCache, a KV connector) is a hit
            if _sum(w1, "queries") > 0 and not any(w.any_tier_hit for w in w1) and not _flag_off(s, replica):
                cold.append((replica, w1))
        if not cold:
            return None
        w1 = [w for _, ws1 in cold for w in ws1]
        queries, hits = _sum(w1, "queries"), _sum(w1, "hits")
        where = (" (" + ", ".join(r for r, _ in cold) + ")") if any(r for r, _ in cold) else ""
        return _d(
            "zero_hit_rate",
            f"{queries:.0f} prefix-cache queries and 0 hits from any tier in the last {window}{where}",
            window=window,
            queries=queries,
            hits=hits,
            replicas=tuple(r for r, _ in cold),
            block_size=_block_size(s),
            mean_prompt_tokens=_mean_prompt(w1, s.engines),
            window_mean_prompt_tokens=window_mean_prompt(w1),
        )
    if s.prefix_caching_enabled is False:
        return None
    # V0: no counters; its cumulative block hit rate stays exactly 0 while prompts arrive.
    prompts = _sum(ws, "prompt_tokens")
    rates = [e.current.v0_hit_rate for e in s.engines if e.current.v0_hit_rate is not None]
    if prompts > 0 and rates and all(r == 0 for r in rates):
        return _d(
            "zero_hit_rate",
            f"{prompts:.0f} prompt tokens in the last {window} and a V0 prefix-cache hit rate of 0",
            window=window,
            prompt_tokens=prompts,
            block_size=_block_size(s),
            mean_prompt_tokens=_mean_prompt(ws, s.engines),
            window_mean_prompt_tokens=window_mean_prompt(ws),
        )
    return None


def rule_no_traffic(s: TargetSnapshot) -> Diagnosis | None:
    ws = _shortest(s.engines)
    if not ws:
        return None
    prompts = _sum(ws, "prompt_tokens")
    queries = _sum(ws, "queries")
    if prompts > 0 or queries > 0:
        return None
    return _d("no_traffic", f"no prompt tokens in the last {ws[0].window}", window=ws[0].window)


def rule_reset(s: TargetSnapshot) -> Diagnosis | None:
    if not s.restart_times:
        return None
    longest = s.windows[-1] if s.windows else "window"
    return _d(
        "counter_reset",
        f"vLLM restarted {len(s.restart_times)} time(s) in the last "
        f"{longest}; windowed figures span the restart",
        restarts=len(s.restart_times),
        last_restart=max(s.restart_times),
    )


def rule_kv_pressure(s: TargetSnapshot) -> Diagnosis | None:
    usage = [e.current.kv_usage for e in s.engines if e.current.kv_usage is not None]
    peak = max(usage) if usage else 0.0
    ws = _shortest(s.engines)
    pre = _sum(ws, "preemptions")
    if peak < KV_PRESSURE and pre <= 0:
        return None
    parts = []
    if peak >= KV_PRESSURE:
        parts.append(f"KV-cache usage {peak:.0%}")
    if pre > 0:
        parts.append(f"{pre:.0f} preemptions in the last {ws[0].window}")
    return _d("kv_cache_pressure", " and ".join(parts), kv_usage=peak, preemptions=pre)


def rule_external(s: TargetSnapshot) -> Diagnosis | None:
    q = sum(e.current.external_queries or 0.0 for e in s.engines)
    if q <= 0:
        return None
    h = sum(e.current.external_hits or 0.0 for e in s.engines)
    return _d(
        "external_kv_connector",
        f"{q:.0f} external (KV-connector) prefix-cache queries, {h:.0f} hits since start",
        external_queries=q,
        external_hits=h,
    )


def rule_below_block(s: TargetSnapshot, zero: Diagnosis | None) -> Diagnosis | None:
    """Zero hits, and the mean prompt is at most one block: a hit is impossible, not unlucky
    (vLLM caches whole blocks and never a prompt's last token)."""
    if zero is None:
        return None
    unit = _match_unit(s)
    mean = zero.evidence_dict().get("window_mean_prompt_tokens")  # the window's, never lifetime
    if unit is None or mean is None or mean > unit[0]:
        return None
    return _d(
        "prefix_below_block",
        f"mean prompt {mean:.0f} tokens is at most one {unit[1]} of {unit[0]} tokens: "
        "no prompt can share a whole cached block",
        mean_prompt_tokens=mean,
        unit=unit[0],
        unit_name=unit[1],
        window=zero.evidence_dict().get("window"),
    )


def rule_legacy(s: TargetSnapshot) -> Diagnosis | None:
    if s.exposer == EXPOSER_ROUTER:  # the router chose those names, not a vLLM
        return None
    if not s.legacy_names and s.schema not in (SCHEMA_V0, SCHEMA_V1_LEGACY):
        return None
    names = ", ".join(s.legacy_names) or f"the {s.schema} metric schema"
    return _d(
        "legacy_metric_names",
        f"deprecated or pre-0.9.2 vLLM metric names: {names}",
        names=s.legacy_names,
        schema=s.schema,
    )


RULES: tuple[Callable[[TargetSnapshot], Diagnosis | None], ...] = (
    rule_down,
    rule_no_vllm,
    rule_caching_disabled,
    rule_cache_unused,
    rule_zero_hits,
    rule_no_traffic,
    rule_reset,
    rule_kv_pressure,
    rule_external,
    rule_legacy,
)


def diagnose(s: TargetSnapshot) -> tuple[Diagnosis, ...]:
    """Every finding that holds now. A failed scrape yields only its own finding: the rest
    would be judged on stale numbers."""
    if not s.up:
        return tuple(d for d in (rule_down(s), rule_no_vllm(s)) if d is not None)
    found = [d for d in (r(s) for r in RULES) if d is not None]
    zero = next((d for d in found if d.code == "zero_hit_rate"), None)
    below = rule_below_block(s, zero)
    if below is not None:
        found.insert(found.index(zero) + 1, below)  # type: ignore[arg-type]
    return tuple(found)
