"""Snapshots as plain JSON-able dicts, for ``/api/v1/targets``, ``doctor --json`` and the page."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .explain import exposer_note, tier_split
from .model import EngineState, TargetSnapshot, WindowStats, finite


def _window(w: WindowStats) -> dict[str, Any]:
    return {
        "window": w.window,
        "span_seconds": w.span,
        "queries": w.queries,
        "hits": w.hits,
        "hit_ratio": finite(w.hit_ratio),
        "kv_cache_usage_delta": finite(w.kv_usage_delta),
        "prompt_tokens_per_second": finite(w.prompt_tokens_per_second),
        "generation_tokens_per_second": finite(w.generation_tokens_per_second),
        "preemptions": w.preemptions,
        "requests": dict(w.requests),
        "mean_prompt_tokens": finite(w.mean_prompt_tokens),
        "latency_seconds": {p: {k: finite(v) for k, v in s.as_dict().items()} for p, s in w.latency},
        "restarts": w.resets,
        "hits_by_tier": _tiers(w),
        "external_hit_ratio": finite(w.external_hit_ratio),
        "offload_tier_hit_ratio": {t: finite(r) for t, r in w.tier_ratios()},
    }


def _tiers(w: WindowStats) -> list[dict[str, Any]]:
    """Which tier served the hits: [{"source", "name", "hit_ratio"}], device first."""
    return [
        {"source": src, "name": name, "hit_ratio": finite(r)} for src, name, r in tier_split(w, short=True)
    ]


def _engine(e: EngineState) -> dict[str, Any]:
    c = e.current
    ratios: dict[str, float | None] = {"lifetime": finite(e.lifetime_hit_ratio)}
    if c.prefix_queries is not None:
        ratios.update({w.window: finite(w.hit_ratio) for w in e.windows})
    return {
        "model_name": e.model_name,
        "engine": e.engine,
        "replica": e.replica,
        "prefix_cache_queries": c.prefix_queries,
        "prefix_cache_hits": c.prefix_hits,
        "external_prefix_cache_queries": c.external_queries,
        "external_prefix_cache_hits": c.external_hits,
        "prefix_cache_hits_by_source": dict(c.hits_by_source),
        "hit_ratio": ratios,
        "kv_cache_usage": finite(c.kv_usage),
        "requests_running": c.running,
        "requests_waiting": c.waiting,
        "prompt_tokens": c.prompt_tokens,
        "generation_tokens": c.generation_tokens,
        "preemptions": c.preemptions,
        "windows": [_window(w) for w in e.windows],
        "v0": e.v0,
    }


def target_dict(s: TargetSnapshot) -> dict[str, Any]:
    running = [e.current.running for e in s.engines if e.current.running is not None]
    return {
        "name": s.name,
        "url": s.url,
        "labels": dict(s.labels),
        "up": s.up,
        "scraped": s.scraped,
        "last_scrape": s.last_scrape,
        "last_success": s.last_success,
        "scrape_duration_seconds": s.scrape_duration,
        "last_error": s.last_error,
        "last_error_reason": s.last_error_reason,
        "scrape_errors": dict(s.scrape_errors),
        "restarts": s.restarts,
        "version": s.version,
        "schema": s.schema,
        "scrape_mode": s.scrape_mode,
        "exposer": s.exposer,
        "exposer_note": exposer_note(s) or None,
        "identity_labels": list(s.identity_labels),
        "legacy_names": list(s.legacy_names),
        "requests_running": sum(running) if running else None,
        "refused": [
            {
                "family": r.family,
                "series": r.series,
                "model_name": r.model_name,
                "engine": r.engine,
                "replica": r.replica,
                "value": _said(r.value),
                "why": r.why,
            }
            for r in s.refused
        ],
        "out_of_range_values": dict(s.out_of_range),
        "prefix_caching_enabled": s.prefix_caching_enabled,
        "cache_config": [
            {
                "engine": c.engine,
                "replica": c.replica,
                "enable_prefix_caching": c.enable_prefix_caching,
                "prefix_match_unit": c.prefix_match_unit,
                "block_size": c.block_size,
                "num_gpu_blocks": c.num_gpu_blocks,
                "prefix_caching_hash_algo": c.hash_algo,
                "kv_offloading_backend": c.kv_offloading_backend,
            }
            for c in s.cache_configs
        ],
        "engines": [_engine(e) for e in s.engines],
        "diagnoses": [
            {
                "code": d.code,
                "severity": d.severity,
                "summary": d.summary,
                "evidence": {k: _jsonable(v) for k, v in d.evidence},
            }
            for d in s.diagnoses
        ],
        "windows": list(s.windows),
        "restart_times": list(s.restart_times),
    }


def _said(x: float) -> float | str:
    """What vLLM said, even when JSON has no number for it (NaN, +Inf)."""
    return x if finite(x) is not None else repr(x)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return finite(v)
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def targets_document(snapshots: Iterable[TargetSnapshot]) -> dict[str, Any]:
    return {"targets": [target_dict(s) for s in snapshots]}
