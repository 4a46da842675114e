"""Rules and dashboards proven on a real Prometheus.

A real Prometheus (Debian's ``prometheus`` binary, loopback, temp storage, 1s scrape and rule
evaluation) scrapes the real sidecar, which scrapes replayed real vLLM captures. Prometheus loads a
test copy of deploy/prometheus/rules.yaml generated from the real file with every ``for:`` cut from
minutes to seconds. Then:

* every Grafana variable query resolves, and every dashboard query returns numbers, as Grafana
  would run it (variables substituted: All as ``.*``, the first window, ``$__rate_interval`` 1m);
* every recording rule evaluates to a non-empty result;
* ``VLLMPrefixCachingDisabled`` fires for the caching-off target and only for it;
* ``VLLMPrefixCacheZeroHitRate`` fires for a target whose hits stay flat under traffic, and not
  for the healthy, the idle or the caching-off target.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from testkit import REPO
from testkit.bodies import get_value, growing, multi_engine, no_hits, set_value
from testkit.captures import FIXTURES
from testkit.procs import SidecarProcess, free_port, terminate, wait_until
from testkit.replay import ReplayServer

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))

#: target name -> (capture folder, static labels, how the bodies are served)
TARGETS: dict[str, tuple[str, dict[str, str], str]] = {
    "shared032": ("vllm-0.32.0/prefix_on_shared", {"namespace": "llm", "pod": "vllm-shared-0"}, "grow"),
    "off032": ("vllm-0.32.0/prefix_off", {"namespace": "llm", "pod": "vllm-off-0"}, "grow"),
    "nohits032": (
        "vllm-0.32.0/prefix_on_shared",
        {"namespace": "llm", "pod": "vllm-nohits-0"},
        "grow-no-hits",
    ),
    "concurrent032": ("vllm-0.32.0/concurrent", {"namespace": "batch", "pod": "vllm-batch-0"}, "grow"),
    "idle032": ("vllm-0.32.0/prefix_on_shared", {"namespace": "llm", "pod": "vllm-idle-0"}, "last-body-only"),
    # two data-parallel engines: engine 0 hits, engine 1 never does (a cold engine, not a failure)
    "dp032": ("vllm-0.32.0/prefix_on_shared", {"namespace": "llm", "pod": "vllm-dp-0"}, "data-parallel"),
    # vLLM restarts a few seconds in: every counter drops to its first captured value
    "restart032": ("vllm-0.32.0/prefix_on_shared", {"namespace": "llm", "pod": "vllm-restart-0"}, "restart"),
    # no static labels at all: rules and dashboards must still work with `target` alone
    "v0101": ("vllm-0.10.1.1.post2/prefix_on_shared", {}, "grow"),
    "v085": ("vllm-0.8.5.post2-v0-hidden/prefix_on_shared", {}, "grow"),
}
CACHING_OFF = "off032"
NO_HITS = "nohits032"
POD_IN_DEPTH = ("vllm-nohits-0", NO_HITS)


# ----------------------------------------------------------------------------- bodies
TIER = (
    "# TYPE vllm:kv_offload_tiering_chunk_queries_total counter\n"
    'vllm:kv_offload_tiering_chunk_queries_total{{engine="0",model_name="tiny",tier="0:primary"}} {q}\n'
    "# TYPE vllm:kv_offload_tiering_chunk_hits_total counter\n"
    'vllm:kv_offload_tiering_chunk_hits_total{{engine="0",model_name="tiny",tier="0:primary"}} 0.0\n'
)


def without_hits(body: bytes) -> bytes:
    """Prefix caching on, queries counted, but no hit ever, from any tier (a cache that never
    matches; vLLM 0.32's hits by source at zero too). Its KV connector and an offload tier are
    looked up as well and serve nothing either, so the tier panels show numbers (0 %)."""
    out = no_hits(body)
    q = get_value(out, "vllm:prefix_cache_queries_total")
    out = set_value(out, "vllm:external_prefix_cache_queries_total", q)
    return out + TIER.format(q=q // 16).encode()


# ----------------------------------------------------------------------------- processes
def wait_for(check, what: str):
    """Poll ``check`` until truthy; a guard against hanging, not a timing assertion."""
    return wait_until(check, what, timeout=150.0, pause=0.25)


def wait_until_empty(problems, what: str) -> None:
    """Poll ``problems()`` until it returns no problem; else fail listing the last ones."""
    last: list[str] = []

    def none_left() -> bool:
        last[:] = problems()
        return not last

    try:
        wait_until(none_left, what, timeout=120.0, pause=0.5)
    except AssertionError:
        raise AssertionError(f"{what}:\n" + "\n".join(last)) from None


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for num, unit in re.findall(r"(\d+)(ms|s|m|h|d)", text):
        total += int(num) * units[unit]
    return total


def shortened_rules(text: str) -> str:
    """The real rules with every ``for:`` scaled from minutes to seconds (5m -> 5s)."""
    data = yaml.safe_load(text)
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, int(parse_duration(rule['for']) / 60))}s"
    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class Stack:
    prom: httpx.Client
    sidecar_port: int

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.prom.get("/api/v1/query", params={"query": expr})
        assert r.status_code == 200, f"{expr}\n{r.text}"
        return r.json()["data"]["result"]

    def query_range(self, expr: str, seconds: int = 20) -> list[dict[str, Any]]:
        now = time.time()
        r = self.prom.get(
            "/api/v1/query_range", params={"query": expr, "start": now - seconds, "end": now, "step": 1}
        )
        assert r.status_code == 200, f"{expr}\n{r.text}"
        return r.json()["data"]["result"]

    def label_values(self, selector: str, label: str) -> list[str]:
        r = self.prom.get(f"/api/v1/label/{label}/values", params={"match[]": selector})
        assert r.status_code == 200, f"{selector}\n{r.text}"
        return sorted(r.json()["data"])

    def alerts(self) -> list[dict[str, Any]]:
        return self.prom.get("/api/v1/alerts").json()["data"]["alerts"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: apt-get install -y prometheus (CI installs it)"
    tmp = tmp_path_factory.mktemp("prom_e2e")
    replay = ReplayServer().start_in_thread()
    sidecar = prom = None
    client = None
    try:
        targets = []
        for name, (folder, labels, mode) in TARGETS.items():
            fake = replay.add_fixture(name, FIXTURES / folder)
            if mode == "grow-no-hits":
                fake.bodies = growing([without_hits(b) for b in fake.bodies], 600)
            elif mode == "grow":
                fake.bodies = growing(fake.bodies, 600)
            elif mode == "data-parallel":
                fake.bodies = growing([multi_engine([b, without_hits(b)]) for b in fake.bodies], 600)
            elif mode == "restart":
                fake.bodies = growing(fake.bodies, 4) + growing(fake.bodies, 600)
            else:  # an idle vLLM: the counters never move
                fake.bodies = fake.bodies[-1:]
            targets.append({"name": name, "url": replay.url(name), "labels": labels})
        (tmp / "sidecar.yaml").write_text(yaml.safe_dump({"targets": targets}))
        sidecar = SidecarProcess(
            ["--config", str(tmp / "sidecar.yaml"), "--interval", "1", "--windows", "10s,30s"]
        )
        sidecar_port = sidecar.port

        (tmp / "rules.yaml").write_text(shortened_rules(RULES.read_text()))
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp / "rules.yaml")],
                    "scrape_configs": [
                        {
                            "job_name": "vllm-sidecar",
                            "static_configs": [{"targets": [f"127.0.0.1:{sidecar_port}"]}],
                        }
                    ],
                }
            )
        )
        prom_port = free_port()
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "prometheus.log").open("wb"),
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10)

        def ready() -> bool:
            assert sidecar.proc.poll() is None, sidecar.logs
            assert prom.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                return client.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "Prometheus ready")
        s = Stack(client, sidecar_port)
        # the sidecar is scraped and every target is up in Prometheus
        wait_for(
            lambda: len(s.query("vllm_sidecar_target_up == 1")) == len(TARGETS),
            "every target up in Prometheus",
        )
        yield s
    finally:
        if client is not None:
            client.close()
        terminate(prom, 10)
        if sidecar is not None:
            sidecar.stop()
        replay.stop_thread()


# ----------------------------------------------------------------------------- dashboards
def _substitute(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        text = text.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return text


def resolve_variables(stack: Stack, dash: dict[str, Any], chosen: dict[str, str]) -> dict[str, str]:
    """Run every variable query as Grafana would; All is ``.*`` unless a value is chosen."""
    values = {"__rate_interval": "1m", "__interval": "15s"}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"])
        assert m, v["query"]
        options = stack.label_values(_substitute(m.group(1), values), m.group(2))
        assert options, f"{dash['title']}: variable ${v['name']} has no values"
        if v["name"] in chosen:
            assert chosen[v["name"]] in options, (v["name"], options)
            values[v["name"]] = chosen[v["name"]]
        else:
            values[v["name"]] = v.get("allValue", ".*") if v["includeAll"] else options[0]
    return values


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    vals = []
    for series in result:
        pairs = series.get("values") or [series["value"]]
        vals.extend(float(v) for _, v in pairs)
    return [v for v in vals if not math.isnan(v)]


def panel_queries(stack: Stack, dash: dict[str, Any], values: dict[str, str]):
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = _substitute(t["expr"], values)
            result = stack.query(expr) if t["instant"] else stack.query_range(expr)
            yield p["title"], t["refId"], expr, result


def _dashboard_gaps(stack: Stack, chosen: dict[str, dict[str, str]]) -> list[str]:
    gaps = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        values = resolve_variables(stack, dash, chosen.get(path.name, {}))
        for title, ref, expr, result in panel_queries(stack, dash, values):
            if not _numbers(result):
                gaps.append(f"{path.name} {title!r} {ref}: {expr}")
    return gaps


def test_every_dashboard_query_returns_data_with_all_selected(stack: Stack):
    wait_until_empty(lambda: _dashboard_gaps(stack, {}), "panels without numbers")


def test_pod_dashboard_shows_data_for_one_pod(stack: Stack):
    pod, target = POD_IN_DEPTH
    chosen = {
        "vllm-cache-pod.json": {"namespace": "llm", "pod": pod, "target": target, "model_name": "tiny"},
        "vllm-cache-overview.json": {"namespace": "llm"},
    }

    wait_until_empty(lambda: _dashboard_gaps(stack, chosen), "panels without numbers")


def test_diagnoses_table_lists_findings_and_healthy_targets(stack: Stack):
    dash = json.loads((REPO / "dashboards/vllm-cache-overview.json").read_text())
    values = resolve_variables(stack, dash, {})
    rows = next(
        result for title, _, _, result in panel_queries(stack, dash, values) if title == "Active diagnoses"
    )
    found = {(r["metric"]["target"], r["metric"].get("code")) for r in rows}
    assert (CACHING_OFF, "prefix_caching_disabled") in found
    assert {r["metric"]["target"] for r in rows} == set(TARGETS)  # every target has a row


def test_dashboard_queries_see_targets_without_namespace_or_pod(stack: Stack):
    """All = ``.*`` also matches series that have no namespace/pod label at all."""
    dash = json.loads((REPO / "dashboards/vllm-cache-overview.json").read_text())
    values = resolve_variables(stack, dash, {})
    for title, _, _, result in panel_queries(stack, dash, values):
        if title == "KV-cache usage per pod":
            assert {"v0101", "v085", "shared032"} <= {s["metric"]["target"] for s in result}
            return
    raise AssertionError("no KV-cache usage per pod panel")


def test_overview_fleet_ratio_matches_sum_of_hits_over_sum_of_queries(stack: Stack):
    got = stack.query(
        'sum(vllm_sidecar_prefix_cache_hits_total{target="shared032"})'
        ' / sum(vllm_sidecar_prefix_cache_queries_total{target="shared032"})'
    )
    assert got and 0.5 < float(got[0]["value"][1]) < 0.8  # 7296/10786 in the capture


# ----------------------------------------------------------------------------- rules
def test_every_recording_rule_evaluates_non_empty(stack: Stack):
    records = [
        r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r
    ]
    assert len(records) >= 6

    def empty() -> list[str]:
        return [rec for rec in records if not _numbers(stack.query(rec))]

    wait_until_empty(empty, "recording rules without a number")
    ratios = {
        s["metric"]["target"]: float(s["value"][1])
        for s in stack.query("pod:vllm_sidecar_prefix_cache_hit_ratio:ratio_rate5m")
    }
    assert ratios[NO_HITS] == 0.0
    assert 0 < ratios["shared032"] < 1
    assert math.isnan(ratios[CACHING_OFF])  # no queries: NaN, like the sidecar's own ratio
    # a ratio of sums over the fleet, labelled by model only
    fleet = stack.query("model_name:vllm_sidecar_prefix_cache_hit_ratio:ratio_rate5m")
    assert [s["metric"] for s in fleet] == [
        {"__name__": "model_name:vllm_sidecar_prefix_cache_hit_ratio:ratio_rate5m", "model_name": "tiny"}
    ]


def _firing(stack: Stack, alertname: str) -> list[dict[str, str]]:
    return [
        a["labels"]
        for a in stack.alerts()
        if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    ]


def test_prefix_caching_disabled_fires_for_the_caching_off_target(stack: Stack):
    firing = wait_for(lambda: _firing(stack, "VLLMPrefixCachingDisabled"), "VLLMPrefixCachingDisabled firing")
    assert [a["target"] for a in firing] == [CACHING_OFF]
    labels = firing[0]
    assert labels["severity"] == "warning" and labels["engine"] == "0"
    assert labels["namespace"] == "llm" and labels["pod"] == "vllm-off-0"
    assert "window" not in labels


def test_zero_hit_rate_fires_only_for_flat_hits_under_traffic(stack: Stack):
    firing = wait_for(
        lambda: _firing(stack, "VLLMPrefixCacheZeroHitRate"), "VLLMPrefixCacheZeroHitRate firing"
    )
    assert {a["target"] for a in firing} == {NO_HITS}
    labels = firing[0]
    assert labels["severity"] == "warning" and labels["model_name"] == "tiny"
    assert labels["pod"] == "vllm-nohits-0" and "window" not in labels
    # never for the caching-off, the idle or the healthy targets, not even pending
    others = {
        a["labels"]["target"]
        for a in stack.alerts()
        if a["labels"]["alertname"] == "VLLMPrefixCacheZeroHitRate"
    }
    assert others == {NO_HITS}


def test_restart_is_seen_and_data_parallel_engines_are_kept_apart(stack: Stack):
    wait_for(
        lambda: stack.query('vllm_sidecar_target_restarts_total{target="restart032"} > 0'),
        "the sidecar saw the restart",
    )
    restarts = stack.query("sum by (target) (increase(vllm_sidecar_target_restarts_total[1h])) > 0")
    assert {s["metric"]["target"] for s in restarts} == {"restart032"}
    engines = stack.query('vllm_sidecar_prefix_cache_queries_total{target="dp032"}')
    assert sorted(s["metric"]["engine"] for s in engines) == ["0", "1"]
    # the pod's hit ratio sums both engines' counters: between the warm and the cold engine
    ratio = stack.query('pod:vllm_sidecar_prefix_cache_hit_ratio:ratio_rate5m{target="dp032"}')
    shared = stack.query('pod:vllm_sidecar_prefix_cache_hit_ratio:ratio_rate5m{target="shared032"}')
    assert 0 < float(ratio[0]["value"][1]) < float(shared[0]["value"][1])
    # neither the restart nor the cold engine makes the zero-hit alert even pending
    zero_hit = {
        a["labels"]["target"]
        for a in stack.alerts()
        if a["labels"]["alertname"] == "VLLMPrefixCacheZeroHitRate"
    }
    assert not zero_hit & {"restart032", "dp032"}


def test_no_target_down_alert_while_every_target_answers(stack: Stack):
    assert not [a for a in stack.alerts() if a["labels"]["alertname"] == "VLLMSidecarTargetDown"]
