"""deploy/prometheus/rules.yaml: promtool-clean, unit-tested, and true to the contract's alert table.

promtool is required (Debian's ``prometheus`` package; CI installs it): these tests fail rather
than skip without it, because untested alert rules are exactly what this project promises not to
ship.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yaml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yaml"))
RUNBOOK = REPO / "docs" / "runbook.md"

#: the contract's alert table: name -> (severity, for)
CONTRACT_ALERTS = {
    "VLLMPrefixCacheZeroHitRate": ("warning", "5m"),
    "VLLMPrefixCachingDisabled": ("warning", "5m"),
    "VLLMSidecarTargetDown": ("critical", "2m"),
    "VLLMKVCacheSaturated": ("warning", "10m"),
    "VLLMPrefixCacheUnused": ("warning", "5m"),
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install -y prometheus (CI installs it)"
    return path


def run_promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True)


def rules() -> list[dict]:
    data = yaml.safe_load(RULES.read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for headings: lower case, punctuation dropped, spaces to '-'."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


# ----------------------------------------------------------------------------- promtool
def test_promtool_check_rules_is_clean():
    res = run_promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout


def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"
    res = run_promtool("test", "rules", *map(str, RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(RULE_TESTS), res.stdout


def _naive_zero_hit(expr: str) -> str:
    """A plausible but wrong ZeroHitRate: per engine, no caching or data-parallel awareness."""
    return (
        "increase(vllm_sidecar_prefix_cache_queries_total[10m]) > 0\n"
        "and increase(vllm_sidecar_prefix_cache_hits_total[10m]) == 0\n"
    )


@pytest.mark.parametrize(
    "mutation",
    [
        "naive zero-hit rule",
        "hits by offset instead of increase()",
        "KV threshold 0.9",
        "target down for 1m",
        "zero-hit ignores other tiers",
        "unused ignores the disabled flag",
        "disabled ignores the counters",
    ],
)
def test_promtool_tests_catch_broken_rules(tmp_path: Path, mutation: str):
    """The rule tests can fail: each broken copy of the rules must make `promtool test` fail."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for r in group["rules"]:
            name = r.get("alert")
            if mutation == "naive zero-hit rule" and name == "VLLMPrefixCacheZeroHitRate":
                r["expr"] = _naive_zero_hit(r["expr"])
            elif mutation == "hits by offset instead of increase()" and name == "VLLMPrefixCacheZeroHitRate":
                r["expr"] = r["expr"].replace(
                    "increase(vllm_sidecar_prefix_cache_hits_total[10m])",
                    "(vllm_sidecar_prefix_cache_hits_total - "
                    "vllm_sidecar_prefix_cache_hits_total offset 10m)",
                )
            elif mutation == "zero-hit ignores other tiers" and name == "VLLMPrefixCacheZeroHitRate":
                r["expr"] = r["expr"].replace("external_prefix_cache_hits_total", "nothing_total")
                r["expr"] = r["expr"].replace("prefix_cache_hits_by_source_total", "nothing_total")
            elif mutation == "unused ignores the disabled flag" and name == "VLLMPrefixCacheUnused":
                r["expr"] = r["expr"].split("unless")[0]
            elif mutation == "disabled ignores the counters" and name == "VLLMPrefixCachingDisabled":
                r["expr"] = "vllm_sidecar_prefix_caching_enabled == 0"
            elif mutation == "KV threshold 0.9" and name == "VLLMKVCacheSaturated":
                r["expr"] = r["expr"].replace("0.95", "0.9")
            elif mutation == "target down for 1m" and name == "VLLMSidecarTargetDown":
                r["for"] = "1m"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "tests").mkdir()
    for t in RULE_TESTS:
        shutil.copy(t, tmp_path / "tests" / t.name)
    res = run_promtool("test", "rules", *[str(tmp_path / "tests" / t.name) for t in RULE_TESTS])
    assert res.returncode != 0, f"promtool tests did not notice: {mutation}\n{res.stdout}"


# ----------------------------------------------------------------------------- contract
def test_every_contract_alert_with_exact_severity_and_for():
    got = alerts()
    assert set(got) == set(CONTRACT_ALERTS)
    for name, (severity, duration) in CONTRACT_ALERTS.items():
        assert got[name]["labels"]["severity"] == severity, name
        assert got[name]["for"] == duration, name


def test_alerts_have_summary_description_with_values_and_runbook_anchor():
    anchors = github_anchors(RUNBOOK.read_text())
    for name, r in alerts().items():
        ann = r["annotations"]
        assert ann["summary"].strip() and "{{ $labels.target }}" in ann["summary"], name
        assert "$value" in ann["description"], f"{name}: the description must show the value"
        url = ann["runbook_url"]
        assert url.startswith("https://") and "docs/runbook.md#" in url, url
        anchor = url.split("#", 1)[1]
        assert anchor == name.lower(), url
        assert anchor in anchors, f"docs/runbook.md has no section #{anchor}"


def test_rules_use_only_sidecar_series():
    for r in rules():
        expr = r["expr"]
        assert "vllm:" not in expr, f"raw vLLM name in {r.get('alert') or r.get('record')}"
        names = set(re.findall(r"\b(vllm_sidecar_\w+|[a-z_]+:vllm_sidecar_\w+)", expr))
        assert names, r


def test_alerts_never_carry_window_and_recording_rules_follow_naming():
    for r in rules():
        if "alert" in r:
            # a window label could only come from the windowed gauges; none is used
            assert "hit_ratio{" not in r["expr"] and "usage_delta" not in r["expr"]
            assert "window" not in r.get("labels", {})
        else:
            level, metric, ops = r["record"].split(":")
            assert level and metric.startswith("vllm_sidecar_") and ops, r["record"]


def test_fleet_ratio_is_a_ratio_of_sums_not_a_mean_of_ratios():
    rec = {r["record"]: r["expr"] for r in rules() if "record" in r}
    fleet = rec["model_name:vllm_sidecar_prefix_cache_hit_ratio:ratio_rate5m"]
    assert "avg" not in fleet
    assert re.search(r"sum by \(model_name\) \(rate\(vllm_sidecar_prefix_cache_hits_total", fleet)
    assert re.search(r"sum by \(model_name\) \(rate\(vllm_sidecar_prefix_cache_queries_total", fleet)


def test_each_alert_has_firing_and_not_firing_unit_tests():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing >= set(CONTRACT_ALERTS), set(CONTRACT_ALERTS) - firing
    assert quiet >= set(CONTRACT_ALERTS), set(CONTRACT_ALERTS) - quiet


def test_prometheusrule_manifest_is_generated_from_rules():
    """One generator (scripts/gen_k8s.py) writes the only PrometheusRule copy, the kustomize one."""
    repo = PROM_DIR.parent.parent
    res = subprocess.run(
        [sys.executable, str(repo / "scripts/gen_k8s.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = yaml.safe_load((repo / "deploy/kubernetes/components/alerts/prometheusrule.yaml").read_text())
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
