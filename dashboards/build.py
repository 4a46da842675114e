"""Generate the Grafana dashboards (vllm-cache-overview.json, vllm-cache-pod.json).

The JSON files are committed and importable as is; this script is their source so that every panel
gets the same datasource variable, selectors, units, thresholds and a description. Edit here, run
``python dashboards/build.py``, commit both. ``--check`` exits 1 when a committed file is stale.

Queries use only the sidecar's ``vllm_sidecar_*`` series (never raw ``vllm:`` names, which change
between vLLM versions) and no recording rules, so the dashboards work on any Prometheus that scrapes
the sidecar. Every label matcher on a variable is a regex (``=~``), so ``All`` (``.*``) also matches
series that lack ``namespace``/``pod`` (a sidecar without static labels).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}

# label selectors: target-level series carry no model_name
T_SEL = 'namespace=~"$namespace", pod=~"$pod"'
M_SEL = T_SEL + ', model_name=~"$model_name"'
POD_T_SEL = T_SEL + ', target=~"$target"'
POD_M_SEL = POD_T_SEL + ', model_name=~"$model_name"'
#: one vLLM: a pod's target, plus `replica` where the target is a router or Ray Serve port
BY_POD = "namespace, pod, target, model_name, replica"
LEGEND_POD = "{{target}} {{pod}} ({{model_name}}) {{replica}}"

RATIO_STEPS = [("red", None), ("orange", 0.1), ("green", 0.3)]
USAGE_STEPS = [("green", None), ("orange", 0.9), ("red", 0.95)]
NEUTRAL = [("green", None)]


# ----------------------------------------------------------------------------- building blocks
def _steps(steps: list[tuple[str, float | None]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False
) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
    }


class Layout:
    """Hands out ids and grid positions left to right, top to bottom (24 columns)."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> tuple[int, dict[str, int]]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        pid, self.next_id = self.next_id, self.next_id + 1
        return pid, pos


def _panel(
    lay: Layout,
    kind: str,
    title: str,
    desc: str,
    targets: list[dict[str, Any]],
    unit: str,
    steps: list[tuple[str, float | None]],
    w: int,
    h: int,
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    pid, pos = lay.place(w, h)
    d = {"unit": unit, "thresholds": _steps(steps), "color": {"mode": "palette-classic"}}
    d.update(defaults or {})
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": pos,
        "fieldConfig": {"defaults": d, "overrides": extra.pop("overrides", [])},
        "options": options or {},
        "targets": targets,
    }
    p.update(extra)
    return p


def timeseries(
    lay: Layout,
    title: str,
    desc: str,
    targets: list[dict[str, Any]],
    unit: str,
    steps: list[tuple[str, float | None]] = NEUTRAL,
    w: int = 12,
    h: int = 8,
    lo: float | None = None,
    hi: float | None = None,
    threshold_lines: bool = False,
    links: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "spanNulls": False,
        "showPoints": "never",
        "thresholdsStyle": {"mode": "line+area" if threshold_lines else "off"},
    }
    defaults: dict[str, Any] = {"custom": custom}
    if links:
        defaults["links"] = links  # data links: click a series to drill down
    if lo is not None:
        defaults["min"] = lo
    if hi is not None:
        defaults["max"] = hi
    opts = {
        "legend": {
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
            "calcs": ["lastNotNull", "max"],
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel(lay, "timeseries", title, desc, targets, unit, steps, w, h, defaults, opts, **extra)


def stat(
    lay: Layout,
    title: str,
    desc: str,
    targets: list[dict[str, Any]],
    unit: str,
    steps: list[tuple[str, float | None]],
    w: int = 4,
    h: int = 4,
    mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "auto",
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"color": {"mode": "thresholds"}, "mappings": mappings or []}
    if lo is not None:
        defaults["min"] = lo
    if hi is not None:
        defaults["max"] = hi
    opts = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": text_mode,
    }
    return _panel(lay, "stat", title, desc, targets, unit, steps, w, h, defaults, opts)


def table(
    lay: Layout,
    title: str,
    desc: str,
    targets: list[dict[str, Any]],
    unit: str,
    hide: list[str],
    rename: dict[str, str] | None = None,
    w: int = 12,
    h: int = 8,
    overrides: list[dict[str, Any]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    exclude = {name: True for name in hide}
    transformations = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {"excludeByName": exclude, "indexByName": {}, "renameByName": rename or {}},
        },
    ]
    defaults = {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}, "mappings": mappings or []}
    opts = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return _panel(
        lay,
        "table",
        title,
        desc,
        targets,
        unit,
        NEUTRAL,
        w,
        h,
        defaults,
        opts,
        overrides=overrides or [],
        transformations=transformations,
    )


def diagnoses_table(lay: Layout, title: str, desc: str, sel: str) -> dict[str, Any]:
    """Diagnosis series, plus a value-0 row for each target without any, so the table reads
    "healthy" instead of "No data" (and an empty table can no longer hide a broken query)."""
    expr = (
        f"vllm_sidecar_diagnosis{{{sel}}}\n"
        "or on (job, instance, namespace, pod, target)\n"
        f"(vllm_sidecar_target_up{{{sel}}} * 0)"
    )
    return table(
        lay,
        title,
        desc,
        [target(expr, instant=True, table=True)],
        "none",
        ["Time", "__name__", "job", "instance"],
        {"code": "diagnosis", "Value": "state"},
        overrides=[_color_text_override("severity", SEVERITY), _color_text_override("state", DIAG_STATE)],
    )


def _value_map(values: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                k: {"text": text, "color": color, "index": i}
                for i, (k, (text, color)) in enumerate(values.items())
            },
        }
    ]


def _color_text_override(field: str, mapping: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [
            {"id": "mappings", "value": mapping},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}},
        ],
    }


ON_OFF = _value_map({"1": ("on", "green"), "0": ("off", "red")})
UP_DOWN = _value_map({"1": ("up", "green"), "0": ("down", "red")})
SEVERITY = _value_map(
    {"critical": ("critical", "red"), "warning": ("warning", "orange"), "info": ("info", "blue")}
)
DIAG_STATE = _value_map({"1": ("active", "orange"), "0": ("healthy", "green")})


# ----------------------------------------------------------------------------- variables
def _query_var(
    name: str, label: str, query: str, multi: bool = True, include_all: bool = True, regex: str = ""
) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        "refresh": 2,
        "regex": regex,
        "sort": 1,
        "hide": 0,
        "multi": multi,
        "includeAll": include_all,
        "options": [],
        "skipUrlSync": False,
    }
    if include_all:
        # ".*" rather than a list of values: also matches series without the label at all
        v["allValue"] = ".*"
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        v["current"] = {}
    return v


def variables(pod_dashboard: bool) -> list[dict[str, Any]]:
    ds = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }
    out = [
        ds,
        _query_var("namespace", "Namespace", "label_values(vllm_sidecar_target_up, namespace)"),
        _query_var(
            "pod",
            "Pod",
            'label_values(vllm_sidecar_target_up{namespace=~"$namespace"}, pod)',
            multi=not pod_dashboard,
        ),
    ]
    sel = T_SEL
    if pod_dashboard:
        out.append(
            _query_var(
                "target", "Target", f"label_values(vllm_sidecar_target_up{{{T_SEL}}}, target)", multi=False
            )
        )
        sel = POD_T_SEL
    out.append(
        _query_var(
            "model_name", "Model", f"label_values(vllm_sidecar_kv_cache_usage_ratio{{{sel}}}, model_name)"
        )
    )
    # the sidecar's configured windows (1m, 5m by default); "lifetime" is not a window
    out.append(
        _query_var(
            "window",
            "Window",
            'label_values(vllm_sidecar_prefix_cache_hit_ratio{window!="lifetime"}, window)',
            multi=False,
            include_all=False,
        )
    )
    return out


def dashboard(
    uid: str, title: str, desc: str, panels: list[dict[str, Any]], pod_dashboard: bool
) -> dict[str, Any]:
    return {
        "title": title,
        "uid": uid,
        "description": desc,
        "tags": ["vllm", "prefix-cache", "vllm-cache-sidecar"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "title": "vLLM cache dashboards",
                "type": "dashboards",
                "tags": ["vllm-cache-sidecar"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": variables(pod_dashboard)},
        "panels": panels,
    }


def flags_table(lay: Layout, sel: str, desc: str, with_version: bool = False, **kw: Any) -> dict[str, Any]:
    """The config-flags table of both dashboards: prefix caching on/off (coloured) per engine,
    vLLM's cache configuration and, on the fleet view, the version and metric-name era."""
    targets = [
        target(f"vllm_sidecar_prefix_caching_enabled{{{sel}}}", instant=True, table=True),
        target(f"vllm_sidecar_cache_config_info{{{sel}}}", ref="B", instant=True, table=True),
    ]
    hidden = ["Time", "__name__", "job", "instance", "Value #B"]
    if with_version:
        targets.append(target(f"vllm_sidecar_vllm_info{{{sel}}}", ref="C", instant=True, table=True))
        hidden.append("Value #C")
    return table(
        lay,
        "Config flags",
        desc,
        targets,
        "none",
        hidden,
        {"Value #A": "prefix caching"},
        overrides=[_color_text_override("Value #A", ON_OFF), _color_text_override("prefix caching", ON_OFF)],
        **kw,
    )


def _hit_ratio_expr(by: str, sel: str) -> str:
    """sum(rate(hits)) / sum(rate(queries)): a traffic-weighted ratio, never a mean of ratios."""
    agg = f"sum by ({by})" if by else "sum"
    return (
        f"{agg} (rate(vllm_sidecar_prefix_cache_hits_total{{{sel}}}[$__rate_interval]))\n"
        f"/\n{agg} (rate(vllm_sidecar_prefix_cache_queries_total{{{sel}}}[$__rate_interval]))"
    )


POD_LINK = [
    {
        "title": "Open pod dashboard",
        "targetBlank": False,
        "url": "/d/vllm-cache-pod/vllm-cache-pod?${datasource:queryparam}"
        "&var-namespace=${__field.labels.namespace}&var-pod=${__field.labels.pod}"
        "&var-target=${__field.labels.target}&${__url_time_range}",
    }
]


# ----------------------------------------------------------------------------- overview
def overview() -> dict[str, Any]:
    lay = Layout()
    p: list[dict[str, Any]] = []
    p.append(
        stat(
            lay,
            "Fleet hit ratio (since start)",
            "Prefix-cache hits / queries in tokens over all selected pods since each vLLM started: "
            "sum(hits) / sum(queries), never a mean of per-pod ratios.",
            [
                target(
                    f"sum(vllm_sidecar_prefix_cache_hits_total{{{M_SEL}}})\n/\n"
                    f"sum(vllm_sidecar_prefix_cache_queries_total{{{M_SEL}}})",
                    "fleet",
                )
            ],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )
    p.append(
        stat(
            lay,
            "Fleet hit ratio (now)",
            "Prefix-cache hits / queries over all selected pods across the last rate interval: "
            "sum(rate(hits)) / sum(rate(queries)). Empty or NaN while there is no traffic.",
            [target(_hit_ratio_expr("", M_SEL), "fleet")],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )
    p.append(
        stat(
            lay,
            "Targets up",
            "vLLM targets whose last scrape by the sidecar succeeded, out of all targets. "
            "A target that is down has no fresh numbers on the other panels.",
            [
                target(f"sum(vllm_sidecar_target_up{{{T_SEL}}})", "up"),
                target(f"count(vllm_sidecar_target_up{{{T_SEL}}})", "total", ref="B"),
            ],
            "none",
            NEUTRAL,
            text_mode="value_and_name",
        )
    )
    p.append(
        stat(
            lay,
            "Targets down",
            "Targets whose last scrape failed or held no vLLM metrics "
            "(the VLLMSidecarTargetDown alert fires after 2 minutes).",
            [target(f"count(vllm_sidecar_target_up{{{T_SEL}}} == 0) or vector(0)", "down")],
            "none",
            [("green", None), ("red", 1)],
        )
    )
    p.append(
        stat(
            lay,
            "Max KV-cache usage",
            "The fullest engine's KV-cache usage among the selected pods. At 95% held for 10 "
            "minutes VLLMKVCacheSaturated fires.",
            [target(f"max(vllm_sidecar_kv_cache_usage_ratio{{{M_SEL}}})", "max")],
            "percentunit",
            USAGE_STEPS,
            lo=0,
            hi=1,
        )
    )
    p.append(
        stat(
            lay,
            "Warnings and criticals",
            "Active sidecar diagnoses of severity warning or critical (see the diagnoses table).",
            [
                target(
                    f'count(vllm_sidecar_diagnosis{{{T_SEL}, severity=~"warning|critical"}}) or vector(0)',
                    "findings",
                )
            ],
            "none",
            [("green", None), ("orange", 1)],
        )
    )

    p.append(
        timeseries(
            lay,
            "Prefix-cache hit ratio per pod",
            "Hits / queries (tokens) per pod and model over the rate interval, summed over "
            "data-parallel engines. Gaps mean no queries (no traffic, or caching off). Click a "
            "series to open the pod dashboard.",
            [target(_hit_ratio_expr(BY_POD, M_SEL), LEGEND_POD)],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
            links=POD_LINK,
        )
    )
    p.append(
        timeseries(
            lay,
            "Fleet hit ratio per model",
            "Per model over all selected pods: sum(rate(hits)) / sum(rate(queries)), "
            "weighted by traffic (never a mean of pod ratios).",
            [target(_hit_ratio_expr("model_name", M_SEL), "{{model_name}}")],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )

    p.append(
        timeseries(
            lay,
            "Fleet hits by tier",
            "Share of all looked-up prompt tokens served by each tier, over all selected pods: "
            "sum(rate(hits by source)) / sum(rate(queries)). device = the engines' own KV memory, "
            "host = CPU offload, disk / p2p / external = KV connectors (vLLM >= 0.32). The sum "
            "over tiers is the effective hit ratio. Empty where vLLM does not count by source.",
            [
                target(
                    f"sum by (source) (rate(vllm_sidecar_prefix_cache_hits_by_source_total{{{M_SEL}}}"
                    "[$__rate_interval]))\n/ ignoring (source) group_left\n"
                    f"sum (rate(vllm_sidecar_prefix_cache_queries_total{{{M_SEL}}}[$__rate_interval]))",
                    "{{source}}",
                )
            ],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )

    p.append(
        timeseries(
            lay,
            "KV-cache usage per pod",
            "Fullest engine of each pod (engines of a data-parallel vLLM are never summed). "
            "Orange from 90%, red from 95%.",
            [target(f"max by ({BY_POD}) (vllm_sidecar_kv_cache_usage_ratio{{{M_SEL}}})", LEGEND_POD)],
            "percentunit",
            USAGE_STEPS,
            lo=0,
            hi=1,
            threshold_lines=True,
        )
    )
    p.append(
        timeseries(
            lay,
            "Queue depth",
            "Requests waiting to be scheduled (solid) and running (dashed) per pod, summed over "
            "engines. A growing queue with a full KV cache means the pod is over capacity.",
            [
                target(
                    f"sum by ({BY_POD}) (vllm_sidecar_requests_waiting{{{M_SEL}}})", "waiting " + LEGEND_POD
                ),
                target(
                    f"sum by ({BY_POD}) (vllm_sidecar_requests_running{{{M_SEL}}})",
                    "running " + LEGEND_POD,
                    ref="B",
                ),
            ],
            "short",
            [("green", None), ("orange", 10)],
            lo=0,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        )
    )

    for phase, name in (("ttft", "Time to first token"), ("e2e", "End-to-end latency")):
        p.append(
            timeseries(
                lay,
                f"{name} p50 / p99",
                f"{name} quantiles per pod over the sidecar's $window window, estimated by the "
                "sidecar from vLLM's histogram (worst engine of the pod).",
                [
                    target(
                        f"max by ({BY_POD}, window, quantile) (vllm_sidecar_latency_seconds"
                        f'{{{M_SEL}, phase="{phase}", quantile=~"0.5|0.99", window=~"$window"}})',
                        "p{{quantile}} " + LEGEND_POD,
                    )
                ],
                "s",
                [("green", None), ("orange", 2), ("red", 10)],
                lo=0,
            )
        )

    p.append(
        timeseries(
            lay,
            "Tokens per second",
            "Prompt (prefill) and generated tokens per second per pod, from vLLM's token counters "
            "summed over engines.",
            [
                target(
                    f"sum by ({BY_POD}) (rate(vllm_sidecar_prompt_tokens_total{{{M_SEL}}}"
                    "[$__rate_interval]))",
                    "prompt " + LEGEND_POD,
                ),
                target(
                    f"sum by ({BY_POD}) (rate(vllm_sidecar_generation_tokens_total{{{M_SEL}}}"
                    "[$__rate_interval]))",
                    "generation " + LEGEND_POD,
                    ref="B",
                ),
            ],
            "suffix: tok/s",
            NEUTRAL,
            lo=0,
        )
    )
    p.append(
        timeseries(
            lay,
            "vLLM restarts (last hour)",
            "Restarts of each vLLM in the last hour, seen by the sidecar as counter resets. Hit "
            "ratios restart from a cold cache after each.",
            [
                target(
                    f"sum by (namespace, pod, target) (increase("
                    f"vllm_sidecar_target_restarts_total{{{T_SEL}}}[1h]))",
                    "{{target}} {{pod}}",
                )
            ],
            "short",
            [("green", None), ("orange", 1)],
            lo=0,
            threshold_lines=False,
        )
    )

    p.append(
        _panel(
            lay,
            "state-timeline",
            "Target status",
            "Per target: up when the sidecar's last scrape succeeded and held vLLM metrics.",
            [
                target(
                    f"max by (namespace, pod, target) (vllm_sidecar_target_up{{{T_SEL}}})",
                    "{{target}} {{pod}}",
                )
            ],
            "none",
            [("red", None), ("green", 1)],
            12,
            8,
            {"color": {"mode": "thresholds"}, "mappings": UP_DOWN, "min": 0, "max": 1},
            {
                "showValue": "never",
                "mergeValues": True,
                "alignValue": "left",
                "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            },
        )
    )
    p.append(
        diagnoses_table(
            lay,
            "Active diagnoses",
            "Findings the sidecar holds right now, one row each (code and severity as in the "
            "contract; docs/runbook.md explains causes and fixes). A target without any finding "
            "shows one row marked healthy.",
            T_SEL,
        )
    )
    p.append(
        flags_table(
            lay,
            T_SEL,
            "Per engine: prefix caching on/off, KV block size, GPU blocks, hash algorithm and KV "
            "offloading from vLLM's cache_config_info, with the vLLM version and metric-name era.",
            with_version=True,
            w=24,
        )
    )
    return dashboard(
        "vllm-cache-overview",
        "vLLM cache / Overview",
        "Fleet view of vLLM prefix caching from vllm-cache-sidecar: hit ratios, KV usage, "
        "config flags, diagnoses, latency and throughput. Works for every vLLM version.",
        p,
        pod_dashboard=False,
    )


# ----------------------------------------------------------------------------- one pod
def pod() -> dict[str, Any]:
    lay = Layout()
    p: list[dict[str, Any]] = []
    # replica: one vLLM behind a router or Ray Serve (empty for a plain vLLM)
    by_eng = "target, model_name, engine, replica"
    leg_eng = "{{model_name}} engine {{engine}} {{replica}}"
    p.append(
        stat(
            lay,
            "Up",
            "Whether the sidecar's last scrape of this vLLM succeeded and held vLLM metrics.",
            [target(f"max(vllm_sidecar_target_up{{{POD_T_SEL}}})", "up")],
            "none",
            [("red", None), ("green", 1)],
            mappings=UP_DOWN,
        )
    )
    p.append(
        stat(
            lay,
            "Prefix caching",
            "enable_prefix_caching from vLLM's cache_config_info (lowest engine). Off fires "
            "VLLMPrefixCachingDisabled after 5 minutes.",
            [target(f"min(vllm_sidecar_prefix_caching_enabled{{{POD_T_SEL}}})", "enabled")],
            "none",
            [("red", None), ("green", 1)],
            mappings=ON_OFF,
        )
    )
    p.append(
        stat(
            lay,
            "Hit ratio (now)",
            "Hits/queries over the rate interval, summed over engines from the counters. NaN "
            "without queries in the interval.",
            [target(_hit_ratio_expr("", POD_M_SEL), "hit ratio")],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )
    p.append(
        stat(
            lay,
            "Hit ratio (lifetime)",
            "Hits/queries since this vLLM started, as the sidecar reports it (on V0 engines "
            "vLLM's own gpu_prefix_cache_hit_rate, a block ratio).",
            [
                target(
                    f'min(vllm_sidecar_prefix_cache_hit_ratio{{{POD_M_SEL}, window="lifetime"}})', "lifetime"
                )
            ],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )
    p.append(
        stat(
            lay,
            "KV-cache usage",
            "Fullest engine's KV-cache usage now.",
            [target(f"max(vllm_sidecar_kv_cache_usage_ratio{{{POD_M_SEL}}})", "usage")],
            "percentunit",
            USAGE_STEPS,
            lo=0,
            hi=1,
        )
    )
    p.append(
        stat(
            lay,
            "vLLM version",
            "vLLM version and the metric-name era (schema) the sidecar matched.",
            [
                target(
                    f"max by (version, schema) (vllm_sidecar_vllm_info{{{POD_T_SEL}}})",
                    "{{version}} ({{schema}})",
                )
            ],
            "none",
            NEUTRAL,
            text_mode="name",
        )
    )

    p.append(
        timeseries(
            lay,
            "Hit ratio per engine",
            "Hits/queries per engine from the counters over the rate interval (solid), and the "
            "sidecar's own windowed ratios (dashed). Gaps mean no queries.",
            [
                target(_hit_ratio_expr(by_eng, POD_M_SEL), leg_eng),
                target(
                    f'vllm_sidecar_prefix_cache_hit_ratio{{{POD_M_SEL}, window=~"$window|lifetime"}}',
                    leg_eng + " sidecar {{window}}",
                    ref="B",
                ),
            ],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        )
    )
    p.append(
        timeseries(
            lay,
            "Prefix-cache lookups",
            "Tokens looked up in the prefix cache per second (queries) and tokens found "
            "(hits), per engine; external = a KV connector's cache (LMCache, offloading).",
            [
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_prefix_cache_queries_total"
                    f"{{{POD_M_SEL}}}[$__rate_interval]))",
                    "queries " + leg_eng,
                ),
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_prefix_cache_hits_total"
                    f"{{{POD_M_SEL}}}[$__rate_interval]))",
                    "hits " + leg_eng,
                    ref="B",
                ),
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_external_prefix_cache_queries_total"
                    f"{{{POD_M_SEL}}}[$__rate_interval]))",
                    "external queries " + leg_eng,
                    ref="C",
                ),
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_external_prefix_cache_hits_total"
                    f"{{{POD_M_SEL}}}[$__rate_interval]))",
                    "external hits " + leg_eng,
                    ref="D",
                ),
            ],
            "suffix: tok/s",
            NEUTRAL,
            lo=0,
        )
    )

    p.append(
        timeseries(
            lay,
            "Which tier served the hits",
            "Share of looked-up prompt tokens served by each tier over the sidecar's window: "
            "device = the engine's own KV memory (GPU; CPU memory on CPU builds), host = CPU "
            "offload, disk, p2p and external = KV connectors (vLLM >= 0.32 counts hits by "
            "source). Also the KV connector's own hit ratio and each offload tier's chunk hit "
            "ratio. Empty where vLLM does not expose the family.",
            [
                target(
                    f'vllm_sidecar_prefix_cache_hit_ratio_by_source{{{POD_M_SEL}, window=~"$window"}}',
                    "{{source}} " + leg_eng,
                ),
                target(
                    f'vllm_sidecar_external_prefix_cache_hit_ratio{{{POD_M_SEL}, window=~"$window"}}',
                    "connector " + leg_eng,
                    ref="B",
                ),
                target(
                    f'vllm_sidecar_offload_tier_hit_ratio{{{POD_M_SEL}, window=~"$window"}}',
                    "offload tier {{tier}} " + leg_eng,
                    ref="C",
                ),
            ],
            "percentunit",
            RATIO_STEPS,
            lo=0,
            hi=1,
        )
    )

    p.append(
        timeseries(
            lay,
            "KV-cache usage per engine",
            "KV-cache usage of each engine (never summed). Orange from 90%, red from 95%.",
            [target(f"vllm_sidecar_kv_cache_usage_ratio{{{POD_M_SEL}}}", leg_eng)],
            "percentunit",
            USAGE_STEPS,
            lo=0,
            hi=1,
            threshold_lines=True,
        )
    )
    p.append(
        timeseries(
            lay,
            "KV-cache usage change ($window)",
            "Usage now minus usage one window ago, per engine: steady growth foretells saturation.",
            [target(f'vllm_sidecar_kv_cache_usage_delta{{{POD_M_SEL}, window=~"$window"}}', leg_eng)],
            "percentunit",
            NEUTRAL,
            lo=-1,
            hi=1,
        )
    )

    for phase, name in (
        ("ttft", "Time to first token"),
        ("e2e", "End-to-end latency"),
        ("queue", "Queue time"),
    ):
        p.append(
            timeseries(
                lay,
                f"{name} ($window)",
                f"{name} p50/p90/p99 (lines) and mean (dashed) per engine over the sidecar's "
                "$window window, estimated from vLLM's histogram buckets.",
                [
                    target(
                        f'vllm_sidecar_latency_seconds{{{POD_M_SEL}, phase="{phase}", window=~"$window"}}',
                        "p{{quantile}} " + leg_eng,
                    ),
                    target(
                        f'vllm_sidecar_latency_mean_seconds{{{POD_M_SEL}, phase="{phase}", '
                        'window=~"$window"}',
                        "mean " + leg_eng,
                        ref="B",
                    ),
                ],
                "s",
                [("green", None), ("orange", 2), ("red", 10)],
                w=8,
                lo=0,
                overrides=[
                    {
                        "matcher": {"id": "byFrameRefID", "options": "B"},
                        "properties": [
                            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                        ],
                    }
                ],
            )
        )

    p.append(
        timeseries(
            lay,
            "Tokens per second",
            "Prompt and generated tokens per second per engine, from vLLM's counters.",
            [
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_prompt_tokens_total{{{POD_M_SEL}}}"
                    "[$__rate_interval]))",
                    "prompt " + leg_eng,
                ),
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_generation_tokens_total"
                    f"{{{POD_M_SEL}}}[$__rate_interval]))",
                    "generation " + leg_eng,
                    ref="B",
                ),
            ],
            "suffix: tok/s",
            NEUTRAL,
            w=8,
            lo=0,
        )
    )
    p.append(
        timeseries(
            lay,
            "Finished requests",
            "Requests finished per second by reason (stop, length, abort...), from vLLM's "
            "request_success counter.",
            [
                target(
                    f"sum by ({by_eng}, finished_reason) (rate(vllm_sidecar_request_success_total"
                    f"{{{POD_M_SEL}}}[$__rate_interval]))",
                    "{{finished_reason}} " + leg_eng,
                )
            ],
            "reqps",
            NEUTRAL,
            w=8,
            lo=0,
        )
    )
    p.append(
        timeseries(
            lay,
            "Running, waiting, preemptions",
            "Requests running and waiting per engine, and preemptions per second (requests "
            "evicted from the KV cache and recomputed).",
            [
                target(f"vllm_sidecar_requests_running{{{POD_M_SEL}}}", "running " + leg_eng),
                target(f"vllm_sidecar_requests_waiting{{{POD_M_SEL}}}", "waiting " + leg_eng, ref="B"),
                target(
                    f"sum by ({by_eng}) (rate(vllm_sidecar_preemptions_total{{{POD_M_SEL}}}"
                    "[$__rate_interval]))",
                    "preemptions/s " + leg_eng,
                    ref="C",
                ),
            ],
            "short",
            [("green", None), ("orange", 10)],
            w=8,
            lo=0,
        )
    )

    p.append(
        timeseries(
            lay,
            "Scrape duration",
            "How long the sidecar's scrape of vLLM's /metrics took. Close to the timeout means "
            "scrape errors with reason timeout.",
            [target(f"vllm_sidecar_scrape_duration_seconds{{{POD_T_SEL}}}", "{{target}}")],
            "s",
            [("green", None), ("orange", 1)],
            w=8,
            lo=0,
        )
    )
    p.append(
        timeseries(
            lay,
            "Scrape errors",
            "Failed scrapes per second by reason (timeout, connect, http_status, too_large, "
            "parse, no_vllm_metrics); the runbook's VLLMSidecarTargetDown section explains each.",
            [
                target(
                    f"sum by (target, reason) (rate(vllm_sidecar_scrape_errors_total{{{POD_T_SEL}}}"
                    "[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            "reqps",
            [("green", None), ("red", 0.01)],
            w=8,
            lo=0,
        )
    )
    p.append(
        timeseries(
            lay,
            "Since last good scrape",
            "Seconds since the sidecar last scraped this vLLM successfully, and restarts of vLLM "
            "seen in the last hour.",
            [
                target(
                    f"time() - max by (target) (vllm_sidecar_last_scrape_success_timestamp_seconds"
                    f"{{{POD_T_SEL}}})",
                    "age {{target}}",
                ),
                target(
                    f"sum by (target) (increase(vllm_sidecar_target_restarts_total{{{POD_T_SEL}}}[1h]))",
                    "restarts (1h) {{target}}",
                    ref="B",
                ),
            ],
            "s",
            [("green", None), ("orange", 30)],
            w=8,
            lo=0,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "unit", "value": "short"}],
                }
            ],
        )
    )

    p.append(
        diagnoses_table(
            lay,
            "Active diagnoses",
            "Findings the sidecar holds for this vLLM right now; docs/runbook.md explains causes "
            "and fixes. Without any finding the target shows one row marked healthy.",
            POD_T_SEL,
        )
    )
    p.append(flags_table(lay, POD_T_SEL, "Per engine: prefix caching on/off and vLLM's cache configuration."))
    return dashboard(
        "vllm-cache-pod",
        "vLLM cache / Pod",
        "One vLLM in depth from vllm-cache-sidecar: hit ratio per engine and window, "
        "prefix-cache lookups, KV usage, latency, throughput, scrape health, diagnoses.",
        p,
        pod_dashboard=True,
    )


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2) + "\n"
        for name, build in (("vllm-cache-overview.json", overview), ("vllm-cache-pod.json", pod))
    }


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale, run dashboards/build.py: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
