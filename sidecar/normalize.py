"""One alias table for every vLLM metric era, and the fold of raw samples into :class:`Normalised`.

vLLM renamed its cache metrics twice (V0 gauges -> V1 ``gpu_prefix_cache_*`` counters ->
``prefix_cache_*`` / ``kv_cache_usage_perc``) and exported old and new names side by side for a
while (0.9.2 - 0.11: equal values). Each canonical field below lists its sources in order of
preference; when several are present the first wins, so nothing is ever counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .model import CacheConfig, EngineMetrics, Histogram, Normalised
from .parser import ParseError, Sample

COUNTER, GAUGE, HISTOGRAM, INFO = "counter", "gauge", "histogram", "info"


@dataclass(frozen=True)
class Source:
    family: str  # vLLM family name (counters without ``_total``)
    kind: str
    legacy: bool = False  # deprecated / pre-0.9.2 name


#: canonical field -> sources, preferred first
ALIASES: dict[str, tuple[Source, ...]] = {
    "prefix_queries": (Source("vllm:prefix_cache_queries", COUNTER),
                       Source("vllm:gpu_prefix_cache_queries", COUNTER, legacy=True)),
    "prefix_hits": (Source("vllm:prefix_cache_hits", COUNTER),
                    Source("vllm:gpu_prefix_cache_hits", COUNTER, legacy=True)),
    "external_queries": (Source("vllm:external_prefix_cache_queries", COUNTER),),
    "external_hits": (Source("vllm:external_prefix_cache_hits", COUNTER),),
    "v0_hit_rate": (Source("vllm:gpu_prefix_cache_hit_rate", GAUGE, legacy=True),),
    "kv_usage": (Source("vllm:kv_cache_usage_perc", GAUGE),
                 Source("vllm:gpu_cache_usage_perc", GAUGE, legacy=True)),
    "prompt_tokens": (Source("vllm:prompt_tokens", COUNTER),),
    "generation_tokens": (Source("vllm:generation_tokens", COUNTER),),
    "preemptions": (Source("vllm:num_preemptions", COUNTER),),
    "running": (Source("vllm:num_requests_running", GAUGE),),
    "waiting": (Source("vllm:num_requests_waiting", GAUGE),),
    "request_success": (Source("vllm:request_success", COUNTER),),
    "ttft": (Source("vllm:time_to_first_token_seconds", HISTOGRAM),),
    "e2e": (Source("vllm:e2e_request_latency_seconds", HISTOGRAM),),
    "queue": (Source("vllm:request_queue_time_seconds", HISTOGRAM),
              Source("vllm:time_in_queue_requests", HISTOGRAM, legacy=True)),
    "prompt_len": (Source("vllm:request_prompt_tokens", HISTOGRAM),),
}

#: deprecated names the sidecar does not read but reports under ``legacy_metric_names``
LEGACY_ONLY = (
    Source("vllm:cpu_cache_usage_perc", GAUGE, legacy=True),
    Source("vllm:cpu_prefix_cache_hit_rate", GAUGE, legacy=True),
    Source("vllm:num_requests_swapped", GAUGE, legacy=True),
    Source("vllm:time_per_output_token_seconds", HISTOGRAM, legacy=True),
)

CACHE_CONFIG = "vllm:cache_config_info"
PROCESS_START = "process_start_time_seconds"
#: the counter whose ``_created`` marks a (re)start of the engine
CREATED_FROM = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries", "vllm:prompt_tokens")

# schema names (``vllm_sidecar_vllm_info{schema}``)
SCHEMA_V1 = "v1"  # prefix_cache_* / kv_cache_usage_perc (0.12+)
SCHEMA_V1_DUAL = "v1-dual"  # old and new names side by side (0.9.2 - 0.11)
SCHEMA_V1_LEGACY = "v1-legacy"  # gpu_prefix_cache_* only (0.7.3 - 0.9.1; blocks before 0.9.0)
SCHEMA_V0 = "v0"  # V0 engine: gauges, no prefix-cache counters
SCHEMA_UNKNOWN = "unknown"  # vllm: series, but none the sidecar recognises
SCHEMA_NONE = "none"  # no vllm: series at all


def _sample_names(src: Source) -> list[tuple[str, str]]:
    """(sample name, part) pairs a source is exposed under."""
    f = src.family
    if src.kind == COUNTER:
        # ``_total`` on the wire; bare in ``LLM.get_metrics()``.
        return [(f + "_total", "value"), (f, "bare"), (f + "_created", "created")]
    if src.kind == HISTOGRAM:
        return [(f + "_bucket", "bucket"), (f + "_sum", "sum"), (f + "_count", "count")]
    return [(f, "value")]


def _build_routes() -> dict[str, tuple[str, int, Source, str]]:
    routes: dict[str, tuple[str, int, Source, str]] = {}
    for fld, sources in ALIASES.items():
        for prio, src in enumerate(sources):
            for name, part in _sample_names(src):
                routes[name] = (fld, prio, src, part)
    for src in LEGACY_ONLY:
        for name, part in _sample_names(src):
            routes[name] = ("", 0, src, part)
    return routes


ROUTES = _build_routes()
#: every sample name the sidecar materialises: pass to :func:`sidecar.parser.parse`
WANTED = frozenset(ROUTES) | {CACHE_CONFIG, PROCESS_START}


class _Acc:
    """Accumulates one engine's samples; ``pid`` variants are folded (counters summed, gauges max)."""

    __slots__ = ("values", "hist", "success", "created")

    def __init__(self) -> None:
        self.values: dict[tuple[str, int], float] = {}
        self.hist: dict[tuple[str, int], list] = {}
        self.success: dict[int, dict[str, float]] = {}
        self.created: dict[str, float] = {}


def _truthy(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def _cache_config(labels: dict[str, str]) -> CacheConfig:
    lower = {k.lower(): v for k, v in labels.items()}
    return CacheConfig(
        engine=labels.get("engine", "0"),
        enable_prefix_caching=_truthy(lower.get("enable_prefix_caching")),
        block_size=_int(lower.get("block_size")),
        num_gpu_blocks=_int(lower.get("num_gpu_blocks")),
        hash_algo=lower.get("prefix_caching_hash_algo"),
        kv_offloading_backend=lower.get("kv_offloading_backend"),
        labels=tuple(sorted(labels.items())),
    )


def _histogram(parts: list) -> Histogram | None:
    buckets, total, count = parts
    if not buckets:
        return None
    bounds = tuple(sorted(buckets))
    counts = tuple(buckets[b] for b in bounds)
    if count is None:
        count = counts[-1]
    return Histogram(bounds, counts, total if total is not None else float("nan"), count)


def normalise(samples: Iterable[Sample], *, check_duplicates: bool = True) -> Normalised:
    """Fold parsed samples (``parser.Sample``) into era-independent per-engine metrics."""
    engines: dict[tuple[str, str], _Acc] = {}
    configs: dict[str, CacheConfig] = {}
    legacy: set[str] = set()
    seen_fields: dict[str, set[int]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    process_start = None
    vllm_count = 0
    for name, labels, value in samples:
        if check_duplicates:
            key = (name, tuple(sorted(labels)) if len(labels) > 1 else labels)
            if key in seen:
                raise ParseError(0, f"duplicate series {name}{{{_fmt(labels)}}}")
            seen.add(key)
        if name == PROCESS_START:
            process_start = value
            continue
        vllm_count += 1
        if name == CACHE_CONFIG:
            cfg = _cache_config(dict(labels))
            configs.setdefault(cfg.engine, cfg)
            continue
        route = ROUTES.get(name)
        if route is None:
            continue
        fld, prio, src, part = route
        if src.legacy:
            legacy.add(src.family)
        if not fld:
            continue
        lab = dict(labels)
        acc = engines.setdefault((lab.get("model_name", ""), lab.get("engine", "0")), _Acc())
        seen_fields.setdefault(fld, set()).add(prio)
        if part == "created":
            if src.family in CREATED_FROM:
                acc.created.setdefault(src.family, value)
            continue
        if src.kind == HISTOGRAM:
            h = acc.hist.setdefault((fld, prio), [{}, None, None])
            if part == "bucket":
                try:
                    le = float(lab.get("le", ""))
                except ValueError:
                    raise ParseError(0, f"invalid le=\"{lab.get('le', '')}\" on {name}") from None
                h[0][le] = h[0].get(le, 0.0) + value
            elif part == "sum":
                h[1] = (h[1] or 0.0) + value
            else:
                h[2] = (h[2] or 0.0) + value
        elif fld == "request_success":
            reasons = acc.success.setdefault(prio, {})
            r = lab.get("finished_reason", "")
            reasons[r] = reasons.get(r, 0.0) + value
        else:
            # a bare counter name (``LLM.get_metrics()``) is used only without the ``_total`` one
            k = (fld, prio if part == "value" else prio + 0.5)
            old = acc.values.get(k)
            if old is None or old != old:  # first value, or NaN: take the new one
                acc.values[k] = value
            elif src.kind == COUNTER:
                acc.values[k] = old + value
            elif value == value:  # gauges from several pids: the largest, ignoring NaN
                acc.values[k] = max(old, value)
    return Normalised(
        engines=tuple(_engine(k, acc) for k, acc in sorted(engines.items())),
        cache_configs=tuple(configs[e] for e in sorted(configs)),
        schema=_schema(seen_fields, vllm_count, configs),
        legacy_names=tuple(sorted(legacy)),
        process_start=process_start,
        vllm_series=vllm_count,
    )


def _fmt(labels: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)


def _pick(acc: _Acc, fld: str) -> float | None:
    for prio in range(len(ALIASES[fld])):
        for k in ((fld, prio), (fld, prio + 0.5)):
            v = acc.values.get(k)
            if v is not None:
                return v
    return None


def _pick_hist(acc: _Acc, fld: str) -> Histogram | None:
    for prio in range(len(ALIASES[fld])):
        parts = acc.hist.get((fld, prio))
        if parts is not None:
            return _histogram(parts)
    return None


def _engine(key: tuple[str, str], acc: _Acc) -> EngineMetrics:
    success = acc.success.get(0, {})
    created = next((acc.created[f] for f in CREATED_FROM if f in acc.created), None)
    return EngineMetrics(
        model_name=key[0], engine=key[1],
        prefix_queries=_pick(acc, "prefix_queries"), prefix_hits=_pick(acc, "prefix_hits"),
        external_queries=_pick(acc, "external_queries"), external_hits=_pick(acc, "external_hits"),
        v0_hit_rate=_pick(acc, "v0_hit_rate"), kv_usage=_pick(acc, "kv_usage"),
        prompt_tokens=_pick(acc, "prompt_tokens"), generation_tokens=_pick(acc, "generation_tokens"),
        preemptions=_pick(acc, "preemptions"), running=_pick(acc, "running"),
        waiting=_pick(acc, "waiting"),
        request_success=tuple(sorted(success.items())),
        ttft=_pick_hist(acc, "ttft"), e2e=_pick_hist(acc, "e2e"), queue=_pick_hist(acc, "queue"),
        prompt_len=_pick_hist(acc, "prompt_len"),
        created=created,
    )


def _schema(seen: dict[str, set[int]], vllm_count: int, configs: dict[str, CacheConfig]) -> str:
    if vllm_count == 0:
        return SCHEMA_NONE
    q = seen.get("prefix_queries", set()) | seen.get("prefix_hits", set())
    if 0 in q and 1 in q:
        return SCHEMA_V1_DUAL
    if 0 in q:
        return SCHEMA_V1
    if 1 in q:
        return SCHEMA_V1_LEGACY
    if "v0_hit_rate" in seen:
        return SCHEMA_V0
    # An idle V0 server shows little but cache_config_info, and V0 has no ``engine`` label.
    if configs and all("engine" not in dict(c.labels) for c in configs.values()):
        return SCHEMA_V0
    return SCHEMA_UNKNOWN
