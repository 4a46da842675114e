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

from .interning import SharedTable
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


#: What one sample does to the fold, decided from its name and labels alone (value-independent):
#: ``_START`` (process start), ``_SKIP``, ``_REJECT`` (admission rejections), ``_CREATED``,
#: ``_BUCKET``/``_SUM``/``_COUNT`` (histogram parts), ``_LABELLED`` and ``_VALUE`` (counters/gauges).
_START, _SKIP, _REJECT, _CREATED, _BUCKET, _SUM, _COUNT, _LABELLED, _VALUE = range(9)
_Op = tuple[Any, ...]
_Key = tuple[str, str, str]  # (model_name, engine, replica)


@dataclass(frozen=True)
class _Static:
    """What a body's names and labels decide on their own, whatever its values."""

    ops: tuple[_Op, ...]
    engine_keys: tuple[_Key, ...]
    configs: tuple[CacheConfig, ...]
    schema: str
    legacy_names: tuple[str, ...]
    vllm_series: int
    exposer: str
    identity_labels: frozenset[str]
    body_identity: frozenset[str]  # the identity labels of this body alone


class Shape:
    """One target's memo of its last body's shape: the series (names and label sets, in order).

    Why: scrape after scrape a vLLM answers the same series with new values, and everything but
    the values (identity labels, exposer, engine keys, routes, duplicate and ``le`` checks, cache
    configs, schema) is decided by the series alone. When a body holds exactly the series of the
    last one that normalised, :func:`normalise` folds the values with the ops it learnt then; the
    fold is the same code either way, so the result is identical (tests prove it on every
    capture). Memory: the learnt ops are interned across targets (a fleet of one model shares
    them), so a target keeps a few references.
    """

    __slots__ = ("names", "labelsets", "static", "check_duplicates", "identity_in")

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.labelsets: tuple[tuple[tuple[str, str], ...], ...] = ()
        self.static: _Static | None = None
        self.check_duplicates = True
        self.identity_in: frozenset[str] = frozenset()

    def recall(
        self, samples: list[Sample], identity: frozenset[str], check_duplicates: bool
    ) -> _Static | None:
        """The learnt ops when ``samples`` hold exactly the learnt series, else None."""
        st = self.static
        if (
            st is None
            or check_duplicates != self.check_duplicates
            or len(samples) != len(self.names)
            or (identity != self.identity_in and identity | st.body_identity != st.identity_labels)
        ):
            return None
        # list == tuple is False: compare like with like (C-level, identity shortcut per item)
        if tuple([s[1] for s in samples]) != self.labelsets or tuple([s[0] for s in samples]) != self.names:
            return None
        return st

    def learn(
        self, samples: list[Sample], identity: frozenset[str], check_duplicates: bool, st: _Static
    ) -> None:
        if len(samples) > _LEARN_MAX_SAMPLES:  # far above any vLLM body: not worth its memory
            self.static = None
            return
        n = len(samples)
        self.names = _intern(tuple([s[0] for s in samples]), n)
        self.labelsets = _intern(tuple([s[1] for s in samples]), n)
        # keyed by what decides it, exactly: ``_Static`` itself compares ``le`` as floats, and
        # ``le="-0"`` equals ``le="0"`` (its bound would become the other body's 0.0)
        self.static = _intern_as((self.names, self.labelsets, st.identity_labels, check_duplicates), st, n)
        self.check_duplicates = check_duplicates
        self.identity_in = identity


#: shapes shared by targets (a fleet of one model answers the same series); bounded by entries and
#: by the samples they hold (a body of a million series must not stay in memory a thousand times);
#: a learnt shape counts its samples three times (names, label sets, ops): ~250 shapes of 129
_INTERNED: SharedTable[Any, Any] = SharedTable(3_000, 100_000)
_LEARN_MAX_SAMPLES = 10_000  # the real 0.32 body holds 129 wanted samples


def _intern(obj: Any, samples: int) -> Any:
    return _intern_as(obj, obj, samples)


def _intern_as(key: Any, obj: Any, samples: int) -> Any:
    return _INTERNED.share(key, obj, samples)


def normalise(
    samples: Iterable[Sample],
    *,
    check_duplicates: bool = True,
    identity: frozenset[str] = frozenset(),
    shape: Shape | None = None,
) -> Normalised:
    """Fold parsed samples (``parser.Sample``) into era-independent per-engine metrics.

    ``identity``: the target's identity labels seen so far (they stay for its life); the result's
    ``identity_labels`` adds those of this body. Impossible values are left out and listed in
    ``refused``. ``shape``: the target's :class:`Shape` memo (optional; the result is the same
    with or without it, only cheaper). Raises :class:`ParseError` for a duplicate vLLM series or
    a bad ``le``.
    """
    samples = samples if isinstance(samples, list) else list(samples)
    st = shape.recall(samples, identity, check_duplicates) if shape is not None else None
    if st is None:
        st = _classify(samples, identity, check_duplicates)
        if shape is not None:
            shape.learn(samples, identity, check_duplicates, st)
    return _fold(samples, st)


def _classify(samples: list[Sample], identity: frozenset[str], check_duplicates: bool) -> _Static:
    """Decide what each sample does from its name and labels (the value-independent half)."""
    body_ident = identity_labels(samples)
    ident = identity | body_ident
    exposer = _exposer(samples)
    engines: dict[_Key, None] = {}
    configs: dict[tuple[str, str], CacheConfig] = {}
    legacy: set[str] = set()
    seen_fields: dict[str, set[int]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    ops: list[_Op] = []
    vllm_count = 0
    for name, labels, _value in samples:
        if name == PROCESS_START:
            ops.append((_START,))  # another process's copy (KServe's queue-proxy) is no error
            continue
        if check_duplicates:
            key = (name, tuple(sorted(labels)) if len(labels) > 1 else labels)
            if key in seen:
                raise ParseError(0, f"duplicate series {name}{{{_fmt(labels)}}}")
            seen.add(key)
        vllm_count += 1
        lab = dict(labels)
        route = None if name in CACHE_CONFIGS else ROUTES.get(name)
        if name in CACHE_CONFIGS:
            cfg = _cache_config(lab, replica_of(lab, ident))
            configs.setdefault((cfg.engine, cfg.replica), cfg)
        elif route is not None and route[2].legacy:
            legacy.add(route[2].family)
        if route is None or not route[0]:
            ops.append((_SKIP,))
            continue
        fld, prio, src, part = route
        if fld == "admission_rejections":  # no ``engine`` label: the API server's, not an engine's
            family = name[: -len("_total")] if name.endswith("_total") else name
            reason = f'reason="{lab.get("reason", "")}"'
            ops.append((_REJECT, family, lab.get("model_name", ""), reason) if part == "value" else (_SKIP,))
            continue
        ekey = (lab.get("model_name", ""), lab.get("engine") or "0", replica_of(lab, ident))
        engines[ekey] = None
        seen_fields.setdefault(fld, set()).add(prio)
        if part == "created":
            ops.append((_CREATED, ekey, src.family) if src.family in CREATED_FROM else (_SKIP,))
            continue
        ops.append(_op(ekey, fld, prio, src, part, name, lab))
    return _Static(
        ops=tuple(ops),
        engine_keys=tuple(sorted(engines)),
        configs=tuple(configs[k] for k in sorted(configs)),
        schema=_schema(seen_fields, vllm_count, configs),
        legacy_names=tuple(sorted(legacy)) if exposer != EXPOSER_ROUTER else (),
        vllm_series=vllm_count,
        exposer=exposer,
        identity_labels=ident,
        body_identity=body_ident,
    )


def _op(key: _Key, fld: str, prio: int, src: Source, part: str, name: str, lab: dict[str, str]) -> _Op:
    """The op of one engine sample (``pid`` copies: counters summed, gauges max, in :func:`_fold`)."""
    if src.kind == HISTOGRAM:
        if part == "bucket":
            try:
                le = float(lab.get("le", ""))
            except ValueError:
                raise ParseError(0, f'invalid le="{lab.get("le", "")}" on {name}') from None
            return (_BUCKET, key, (fld, prio), le)
        return (_SUM if part == "sum" else _COUNT, key, (fld, prio))
    family = name[: -len("_total")] if name.endswith("_total") else name
    if fld in LABELLED:
        return (_LABELLED, key, (fld, prio), lab.get(LABELLED[fld], ""), fld, family)
    # a bare counter name (``LLM.get_metrics()``) is used only without the ``_total`` one
    return (_VALUE, key, (fld, prio if part == "value" else prio + 0.5), fld, family, src.kind == COUNTER)


def _fold(samples: list[Sample], st: _Static) -> Normalised:
    """Fold the values by the ops of :func:`_classify` (the value-dependent half)."""
    accs = {k: _Acc() for k in st.engine_keys}
    starts: set[float] = set()
    rejections: float | None = None
    refused: list[Refused] = []
    for op, (_name, _labels, value) in zip(st.ops, samples):
        kind = op[0]
        if kind == _BUCKET:
            buckets = accs[op[1]].hist.setdefault(op[2], [{}, None, None])[0]
            buckets[op[3]] = buckets.get(op[3], 0.0) + value
        elif kind == _SKIP:
            continue
        elif kind == _SUM or kind == _COUNT:
            h = accs[op[1]].hist.setdefault(op[2], [{}, None, None])
            i = 1 if kind == _SUM else 2
            h[i] = (h[i] or 0.0) + value
        elif kind == _VALUE:
            _value(accs[op[1]], op, value)
        elif kind == _LABELLED:
            acc = accs[op[1]]
            by = acc.labelled.setdefault(op[2], {})
            by[op[3]] = by.get(op[3], 0.0) + value
            acc.names.setdefault(op[4], op[5])
        elif kind == _CREATED:
            accs[op[1]].created.setdefault(op[2], value)
        elif kind == _START:
            starts.add(value)
        else:  # _REJECT
            why = _impossible(value, 0.0, None)
            if why:
                refused.append(Refused(op[1], op[2], "0", "", value, why, op[3]))
            else:
                rejections = (rejections or 0.0) + value
    # process_start_time_seconds is the vLLM process's only where vLLM serves the body itself
    process_start = next(iter(starts)) if len(starts) == 1 and st.exposer == EXPOSER_VLLM else None
    return Normalised(
        engines=tuple(_engine(k, accs[k], refused) for k in st.engine_keys),
        cache_configs=st.configs,
        schema=st.schema,
        legacy_names=st.legacy_names,
        process_start=process_start,
        vllm_series=st.vllm_series,
        exposer=st.exposer,
        identity_labels=st.identity_labels,
        refused=tuple(refused),
        admission_rejections=rejections,
    )


def _value(acc: _Acc, op: _Op, value: float) -> None:
    """A counter or gauge sample into its engine (``pid`` copies: counters summed, gauges max)."""
    _, _, k, fld, family, counter = op
    acc.names.setdefault(fld, family)
    old = acc.values.get(k)
    if old is None or old != old:  # first value, or NaN: take the new one
        acc.values[k] = value
    elif counter:
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
