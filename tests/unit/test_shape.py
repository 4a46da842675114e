"""The normaliser's per-target memo (:class:`sidecar.normalize.Shape`): the same result, cheaper.

A body holding exactly the series of the last one is folded with the ops learnt then. These tests
prove the result never differs from a fresh normalise, on every real capture, on values mutated
into impossible ones, and when the series change; and that the memo is actually used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.normalize import WANTED, Shape, normalise
from sidecar.parser import ParseError, Sample, parse
from sidecar.scrape import Memo, parse_body
from testkit.bodies import multi_engine, ray_body, set_value
from testkit.captures import capture_bodies, capture_folders

CTYPE = "text/plain; version=0.0.4; charset=utf-8"
V32 = "vllm-0.32.0/prefix_on_shared"


def samples(body: bytes | str) -> list[Sample]:
    return parse(body, CTYPE, WANTED).samples


def fresh_and_memo(bodies: Sequence[bytes | str]) -> tuple[list[object], list[object], int]:
    """Each body normalised fresh and through one Shape, the identity growing as a tracker's does;
    both in comparable form (:func:`canon`: NaN-safe, sets sorted), and how many bodies the memo
    recalled."""
    shape, identity = Shape(), frozenset[str]()
    fresh, memo, recalled = [], [], 0
    for body in bodies:
        s = samples(body)
        recalled += shape.recall(s, identity, True) is not None
        fresh.append(canon(normalise(s, identity=identity)))
        n = normalise(s, identity=identity, shape=shape)
        memo.append(canon(n))
        identity = n.identity_labels
    return fresh, memo, recalled


@pytest.mark.parametrize("folder", capture_folders())
def test_every_capture_folds_the_same_with_the_memo(folder: str) -> None:
    bodies: list[bytes | str] = list(capture_bodies(folder))
    fresh, memo, _ = fresh_and_memo(bodies + bodies[::-1])
    assert memo == fresh


def test_the_memo_is_used_while_the_series_stay() -> None:
    body = capture_bodies(V32)[-1]
    bodies = [set_value(body, "vllm:prefix_cache_queries_total", float(v)) for v in (1e5, 2e5, 3e5)]
    fresh, memo, recalled = fresh_and_memo(bodies)
    assert memo == fresh
    assert recalled == 2  # learnt from the first body, recalled for the next two
    assert ("prefix_queries", "300000.0") in dict(memo[-1])["engines"][0]  # type: ignore[index]


def test_identity_labels_learnt_late_are_kept() -> None:
    """A Ray body: WorkerId is identity; the tracker passes it back in the next scrape, and the
    memo still applies (the union is what was learnt)."""
    bodies = [ray_body({"a": (10, 5), "b": (20, 10)}), ray_body({"a": (11, 5), "b": (22, 11)})]
    fresh, memo, recalled = fresh_and_memo(bodies)
    assert memo == fresh
    assert recalled == 1


def test_a_new_identity_label_from_the_tracker_is_not_recalled() -> None:
    s = samples(capture_bodies(V32)[-1])
    shape = Shape()
    normalise(s, shape=shape)
    assert shape.recall(s, frozenset({"pod"}), True) is None
    assert shape.recall(s, frozenset(), False) is None
    assert shape.recall(s, frozenset(), True) is not None


def test_changed_series_are_relearnt() -> None:
    """Another model name, one engine more, one series fewer: each folds as fresh."""
    body = capture_bodies(V32)[-1]
    text = body.decode()
    two = multi_engine([body, body])
    fewer = "\n".join(ln for ln in text.split("\n") if not ln.startswith("vllm:num_requests_waiting"))
    renamed = text.replace('model_name="', 'model_name="other-')
    fresh, memo, recalled = fresh_and_memo([body, renamed, two, body, fewer, renamed, renamed])
    assert memo == fresh
    assert recalled == 1  # only the last: every other body changed its series


def test_a_duplicate_after_a_learnt_shape_still_fails() -> None:
    body = capture_bodies(V32)[-1].decode()
    line = next(ln for ln in body.split("\n") if ln.startswith("vllm:prefix_cache_hits_total"))
    shape = Shape()
    normalise(samples(body), shape=shape)
    with pytest.raises(ParseError, match="duplicate series"):
        normalise(samples(body + line + "\n"), shape=shape)


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1.5, math.nan, math.inf]),
)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_values_in_learnt_series_fold_as_fresh(data: st.DataObject) -> None:
    """Same series, arbitrary values (negative, NaN, infinite, hits above queries): refused and
    kept values are exactly those of a fresh normalise."""
    base = samples(capture_bodies(V32)[-1])
    shape = Shape()
    normalise(base, shape=shape)
    mutated = [(n, lab, data.draw(VALUES) if data.draw(st.booleans()) else v) for n, lab, v in base]
    assert shape.recall(mutated, frozenset(), True) is not None
    assert canon(normalise(mutated, shape=shape)) == canon(normalise(mutated))


HIST = "vllm:time_to_first_token_seconds"


def hist_body(first_le: str) -> str:
    return (
        f'{HIST}_bucket{{engine="0",le="{first_le}",model_name="m"}} 1\n'
        f'{HIST}_bucket{{engine="0",le="+Inf",model_name="m"}} 2\n'
        f'{HIST}_sum{{engine="0",model_name="m"}} 1\n'
        f'{HIST}_count{{engine="0",model_name="m"}} 2\n'
    )


def test_le_minus_zero_is_not_recalled_as_zero() -> None:
    """``le="-0"`` and ``le="0"`` are equal floats, so their learnt ops compared equal and were
    interned as one: the third body folded with the first one's bound 0.0 instead of -0.0."""
    fresh, memo, _ = fresh_and_memo([hist_body("0"), hist_body("-0"), hist_body("-0")])
    assert "('-0.0', 'inf')" in str(fresh[-1])  # canon: floats by repr
    assert memo == fresh


def test_a_huge_body_is_not_learnt_and_the_shared_table_stays_bounded() -> None:
    """A target answering a new body of thousands of series each scrape must not leave each one
    in the interning table (bounded by entries only, a few thousand such shapes stayed)."""
    from sidecar import normalize

    def body(i: int, n: int) -> list[Sample]:
        return [("vllm:cpu_cache_usage_perc", (("i", f"{i}-{j}"),), 1.0) for j in range(n)]

    huge = body(0, normalize._LEARN_MAX_SAMPLES + 1)
    shape = Shape()
    assert canon(normalise(huge, shape=shape)) == canon(normalise(huge))
    assert shape.static is None
    for i in range(12):
        normalise(body(i, 9_000), shape=shape)
        held = sum(len(v) for v in normalize._INTERNED.table.values() if isinstance(v, tuple)) // 2
        assert held <= normalize._INTERNED.max_cost


#: sample lines up to their value: engines, identity labels, histograms (``le`` spelt several
#: ways), unread and unwanted names, label values holding ``} `` and ``" ``, hostile spacing
LINE_HEADS = [
    'vllm:prefix_cache_queries_total{engine="0",model_name="m"} ',
    'vllm:prefix_cache_hits_total{engine="0",model_name="m"} ',
    'vllm:prefix_cache_queries_total{engine="1",model_name="m",pod="a"} ',
    'vllm:prefix_cache_queries_total{engine="1",model_name="m",pod="b} 1"} ',
    'vllm:prefix_cache_queries_created{engine="0",model_name="m"} ',
    'vllm:kv_cache_usage_perc{engine="0",model_name="m\\" 1"} ',
    'vllm:num_requests_running{server="s1"} ',
    'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} ',
    'vllm:admission_rejections_total{reason="full"} ',
    *(f'{HIST}_bucket{{engine="0",le="{le}",model_name="m"}} ' for le in ("0", "-0", "1", "1.0", "+Inf")),
    f'{HIST}_count{{engine="0",model_name="m"}} ',
    'vllm:cache_config_info{block_size="16",engine="0",enable_prefix_caching="True"} ',
    "process_start_time_seconds ",
    'ray_vllm_num_requests_running{WorkerId="w1"} ',
    'vllm:estimated_flops_per_gpu_total{engine="0"} ',
    "other_metric ",
    'vllm:num_requests_waiting {engine="0"} ',
    " vllm:num_requests_waiting ",
]
OTHER_LINES = ["# HELP vllm:x y", "", "# EOF", "# EOF x", "\r", "vllm:bad-name 1", "rest"]
LINE_VALUES = ["1", "2", "0", "-0", "-1", "NaN", "+Inf", "1_0", "1 17", "\u0661", "1\r", " 1", "1\x1c", ""]
N_LINES = len(LINE_HEADS) + len(OTHER_LINES)
OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def canon(x: object) -> object:
    """A comparable form of an outcome: floats by repr (NaN, -0.0), sets sorted."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return tuple((f.name, canon(getattr(x, f.name))) for f in dataclasses.fields(x))
    if isinstance(x, (frozenset, set)):
        return tuple(sorted(map(repr, x)))
    if isinstance(x, dict):
        return tuple(sorted((repr(k), canon(v)) for k, v in x.items()))
    if isinstance(x, (tuple, list)):
        return tuple(canon(i) for i in x)
    return repr(x) if isinstance(x, float) else x


@st.composite
def scrapes(draw: st.DrawFn) -> list[tuple[int, str, str]]:
    """(target, body, content type): bodies that mostly repeat their target's lines with new values."""
    layouts = [draw(st.lists(st.integers(0, N_LINES - 1), min_size=1, max_size=6))]
    out = []
    for _ in range(draw(st.integers(2, 8))):
        if draw(st.integers(0, 3)) == 0:  # a new layout, or another target's
            layouts.append(draw(st.lists(st.integers(0, N_LINES - 1), max_size=6)))
        lines = []
        for i in draw(st.sampled_from(layouts)):
            if i < len(LINE_HEADS):
                lines.append(LINE_HEADS[i] + draw(st.sampled_from(LINE_VALUES[:4] * 3 + LINE_VALUES)))
            else:
                lines.append(OTHER_LINES[i - len(LINE_HEADS)])
        ctype = draw(st.sampled_from([CTYPE, OM_TYPE]))
        out.append((draw(st.integers(0, 1)), "\n".join(lines) + "\n", ctype))
    return out


@settings(max_examples=150, deadline=None)
@given(scrapes())
def test_scrape_sequences_read_the_same_with_and_without_memos(seq: list[tuple[int, str, str]]) -> None:
    """Two targets (one memo each, the interning tables shared) scrape random sequences; each
    outcome equals the memo-less one, the identity growing as the tracker's does."""
    memos, identity = [Memo(), Memo()], [frozenset[str](), frozenset[str]()]
    for t, body, ctype in seq:
        with_memo = parse_body(body.encode(), ctype, 0.0, 0.0, identity[t], memos[t])
        fresh = parse_body(body.encode(), ctype, 0.0, 0.0, identity[t])
        assert canon(with_memo) == canon(fresh)
        if fresh.normalised is not None:
            identity[t] |= fresh.normalised.identity_labels
