"""Prefix-cache statistics for offline ``vllm.LLM`` runs, with the service's own derivation.

Why: batch jobs and notebooks use ``vllm.LLM`` without an HTTP server, so there is no
``/metrics`` to scrape; yet the question is the same (did the prefix cache hit?). vLLM keeps the
same Prometheus registry in-process and hands it out as ``LLM.get_metrics()``. This module turns
those ``Metric`` objects into exactly the samples the parser would produce from ``/metrics``
(counters get their ``_total``, histograms their ``_bucket``/``_sum``/``_count``), and feeds them
through :func:`sidecar.normalize.normalise` and :class:`sidecar.derive.TargetTracker`, so the
numbers and diagnoses are those the service would report.

    from sidecar.offline import OfflineCollector
    with OfflineCollector(llm, interval=1.0) as stats:   # samples llm.get_metrics() in the background
        llm.generate(prompts, params)
    report = stats.report()
    stats.print_table()

The whole ``with`` block is one window (labelled ``run``): counts are increases from the sample
taken on entry to the one taken on exit, restart-safe like the service's.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from .derive import TargetTracker
from .diagnose import CODES
from .model import Diagnosis, ScrapeOutcome, TargetSnapshot, Window
from .normalize import normalise
from .parser import Sample

#: the single window covering the ``with`` block (longer than any run)
RUN_WINDOW = Window("run", 10 * 365 * 86400.0)


def _labels(labels: dict[str, Any] | None, **extra: str) -> tuple[tuple[str, str], ...]:
    merged = {str(k): str(v) for k, v in (labels or {}).items()}
    merged.update(extra)
    return tuple(sorted(merged.items()))


def _total(name: str) -> str:
    return name if name.endswith("_total") else name + "_total"


def samples_from_metrics(metrics: Iterable[Any]) -> list[Sample]:
    """vLLM ``Metric`` objects (``vllm.v1.metrics.reader``) -> the parser's ``Sample`` tuples.

    Duck-typed on the reader's dataclasses: ``buckets`` means Histogram, ``values`` Vector,
    ``value`` Counter or Gauge (told apart by class name, since both carry ``value``).
    """
    out: list[Sample] = []
    for m in metrics:
        name, labels = m.name, getattr(m, "labels", None) or {}
        kind = type(m).__name__
        if hasattr(m, "buckets"):
            for le, count in m.buckets.items():
                out.append((name + "_bucket", _labels(labels, le=_le(le)), float(count)))
            out.append((name + "_sum", _labels(labels), float(m.sum)))
            out.append((name + "_count", _labels(labels), float(m.count)))
        elif hasattr(m, "values"):
            for pos, v in enumerate(m.values):
                out.append((_total(name), _labels(labels, position=str(pos)), float(v)))
        elif kind == "Counter":
            out.append((_total(name), _labels(labels), float(m.value)))
        else:
            out.append((name, _labels(labels), float(m.value)))
    return out


def _le(le: Any) -> str:
    s = str(le)
    return "+Inf" if s.lower() in ("inf", "+inf") else s


def _vllm_version() -> str | None:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # vLLM missing or broken: the collector still works on given metrics
        return None


class OfflineCollector:
    """Samples ``llm.get_metrics()`` every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, llm: Any, interval: float = 1.0, name: str = "offline") -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.llm = llm
        self.interval = interval
        self.tracker = TargetTracker(name, (RUN_WINDOW,), url="vllm.LLM")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = _vllm_version()
        self.samples = 0
        self.errors = 0
        self.last_error: str | None = None
        self.kv_usage_max = 0.0
        self.pressure_seen: Diagnosis | None = None  # kv_cache_pressure seen during the block
        self.started: float | None = None
        self.finished: float | None = None

    # -- sampling ------------------------------------------------------------------------------
    def sample(self) -> TargetSnapshot:
        """Take one sample now (also called by the background thread)."""
        t0 = time.time()
        try:
            metrics = self.llm.get_metrics()
            norm = normalise(samples_from_metrics(metrics), check_duplicates=False)
            outcome = ScrapeOutcome(
                started=t0, duration=time.time() - t0, normalised=norm, version=self._version
            )
            if not norm.has_vllm:
                outcome.normalised, outcome.reason = None, "no_vllm_metrics"
                outcome.error = "get_metrics() returned no vllm: metrics (disable_log_stats?)"
        except AssertionError as exc:  # vLLM: ``assert self.log_stats, "Stat logging disabled"``
            outcome = ScrapeOutcome(
                started=t0,
                duration=time.time() - t0,
                reason="no_vllm_metrics",
                error=f"vLLM records no metrics ({exc}): pass disable_log_stats=False to LLM(...)",
            )
        except Exception as exc:  # the engine may be shutting down: record, keep going
            outcome = ScrapeOutcome(
                started=t0, duration=time.time() - t0, reason="parse", error=f"{type(exc).__name__}: {exc}"
            )
        with self._lock:
            snap = self.tracker.observe(outcome)
            self.samples += 1
            if not outcome.ok:
                self.errors += 1
                self.last_error = outcome.error
            for e in snap.engines:
                if e.current.kv_usage is not None:
                    self.kv_usage_max = max(self.kv_usage_max, e.current.kv_usage)
            for d in snap.diagnoses:
                if d.code == "kv_cache_pressure":
                    self.pressure_seen = d
        return snap

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> OfflineCollector:
        self.started = time.time()
        self.sample()  # the baseline: counts are increases from here
        self._thread = threading.Thread(target=self._run, name="sidecar-offline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        self.finished = time.time()

    def __enter__(self) -> OfflineCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results -------------------------------------------------------------------------------
    def snapshot(self) -> TargetSnapshot:
        with self._lock:
            return self.tracker.snapshot

    def report(self) -> dict[str, Any]:
        """The block's figures as a plain dict (the contract's keys first)."""
        if self._thread is not None:  # still inside the block: include what happened so far
            self.sample()
        snap = self.snapshot()
        runs = [w for e in snap.engines for w in e.windows if w.window == RUN_WINDOW.label]
        queries = sum(w.queries for w in runs)
        hits = sum(w.hits for w in runs)
        diagnoses = list(snap.diagnoses)
        if self.pressure_seen is not None and all(d.code != "kv_cache_pressure" for d in diagnoses):
            diagnoses.append(self.pressure_seen)
        end = self.finished or time.time()
        return {
            "prefix_cache_queries": int(round(queries)),
            "prefix_cache_hits": int(round(hits)),
            "prefix_cache_hit_ratio": (hits / queries) if queries > 0 else math.nan,
            "prefix_caching_enabled": snap.prefix_caching_enabled,
            "kv_cache_usage_max": float(self.kv_usage_max),
            "diagnoses": [d.code for d in diagnoses],
            # extras
            "diagnosis_details": [
                {"code": d.code, "severity": d.severity, "summary": d.summary} for d in diagnoses
            ],
            "prompt_tokens": int(round(sum(w.prompt_tokens for w in runs))),
            "generation_tokens": int(round(sum(w.generation_tokens for w in runs))),
            "preemptions": int(round(sum(w.preemptions for w in runs))),
            "lifetime_prefix_cache_queries": int(sum(e.current.prefix_queries or 0 for e in snap.engines)),
            "lifetime_prefix_cache_hits": int(sum(e.current.prefix_hits or 0 for e in snap.engines)),
            "block_size": next((c.block_size for c in snap.cache_configs if c.block_size), None),
            "engines": [e.engine for e in snap.engines],
            "model_names": sorted({e.model_name for e in snap.engines}),
            "vllm_version": snap.version,
            "schema": snap.schema,
            "restarts": snap.restarts,
            "samples": self.samples,
            "sample_errors": self.errors,
            "duration_seconds": (end - self.started) if self.started else 0.0,
        }

    def table(self) -> str:
        return format_report(self.report())

    def print_table(self, file: TextIO | None = None) -> None:
        print(self.table(), file=file or sys.stdout)


def _fmt_ratio(x: float) -> str:
    return "n/a (no queries)" if x is None or math.isnan(x) else f"{x:.1%}"


def format_report(report: dict[str, Any]) -> str:
    """A compact, human-readable table of :meth:`OfflineCollector.report`."""
    flag = report.get("prefix_caching_enabled")
    rows = [
        ("prefix caching", "unknown" if flag is None else ("on" if flag else "OFF")),
        ("hit ratio", _fmt_ratio(report.get("prefix_cache_hit_ratio", math.nan))),
        (
            "cache hits / queries",
            f"{report.get('prefix_cache_hits', 0)} / {report.get('prefix_cache_queries', 0)} tokens",
        ),
        (
            "prompt / generated",
            f"{report.get('prompt_tokens', 0)} / {report.get('generation_tokens', 0)} tokens",
        ),
        ("KV usage (max)", f"{report.get('kv_cache_usage_max', 0.0):.1%}"),
        ("preemptions", str(report.get("preemptions", 0))),
        ("block size", str(report.get("block_size") or "?")),
        ("duration", f"{report.get('duration_seconds', 0.0):.1f} s, {report.get('samples', 0)} samples"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    details = report.get("diagnosis_details") or [
        {"code": c, "severity": CODES.get(c, "?"), "summary": ""} for c in report.get("diagnoses", [])
    ]
    if details:
        lines.append("diagnoses:")
        lines += [f"  [{d['severity']}] {d['code']}: {d['summary']}" for d in details]
    else:
        lines.append("diagnoses: none")
    return "\n".join(lines)
