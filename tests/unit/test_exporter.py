"""The fast renderer against prometheus_client's exposition of the same snapshots (the reference),
and what the exporter shows for each kind of target."""

from __future__ import annotations

import math

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from sidecar.config.settings import TargetConfig, parse_windows
from sidecar.derive import TargetTracker
from sidecar.exporter import (
    FAMILIES,
    ServiceStatus,
    SnapshotCollector,
    exposition,
    render,
    render_target,
)
from sidecar.model import ScrapeOutcome
from sidecar.scrape import parse_body
from testkit.bodies import multi_engine, set_value
from testkit.captures import load_capture

HOSTILE = 'a"b\\c\nd,e{f}=<script>alert(1)</script>'


def snapshots():
    out = []
    for folder in (
        "vllm-0.32.0/prefix_on_shared",
        "vllm-0.32.0/prefix_off",
        "vllm-0.32.0/concurrent",
        "vllm-0.10.1.1.post2/prefix_on_shared",
        "vllm-0.8.5.post2-v0-hidden/prefix_on_shared",
    ):
        tr = TargetTracker(folder, parse_windows("1m,5m"), labels=(("role", HOSTILE),))
        for i, c in enumerate(load_capture(folder)):
            tr.observe(parse_body(c.body, c.content_type, 1000 + 5 * i, 0.01))
        out.append(tr.snapshot)
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    hostile = set_value(body, "vllm:prefix_cache_hits_total", 1).replace(
        b'model_name="tiny"', b'model_name="x\\"y\\\\z\\n"'
    )
    tr = TargetTracker(HOSTILE, parse_windows("1m"))
    tr.observe(parse_body(multi_engine([hostile, body]), None, 0, 0.01))
    out.append(tr.snapshot)
    dead = TargetTracker("dead", parse_windows("1m"))
    dead.observe(ScrapeOutcome(0, 0.2, reason="connect", error="refused"))
    out.append(dead.snapshot)
    return out


def as_set(families) -> set:
    out = set()
    for fam in families:
        for s in fam.samples:
            v = "NaN" if math.isnan(s.value) else s.value
            out.add((s.name, tuple(sorted(s.labels.items())), v))
    return out


@pytest.mark.parametrize("openmetrics", [False, True])
def test_fast_render_equals_prometheus_client_exposition(openmetrics):
    snaps = snapshots()
    static = (("pod", "p-0"), ("namespace", "ns"))
    status = ServiceStatus(False, 123.0, 2, "bad")
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snaps, static, status=lambda: status))
    frags = [render_target(s, static) for s in snaps]
    ours = render(frags, static, status, openmetrics=openmetrics)
    if openmetrics:
        ref = om_generate(reg).decode()
        mine = list(om_parse(ours + "# EOF\n"))
        theirs = list(om_parse(ref))
    else:
        ref = generate_latest(reg).decode()
        mine = list(text_string_to_metric_families(ours))
        theirs = list(text_string_to_metric_families(ref))
    assert as_set(mine) == as_set(theirs)
    assert sorted((f.name, f.type, f.documentation) for f in mine) == sorted(
        (f.name, f.type, f.documentation) for f in theirs
    )


class Fixed:
    """A collector of families collected once (process metrics move between two collects)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_exposition_is_the_reference_registry_with_the_process_metrics(openmetrics):
    """The whole body equals prometheus_client rendering one registry that holds the snapshots'
    collector and the process collectors: the same samples and families, one ``# EOF`` last."""
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector

    snaps = snapshots()
    static = (("pod", "p-0"),)
    status = ServiceStatus(True, 99.0, 0, None)
    collectors = CollectorRegistry(auto_describe=False)
    PlatformCollector(registry=collectors)
    GCCollector(registry=collectors)
    process = list(collectors.collect())
    assert process, "prometheus_client gave no process families to hand in"
    body = exposition(
        [render_target(s, static) for s in snaps], static, status, openmetrics, process
    ).decode()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snaps, static, status=lambda: status))
    reg.register(Fixed(process))
    parse = om_parse if openmetrics else text_string_to_metric_families
    ref = (om_generate if openmetrics else generate_latest)(reg).decode()
    mine, theirs = list(parse(body)), list(parse(ref))
    assert as_set(mine) == as_set(theirs)
    assert [f.name for f in mine][-len(process) :] == [f.name for f in theirs][-len(process) :]
    assert body.count("# EOF") == (1 if openmetrics else 0)
    assert body.endswith("# EOF\n" if openmetrics else "\n")


def test_every_family_is_documented():
    doc = open("docs/metrics.md").read()
    for short in FAMILIES:
        name = "vllm_sidecar_" + short + ("_total" if FAMILIES[short][0] == "counter" else "")
        assert f"`{name}`" in doc, name


def test_dead_target_exports_health_only():
    snap = [s for s in snapshots() if s.name == "dead"][0]
    names = {
        line.split("{")[0]
        for frag in [render_target(snap)]
        for text in frag.values()
        for line in text.splitlines()
    }
    assert names == {
        "vllm_sidecar_target_up",
        "vllm_sidecar_scrape_duration_seconds",
        "vllm_sidecar_scrape_errors_total",
        "vllm_sidecar_target_restarts_total",
        "vllm_sidecar_diagnosis",
    }


def test_v0_has_lifetime_ratio_only():
    snap = [s for s in snapshots() if "v0" in s.name][0]
    text = "".join(render_target(snap).values())
    ratios = [ln for ln in text.splitlines() if ln.startswith("vllm_sidecar_prefix_cache_hit_ratio")]
    assert len(ratios) == 1 and 'window="lifetime"' in ratios[0]
    assert "vllm_sidecar_prefix_cache_queries_total" not in text


def test_static_and_target_labels_on_every_series():
    snap = snapshots()[0]
    text = "".join(render_target(snap, (("pod", "p"),)).values())
    for line in text.splitlines():
        assert 'pod="p"' in line and 'target="' in line and "role=" in line


def test_target_config_labels_reach_the_tracker():
    t = TargetConfig(name="x", url="http://h:1/metrics", labels=(("team", "a"),))
    tr = TargetTracker(t.name, parse_windows("1m"), labels=t.labels)
    assert render_target(tr.snapshot) == {}  # not scraped yet: no evidence, no series
    tr.observe(ScrapeOutcome(0, 0.1, reason="connect", error="refused"))
    assert 'team="a"' in "".join(render_target(tr.snapshot).values())
