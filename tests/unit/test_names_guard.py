"""Guard: every series the rules and dashboards use is one the sidecar really exports.

Dashboards in this field go blank when a metric is renamed. Here the exported names are not a
hard-coded list: the real sidecar is started against replayed real captures of several vLLM eras
(0.32 prefix on / off / concurrent, 0.10.1 with deprecated names, 0.8.5 V0), its /metrics is read
with prometheus_client's parser, and every ``vllm_sidecar_*`` name, label and literal label value
used by deploy/prometheus/rules.yaml and dashboards/*.json must be in it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.replay import ReplayServer

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("VLLM_SIDECAR_FIXTURES") or REPO.parent / "shared" / "fixtures")
ERAS = {
    "shared032": "vllm-0.32.0/prefix_on_shared",
    "off032": "vllm-0.32.0/prefix_off",
    "concurrent032": "vllm-0.32.0/concurrent",
    "v0101": "vllm-0.10.1.1.post2/prefix_on_shared",
    "v085": "vllm-0.8.5.post2-v0-hidden/prefix_on_shared",
}
#: labels that come from the deployment (sidecar static labels), not from the sidecar's logic
DEPLOYMENT_LABELS = {"namespace", "pod", "job", "instance"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s+)(\S+)(.*)$")


def growing(bodies: list[bytes], extra: int) -> list[bytes]:
    """The real bodies, then the last one with every counter and histogram scaled up step by
    step, so traffic keeps flowing (windowed rates and latency stay defined) after the capture
    ends. Gauges and label sets stay exactly as vLLM wrote them."""
    last = bodies[-1].decode()
    out = list(bodies)
    for k in range(1, extra + 1):
        factor = 1 + 0.05 * k
        lines = []
        for line in last.split("\n"):
            m = _SAMPLE.match(line)
            if m and m.group(1).endswith(COUNTER_SUFFIXES):
                line = f"{m.group(1)}{m.group(2) or ''}{m.group(3)}{float(m.group(4)) * factor!r}{m.group(5)}"
            lines.append(line)
        out.append("\n".join(lines).encode())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, tries: int = 300, pause: float = 0.2):
    """Poll ``check`` until it returns something truthy; a hang guard, not a timing assertion."""
    last = None
    for _ in range(tries):
        last = check()
        if last:
            return last
        time.sleep(pause)
    raise AssertionError(f"never happened: {what} (last: {last!r})")


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


# ----------------------------------------------------------------------------- what is exported
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[dict[str, str]]]]:
    """sample name -> label sets, read from the real sidecar's /metrics."""
    tmp = tmp_path_factory.mktemp("names_guard")
    replay = ReplayServer().start_in_thread()
    proc = None
    try:
        targets = []
        captured = {}
        for name, folder in ERAS.items():
            fake = replay.add_fixture(name, FIXTURES / folder)
            captured[name] = len(fake.bodies)
            fake.bodies = growing(fake.bodies, 300)
            labels = {"namespace": "llm", "pod": f"{name}-0"} if name.endswith("032") else {}
            targets.append({"name": name, "url": replay.url(name), "labels": labels})
        cfg = tmp / "sidecar.yaml"
        cfg.write_text(yaml.safe_dump({"targets": targets}))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(cfg),
             "--listen", f"127.0.0.1:{port}", "--interval", "0.5", "--windows", "3s,10s"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def scraped_past_the_captures() -> bool:
            # every real body served, then enough grown ones to fill the 3s window
            return all(f.hits > captured[n] + 8 for n, f in replay.fakes.items())

        wait_for(lambda: proc.poll() is not None or scraped_past_the_captures(),
                 "the sidecar scraped every replayed capture")
        assert proc.poll() is None, proc.stderr.read().decode()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        samples: dict[str, list[dict[str, str]]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                samples.setdefault(s.name, []).append(dict(s.labels))
        yield samples
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        replay.stop_thread()


def test_the_sidecar_exported_every_era(exported: dict[str, list[dict[str, str]]]):
    up = {lab["target"] for lab in exported["vllm_sidecar_target_up"]}
    assert up == set(ERAS)
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
                        problems.append(f"{where}: {name}{{{label}{op}{value!r}}} matches none "
                                        f"of {sorted(have)}")
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
