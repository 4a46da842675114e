"""The typed state every consumer reads: exporter, status page, JSON API, doctor, offline report.

These are immutable snapshots: the scrape loop builds a new one per scrape and swaps it in, so
readers never see half-updated state and never need a lock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NAN = float("nan")

# Scrape failure reasons (fixed by the contract).
REASONS = ("timeout", "connect", "http_status", "too_large", "parse", "no_vllm_metrics")

# Severities, in increasing order.
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Window:
    """A look-back window, labelled exactly as the user wrote it (``1m``)."""

    label: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram: ``bounds`` (upper bounds, ascending) and their cumulative counts."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float
    count: float

    @property
    def buckets(self) -> tuple[tuple[float, float], ...]:
        """(upper bound, cumulative count) pairs."""
        return tuple(zip(self.bounds, self.counts))


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """One engine's vLLM metrics from one scrape, under era-independent names.

    ``None`` means this vLLM did not expose the value.
    """

    model_name: str
    engine: str
    #: the target's identity labels on this engine's samples, ``name=value`` pairs sorted by name
    #: and joined by ``,`` (contract "Identity"); empty where the target has none
    replica: str = ""
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    external_queries: float | None = None
    external_hits: float | None = None
    v0_hit_rate: float | None = None  # V0 cumulative block hit-rate gauge; -1 = caching off
    kv_usage: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    preemptions: float | None = None
    running: float | None = None
    waiting: float | None = None
    request_success: tuple[tuple[str, float], ...] = ()
    #: ``vllm:prompt_tokens_cached_by_source`` (0.32+): (source, tokens), sources sorted
    hits_by_source: tuple[tuple[str, float], ...] = ()
    #: ``vllm:kv_offload_tiering_chunk_{queries,hits}`` (0.28+): (tier, chunks), tiers sorted
    tier_queries: tuple[tuple[str, float], ...] = ()
    tier_hits: tuple[tuple[str, float], ...] = ()
    ttft: Histogram | None = None
    e2e: Histogram | None = None
    queue: Histogram | None = None
    prompt_len: Histogram | None = None
    #: ``_created`` of the counters, where exposed: a change means vLLM restarted
    created: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """The engine's identity: model_name, engine and the replica string."""
        return (self.model_name, self.engine, self.replica)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``vllm:cache_config_info`` of one engine."""

    engine: str
    enable_prefix_caching: bool | None
    block_size: int | None = None
    #: hybrid models: the prefix granularity that can hit, where vLLM sets it
    prefix_match_unit: int | None = None
    replica: str = ""
    num_gpu_blocks: int | None = None
    hash_algo: str | None = None
    kv_offloading_backend: str | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """A sample the sidecar refused as impossible (contract "Impossible values").

    ``family`` is vLLM's family as exposed, without ``_total``; ``value`` is what vLLM said.
    """

    family: str
    model_name: str
    engine: str
    replica: str
    value: float
    why: str  # e.g. "outside 0..1", "below 0", "NaN", "hits above queries (1200 > 1000)"
    #: the family's own dimension where it has one, e.g. ``source="host"`` (for people)
    detail: str = ""

    @property
    def series(self) -> str:
        """The refused series as a person reads it: ``family{detail}``."""
        return f"{self.family}{{{self.detail}}}" if self.detail else self.family


#: who exposes the vLLM numbers (``vllm_sidecar_vllm_info{exposer}``)
EXPOSERS = ("vllm", "ray-serve", "production-stack-router")


@dataclass(frozen=True, slots=True)
class Normalised:
    """Everything the sidecar reads from one ``/metrics`` body."""

    engines: tuple[EngineMetrics, ...] = ()
    cache_configs: tuple[CacheConfig, ...] = ()
    schema: str = "none"
    legacy_names: tuple[str, ...] = ()  # deprecated vLLM names seen in the body
    process_start: float | None = None
    vllm_series: int = 0  # how many vllm: samples the body held
    exposer: str = "vllm"
    #: label names that tell engines apart beyond model_name/engine (contract "Identity")
    identity_labels: frozenset[str] = frozenset()
    refused: tuple[Refused, ...] = ()
    #: ``vllm:admission_rejections_total`` (0.32+; no ``engine`` label), all reasons and models
    admission_rejections: float | None = None

    @property
    def has_vllm(self) -> bool:
        return self.vllm_series > 0


@dataclass(frozen=True, slots=True)
class LatencyStats:
    mean: float = NAN
    p50: float = NAN
    p90: float = NAN
    p99: float = NAN

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99}


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What happened in one look-back window (restart-safe increases)."""

    window: str
    seconds: float  # the configured length
    span: float  # seconds actually covered by the samples used (0 with one sample)
    queries: float = 0.0
    hits: float = 0.0
    hit_ratio: float = NAN
    external_queries: float = 0.0
    external_hits: float = 0.0
    #: (source, hits) and (tier, (queries, hits)) increases in the window
    hits_by_source: tuple[tuple[str, float], ...] = ()
    tiers: tuple[tuple[str, tuple[float, float]], ...] = ()
    kv_usage_delta: float | None = None
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    requests: tuple[tuple[str, float], ...] = ()  # finished requests by reason
    latency: tuple[tuple[str, LatencyStats], ...] = ()  # ttft / e2e / queue
    mean_prompt_tokens: float = NAN
    prompts_finished: float = 0.0  # requests in ``vllm:request_prompt_tokens`` in the window
    resets: int = 0

    def rate(self, amount: float) -> float:
        return amount / self.span if self.span > 0 else NAN

    @property
    def external_hit_ratio(self) -> float:
        return ratio(self.external_hits, self.external_queries)

    def source_ratios(self) -> tuple[tuple[str, float], ...]:
        """Each source's hits over the window's prefix-cache queries (NaN without queries)."""
        return tuple((src, ratio(h, self.queries)) for src, h in self.hits_by_source)

    def tier_ratios(self) -> tuple[tuple[str, float], ...]:
        return tuple((tier, ratio(h, q)) for tier, (q, h) in self.tiers)

    @property
    def any_tier_hit(self) -> bool:
        """Did any tier serve a hit in the window: local, KV connector, by source or an offload
        tier (whichever this vLLM exposes)?"""
        return (
            self.hits > 0
            or self.external_hits > 0
            or any(h > 0 for _, h in self.hits_by_source)
            or any(h > 0 for _, (_, h) in self.tiers)
        )

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.rate(self.prompt_tokens)

    @property
    def generation_tokens_per_second(self) -> float:
        return self.rate(self.generation_tokens)

    @property
    def preemptions_per_second(self) -> float:
        return self.rate(self.preemptions)


@dataclass(frozen=True, slots=True)
class EngineState:
    """Derived state of one (model_name, engine) of a target."""

    model_name: str
    engine: str
    current: EngineMetrics
    replica: str = ""
    lifetime_hit_ratio: float = NAN
    windows: tuple[WindowStats, ...] = ()
    #: (unix time, hit ratio between this sample and the previous one) over the longest window;
    #: a flat sequence t0, r0, t1, r1, ... (one array per snapshot instead of a tuple per point)
    ratio_series: Sequence[float] = ()

    @property
    def ratio_points(self) -> tuple[tuple[float, float], ...]:
        s = self.ratio_series
        return tuple(zip(s[0::2], s[1::2]))

    def window(self, label: str) -> WindowStats | None:
        for w in self.windows:
            if w.window == label:
                return w
        return None

    @property
    def v0(self) -> bool:
        return self.current.prefix_queries is None and self.current.v0_hit_rate is not None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One finding of the contract's table: ``code`` and ``severity`` are fixed strings."""

    code: str
    severity: str
    summary: str  # one line with the numbers that triggered it
    evidence: tuple[tuple[str, Any], ...] = ()

    def evidence_dict(self) -> dict[str, Any]:
        return dict(self.evidence)


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """The sidecar's whole view of one target after its latest scrape."""

    name: str
    url: str  # redacted
    labels: tuple[tuple[str, str], ...] = ()
    scraped: bool = False  # at least one scrape finished (success or not)
    up: bool = False
    last_scrape: float | None = None
    last_success: float | None = None
    scrape_duration: float | None = None
    last_error: str | None = None
    last_error_reason: str | None = None
    scrape_errors: tuple[tuple[str, int], ...] = ()
    restarts: int = 0
    version: str | None = None
    schema: str = "none"
    exposer: str = "vllm"
    #: the target's identity labels so far (they stay for the target's life)
    identity_labels: tuple[str, ...] = ()
    #: impossible samples refused in the last scrape (what vLLM said), and counts by family
    refused: tuple[Refused, ...] = ()
    out_of_range: tuple[tuple[str, int], ...] = ()
    legacy_names: tuple[str, ...] = ()
    engines: tuple[EngineState, ...] = ()
    cache_configs: tuple[CacheConfig, ...] = ()
    diagnoses: tuple[Diagnosis, ...] = ()
    windows: tuple[str, ...] = ()
    #: unix times of vLLM restarts seen within the longest window
    restart_times: tuple[float, ...] = ()
    #: ``filtered`` (asks vLLM only for the samples read) or ``full``; None before any scrape
    scrape_mode: str | None = None

    @property
    def prefix_caching_enabled(self) -> bool | None:
        flags = [c.enable_prefix_caching for c in self.cache_configs if c.enable_prefix_caching is not None]
        if not flags:
            return None
        return all(flags)

    @property
    def worst_severity(self) -> str | None:
        worst = None
        for d in self.diagnoses:
            if worst is None or SEVERITIES.index(d.severity) > SEVERITIES.index(worst):
                worst = d.severity
        return worst


def ratio(hits: float, queries: float) -> float:
    """hits/queries clamped to 0..1; NaN without queries."""
    if queries <= 0 or math.isnan(queries) or math.isnan(hits):
        return NAN
    return min(1.0, max(0.0, hits / queries))


def finite(x: float | None) -> float | None:
    """``None`` for NaN/None, so JSON stays valid."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and math.isinf(x):
        return None
    return x


@dataclass
class ScrapeOutcome:
    """What one scrape produced: either a parsed body or a failure with its reason."""

    started: float
    duration: float
    normalised: Normalised | None = None
    reason: str | None = None  # one of REASONS on failure
    error: str | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None
