"""Grafana dashboards: importable as is, datasource as a variable, filterable, readable.

Whether every query returns data is proven on a real Prometheus in
tests/integration/test_prometheus_e2e.py; that every metric name exists in what the sidecar
exports, in tests/unit/test_names_guard.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASH_DIR = REPO / "dashboards"
FILES = ["vllm-cache-overview.json", "vllm-cache-pod.json"]
DS = {"type": "prometheus", "uid": "${datasource}"}
FILTER_VARS = ("namespace", "pod", "model_name")


def load(name: str) -> dict[str, Any]:
    return json.loads((DASH_DIR / name).read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping anywhere in the JSON."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


@pytest.fixture(params=FILES)
def dash(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_committed_json_is_what_build_py_generates():
    res = subprocess.run(
        [sys.executable, str(DASH_DIR / "build.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_importable_as_is(dash: dict[str, Any]):
    assert "__inputs" not in dash and "__requires" not in dash
    assert "${DS_" not in json.dumps(dash)
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 36
    assert dash.get("id") is None
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_datasource_is_a_variable_and_no_uid_is_hard_coded(dash: dict[str, Any]):
    ds = variables(dash)["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for node in walk(dash):
        if "datasource" in node:
            assert node["datasource"] == DS, node.get("title") or node.get("name")
    for p in dash["panels"]:
        assert p["datasource"] == DS, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS, p["title"]


def test_filter_variables_query_sidecar_series_and_include_all(dash: dict[str, Any]):
    vs = variables(dash)
    for name in FILTER_VARS:
        v = vs[name]
        assert v["type"] == "query" and v["datasource"] == DS
        assert re.fullmatch(r"label_values\(vllm_sidecar_\w+(\{[^}]*\})?, " + name + r"\)", v["query"]), v[
            "query"
        ]
        assert v["definition"] == v["query"]
        assert v["includeAll"] is True
        # ".*" rather than Grafana's value list: also matches series without the label
        assert v["allValue"] == ".*"


def test_every_panel_has_description_unit_and_thresholds(dash: dict[str, Any]):
    for p in dash["panels"]:
        assert p["type"] != "row", "row panels carry no datasource; keep the layout flat"
        assert len(p.get("description", "")) > 20, p["title"]
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), p["title"]
        steps = defaults["thresholds"]["steps"]
        assert steps and steps[0]["value"] is None, p["title"]
        assert p["targets"], p["title"]


def test_units_fit_the_series(dash: dict[str, Any]):
    for p in dash["panels"]:
        unit = p["fieldConfig"]["defaults"]["unit"]
        text = " ".join(t["expr"] for t in p["targets"])
        if "hit_ratio" in text or "prefix_cache_hits_total" in text and "/" in text:
            if "lookups" not in p["title"].lower():
                assert unit == "percentunit", p["title"]
        if "kv_cache_usage" in text:
            assert unit == "percentunit", p["title"]
        if "latency" in text or "scrape_duration" in text:
            assert unit == "s", p["title"]
        if "tokens_total" in text:
            assert "tok/s" in unit, p["title"]


def test_ratio_panels_are_bounded_0_to_1(dash: dict[str, Any]):
    for p in dash["panels"]:
        d = p["fieldConfig"]["defaults"]
        if d["unit"] == "percentunit" and "delta" not in p["targets"][0]["expr"]:
            assert (d.get("min"), d.get("max")) == (0, 1), p["title"]


def test_queries_filter_on_the_variables_with_regex_matchers(dash: dict[str, Any]):
    for title, expr in exprs(dash):
        assert "vllm:" not in expr, f"{title}: raw vLLM name"
        # every variable used in a matcher is a regex matcher: multi-value and All both work
        for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*\$[^"]*)"', expr):
            assert m.group(2) == "=~", f"{title}: {m.group(0)}"
        for name in re.findall(r"\b(vllm_sidecar_\w+)\{", expr):
            sel = expr.split(name + "{", 1)[1].split("}", 1)[0]
            assert 'namespace=~"$namespace"' in sel and 'pod=~"$pod"' in sel, (title, name)
        # $__rate_interval only inside range selectors; $window never as a range
        assert "[$window]" not in expr and "[$__interval]" not in expr, title


def test_model_name_filter_only_on_series_that_have_it(dash: dict[str, Any]):
    no_model = (
        "target_up",
        "prefix_caching_enabled",
        "diagnosis",
        "vllm_info",
        "cache_config_info",
        "scrape_",
        "restarts",
        "last_scrape",
    )
    for title, expr in exprs(dash):
        for name, sel in re.findall(r"\b(vllm_sidecar_\w+)\{([^}]*)\}", expr):
            if any(k in name for k in no_model):
                assert "model_name" not in sel, (title, name)


def test_layout_fits_the_grid_without_overlap(dash: dict[str, Any]):
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps"
                cells.add((x, y))


def _all_exprs(name: str) -> str:
    return "\n".join(e for _, e in exprs(load(name)))


def test_overview_has_every_panel_the_fleet_needs():
    d = load("vllm-cache-overview.json")
    titles = [p["title"] for p in d["panels"]]
    text = _all_exprs("vllm-cache-overview.json")
    assert any("hit ratio per pod" in t.lower() for t in titles)
    assert any("fleet" in t.lower() for t in titles)
    assert any("kv-cache usage per pod" in t.lower() for t in titles)
    for needle in (
        "vllm_sidecar_prefix_caching_enabled",
        "vllm_sidecar_cache_config_info",
        "vllm_sidecar_diagnosis",
        'phase="ttft"',
        'phase="e2e"',
        '"0.5|0.99"',
        "vllm_sidecar_prompt_tokens_total",
        "vllm_sidecar_generation_tokens_total",
        "vllm_sidecar_requests_waiting",
        "vllm_sidecar_target_restarts_total",
        "vllm_sidecar_target_up",
    ):
        assert needle in text, needle
    tables = [p for p in d["panels"] if p["type"] == "table"]
    assert {"Config flags", "Active diagnoses"} <= {p["title"] for p in tables}
    assert all(t["instant"] and t["format"] == "table" for p in tables for t in p["targets"])


def test_fleet_ratios_are_ratios_of_sums():
    for name in FILES:
        for title, expr in exprs(load(name)):
            if "prefix_cache_hits_total" in expr and "/" in expr:
                assert "avg" not in expr, title
                num, den = expr.split("\n/\n")
                assert num.startswith("sum") and den.startswith("sum"), title


def test_pod_dashboard_goes_in_depth_on_one_pod():
    d = load("vllm-cache-pod.json")
    vs = variables(d)
    assert vs["pod"]["multi"] is False and vs["target"]["multi"] is False
    text = _all_exprs("vllm-cache-pod.json")
    for needle in (
        'window="lifetime"',
        "vllm_sidecar_kv_cache_usage_delta",
        'phase="queue"',
        "vllm_sidecar_latency_mean_seconds",
        "vllm_sidecar_request_success_total",
        "vllm_sidecar_preemptions_total",
        "vllm_sidecar_scrape_errors_total",
        "vllm_sidecar_external_prefix_cache_queries_total",
        "engine",
    ):
        assert needle in text, needle
    for _, expr in exprs(d):
        for sel in re.findall(r"vllm_sidecar_\w+\{([^}]*)\}", expr):
            assert 'target=~"$target"' in sel, expr
