"""deploy/kubernetes, validated offline.

* ``kubectl kustomize`` (kustomize built into kubectl) builds the base and the example overlays;
  without kubectl those build tests skip and the static checks below still run.
* Every built object is validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
  strict: unknown fields fail) and prometheus-operator objects against the CRD models of
  ``cloudcoil-models-prometheus-operator``, made strict the same way.
* The generated PrometheusRule equals deploy/prometheus/rules.yaml; the dashboard ConfigMaps
  equal dashboards/*.json; the sidecar container's args and env give the intended config when
  fed to the real CLI parser and config loader.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from sidecar.cli import _flags, build_parser
from sidecar.config.settings import load_config
from sidecar.config.targets import parse_targets_file

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
BUILDS = ["base", "examples/llm-d-decode", "examples/central"]
SIDECAR = "vllm-cache-sidecar"
# 1.29: the oldest release with native sidecars (restartPolicy: Always init containers) on by
# default, which the llm-d example uses; plus the newest schema the package knows.
K8S_VERSIONS = ["1.29.0", "1.33.0"]

sys.path.insert(0, str(ROOT / "scripts"))
import gen_k8s  # noqa: E402

# ---------------------------------------------------------------- building


def kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def build(rel: str) -> tuple[dict, ...]:
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl (with built-in kustomize) is not installed")
    result = subprocess.run([exe, "kustomize", str(K8S / rel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(pod_spec, name):
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert found, f"no container {name}"
    return found[0]


def all_files():
    return sorted(p for p in K8S.rglob("*.yaml"))


# ---------------------------------------------------------------- static checks (no kubectl)


def test_every_file_is_valid_yaml_and_every_kustomization_lists_existing_files():
    for path in all_files():
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs, path
        if path.name != "kustomization.yaml":
            continue
        k = docs[0]
        assert k["kind"] in ("Kustomization", "Component"), path
        for key in ("resources", "components"):
            for entry in k.get(key, []):
                assert (path.parent / entry).exists(), f"{path}: {key} entry {entry} missing"
        for patch in k.get("patches", []):
            if "path" in patch:
                assert (path.parent / patch["path"]).exists(), f"{path}: {patch['path']}"


def test_generated_files_are_up_to_date():
    stale = gen_k8s.stale()
    assert not stale, f"run python scripts/gen_k8s.py: stale {stale}"


def test_prometheusrule_equals_rules_yaml():
    source = yaml.safe_load(RULES.read_text())
    generated = yaml.safe_load((K8S / "components/alerts/prometheusrule.yaml").read_text())
    assert generated["kind"] == "PrometheusRule"
    assert generated["spec"]["groups"] == source["groups"]
    alerts = {r["alert"] for g in source["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "VLLMPrefixCacheZeroHitRate",
        "VLLMPrefixCachingDisabled",
        "VLLMSidecarTargetDown",
        "VLLMKVCacheSaturated",
    } <= alerts


def test_dashboard_configmaps_equal_the_dashboards():
    sources = sorted((ROOT / "dashboards").glob("*.json"))
    assert sources, "no dashboards/*.json"
    for src in sources:
        cm = yaml.safe_load((K8S / "components/dashboards" / f"{src.stem}.yaml").read_text())
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = cm["data"].items()
        assert key == src.name
        assert json.loads(text) == json.loads(src.read_text())
        # ConfigMaps cap at 1 MiB; client-side apply also stores a copy in an annotation.
        assert len(text.encode()) < 256 * 1024


# ---------------------------------------------------------------- builds and schemas


@pytest.mark.parametrize("rel", BUILDS)
def test_kustomize_builds(rel):
    docs = build(rel)
    assert docs
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d


def _strict(schema):
    """additionalProperties: false wherever properties are listed (unknown fields fail, as in
    kubectl's strict field validation); Go's mid-pattern ``(?i)`` moved to the front."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern:
            schema["pattern"] = "(?i)" + pattern.replace("(?i)", "")
        for v in schema.values():
            _strict(v)
    elif isinstance(schema, list):
        for v in schema:
            _strict(v)
    return schema


@cache
def crd_validator(kind: str):
    pytest.importorskip("jsonschema")
    models = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1", reason="pip install cloudcoil-models-prometheus-operator"
    )
    import jsonschema

    cls = getattr(models, kind)
    schema = _strict(cls.model_json_schema(by_alias=True, mode="validation"))
    return cls, jsonschema.Draft202012Validator(schema)


def validate(doc, version):
    """Raise with a readable message when ``doc`` is not a valid object of its kind."""
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        cls, validator = crd_validator(doc["kind"])
        cls.model_validate(doc)
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"
        return
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(map(str, exc.path))
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}") from None


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("rel", BUILDS)
def test_built_objects_validate_against_the_schemas(rel, version):
    for doc in build(rel):
        validate(doc, version)


def test_the_validators_do_reject_bad_objects():
    """The schema checks above are only worth something if they can fail."""
    docs = build("examples/llm-d-decode")
    deploy = copy.deepcopy(one(docs, "Deployment"))
    container(deploy["spec"]["template"]["spec"], SIDECAR)["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(AssertionError, match="readOnlyRootFS"):
        validate(deploy, K8S_VERSIONS[0])
    pm = copy.deepcopy(one(docs, "PodMonitor"))
    pm["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(AssertionError, match="intervall"):
        validate(pm, K8S_VERSIONS[0])
    rule = copy.deepcopy(one(docs, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    pydantic = pytest.importorskip("pydantic")
    with pytest.raises((AssertionError, pydantic.ValidationError), match="for"):
        validate(rule, K8S_VERSIONS[0])


# ---------------------------------------------------------------- the injected sidecar


def effective_config(
    c: dict,
    pod_name="pod-0",
    namespace="ns",
    files: dict[str, str] | None = None,
    tmp_path: Path | None = None,
):
    """The config the container would run with: its args through the real CLI parser, its env
    (downward API filled in) through the real loader."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace}[field]
    args = list(c.get("args", []))
    if files:  # mounted files, re-rooted into tmp_path
        assert tmp_path is not None
        for mount_path, text in files.items():
            local = tmp_path / mount_path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(text.replace("/etc/", f"{tmp_path}/etc/"))
        args = [a.replace("/etc/", f"{tmp_path}/etc/") for a in args]
    ns = build_parser().parse_args(["run", *args])
    return load_config(ns.config, _flags(ns), environ=env)


def test_component_injects_a_locked_down_sidecar_into_the_llm_d_decode_deployment():
    docs = build("examples/llm-d-decode")
    deploy = one(docs, "Deployment")
    assert deploy["metadata"]["namespace"] == "llm-d"
    pod = deploy["spec"]["template"]
    spec = pod["spec"]
    assert [c["name"] for c in spec["containers"]] == ["vllm", SIDECAR]  # vLLM stays default
    c = container(spec, SIDECAR)
    assert c["image"].endswith(f"/{SIDECAR}:0.1.0")
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"sidecar-metrics": 9490}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "sidecar-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sidecar-metrics"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # vLLM listens on 8200 in llm-d decode pods: the overlay points the sidecar there
    vllm_ports = {p["containerPort"] for p in container(spec, "vllm")["ports"]}
    config = effective_config(c, "qwen3-8b-decode-abc", "llm-d")
    (target,) = config.targets
    assert (target.name, target.url) == ("decode", "http://127.0.0.1:8200/metrics")
    assert 8200 in vllm_ports
    assert config.listen_host_port == ("0.0.0.0", 9490)
    assert config.log_format == "json"
    assert dict(config.static_labels) == {"pod": "qwen3-8b-decode-abc", "namespace": "llm-d"}


def test_runtime_user_matches_the_image_user():
    user = [
        line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")
    ][-1]
    uid = int(user.split(":")[0])
    for rel in BUILDS:
        for d in by_kind(build(rel), "Deployment"):
            spec = d["spec"]["template"]["spec"]
            for c in spec["containers"]:
                if c["name"] == SIDECAR:
                    assert c["securityContext"]["runAsUser"] == uid


def test_podmonitor_selects_the_injected_pods_on_the_sidecar_port():
    docs = build("examples/llm-d-decode")
    pm = one(docs, "PodMonitor")
    pod = one(docs, "Deployment")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert pm["metadata"]["namespace"] == "llm-d"
    for k, v in pm["spec"]["selector"]["matchLabels"].items():
        assert labels.get(k) == v
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert ep["port"] in ports and ep["path"] == "/metrics"
    assert ep["honorLabels"] is True


def test_component_only_touches_deployments_that_ask_for_it(tmp_path):
    if kubectl() is None:
        pytest.skip("kubectl not installed")
    deployments = []
    for name, annotated in (("wanted", True), ("other", False)):
        d = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "vllm", "image": "v"}]},
                },
            },
        }
        if annotated:
            d["metadata"]["annotations"] = {"vllm-cache-sidecar.io/inject": "true"}
        deployments.append(d)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump_all(deployments))
    comp = os.path.relpath(K8S / "components/sidecar", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["d.yaml"],
                "components": [comp],
            }
        )
    )
    out = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out.stdout)}
    names = {n: [c["name"] for c in d["spec"]["template"]["spec"]["containers"]] for n, d in got.items()}
    assert names == {"wanted": ["vllm", SIDECAR], "other": ["vllm"]}
    assert "volumes" not in got["other"]["spec"]["template"]["spec"]
    assert (
        "labels" not in got["other"]["spec"]["template"]["metadata"]
        or "vllm-cache-sidecar.io/injected" not in got["other"]["spec"]["template"]["metadata"]["labels"]
    )
    wanted = got["wanted"]["spec"]["template"]["spec"]
    config = effective_config(container(wanted, SIDECAR))
    assert [t.url for t in config.targets] == ["http://127.0.0.1:8000/metrics"]


# ---------------------------------------------------------------- central mode


def test_central_mode_runs_on_the_watched_targets_file(tmp_path):
    docs = build("examples/central")
    assert {d["metadata"].get("namespace") for d in docs} == {"llm"}
    deploy = one(docs, "Deployment")
    spec = deploy["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    c = container(spec, SIDECAR)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not any(e["name"] in ("POD_NAME", "POD_NAMESPACE") for e in c.get("env", []))
    # mounts: ConfigMap directories (never subPath, or updates would not reach the file)
    cms = {cm["metadata"]["name"]: cm for cm in by_kind(docs, "ConfigMap")}
    volumes = {v["name"]: v for v in spec["volumes"]}
    files = {}
    for m in c["volumeMounts"]:
        assert "subPath" not in m
        cm = volumes[m["name"]].get("configMap")
        if cm:
            for key, text in cms[cm["name"]]["data"].items():
                files[f"{m['mountPath']}/{key}"] = text
    config = effective_config(c, files=files, tmp_path=tmp_path)
    assert config.targets == ()
    assert config.targets_file and config.targets_file.endswith("/targets/targets.yaml")
    targets = parse_targets_file(Path(config.targets_file).read_text(), config.targets_file)
    assert [(t.name, t.url, dict(t.labels)) for t in targets] == [
        ("vllm-0", "http://vllm-0.vllm.llm.svc:8000/metrics", {"pod": "vllm-0", "namespace": "llm"}),
        ("vllm-1", "http://vllm-1.vllm.llm.svc:8000/metrics", {"pod": "vllm-1", "namespace": "llm"}),
    ]


def test_central_service_and_servicemonitor_line_up():
    docs = build("examples/central")
    svc = one(docs, "Service")
    sm = one(docs, "ServiceMonitor")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for k, v in svc["spec"]["selector"].items():
        assert pod_labels.get(k) == v
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"].get(k) == v
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["honorLabels"] is True  # per-target pod/namespace labels survive
    netpol = one(docs, "NetworkPolicy")
    for k, v in netpol["spec"]["podSelector"]["matchLabels"].items():
        assert pod_labels.get(k) == v


def test_examples_ship_alerts_and_dashboards():
    for rel in ("examples/llm-d-decode", "examples/central"):
        docs = build(rel)
        rule = one(docs, "PrometheusRule")
        assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
        dashboards = [
            cm
            for cm in by_kind(docs, "ConfigMap")
            if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        ]
        assert len(dashboards) == len(list((ROOT / "dashboards").glob("*.json")))


@pytest.mark.parametrize("rel", BUILDS)
def test_every_mount_names_a_volume_and_every_probe_a_declared_port(rel):
    for d in by_kind(build(rel), "Deployment"):
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"] + spec.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (c["name"], m["name"])
            ports = {p["name"] for p in c.get("ports", []) if "name" in p}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    assert port in ports, (c["name"], probe, port)
        sidecar = [c for c in spec["containers"] if c["name"] == SIDECAR]
        if sidecar:  # a writable /tmp under the read-only root
            assert "/tmp" in {m["mountPath"] for m in sidecar[0]["volumeMounts"]}


def test_image_tag_follows_the_package_version():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for rel in BUILDS:
        for d in by_kind(build(rel), "Deployment"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                if c["name"] == SIDECAR:
                    assert c["image"] == f"ghcr.io/vllm-cache-sidecar/vllm-cache-sidecar:{version}"


def test_servicemonitor_variant_for_sidecar_mode(tmp_path):
    """components/servicemonitor-sidecar instead of the PodMonitor: a headless Service over the
    injected pods and a ServiceMonitor on it, all lined up and schema-valid."""
    if kubectl() is None:
        pytest.skip("kubectl not installed")
    example = K8S / "examples/llm-d-decode"
    for name in ("decode-deployment.yaml", "sidecar-target.yaml"):
        (tmp_path / name).write_text((example / name).read_text())
    rel = os.path.relpath(K8S / "components", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "llm-d",
                "resources": ["decode-deployment.yaml"],
                "components": [f"{rel}/sidecar", f"{rel}/servicemonitor-sidecar"],
            }
        )
    )
    out = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for d in docs:
        validate(d, K8S_VERSIONS[0])
    pod = one(docs, "Deployment")["spec"]["template"]
    svc, sm = one(docs, "Service"), one(docs, "ServiceMonitor")
    assert svc["spec"]["clusterIP"] == "None"
    for k, v in svc["spec"]["selector"].items():
        assert pod["metadata"]["labels"].get(k) == v
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"].get(k) == v
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    target_port = svc["spec"]["ports"][0]["targetPort"]
    assert target_port in {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
