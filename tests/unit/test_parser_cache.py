"""The parser's label-set cache never changes what a body parses to."""

from __future__ import annotations

import pytest

from sidecar import parser
from sidecar.parser import ParseError, parse

OM = "application/openmetrics-text; version=1.0.0"


def test_cached_label_set_parses_like_a_fresh_one():
    parser._LABELS.clear()
    line = 'vllm:kv_cache_usage_perc{engine="0",model_name="a,b}c"} 0.5\n'
    first = parse(line).samples
    assert len(parser._LABELS) == 1
    assert (
        parse(line).samples
        == first
        == [("vllm:kv_cache_usage_perc", (("engine", "0"), ("model_name", "a,b}c")), 0.5)]
    )


def test_exemplar_braces_are_not_taken_for_the_label_set():
    parser._LABELS.clear()
    body = (
        'vllm:prefix_cache_hits_total{engine="0"} 4.0 # {trace_id="x"} 1.0\n'
        'vllm:prefix_cache_hits_total{engine="1"} 5.0\n# EOF\n'
    )
    for _ in range(2):  # second round from the cache
        assert parse(body, OM).samples == [
            ("vllm:prefix_cache_hits_total", (("engine", "0"),), 4.0),
            ("vllm:prefix_cache_hits_total", (("engine", "1"),), 5.0),
        ]


def test_a_malformed_label_set_still_fails_after_good_ones_were_cached():
    parser._LABELS.clear()
    parse('vllm:kv_cache_usage_perc{engine="0"} 1\n')
    with pytest.raises(ParseError) as err:
        parse('vllm:kv_cache_usage_perc{engine="0} 1\n')
    assert err.value.line == 1


def test_cache_is_bounded(monkeypatch):
    parser._LABELS.clear()
    monkeypatch.setattr(parser._LABELS, "max_entries", 3)
    body = "".join(f'vllm:kv_cache_usage_perc{{engine="{i}"}} 1\n' for i in range(10))
    assert len(parse(body).samples) == 10
    assert len(parser._LABELS) <= 3
