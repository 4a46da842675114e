"""The normaliser's per-target memo (:class:`sidecar.normalize.Shape`): the same result, cheaper.

A body holding exactly the series of the last one is folded with the ops learnt then. These tests
prove the result never differs from a fresh normalise, on every real capture, on values mutated
into impossible ones, and when the series change; and that the memo is actually used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.normalize import WANTED, Shape, normalise
from sidecar.parser import ParseError, Sample, parse
from testkit.bodies import multi_engine, ray_body, set_value
from testkit.captures import capture_bodies, capture_folders

CTYPE = "text/plain; version=0.0.4; charset=utf-8"
V32 = "vllm-0.32.0/prefix_on_shared"


def samples(body: bytes | str) -> list[Sample]:
    return parse(body, CTYPE, WANTED).samples


def fresh_and_memo(bodies: Sequence[bytes | str]) -> tuple[list[str], list[str], int]:
    """Each body normalised fresh and through one Shape, the identity growing as a tracker's does;
    the reprs (NaN-safe) of both, and how many bodies the memo recalled."""
    shape, identity = Shape(), frozenset[str]()
    fresh, memo, recalled = [], [], 0
    for body in bodies:
        s = samples(body)
        recalled += shape.recall(s, identity, True) is not None
        fresh.append(repr(normalise(s, identity=identity)))
        n = normalise(s, identity=identity, shape=shape)
        memo.append(repr(n))
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
    assert "prefix_queries=300000.0" in memo[-1]


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
    assert repr(normalise(mutated, shape=shape)) == repr(normalise(mutated))
