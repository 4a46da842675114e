"""The per-target render cache (label texts kept between snapshots) gives byte for byte the text of
formatting every label of every series afresh, over real captures scraped in turn, with hostile
label values, labels that override one another, and label sets that change between snapshots."""

from __future__ import annotations

from dataclasses import replace

from sidecar import _version, exporter
from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker
from sidecar.exporter import FAMILIES, P, Pairs, TargetRenderer, render, render_target
from sidecar.model import ScrapeOutcome, TargetSnapshot
from sidecar.scrape import parse_body
from testkit.bodies import multi_engine, set_value
from testkit.captures import load_capture

HOSTILE = 'a"b\\c\nd,e{f}=<script>alert(1)</script>'
FOLDERS = (
    "vllm-0.32.0/prefix_on_shared",
    "vllm-0.32.0/prefix_off",
    "vllm-0.32.0/concurrent",
    "vllm-0.10.1.1.post2/prefix_on_shared",
    "vllm-0.8.5.post2-v0-hidden/prefix_on_shared",
)


class Plain:
    """The reference sink: every label of every series escaped and formatted for each line, as
    the exporter did before it kept label texts (a later label of a name replaces the earlier's
    value in place, as ``{**a, **b}``; numbers as ``repr(float)``, NaN and +-Inf spelled out)."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}

    def add(self, short: str, labels: Pairs, value: float, extra: Pairs = ()) -> None:
        name = P + short + ("_total" if FAMILIES[short][0] == "counter" else "")
        lab = ",".join(f'{k}="{exporter._escape(v)}"' for k, v in dict(labels + extra).items())
        self.items.setdefault(short, []).append(f"{name}{{{lab}}} {exporter._number(value)}\n")


def reference(s: TargetSnapshot, static: Pairs) -> dict[str, str]:
    sink = Plain()
    exporter._target(sink, s, static)  # type: ignore[arg-type]
    return {k: "".join(v) for k, v in sink.items.items()}


def scraped_in_turn(folder: str, labels: Pairs = (("role", HOSTILE),)) -> list[TargetSnapshot]:
    """A tracker's snapshot after each capture of ``folder``, the captures taken twice over (so
    windows fill and counters reset once), as the service renders them one after another; every
    other one with a scrape mode, as the service sets it; the last a failed scrape."""
    tr = TargetTracker(folder, parse_windows("1m,5m"), labels=labels)
    out = []
    for i, c in enumerate(load_capture(folder) * 2):
        snap = tr.observe(parse_body(c.body, c.content_type, 1000 + 5 * i, 0.01))
        out.append(replace(snap, scrape_mode=("filtered", "full")[i % 2]) if i % 3 else snap)
    out.append(tr.observe(ScrapeOutcome(2000, 0.2, reason="timeout", error="slow")))
    return out


def test_cached_render_is_byte_identical_to_formatting_every_label() -> None:
    static = (("pod", "p-0"), ("role", "static, overridden by the target's"))
    lines = 0
    for folder in FOLDERS:
        renderer = TargetRenderer()
        for snap in scraped_in_turn(folder):
            want = reference(snap, static)
            assert renderer.fragment(snap, static) == want, folder
            assert render_target(snap, static) == want, folder
            lines += sum(text.count("\n") for text in want.values())
    assert lines > 3000  # the captures gave series to compare


def test_shared_labels_that_extra_labels_override_render_as_before() -> None:
    """A static label named like a series' own label (``block_size`` is not reserved) is replaced
    in place, as before; it takes the slow path, byte for byte the same."""
    static = (("block_size", "static"), ("mode", "x"))
    renderer = TargetRenderer()
    for snap in scraped_in_turn("vllm-0.32.0/prefix_on_shared")[:-1]:
        got = renderer.fragment(snap, static)
        assert got == reference(snap, static)
    config = got["cache_config_info"]  # the series' own value, where the static one was: first
    assert config.startswith('vllm_sidecar_cache_config_info{block_size="128",mode="x",')
    assert 'block_size="static"' in got["target_up"]


def test_label_sets_that_change_between_snapshots_and_a_bounded_cache() -> None:
    """Each scrape under a new model name (hostile ones too) re-renders the changed labels and
    keeps the cache bounded, never serving a stale label."""
    body = load_capture("vllm-0.32.0/prefix_on_shared")[-1].body
    tr = TargetTracker("t", parse_windows("1m"))
    cache: exporter.LabelCache = {}
    sizes = []
    for i in range(40):
        name = f'm{i}"\\{HOSTILE}' if i % 3 else "tiny"
        quoted = f'model_name="{exporter._escape(name)}"'.encode()
        one = set_value(body, "vllm:prefix_cache_hits_total", i).replace(b'model_name="tiny"', quoted)
        snap = tr.observe(parse_body(multi_engine([one, body]), None, 10 * i, 0.01))
        got = render_target(snap, (), cache)
        assert got == reference(snap, ())
        sizes.append(len(cache))
    # 27 model names, 3 label runs each: kept all, it would reach 9 + 3 * 26 = 87
    assert max(sizes) <= 4 * sizes[0] + 16


def test_every_label_the_traversal_adds_per_series_takes_the_fast_path() -> None:
    """Every extra label name the exporter gives a series on the captures is one the cache
    knows, so none falls back to formatting all labels per line."""
    seen: set[str] = set()

    class Names(Plain):
        def add(self, short: str, labels: Pairs, value: float, extra: Pairs = ()) -> None:
            seen.update(k for k, _ in extra)

    for folder in FOLDERS:
        for snap in scraped_in_turn(folder):
            exporter._target(Names(), snap, (("pod", "p"),))  # type: ignore[arg-type]
    assert {"finished_reason", "quantile", "reason", "mode", "code", "block_size"} <= seen
    assert seen <= exporter._EXTRA_NAMES


def test_the_head_of_the_body_is_unchanged() -> None:
    """``render`` of no targets: build info and reload status, as formatted per label."""
    status = exporter.ServiceStatus(False, 12.5, 3, "bad")
    body = render([], (("pod", "p"),), status)
    version = exporter._escape(_version())
    assert f'vllm_sidecar_build_info{{version="{version}"}} 1.0\n' in body
    assert 'vllm_sidecar_config_last_reload_successful{pod="p"} 0.0\n' in body
    assert 'vllm_sidecar_config_reload_failures_total{pod="p"} 3.0\n' in body
    assert render([], ()).startswith("# HELP vllm_sidecar_build_info")
