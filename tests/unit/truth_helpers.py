"""Small helpers shared by the issue-10 tests: feed bodies through the real pure pipeline."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker
from sidecar.exporter import render_target
from sidecar.model import TargetSnapshot
from sidecar.scrape import parse_body


def tracker(windows: str = "1m,5m") -> TargetTracker:
    return TargetTracker("t", parse_windows(windows))


def observe(tr: TargetTracker, body: bytes | str, t: float) -> TargetSnapshot:
    raw = body.encode() if isinstance(body, str) else body
    outcome = parse_body(raw, None, t, 0.01, tr.identity_labels)
    assert outcome.ok, outcome.error
    return tr.observe(outcome)


def run(bodies: list, times: list[float] | None = None, windows: str = "1m,5m") -> TargetSnapshot:
    tr = tracker(windows)
    snap = tr.snapshot
    for i, b in enumerate(bodies):
        snap = observe(tr, b, times[i] if times else 1000.0 + 5 * i)
    return snap


def exported(snap: TargetSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The rendered series, read back with prometheus_client's parser (the exact reference)."""
    text = "".join(render_target(snap).values())
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def series(snap: TargetSnapshot, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        lab: v
        for (n, lab), v in exported(snap).items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    }


def codes(snap: TargetSnapshot) -> set[str]:
    return {d.code for d in snap.diagnoses}
