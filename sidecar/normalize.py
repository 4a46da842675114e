"""One alias table for every vLLM metric era, and the fold of raw samples into :class:`Normalised`.

vLLM renamed its cache metrics twice (V0 gauges -> V1 ``gpu_prefix_cache_*`` counters ->
``prefix_cache_*`` / ``kv_cache_usage_perc``) and exported old and new names side by side for a
while (0.9.2 - 0.11: equal values). Each canonical field below lists its sources in order of
preference; when several are present the first wins, so nothing is ever counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .model import CacheConfig, EngineMetrics, Histogram, Normalised, Refused
from .parser import ParseError, Sample

COUNTER, GAUGE, HISTOGRAM, INFO = "counter", "gauge", "histogram", "info"


@dataclass(frozen=True)
class Source:
    family: str  # vLLM family name (counters without ``_total``)
    kind: str
    legacy: bool = False  # deprecated / pre-0.9.2 name


#: canonical field -> sources, preferred first
ALIASES: dict[str, tuple[Source, ...]] = {
    "prefix_queries": (
        Source("vllm:prefix_cache_queries", COUNTER),
        Source("vllm:gpu_prefix_cache_queries", COUNTER, legacy=True),
    ),
    "prefix_hits": (
        Source("vllm:prefix_cache_hits", COUNTER),
        Source("vllm:gpu_prefix_cache_hits", COUNTER, legacy=True),
    ),
    "external_queries": (Source("vllm:external_prefix_cache_queries", COUNTER),),
    "external_hits": (Source("vllm:external_prefix_cache_hits", COUNTER),),
    "v0_hit_rate": (Source("vllm:gpu_prefix_cache_hit_rate", GAUGE, legacy=True),),
    "kv_usage": (
        Source("vllm:kv_cache_usage_perc", GAUGE),
        Source("vllm:gpu_cache_usage_perc", GAUGE, legacy=True),
    ),
    "prompt_tokens": (Source("vllm:prompt_tokens", COUNTER),),
    "generation_tokens": (Source("vllm:generation_tokens", COUNTER),),
    "preemptions": (Source("vllm:num_preemptions", COUNTER),),
    "running": (Source("vllm:num_requests_running", GAUGE),),
    "waiting": (Source("vllm:num_requests_waiting", GAUGE),),
    "request_success": (Source("vllm:request_success", COUNTER),),
    "ttft": (Source("vllm:time_to_first_token_seconds", HISTOGRAM),),
    "e2e": (Source("vllm:e2e_request_latency_seconds", HISTOGRAM),),
    "queue": (
        Source("vllm:request_queue_time_seconds", HISTOGRAM),
        Source("vllm:time_in_queue_requests", HISTOGRAM, legacy=True),
    ),
    "prompt_len": (Source("vllm:request_prompt_tokens", HISTOGRAM),),
    "hits_by_source": (Source("vllm:prompt_tokens_cached_by_source", COUNTER),),
    "tier_queries": (Source("vllm:kv_offload_tiering_chunk_queries", COUNTER),),
    "tier_hits": (Source("vllm:kv_offload_tiering_chunk_hits", COUNTER),),
    "admission_rejections": (Source("vllm:admission_rejections", COUNTER),),  # target level
}

#: counters kept per value of one dimension label (field -> label)
LABELLED = {
    "request_success": "finished_reason",
    "hits_by_source": "source",
    "tier_queries": "tier",
    "tier_hits": "tier",
}
#: plain counters: below 0 or NaN is impossible (contract "Impossible values")
PLAIN_COUNTERS = (
    "prefix_queries",
    "prefix_hits",
    "external_queries",
    "external_hits",
    "prompt_tokens",
    "generation_tokens",
    "preemptions",
)

#: deprecated names the sidecar does not read but reports under ``legacy_metric_names``
LEGACY_ONLY = (
    Source("vllm:cpu_cache_usage_perc", GAUGE, legacy=True),
    Source("vllm:cpu_prefix_cache_hit_rate", GAUGE, legacy=True),
    Source("vllm:num_requests_swapped", GAUGE, legacy=True),
    Source("vllm:time_per_output_token_seconds", HISTOGRAM, legacy=True),
)

CACHE_CONFIG = "vllm:cache_config_info"
PROCESS_START = "process_start_time_seconds"
#: Ray Serve LLM re-exports ``vllm:<name>`` as ``ray_vllm_<name>`` on Ray's metrics port
RAY_PREFIX = "ray_vllm_"

EXPOSER_VLLM, EXPOSER_RAY, EXPOSER_ROUTER = "vllm", "ray-serve", "production-stack-router"
#: labels that are always an engine's identity (contract "Identity")
IDENTITY_ALWAYS = frozenset({"server", "ReplicaId", "WorkerId"})
#: labels that never are: the engine key itself, multiprocess ``pid`` (folded) and the
#: families' own dimensions
NOT_IDENTITY = frozenset(
    {
        "model_name",
        "engine",
        "pid",
        "le",
        "quantile",
        "finished_reason",
        "source",
        "reason",
        "tier",
        "stage",
        "status",
        "sleep_state",
        "mode",
    }
)
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
    # Ray Serve's names route exactly like vLLM's own
    routes.update({RAY_PREFIX + n[len("vllm:") :]: r for n, r in list(routes.items())})
    return routes


ROUTES = _build_routes()
CACHE_CONFIGS = frozenset({CACHE_CONFIG, RAY_PREFIX + CACHE_CONFIG[len("vllm:") :]})
#: every sample name the sidecar materialises: pass to :func:`sidecar.parser.parse`
WANTED = frozenset(ROUTES) | CACHE_CONFIGS | {PROCESS_START}


def is_vllm_name(name: str) -> bool:
    """A sample of vLLM's own numbers, as vLLM or Ray Serve expose them."""
    return name.startswith("vllm:") or name.startswith(RAY_PREFIX)


class _Acc:
    """Accumulates one engine's samples; ``pid`` variants are folded (counters summed, gauges max)."""

    __slots__ = ("values", "hist", "labelled", "created", "names")

    def __init__(self) -> None:
        self.values: dict[tuple[str, float], float] = {}
        #: (field, priority) -> [buckets {le: count}, sum, count]
        self.hist: dict[tuple[str, int], list[Any]] = {}
        self.labelled: dict[tuple[str, int], dict[str, float]] = {}
        self.created: dict[str, float] = {}
        self.names: dict[str, str] = {}  # field -> family as exposed (for refused samples)


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


def _cache_config(labels: dict[str, str], replica: str) -> CacheConfig:
    lower = {k.lower(): v for k, v in labels.items()}
    unit = _int(lower.get("prefix_match_unit"))
    return CacheConfig(
        engine=labels.get("engine") or "0",
        enable_prefix_caching=_truthy(lower.get("enable_prefix_caching")),
        block_size=_int(lower.get("block_size")),
        prefix_match_unit=unit if unit and unit > 0 else None,
        replica=replica,
        num_gpu_blocks=_int(lower.get("num_gpu_blocks")),
        hash_algo=lower.get("prefix_caching_hash_algo"),
        kv_offloading_backend=lower.get("kv_offloading_backend"),
        labels=tuple(sorted(labels.items())),
    )


def _histogram(parts: list[Any]) -> Histogram | None:
    buckets, total, count = parts
    if not buckets:
        return None
    bounds = tuple(sorted(buckets))
    counts = tuple(buckets[b] for b in bounds)
    if count is None:
        count = counts[-1]
    return Histogram(bounds, counts, total if total is not None else float("nan"), count)


def escape_replica_value(value: str) -> str:
    """``\\``, ``,`` and ``=`` inside a value are escaped by ``\\`` (contract "Identity")."""
    if "\\" in value or "," in value or "=" in value:
        return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
    return value


def replica_of(labels: dict[str, str], identity: frozenset[str]) -> str:
    """The ``replica`` label value: identity ``name=value`` pairs sorted by name, joined by ``,``."""
    if not identity:
        return ""
    return ",".join(f"{k}={escape_replica_value(labels[k])}" for k in sorted(identity) if k in labels)


def identity_labels(samples: Iterable[Sample]) -> frozenset[str]:
    """Labels that tell engines apart in this body: ``server``, ``ReplicaId``, ``WorkerId``, and any
    other label whose value differs between samples of one value family (never ``*_info``), except
    the engine key, ``pid`` and the families' dimension labels (contract "Identity")."""
    first: dict[tuple[str, str], str] = {}
    samples_of: dict[str, int] = {}
    carrying: dict[tuple[str, str], int] = {}
    found: set[str] = set()
    for name, labels, _ in samples:
        if name not in ROUTES:
            continue
        samples_of[name] = samples_of.get(name, 0) + 1
        for k, v in labels:
            if k in NOT_IDENTITY:
                continue
            carrying[(name, k)] = carrying.get((name, k), 0) + 1
            if k not in found and (k in IDENTITY_ALWAYS or first.setdefault((name, k), v) != v):
                found.add(k)
    # a label on some samples of a family and not on others differs too (absent means "")
    found.update(k for (name, k), n in carrying.items() if n < samples_of[name] and first.get((name, k)))
    return frozenset(found)


def _exposer(samples: list[Sample]) -> str:
    """``ray-serve`` for ``ray_vllm_`` names; ``production-stack-router`` when vLLM-named series
    carry ``server`` and none carries ``engine`` or ``model_name``; else ``vllm``."""
    server = keyed = False
    for name, labels, _ in samples:
        if name.startswith(RAY_PREFIX):
            return EXPOSER_RAY
        if name in ROUTES:
            for k, _v in labels:
                if k == "server":
                    server = True
                elif k in ("engine", "model_name"):
                    keyed = True
    return EXPOSER_ROUTER if server and not keyed else EXPOSER_VLLM


def normalise(
    samples: Iterable[Sample], *, check_duplicates: bool = True, identity: frozenset[str] = frozenset()
) -> Normalised:
    """Fold parsed samples (``parser.Sample``) into era-independent per-engine metrics.

    ``identity``: the target's identity labels seen so far (they stay for its life); the result's
    ``identity_labels`` adds those of this body. Impossible values are left out and listed in
    ``refused``. Raises :class:`ParseError` for a duplicate vLLM series or a bad ``le``.
    """
    samples = samples if isinstance(samples, list) else list(samples)
    ident = identity | identity_labels(samples)
    exposer = _exposer(samples)
    engines: dict[tuple[str, str, str], _Acc] = {}
    configs: dict[tuple[str, str], CacheConfig] = {}
    legacy: set[str] = set()
    seen_fields: dict[str, set[int]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    starts: set[float] = set()
    rejections: float | None = None
    refused: list[Refused] = []
    vllm_count = 0
    for name, labels, value in samples:
        if name == PROCESS_START:
            starts.add(value)  # another process's copy (KServe's queue-proxy) is no error
            continue
        if check_duplicates:
            key = (name, tuple(sorted(labels)) if len(labels) > 1 else labels)
            if key in seen:
                raise ParseError(0, f"duplicate series {name}{{{_fmt(labels)}}}")
            seen.add(key)
        vllm_count += 1
        lab = dict(labels)
        if name in CACHE_CONFIGS:
            cfg = _cache_config(lab, replica_of(lab, ident))
            configs.setdefault((cfg.engine, cfg.replica), cfg)
            continue
        route = ROUTES.get(name)
        if route is None:
            continue
        fld, prio, src, part = route
        if src.legacy:
            legacy.add(src.family)
        if not fld:
            continue
        if fld == "admission_rejections":  # no ``engine`` label: the API server's, not an engine's
            if part == "value":
                why = _impossible(value, 0.0, None)
                if why:
                    refused.append(
                        Refused(
                            name[: -len("_total")] if name.endswith("_total") else name,
                            lab.get("model_name", ""),
                            "0",
                            "",
                            value,
                            why,
                            f'reason="{lab.get("reason", "")}"',
                        )
                    )
                else:
                    rejections = (rejections or 0.0) + value
            continue
        acc = engines.setdefault(
            (lab.get("model_name", ""), lab.get("engine") or "0", replica_of(lab, ident)), _Acc()
        )
        seen_fields.setdefault(fld, set()).add(prio)
        if part == "created":
            if src.family in CREATED_FROM:
                acc.created.setdefault(src.family, value)
            continue
        _add(acc, fld, prio, src, part, name, lab, value)
    # process_start_time_seconds is the vLLM process's only where vLLM serves the body itself
    process_start = next(iter(starts)) if len(starts) == 1 and exposer == EXPOSER_VLLM else None
    return Normalised(
        engines=tuple(_engine(k, acc, refused) for k, acc in sorted(engines.items())),
        cache_configs=tuple(configs[k] for k in sorted(configs)),
        schema=_schema(seen_fields, vllm_count, configs),
        legacy_names=tuple(sorted(legacy)) if exposer != EXPOSER_ROUTER else (),
        process_start=process_start,
        vllm_series=vllm_count,
        exposer=exposer,
        identity_labels=ident,
        refused=tuple(refused),
        admission_rejections=rejections,
    )


def _add(
    acc: _Acc, fld: str, prio: int, src: Source, part: str, name: str, lab: dict[str, str], value: float
) -> None:
    """One sample into its engine's accumulator (``pid`` copies: counters summed, gauges max)."""
    if src.kind == HISTOGRAM:
        h = acc.hist.setdefault((fld, prio), [{}, None, None])
        if part == "bucket":
            try:
                le = float(lab.get("le", ""))
            except ValueError:
                raise ParseError(0, f'invalid le="{lab.get("le", "")}" on {name}') from None
            h[0][le] = h[0].get(le, 0.0) + value
        elif part == "sum":
            h[1] = (h[1] or 0.0) + value
        else:
            h[2] = (h[2] or 0.0) + value
        return
    family = name[: -len("_total")] if name.endswith("_total") else name
    if fld in LABELLED:
        by = acc.labelled.setdefault((fld, prio), {})
        r = lab.get(LABELLED[fld], "")
        by[r] = by.get(r, 0.0) + value
        acc.names.setdefault(fld, family)
        return
    # a bare counter name (``LLM.get_metrics()``) is used only without the ``_total`` one
    k = (fld, prio if part == "value" else prio + 0.5)
    acc.names.setdefault(fld, family)
    old = acc.values.get(k)
    if old is None or old != old:  # first value, or NaN: take the new one
        acc.values[k] = value
    elif src.kind == COUNTER:
        acc.values[k] = old + value
    elif value == value:  # gauges from several pids: the largest, ignoring NaN
        acc.values[k] = max(old, value)


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


def _pick_labelled(acc: _Acc, fld: str) -> dict[str, float]:
    for prio in range(len(ALIASES[fld])):
        by = acc.labelled.get((fld, prio))
        if by is not None:
            return by
    return {}


def _impossible(value: float, low: float, high: float | None) -> str:
    """Why ``value`` cannot be (empty when it can): NaN, infinite, or outside low..high."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "infinite"
    if value < low:
        return f"below {low:g}" if high is None else f"outside {low:g}..{high:g}"
    if high is not None and value > high:
        return f"outside {low:g}..{high:g}"
    return ""


class _Checker:
    """Refuses impossible values of one engine (contract "Impossible values"), recording each."""

    def __init__(self, key: tuple[str, str, str], acc: _Acc, refused: list[Refused]):
        self.key, self.acc, self.refused = key, acc, refused

    def refuse(self, fld: str, value: float, why: str, label: str = "") -> None:
        detail = f'{LABELLED[fld]}="{label}"' if label else ""
        self.refused.append(Refused(self.acc.names.get(fld, fld), *self.key, value, why, detail))

    def counter(self, fld: str, value: float | None, label: str = "") -> float | None:
        """A counter below 0, NaN or infinite is impossible."""
        if value is None:
            return None
        why = _impossible(value, 0.0, None)
        if why:
            self.refuse(fld, value, why, label)
            return None
        return value

    def gauge(
        self, fld: str, value: float | None, low: float, high: float | None, sentinel: float | None = None
    ) -> float | None:
        if value is None or value == sentinel:
            return value
        why = _impossible(value, low, high)
        if why:
            self.refuse(fld, value, why)
            return None
        return value

    def pair(self, v: dict[str, float | None], q: str, h: str) -> None:
        """Hits above queries: both are refused (a ratio from either alone would lie)."""
        queries, hits = v[q], v[h]
        if queries is not None and hits is not None and hits > queries:
            self.refuse(h, hits, f"hits above queries ({hits:g} > {queries:g})")
            v[q] = v[h] = None

    def labelled(self, fld: str, by: dict[str, float]) -> dict[str, float]:
        return {k: x for k, x in by.items() if self.counter(fld, x, k) is not None}


def _engine(key: tuple[str, str, str], acc: _Acc, refused: list[Refused]) -> EngineMetrics:
    chk = _Checker(key, acc, refused)
    v: dict[str, float | None] = {f: chk.counter(f, _pick(acc, f)) for f in PLAIN_COUNTERS}
    chk.pair(v, "prefix_queries", "prefix_hits")
    chk.pair(v, "external_queries", "external_hits")
    tq = chk.labelled("tier_queries", _pick_labelled(acc, "tier_queries"))
    th = chk.labelled("tier_hits", _pick_labelled(acc, "tier_hits"))
    for tier in [t for t in th if t in tq and th[t] > tq[t]]:
        chk.refuse("tier_hits", th[tier], f"hits above queries ({th[tier]:g} > {tq[tier]:g})", tier)
        del th[tier], tq[tier]
    created = next((acc.created[f] for f in CREATED_FROM if f in acc.created), None)
    return EngineMetrics(
        model_name=key[0],
        engine=key[1],
        replica=key[2],
        **v,
        v0_hit_rate=chk.gauge("v0_hit_rate", _pick(acc, "v0_hit_rate"), 0.0, 1.0, sentinel=-1.0),
        kv_usage=chk.gauge("kv_usage", _pick(acc, "kv_usage"), 0.0, 1.0),
        running=chk.gauge("running", _pick(acc, "running"), 0.0, None),
        waiting=chk.gauge("waiting", _pick(acc, "waiting"), 0.0, None),
        request_success=tuple(
            sorted(chk.labelled("request_success", _pick_labelled(acc, "request_success")).items())
        ),
        hits_by_source=tuple(
            sorted(chk.labelled("hits_by_source", _pick_labelled(acc, "hits_by_source")).items())
        ),
        tier_queries=tuple(sorted(tq.items())),
        tier_hits=tuple(sorted(th.items())),
        ttft=_pick_hist(acc, "ttft"),
        e2e=_pick_hist(acc, "e2e"),
        queue=_pick_hist(acc, "queue"),
        prompt_len=_pick_hist(acc, "prompt_len"),
        created=created,
    )


def _schema(seen: dict[str, set[int]], vllm_count: int, configs: dict[tuple[str, str], CacheConfig]) -> str:
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
