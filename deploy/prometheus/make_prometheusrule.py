"""Write prometheusrule.yaml (a prometheus-operator PrometheusRule) from rules.yaml.

rules.yaml is the single source: the PrometheusRule only wraps its groups in the CRD envelope, so
both can never drift apart (tests/unit/test_rules.py checks the committed file is up to date).

    python deploy/prometheus/make_prometheusrule.py          # rewrite prometheusrule.yaml
    python deploy/prometheus/make_prometheusrule.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yaml"
OUT = HERE / "prometheusrule.yaml"

HEADER = (
    "# GENERATED from rules.yaml by make_prometheusrule.py; edit rules.yaml, then rerun it.\n"
    "# prometheus-operator picks this up when its ruleSelector matches the labels below.\n"
)


class _Literal(str):
    """A multi-line string dumped as a YAML block so PromQL stays readable."""


def _literal_representer(dumper: yaml.Dumper, data: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


def _blockify(value: object) -> object:
    if isinstance(value, dict):
        return {k: _blockify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blockify(v) for v in value]
    if isinstance(value, str) and "\n" in value:
        return _Literal(value)
    return value


def render(rules_text: str) -> str:
    """The PrometheusRule manifest text for the given rules.yaml text."""
    groups = yaml.safe_load(rules_text)["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "vllm-cache-sidecar",
            "labels": {
                "app.kubernetes.io/name": "vllm-cache-sidecar",
                "app.kubernetes.io/component": "alerting",
                "prometheus": "k8s",
                "role": "alert-rules",
            },
        },
        "spec": {"groups": _blockify(groups)},
    }
    dumper = yaml.SafeDumper
    dumper.add_representer(_Literal, _literal_representer)
    return HEADER + yaml.dump(manifest, Dumper=dumper, sort_keys=False, width=1000)


def main(argv: list[str]) -> int:
    text = render(RULES.read_text())
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
