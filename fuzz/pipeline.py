"""Target ``pipeline``: several bodies -> parse + normalise -> one tracker observation each ->
rendered series, checking the contract's invariants after every observation.

The input is split on NUL bytes into at most :data:`MAX_BODIES` bodies, scraped 15 s apart (a body
holding ``# EOF`` is served as OpenMetrics). Each invariant is a small named function; an
invariant that does not hold raises :class:`Violation` (a crash for libFuzzer).
``FUZZ_INVARIANTS=name,name`` checks only those (default: all of :data:`INVARIANTS`).

    python -m fuzz.pipeline -atheris_runs=100000 fuzz/corpus/pipeline
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from fuzz.common import instrumented, main

with instrumented(__name__ == "__main__"):
    from sidecar.derive import TargetTracker
    from sidecar.exporter import render_target
    from sidecar.model import ScrapeOutcome, TargetSnapshot, Window
    from sidecar.parser import ParseError, parse
    from sidecar.scrape import Memo, parse_body

SEP = b"\x00"
MAX_BODIES = 8
STEP = 15.0
T0 = 1_800_000_000.0
WINDOWS = (Window("1m", 60.0), Window("5m", 300.0))
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"
P = "vllm_sidecar_"
#: the contract's identity labels that always separate engines (see contract.md "Identity")
IDENTITY_LABELS = ("server", "ReplicaId", "WorkerId")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Violation(AssertionError):
    """An invariant of the contract does not hold."""


@dataclass(frozen=True)
class Step:
    """One observation: what went in and what came out."""

    body: bytes
    content_type: str
    snapshot: TargetSnapshot
    text: str  # the target's rendered series
    series: Series  # the same, parsed back: (name, sorted labels) -> value
    read: str  # repr of the scrape outcome, read with the target's memo
    fresh: str  # repr of the same body's outcome read without a memo


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise Violation(what)


def _in_unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


# ---------------------------------------------------------------- invariants


def rendered_text_parses(prev: Step | None, cur: Step) -> None:
    """The exporter's output is valid exposition text: every line reads back as its own series
    (a ParseError while reading it back is a crash too; fewer series means a duplicate)."""
    _check(cur.text.count("\n") == len(cur.series), "rendered series missing or duplicated")


def hit_ratios_in_unit_interval(prev: Step | None, cur: Step) -> None:
    """Hit ratios are in [0, 1] or NaN: in the snapshot and in the exported series."""
    for e in cur.snapshot.engines:
        for r in (e.lifetime_hit_ratio, *(w.hit_ratio for w in e.windows)):
            _check(math.isnan(r) or _in_unit(r), f"snapshot hit ratio {r} of {e.model_name}/{e.engine}")
    for (name, labels), v in cur.series.items():
        if name == P + "prefix_cache_hit_ratio":
            _check(math.isnan(v) or _in_unit(v), f"exported hit ratio {v} {labels}")


def counters_never_decrease(prev: Step | None, cur: Step) -> None:
    """An exported counter never goes down between two observations unless a restart was counted
    in that same observation (vLLM's counters are passed through, so they drop when it restarts)."""
    if prev is None or cur.snapshot.restarts > prev.snapshot.restarts:
        return
    for key, v in cur.series.items():
        old = prev.series.get(key)
        if key[0].endswith("_total") and old is not None:
            _check(not v < old, f"counter {key} went from {old} to {v} without a restart")


def own_counters_never_decrease(prev: Step | None, cur: Step) -> None:
    """The sidecar's own counters (errors, restarts) never go down, restart or not."""
    if prev is None:
        return
    for key, v in cur.series.items():
        if key[0] in (P + "scrape_errors_total", P + "target_restarts_total") and key in prev.series:
            _check(v >= prev.series[key], f"own counter {key} went from {prev.series[key]} to {v}")


def no_negative_or_nan_counter(prev: Step | None, cur: Step) -> None:
    """Impossible values: no exported counter below 0 or NaN."""
    for (name, labels), v in cur.series.items():
        if name.endswith("_total"):
            _check(v >= 0.0, f"counter {name}{labels} exported as {v}")


def kv_usage_in_unit_interval(prev: Step | None, cur: Step) -> None:
    """Impossible values: no exported KV-cache usage outside [0, 1] (NaN is not a usage either)."""
    for (name, labels), v in cur.series.items():
        if name == P + "kv_cache_usage_ratio":
            _check(_in_unit(v), f"kv usage {v} exported {labels}")


def hits_not_above_queries(prev: Step | None, cur: Step) -> None:
    """Impossible values: exported prefix-cache hits never above the queries of the same series."""
    for (name, labels), hits in cur.series.items():
        if name == P + "prefix_cache_hits_total":
            queries = cur.series.get((P + "prefix_cache_queries_total", labels))
            if queries is not None:
                _check(not hits > queries, f"hits {hits} above queries {queries} {labels}")


def running_waiting_not_negative(prev: Step | None, cur: Step) -> None:
    """Impossible values: running or waiting requests never exported below 0."""
    for (name, labels), v in cur.series.items():
        if name in (P + "requests_running", P + "requests_waiting"):
            _check(not v < 0.0, f"{name} {v} exported {labels}")


def identities_not_merged(prev: Step | None, cur: Step) -> None:
    """Identity: engines that differ in ``server``/``ReplicaId``/``WorkerId`` are never merged, so
    a body with N such identities (valid query counters) exports at least N query series."""
    if not cur.snapshot.up:
        return
    # vLLM's names in the normaliser's order: new before deprecated, and each as ``_total`` before
    # its bare name (``LLM.get_metrics()``), read only where the ones before it are absent
    q_names = (
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_queries",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries",
    )
    h_names = tuple(n.replace("queries", "hits") for n in q_names)
    try:
        samples = parse(cur.body, cur.content_type, {*q_names, *h_names}).samples
    except ParseError:
        return

    def key(labels: tuple[tuple[str, str], ...]) -> tuple[object, ...]:
        lab = dict(labels)
        return (
            lab.get("model_name", ""),
            lab.get("engine") or "0",
            tuple(lab.get(k) for k in IDENTITY_LABELS),
        )

    def first(names: tuple[str, ...]) -> dict[tuple[object, ...], float]:
        """Per engine identity, the value of the first name that has one."""
        out: dict[tuple[object, ...], float] = {}
        for n in reversed(names):
            out.update({key(labels): value for name, labels, value in samples if name == n})
        return out

    queries, hits = first(q_names), first(h_names)
    # valid queries, and not refused with its hits (hits above queries: both refused)
    identities = {k for k, v in queries.items() if v >= 0 and not math.isinf(v) and not hits.get(k, 0) > v}
    exported = sum(1 for name, _ in cur.series if name == P + "prefix_cache_queries_total")
    _check(
        exported >= len(identities),
        f"{len(identities)} engine identities exported as {exported} query series",
    )


def memo_reads_as_fresh(prev: Step | None, cur: Step) -> None:
    """The target's memo (``scrape.Memo``: parser ``Layout``, normaliser ``Shape``) only makes a
    body cheaper to read: the outcome is exactly the one without it (NaN-safe, by repr)."""
    _check(cur.read == cur.fresh, f"memo path differs: {cur.read[:300]!r} != {cur.fresh[:300]!r}")


INVARIANTS: dict[str, Callable[[Step | None, Step], None]] = {
    f.__name__: f
    for f in (
        rendered_text_parses,
        hit_ratios_in_unit_interval,
        counters_never_decrease,
        own_counters_never_decrease,
        no_negative_or_nan_counter,
        kv_usage_in_unit_interval,
        hits_not_above_queries,
        running_waiting_not_negative,
        identities_not_merged,
        memo_reads_as_fresh,
    )
}


def selected() -> list[Callable[[Step | None, Step], None]]:
    names = [n.strip() for n in os.environ.get("FUZZ_INVARIANTS", "").split(",") if n.strip()]
    unknown = set(names) - set(INVARIANTS)
    if unknown:
        raise SystemExit(f"FUZZ_INVARIANTS: unknown invariant(s) {sorted(unknown)}")
    return [INVARIANTS[n] for n in names] if names else list(INVARIANTS.values())


CHECKS = selected()


# ---------------------------------------------------------------- the pipeline


def read_back(text: str) -> Series:
    """The rendered series as (name, sorted labels) -> value; a ParseError here is a finding."""
    parsed = parse(text, TEXT, lambda name: True)
    return {(n, tuple(sorted(lab))): v for n, lab, v in parsed.samples}


def observe(tracker: TargetTracker, memo: Memo, body: bytes, i: int) -> Step:
    """One scrape as the service makes it: the tracker's identity and the target's memo."""
    ctype = OM if b"# EOF" in body else TEXT
    fresh = parse_body(body, ctype, T0 + i * STEP, 0.01, tracker.identity_labels)
    outcome = parse_body(body, ctype, T0 + i * STEP, 0.01, tracker.identity_labels, memo)
    snap = tracker.observe(outcome)
    text = "".join(render_target(snap).values())
    return Step(body, ctype, snap, text, read_back(text), comparable(outcome), comparable(fresh))


def comparable(outcome: ScrapeOutcome) -> str:
    """An outcome as text to compare (NaN-safe), its identity labels sorted: a frozenset's repr
    follows its insertion history, which two equal sets need not share."""
    n = outcome.normalised
    if n is None:
        return repr(outcome)
    return repr(replace(outcome, normalised=replace(n, identity_labels=frozenset()))) + repr(
        sorted(n.identity_labels)
    )


def test_one_input(data: bytes, checks: list[Callable[[Step | None, Step], None]] | None = None) -> None:
    tracker = TargetTracker("fuzz", WINDOWS, url="http://127.0.0.1:8000/metrics")
    memo = Memo()
    prev = None
    for i, body in enumerate(data.split(SEP)[:MAX_BODIES]):
        cur = observe(tracker, memo, body, i)
        for check in CHECKS if checks is None else checks:
            check(prev, cur)
        prev = cur


if __name__ == "__main__":
    main(test_one_input)
