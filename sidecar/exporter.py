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
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import _version
from .interning import SharedTable
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


#: label pairs in exposition order; a later pair of the same name replaces the earlier one's value
#: in place, as ``{**a, **b}`` does
Pairs = tuple[tuple[str, str], ...]
#: a target's label texts between snapshots: label pairs -> their escaped ``k="v",...`` text, or
#: None where a series' own labels may replace one of them (or there are none): those series are
#: formatted in full, the rare slow way
LabelCache = dict[Pairs, str | None]


class _Families:
    """Lazily created families, so an empty one is never emitted (the Collector's sink)."""

    def __init__(self) -> None:
        self.items: dict[str, Metric] = {}

    def add(self, short: str, labels: Pairs, value: float, extra: Pairs = ()) -> None:
        m = self.items.get(short)
        if m is None:
            typ, doc = FAMILIES[short]
            m = self.items[short] = Metric(P + short, doc, typ)
        name = P + short + ("_total" if m.type == "counter" else "")
        m.add_sample(name, dict(labels + extra), float(value))


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


_INF = math.inf
_NINF = -math.inf
_INFS = (_INF, _NINF)


def _number(x: float) -> str:
    if x != x:
        return "NaN"
    if x == _INF:
        return "+Inf"
    if x == _NINF:
        return "-Inf"
    return repr(float(x))


#: family -> its sample name
_NAMES = {short: P + short + ("_total" if typ == "counter" else "") for short, (typ, _) in FAMILIES.items()}
#: extra label pairs -> their escaped ``,k="v"`` text: a small vocabulary (reasons, sources,
#: quantiles, codes) shared by every target; emptied if it ever grows past 4,096 entries
_EXTRA: SharedTable[Pairs, str] = SharedTable(4096)
#: the names the traversal gives series as extra labels; a series with another extra name, or
#: under shared labels that name one of these, is rendered the slow way (still correct)
_EXTRA_NAMES = frozenset(
    ("reason", "mode", "version", "schema", "exposer", "family", "code", "severity", "finished_reason")
    + ("source", "tier", "quantile", "block_size", "num_gpu_blocks", "prefix_caching_hash_algo")
    + ("kv_offloading_backend",)
)


def _text(pairs: Pairs) -> str:
    """Escaped ``k="v",...`` of label pairs, a later pair of a name replacing the earlier's value."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in dict(pairs).items())


def _extra(extra: Pairs) -> str | None:
    """``,k="v"...`` of a series' own labels; None if one is not in :data:`_EXTRA_NAMES`."""
    text = _EXTRA.get(extra)
    if text is None:
        if any(k not in _EXTRA_NAMES for k, _ in extra):
            return None
        text = _EXTRA.add(extra, "".join(f',{k}="{_escape(v)}"' for k, v in extra))
    return text


class _Lines:
    """The renderer's sink: exposition lines per family. Label sets barely change between
    scrapes, only values do: the escaped text of a run of series' shared labels (an engine's
    window, say: the traversal hands in one tuple for the run, so it is looked up once per run)
    is kept in ``labels`` (one per target, kept by the caller between snapshots), and a series'
    own extra labels come from :data:`_EXTRA`; only the value is formatted per scrape (3-4x
    less CPU than formatting every label of every series, a real 0.32 target). Texts per run,
    not per series: 3-4 KiB per target on top of its 13-17 KiB fragment, where a text per
    series measured ~35 KiB, a second copy of the fragment (tracemalloc)."""

    def __init__(self, labels: LabelCache | None = None) -> None:
        self.items: defaultdict[str, list[str]] = defaultdict(list)
        self.labels: LabelCache = {} if labels is None else labels
        self.runs = 0
        self._pairs: Pairs | None = None
        self._text: str | None = None

    def add(self, short: str, labels: Pairs, value: float, extra: Pairs = ()) -> None:
        if labels is not self._pairs:
            self._pairs = labels
            self._text = self.labels.get(labels, "")  # "" is no run's text: not cached yet
            if self._text == "":
                clash = not labels or any(k in _EXTRA_NAMES for k, _ in labels)
                self._text = self.labels[labels] = None if clash else _text(labels)
            self.runs += 1
        text = self._text
        if extra and text is not None:
            tail = _extra(extra)
            text = None if tail is None else text + tail
        if text is None:
            text = _text(labels + extra)
        if value != value or value in _INFS:
            self.items[short].append(f"{_NAMES[short]}{{{text}}} {_number(value)}\n")
        else:  # as _number, inline: this runs once per series
            self.items[short].append(f"{_NAMES[short]}{{{text}}} {float(value)!r}\n")


def render_target(s: TargetSnapshot, static: Pairs = (), labels: LabelCache | None = None) -> dict[str, str]:
    """One target's series as text, per family: rendered when its snapshot changes, so that
    serving /metrics is a join, whatever the number of targets. ``labels`` is the target's
    cache of label texts (:class:`TargetRenderer` keeps one); it is emptied when it holds more
    than twice the runs rendered, so labels that come and go cannot grow it without end."""
    sink = _Lines(labels)
    _target(sink, s, static)
    if len(sink.labels) > 2 * sink.runs + 16:
        sink.labels.clear()
    return {k: "".join(v) for k, v in sink.items.items()}


class TargetRenderer:
    """One target's fragment for its latest snapshot, and the label texts kept between its
    snapshots (what makes re-rendering after each scrape cheap)."""

    def __init__(self) -> None:
        self._snapshot: TargetSnapshot | None = None
        self._fragment: dict[str, str] = {}
        self._labels: LabelCache = {}

    def fragment(self, s: TargetSnapshot, static: Pairs = ()) -> dict[str, str]:
        """The fragment of ``s``, rendered only if ``s`` is not the snapshot rendered last."""
        if s is not self._snapshot:
            self._fragment = render_target(s, static, self._labels)
            self._snapshot = s
        return self._fragment


def render(
    fragments: Iterable[dict[str, str]],
    static: tuple[tuple[str, str], ...] = (),
    status: ServiceStatus | None = None,
    openmetrics: bool = False,
) -> str:
    """The sidecar's families from pre-rendered target fragments, in text 0.0.4 or OpenMetrics
    (sample lines are identical; only HELP/TYPE naming differs). ``# EOF`` is the caller's."""
    head = _Lines()
    head.add("build_info", (("version", _version()),), 1)
    if status is not None:
        _status(head, static, status)
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


_Q50: Pairs = (("quantile", "0.5"),)
_Q90: Pairs = (("quantile", "0.9"),)
_Q99: Pairs = (("quantile", "0.99"),)


def _engine(f: _Families | _Lines, base: Pairs, e: EngineState, replica: bool) -> None:
    lab = (*base, ("model_name", e.model_name), ("engine", e.engine))
    if replica:
        lab = (*lab, ("replica", e.replica))
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
        f.add("request_success", lab, val, (("finished_reason", reason),))
    for source, val in c.hits_by_source:
        f.add("prefix_cache_hits_by_source", lab, val, (("source", source),))
    lifetime = (*lab, ("window", "lifetime"))
    if c.prefix_queries is not None or c.v0_hit_rate is not None:
        f.add("prefix_cache_hit_ratio", lifetime, e.lifetime_hit_ratio)
    _tiers(f, lifetime, e)
    for w in e.windows:
        wl = (*lab, ("window", w.window))
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
            f.add("requests_per_second", wl, w.rate(n), (("finished_reason", reason),))
        for phase, stats in w.latency:
            pl = (*wl, ("phase", phase))
            f.add("latency_mean_seconds", pl, stats.mean)
            for q, v in ((_Q50, stats.p50), (_Q90, stats.p90), (_Q99, stats.p99)):
                f.add("latency_seconds", pl, v, q)


def _tiers(f: _Families | _Lines, wl: Pairs, e: EngineState, w: WindowStats | None = None) -> None:
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
            f.add("prefix_cache_hit_ratio_by_source", wl, r, (("source", src),))
    if external is not None:
        f.add("external_prefix_cache_hit_ratio", wl, external)
    for tier, r in tiers:
        f.add("offload_tier_hit_ratio", wl, r, (("tier", tier),))


def _target(f: _Families | _Lines, s: TargetSnapshot, static: Pairs) -> None:
    base = (*static, *s.labels, ("target", s.name))
    if not s.scraped:
        return  # no scrape yet, no evidence either way: absent, as Prometheus' own ``up``
    f.add("target_up", base, 1.0 if s.up else 0.0)
    if s.scrape_duration is not None:
        f.add("scrape_duration_seconds", base, s.scrape_duration)
    errors = dict(s.scrape_errors)
    for reason in REASONS:
        f.add("scrape_errors", base, errors.get(reason, 0), (("reason", reason),))
    if s.last_success is not None:
        f.add("last_scrape_success_timestamp_seconds", base, s.last_success)
    f.add("target_restarts", base, s.restarts)
    if s.scrape_mode is not None:
        for mode in ("filtered", "full"):
            f.add("scrape_mode", base, 1.0 if s.scrape_mode == mode else 0.0, (("mode", mode),))
    if s.scraped and s.last_success is not None:
        info = (("version", s.version or "unknown"), ("schema", s.schema), ("exposer", s.exposer))
        f.add("vllm_info", base, 1, info)
    for family, n in s.out_of_range:
        f.add("out_of_range_values", base, n, (("family", family),))
    for d in s.diagnoses:
        f.add("diagnosis", base, 1, (("code", d.code), ("severity", d.severity)))
    if not s.up:
        return  # never serve the last good numbers as if they were fresh
    replica = bool(s.identity_labels)
    for cfg in s.cache_configs:
        el = (*base, ("engine", cfg.engine), *((("replica", cfg.replica),) if replica else ()))
        if cfg.enable_prefix_caching is not None:
            f.add("prefix_caching_enabled", el, 1.0 if cfg.enable_prefix_caching else 0.0)
        config = (
            ("block_size", "" if cfg.block_size is None else str(cfg.block_size)),
            ("num_gpu_blocks", "" if cfg.num_gpu_blocks is None else str(cfg.num_gpu_blocks)),
            ("prefix_caching_hash_algo", cfg.hash_algo or ""),
            ("kv_offloading_backend", cfg.kv_offloading_backend or ""),
        )
        f.add("cache_config_info", el, 1, config)
    for e in s.engines:
        _engine(f, base, e, replica)


def _status(f: _Families | _Lines, st: Pairs, status: ServiceStatus) -> None:
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
    f.add("build_info", (("version", _version()),), 1)
    if status is not None:
        _status(f, static, status)
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
