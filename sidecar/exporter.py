"""The whole ``/metrics`` body, in Prometheus text 0.0.4 or OpenMetrics: :func:`exposition`.

Families are built fresh from immutable snapshots; nothing here is a global gauge mutated from the
scrape loop, so a removed target's series vanish with its snapshot. Each target's lines are
rendered once per snapshot (:func:`render_target`), so serving is a join. The process's own
families (CPU, memory, GC: reading them is I/O) are collected by the caller and handed in, so
this module stays pure. :class:`SnapshotCollector` renders the same snapshots through
prometheus_client, the reference the tests hold the fast renderer to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import _version
from .model import REASONS, EngineState, TargetSnapshot, WindowStats, ratio

P = "vllm_sidecar_"

#: name -> (type, help). The single list of what the sidecar exports (docs/metrics.md documents it).
FAMILIES: dict[str, tuple[str, str]] = {
    "target_up": ("gauge", "1 if the last scrape succeeded and held vLLM metrics, else 0."),
    "scrape_duration_seconds": ("gauge", "Duration of the last scrape of the target."),
    "scrape_errors": ("counter", "Failed scrapes by reason."),
    "last_scrape_success_timestamp_seconds": ("gauge", "Unix time of the last good scrape."),
    "target_restarts": ("counter", "vLLM restarts seen (counter resets)."),
    "scrape_mode": (
        "gauge",
        "1 for the target's current scrape mode (filtered: only the samples "
        "the sidecar reads; full), 0 for the other.",
    ),
    "prefix_cache_queries": (
        "counter",
        "Prefix-cache queries in tokens, as vLLM counts them (blocks on V1 before 0.9.0).",
    ),
    "prefix_cache_hits": ("counter", "Prefix-cache hits in tokens, as vLLM counts them."),
    "prefix_cache_hit_ratio": (
        "gauge",
        "Prefix-cache hits/queries over the window (lifetime: since vLLM started); NaN without queries.",
    ),
    "external_prefix_cache_queries": ("counter", "External (KV-connector) prefix-cache queries."),
    "external_prefix_cache_hits": ("counter", "External (KV-connector) prefix-cache hits."),
    "external_prefix_cache_hit_ratio": (
        "gauge",
        "External (KV-connector) hits/queries over the window (lifetime: since vLLM started).",
    ),
    "prefix_cache_hits_by_source": (
        "counter",
        "Prefix-cache hits in tokens by the tier that served them (vllm:prompt_tokens_cached_by_source).",
    ),
    "prefix_cache_hit_ratio_by_source": (
        "gauge",
        "Share of looked-up prompt tokens served by source over the window; device = local ratio.",
    ),
    "offload_tier_hit_ratio": (
        "gauge",
        "KV-offload tier chunk hits/lookups over the window (vllm:kv_offload_tiering_chunk_*).",
    ),
    "out_of_range_values": ("counter", "Samples refused as impossible (never exported), by vLLM family."),
    "kv_cache_usage_ratio": ("gauge", "KV-cache usage, 0..1."),
    "kv_cache_usage_delta": ("gauge", "KV-cache usage now minus usage one window ago."),
    "prefix_caching_enabled": ("gauge", "1 if vllm:cache_config_info says prefix caching is on."),
    "cache_config_info": ("gauge", "Cache configuration of an engine (labels), value 1."),
    "diagnosis": ("gauge", "1 while the finding holds."),
    "vllm_info": ("gauge", "vLLM version and the metric-name schema it matched, value 1."),
    "prompt_tokens": ("counter", "Prompt tokens processed (vLLM's counter)."),
    "generation_tokens": ("counter", "Generated tokens (vLLM's counter)."),
    "preemptions": ("counter", "Request preemptions (vLLM's counter)."),
    "request_success": ("counter", "Finished requests by finish reason (vLLM's counter)."),
    "prompt_tokens_per_second": ("gauge", "Prompt tokens per second over the window."),
    "generation_tokens_per_second": ("gauge", "Generated tokens per second over the window."),
    "preemptions_per_second": ("gauge", "Preemptions per second over the window."),
    "requests_per_second": ("gauge", "Finished requests per second over the window, by reason."),
    "latency_seconds": (
        "gauge",
        "Latency quantile over the window (phase ttft, e2e or queue), "
        "estimated from vLLM's histogram buckets.",
    ),
    "latency_mean_seconds": ("gauge", "Mean latency over the window, by phase."),
    "requests_running": ("gauge", "Requests in the engine's running batch."),
    "requests_waiting": ("gauge", "Requests waiting to be scheduled."),
    "build_info": ("gauge", "The sidecar's version, value 1."),
    "config_last_reload_successful": (
        "gauge",
        "1 if the last config or targets-file (re)load succeeded; 0 while the old set is kept.",
    ),
    "config_last_reload_success_timestamp_seconds": ("gauge", "Unix time of the last good load."),
    "config_reload_failures": ("counter", "Failed config or targets-file reloads."),
}


@dataclass(frozen=True)
class ServiceStatus:
    """Reload state of the service (central mode and SIGHUP)."""

    last_reload_ok: bool = True
    last_reload_success: float | None = None
    reload_failures: int = 0
    last_error: str | None = None


class _Families:
    """Lazily created families, so an empty one is never emitted (the Collector's sink)."""

    def __init__(self) -> None:
        self.items: dict[str, Metric] = {}

    def add(self, short: str, labels: dict[str, str], value: float, suffix: str = "") -> None:
        m = self.items.get(short)
        if m is None:
            typ, doc = FAMILIES[short]
            m = self.items[short] = Metric(P + short, doc, typ)
        name = P + short + ("_total" if m.type == "counter" else suffix)
        m.add_sample(name, labels, float(value))


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


class _Lines:
    """The renderer's sink: exposition lines per family, formatted once per scrape."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}

    def add(self, short: str, labels: dict[str, str], value: float, suffix: str = "") -> None:
        name = P + short + ("_total" if FAMILIES[short][0] == "counter" else suffix)
        lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.items.setdefault(short, []).append(f"{name}{{{lab}}} {_number(value)}\n")


def render_target(s: TargetSnapshot, static: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """One target's series as text, per family: rendered when its snapshot changes, so that
    serving /metrics is a join, whatever the number of targets."""
    sink = _Lines()
    _target(sink, s, static)
    return {k: "".join(v) for k, v in sink.items.items()}


def render(
    fragments: Iterable[dict[str, str]],
    static: tuple[tuple[str, str], ...] = (),
    status: ServiceStatus | None = None,
    openmetrics: bool = False,
) -> str:
    """The sidecar's families from pre-rendered target fragments, in text 0.0.4 or OpenMetrics
    (sample lines are identical; only HELP/TYPE naming differs). ``# EOF`` is the caller's."""
    head = _Lines()
    head.add("build_info", {"version": _version()}, 1)
    if status is not None:
        _status(head, dict(static), status)
    maps = [{k: "".join(v) for k, v in head.items.items()}, *fragments]
    out = []
    for short, (typ, doc) in FAMILIES.items():
        parts = [m[short] for m in maps if short in m]
        if not parts:
            continue
        name = P + short
        if not openmetrics and typ == "counter":
            name += "_total"
        doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {typ}\n")
        out.extend(parts)
    return "".join(out)


class _Collected:
    """Families collected already, in the shape prometheus_client's encoders read (``collect``)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def exposition(
    fragments: Iterable[dict[str, str]],
    static: tuple[tuple[str, str], ...] = (),
    status: ServiceStatus | None = None,
    openmetrics: bool = False,
    process: Iterable[Metric] = (),
) -> bytes:
    """The ``/metrics`` body: the sidecar's families (:func:`render`), then the ``process``
    families (collected by the caller, rendered by prometheus_client's own encoder), then, in
    OpenMetrics, the one ``# EOF``."""
    ours = render(fragments, static, status, openmetrics).encode()
    encode: Callable[[Any], bytes]
    if openmetrics:  # its answer ends in the one ``# EOF``
        from prometheus_client.openmetrics.exposition import generate_latest as encode
    else:
        from prometheus_client.exposition import generate_latest as encode
    return ours + encode(_Collected(process))


def _engine(f: _Families | _Lines, base: dict[str, str], e: EngineState, replica: bool) -> None:
    lab = {**base, "model_name": e.model_name, "engine": e.engine}
    if replica:
        lab["replica"] = e.replica
    c = e.current
    for short, val in (
        ("prefix_cache_queries", c.prefix_queries),
        ("prefix_cache_hits", c.prefix_hits),
        ("external_prefix_cache_queries", c.external_queries),
        ("external_prefix_cache_hits", c.external_hits),
        ("prompt_tokens", c.prompt_tokens),
        ("generation_tokens", c.generation_tokens),
        ("preemptions", c.preemptions),
        ("kv_cache_usage_ratio", c.kv_usage),
        ("requests_running", c.running),
        ("requests_waiting", c.waiting),
    ):
        if val is not None:
            f.add(short, lab, val)
    for reason, val in c.request_success:
        f.add("request_success", {**lab, "finished_reason": reason}, val)
    for source, val in c.hits_by_source:
        f.add("prefix_cache_hits_by_source", {**lab, "source": source}, val)
    if c.prefix_queries is not None or c.v0_hit_rate is not None:
        f.add("prefix_cache_hit_ratio", {**lab, "window": "lifetime"}, e.lifetime_hit_ratio)
    _tiers(f, {**lab, "window": "lifetime"}, e)
    for w in e.windows:
        wl = {**lab, "window": w.window}
        if c.prefix_queries is not None:  # a V0 engine has no counters, so no windowed ratio
            f.add("prefix_cache_hit_ratio", wl, w.hit_ratio)
        _tiers(f, wl, e, w)
        if w.span <= 0:
            continue
        if w.kv_usage_delta is not None:
            f.add("kv_cache_usage_delta", wl, w.kv_usage_delta)
        if c.prompt_tokens is not None:
            f.add("prompt_tokens_per_second", wl, w.prompt_tokens_per_second)
        if c.generation_tokens is not None:
            f.add("generation_tokens_per_second", wl, w.generation_tokens_per_second)
        if c.preemptions is not None:
            f.add("preemptions_per_second", wl, w.preemptions_per_second)
        for reason, n in w.requests:
            f.add("requests_per_second", {**wl, "finished_reason": reason}, w.rate(n))
        for phase, stats in w.latency:
            pl = {**wl, "phase": phase}
            f.add("latency_mean_seconds", pl, stats.mean)
            for q, v in (("0.5", stats.p50), ("0.9", stats.p90), ("0.99", stats.p99)):
                f.add("latency_seconds", {**pl, "quantile": q}, v)


def _tiers(f: _Families | _Lines, wl: dict[str, str], e: EngineState, w: WindowStats | None = None) -> None:
    """Which tier served the hits: by source, KV connector, offload tiers (window ``w``, or
    lifetime from vLLM's counters). Absent families stay absent, never zeros."""
    c = e.current
    if w is None:
        queries = c.prefix_queries if c.prefix_queries is not None else 0.0
        sources = tuple((src, ratio(h, queries)) for src, h in c.hits_by_source)
        external = (
            ratio(c.external_hits or 0.0, c.external_queries) if c.external_queries is not None else None
        )
        th = dict(c.tier_hits)
        tiers = tuple((t, ratio(th.get(t, 0.0), q)) for t, q in c.tier_queries)
    else:
        sources, tiers = w.source_ratios(), w.tier_ratios()
        external = w.external_hit_ratio if c.external_queries is not None else None
    if c.prefix_queries is not None:
        for src, r in sources:
            f.add("prefix_cache_hit_ratio_by_source", {**wl, "source": src}, r)
    if external is not None:
        f.add("external_prefix_cache_hit_ratio", wl, external)
    for tier, r in tiers:
        f.add("offload_tier_hit_ratio", {**wl, "tier": tier}, r)


def _target(f: _Families | _Lines, s: TargetSnapshot, static: tuple[tuple[str, str], ...]) -> None:
    base = {**dict(static), **dict(s.labels), "target": s.name}
    if not s.scraped:
        return  # no scrape yet, no evidence either way: absent, as Prometheus' own ``up``
    f.add("target_up", base, 1.0 if s.up else 0.0)
    if s.scrape_duration is not None:
        f.add("scrape_duration_seconds", base, s.scrape_duration)
    errors = dict(s.scrape_errors)
    for reason in REASONS:
        f.add("scrape_errors", {**base, "reason": reason}, errors.get(reason, 0))
    if s.last_success is not None:
        f.add("last_scrape_success_timestamp_seconds", base, s.last_success)
    f.add("target_restarts", base, s.restarts)
    if s.scrape_mode is not None:
        for mode in ("filtered", "full"):
            f.add("scrape_mode", {**base, "mode": mode}, 1.0 if s.scrape_mode == mode else 0.0)
    if s.scraped and s.last_success is not None:
        f.add(
            "vllm_info",
            {**base, "version": s.version or "unknown", "schema": s.schema, "exposer": s.exposer},
            1,
        )
    for family, n in s.out_of_range:
        f.add("out_of_range_values", {**base, "family": family}, n)
    for d in s.diagnoses:
        f.add("diagnosis", {**base, "code": d.code, "severity": d.severity}, 1)
    if not s.up:
        return  # never serve the last good numbers as if they were fresh
    replica = bool(s.identity_labels)
    for cfg in s.cache_configs:
        el = {**base, "engine": cfg.engine, **({"replica": cfg.replica} if replica else {})}
        if cfg.enable_prefix_caching is not None:
            f.add("prefix_caching_enabled", el, 1.0 if cfg.enable_prefix_caching else 0.0)
        f.add(
            "cache_config_info",
            {
                **el,
                "block_size": "" if cfg.block_size is None else str(cfg.block_size),
                "num_gpu_blocks": "" if cfg.num_gpu_blocks is None else str(cfg.num_gpu_blocks),
                "prefix_caching_hash_algo": cfg.hash_algo or "",
                "kv_offloading_backend": cfg.kv_offloading_backend or "",
            },
            1,
        )
    for e in s.engines:
        _engine(f, base, e, replica)


def _status(f: _Families | _Lines, st: dict[str, str], status: ServiceStatus) -> None:
    f.add("config_last_reload_successful", st, 1.0 if status.last_reload_ok else 0.0)
    if status.last_reload_success is not None:
        f.add("config_last_reload_success_timestamp_seconds", st, status.last_reload_success)
    f.add("config_reload_failures", st, status.reload_failures)


def families(
    snapshots: Iterable[TargetSnapshot],
    static: tuple[tuple[str, str], ...] = (),
    status: ServiceStatus | None = None,
) -> list[Metric]:
    f = _Families()
    f.add("build_info", {"version": _version()}, 1)
    if status is not None:
        _status(f, dict(static), status)
    for s in snapshots:
        _target(f, s, static)
    return list(f.items.values())


class SnapshotCollector(Collector):
    """``collect()`` renders whatever snapshots ``source()`` returns at that moment."""

    def __init__(
        self,
        source: Callable[[], Iterable[TargetSnapshot]],
        static_labels: tuple[tuple[str, str], ...] = (),
        status: Callable[[], ServiceStatus] | None = None,
    ):
        self._source = source
        self._static = static_labels
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status() if self._status is not None else None
        return iter(families(self._source(), self._static, status))

    def describe(self) -> list[Metric]:
        return []  # families depend on the targets; don't let the registry call collect() early
