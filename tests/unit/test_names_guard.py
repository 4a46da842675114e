"""Guard: every series the rules and dashboards use is one the sidecar really exports.

Dashboards in this field go blank when a metric is renamed. Here the exported names are not a
hard-coded list: the real sidecar is started against replayed real captures of several vLLM eras
(0.32 prefix on / off / concurrent, 0.10.1 with deprecated names, 0.8.5 V0), its /metrics is read
with prometheus_client's parser, and every ``vllm_sidecar_*`` name, label and literal label value
used by deploy/prometheus/rules.yaml and dashboards/*.json must be in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import yaml

from testkit import REPO
from testkit.bodies import growing
from testkit.captures import FIXTURES
from testkit.procs import SidecarProcess, wait_until
from testkit.replay import ReplayServer

ERAS = {
    "shared032": "vllm-0.32.0/prefix_on_shared",
    "off032": "vllm-0.32.0/prefix_off",
    "concurrent032": "vllm-0.32.0/concurrent",
    "v0101": "vllm-0.10.1.1.post2/prefix_on_shared",
    "v085": "vllm-0.8.5.post2-v0-hidden/prefix_on_shared",
}
#: Ray Serve LLM's metrics port, made from the 0.32 capture: ray_vllm_ names, two replicas, and
#: the tiered-offload counters (vLLM 0.28+, config-gated, so in none of the plain captures)
RAY = "ray032"
#: labels that come from the deployment (sidecar static labels), not from the sidecar's logic
DEPLOYMENT_LABELS = {"namespace", "pod", "job", "instance"}


# ----------------------------------------------------------------------------- what is used
def used_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query and variable."""
    out = []
    data = yaml.safe_load((REPO / "deploy/prometheus/rules.yaml").read_text())
    for g in data["groups"]:
        for r in g["rules"]:
            out.append((f"rules.yaml {r.get('alert') or r.get('record')}", r["expr"]))
    for path in sorted((REPO / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for p in dash["panels"]:
            for t in p["targets"]:
                out.append((f"{path.name} {p['title']!r}", t["expr"]))
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                out.append((f"{path.name} ${v['name']}", v["query"]))
    return out


_NAME = re.compile(r"(?<![\w:])(vllm_sidecar_\w+)")
_SELECTOR = re.compile(r"(?<![\w:])(vllm_sidecar_\w+)\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def used_names() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for where, expr in used_exprs():
        for name in _NAME.findall(expr):
            out.setdefault(name, set()).add(where)
    return out


def ray_body(body: bytes) -> bytes:
    """A vLLM body as Ray Serve re-exports it for two replicas (so `replica` is exported)."""
    out = []
    for line in body.decode().splitlines():
        line = line.replace("vllm:", "ray_vllm_")
        if line.startswith("ray_vllm_") and "{" in line:
            for r in ("r1", "r2"):
                out.append(line.replace("{", f'{{ReplicaId="{r}",', 1))
        elif not line.startswith("ray_vllm_"):
            out.append(line)
    for kind, value in (("queries", 40), ("hits", 10)):
        out.append(f"# TYPE ray_vllm_kv_offload_tiering_chunk_{kind}_total counter")
        for r in ("r1", "r2"):
            out.append(
                f'ray_vllm_kv_offload_tiering_chunk_{kind}_total{{ReplicaId="{r}",'
                f'engine="0",model_name="tiny",tier="0:primary"}} {value}'
            )
    return ("\n".join(out) + "\n").encode()


# ----------------------------------------------------------------------------- what is exported
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[dict[str, str]]]]:
    """sample name -> label sets, read from the real sidecar's /metrics."""
    tmp = tmp_path_factory.mktemp("names_guard")
    replay = ReplayServer().start_in_thread()
    sidecar = None
    try:
        targets = []
        captured = {}
        for name, folder in ERAS.items():
            fake = replay.add_fixture(name, FIXTURES / folder)
            captured[name] = len(fake.bodies)
            fake.bodies = growing(fake.bodies, 300)
            labels = {"namespace": "llm", "pod": f"{name}-0"} if name.endswith("032") else {}
            targets.append({"name": name, "url": replay.url(name), "labels": labels})
        real = replay.fakes["shared032"].bodies[: captured["shared032"]]
        replay.add(RAY, growing([ray_body(b) for b in real], 300))
        captured[RAY] = len(real)
        targets.append({"name": RAY, "url": replay.url(RAY)})
        cfg = tmp / "sidecar.yaml"
        cfg.write_text(yaml.safe_dump({"targets": targets}))
        sidecar = SidecarProcess(["--config", str(cfg), "--interval", "0.5", "--windows", "3s,10s"])

        def scraped_past_the_captures() -> bool:
            # every real body served, then enough grown ones to fill the 3s window
            return all(f.hits > captured[n] + 8 for n, f in replay.fakes.items())

        wait_until(
            lambda: sidecar.proc.poll() is not None or scraped_past_the_captures(),
            "the sidecar scraped every replayed capture",
        )
        assert sidecar.proc.poll() is None, sidecar.logs
        samples: dict[str, list[dict[str, str]]] = {}
        for name, labels in sidecar.metrics():
            samples.setdefault(name, []).append(dict(labels))
        yield samples
    finally:
        if sidecar is not None:
            sidecar.stop()
        replay.stop_thread()


def test_the_sidecar_exported_every_era(exported: dict[str, list[dict[str, str]]]):
    up = {lab["target"] for lab in exported["vllm_sidecar_target_up"]}
    assert up == set(ERAS) | {RAY}
    replicas = {lab.get("replica") for lab in exported["vllm_sidecar_prefix_cache_queries_total"]}
    assert {"ReplicaId=r1", "ReplicaId=r2"} <= replicas
    schemas = {lab["schema"] for lab in exported["vllm_sidecar_vllm_info"]}
    assert len(schemas) >= 2, schemas  # V1 and V0 names at least


def test_every_name_used_by_rules_and_dashboards_is_exported(exported):
    used = used_names()
    assert len(used) >= 15, sorted(used)  # the guard looks at something real
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"used but not exported by the sidecar: {missing}"


def test_every_label_and_literal_value_used_in_a_selector_exists(exported):
    problems = []
    for where, expr in used_exprs():
        for name, selector in _SELECTOR.findall(expr):
            label_sets = exported.get(name, [])
            for label, op, value in _MATCHER.findall(selector):
                if label in DEPLOYMENT_LABELS:
                    continue
                have = {lab[label] for lab in label_sets if label in lab}
                if not have:
                    problems.append(f"{where}: {name} has no label {label!r}")
                elif "$" not in value and op in ("=", "=~"):
                    pattern = value if op == "=~" else re.escape(value)
                    if not any(re.fullmatch(pattern, v) for v in have):
                        problems.append(
                            f"{where}: {name}{{{label}{op}{value!r}}} matches none of {sorted(have)}"
                        )
    assert not problems, "\n".join(problems)


def test_aggregation_labels_exist(exported):
    """``by (...)`` labels other than deployment ones must exist on the aggregated series."""
    problems = []
    for where, expr in used_exprs():
        for by, inner in re.findall(r"by \(([^)]*)\)\s*\(\s*(?:\w+\()?(vllm_sidecar_\w+)", expr):
            have = set().union(*(lab.keys() for lab in exported.get(inner, [{}])))
            for label in (x.strip() for x in by.split(",") if x.strip()):
                if label not in DEPLOYMENT_LABELS and label not in have:
                    problems.append(f"{where}: by ({label}) but {inner} has no such label")
    assert not problems, "\n".join(problems)
