"""Central mode: Prometheus file_sd parsing and the targets-file watcher."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from sidecar.config.files import ConfigError
from sidecar.config.reload import TargetsFileWatcher
from sidecar.config.settings import BasicAuth, TargetConfig, TLSConfig
from sidecar.config.targets import load_targets_file, parse_targets_file


def by_name(targets):
    return {t.name: t for t in targets}


# ---------------------------------------------------------------- parsing


def test_yaml_groups_become_targets_named_host_port():
    text = """
- targets: ["10.0.0.7:8000", "10.0.0.8:8001"]
  labels:
    namespace: llm
    pod_group: decode
- targets:
  - vllm-0.vllm.llm.svc:8000
"""
    got = by_name(parse_targets_file(text, "sd.yaml"))
    assert list(got) == ["10.0.0.7:8000", "10.0.0.8:8001", "vllm-0.vllm.llm.svc:8000"]
    assert got["10.0.0.7:8000"].url == "http://10.0.0.7:8000/metrics"
    assert got["10.0.0.8:8001"].labels == (("namespace", "llm"), ("pod_group", "decode"))
    assert got["vllm-0.vllm.llm.svc:8000"].labels == ()


def test_json_is_accepted_exactly_like_yaml():
    groups = [{"targets": ["a:1"], "labels": {"team": "x"}}, {"targets": ["b:2"]}]
    from_json = parse_targets_file(json.dumps(groups, indent="\t"), "sd.json")
    from_yaml = parse_targets_file("- targets: [a:1]\n  labels: {team: x}\n- targets: [b:2]\n", "sd.yaml")
    assert from_json == from_yaml
    assert [t.name for t in from_json] == ["a:1", "b:2"]


def test_format_follows_the_extension_like_prometheus():
    flow_yaml = "[{targets: [a:1], labels: {x: y}}]"  # YAML flow style, not JSON
    assert [t.name for t in parse_targets_file(flow_yaml, "sd.yaml")] == ["a:1"]
    assert [t.name for t in parse_targets_file(flow_yaml, "sd")] == ["a:1"]
    with pytest.raises(ConfigError, match="invalid JSON"):
        parse_targets_file(flow_yaml, "sd.json")
    assert [t.name for t in parse_targets_file('[{"targets": ["b:2"]}]', "targets")] == ["b:2"]


def test_name_label_names_the_target_and_is_not_a_static_label():
    text = '[{"targets": ["10.1.2.3:8000"], "labels": {"name": "decode-0", "zone": "a"}}]'
    (t,) = parse_targets_file(text, "sd.json")
    assert t.name == "decode-0"
    assert t.labels == (("zone", "a"),)


def test_metrics_path_and_scheme_are_honoured_and_other_dunder_labels_dropped():
    text = """
- targets: [secure:8443]
  labels:
    __scheme__: https
    __metrics_path__: /vllm/metrics
    __meta_kubernetes_pod_name: vllm-0
    __address__: ignored:1
    env: prod
"""
    (t,) = parse_targets_file(text, "sd.yaml")
    assert t.url == "https://secure:8443/vllm/metrics"
    assert t.labels == (("env", "prod"),)
    assert t.name == "secure:8443"


def test_address_without_port_gets_the_scheme_default_in_its_name():
    (t,) = parse_targets_file("- targets: [vllm]\n  labels: {__scheme__: https}\n", "sd.yaml")
    assert t.url == "https://vllm/metrics"
    assert t.name == "vllm:443"


def test_ipv6_address():
    (t,) = parse_targets_file('[{"targets": ["[::1]:8000"]}]', "sd.json")
    assert t.url == "http://[::1]:8000/metrics"
    assert t.name == "[::1]:8000"


def test_non_string_label_values_are_stringified_like_prometheus_yaml():
    (t,) = parse_targets_file("- targets: [a:1]\n  labels: {shard: 3, canary: true}\n", "sd.yaml")
    assert t.labels == (("canary", "true"), ("shard", "3"))


@pytest.mark.parametrize("text", ["", "   \n", "[]", "# only a comment\n"])
def test_empty_documents_mean_no_targets(text):
    assert parse_targets_file(text, "sd.yaml") == ()


def test_group_without_targets_is_allowed_and_empty():
    assert parse_targets_file("- labels: {a: b}\n", "sd.yaml") == ()


def test_defaults_supply_auth_and_tls_and_labels_that_file_sd_cannot_express():
    defaults = TargetConfig(
        name="",
        url="",
        labels=(("cluster", "c1"), ("zone", "z0")),
        timeout=2.0,
        bearer_token_file="/var/run/token",
        basic_auth=BasicAuth("u", password_file="/p"),
        tls=TLSConfig(ca_file="/ca.crt"),
    )
    (t,) = parse_targets_file("- targets: [a:1]\n  labels: {zone: z1}\n", "sd.yaml", defaults)
    assert t.labels == (("cluster", "c1"), ("zone", "z1"))  # the file's label wins
    assert (t.timeout, t.bearer_token_file, t.tls) == (2.0, "/var/run/token", defaults.tls)
    assert t.basic_auth == defaults.basic_auth


# ---------------------------------------------------------------- errors, located


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("- targets: [a:1]\n  labelz: {}\n", 2, "unknown key 'labelz'"),
        ("- targets: a:1\n", 1, "must be a list"),
        ("- targets:\n  - a:1\n  - http://b:2/metrics\n", 3, "host:port only"),
        ("- targets:\n  - a:1\n  - user:pw@b:2\n", 3, "host:port only"),
        ("- targets:\n  - a:1\n  - 'b:99999'\n", 3, "port"),
        ("- targets: [a:1]\n  labels:\n    ok: x\n    bad-name: y\n", 4, "invalid label name"),
        ("- targets: [a:1]\n  labels:\n    target: x\n", 3, "reserved"),
        ("- targets: [a:1]\n  labels:\n    __scheme__: ftp\n", 3, "__scheme__"),
        ("- targets: [a:1]\n  labels:\n    __metrics_path__: metrics\n", 3, "__metrics_path__"),
        ("- targets: [a:1, b:2]\n  labels: {name: one}\n", 1, "names one target"),
        ("- targets: [a:1]\n- targets:\n  - a:1\n", 3, "used twice"),
        ("- targets: [a:1]\n  labels: {x: [1]}\n", 2, "must be a string"),
        ("targets: [a:1]\n", 1, "must be a list"),
        ("- targets: [a:1\n", 2, "invalid YAML"),
        ("- targets: [a:1]\n  labels: {name: ''}\n", 2, "must not be empty"),
    ],
)
def test_errors_carry_file_and_line(text, line, fragment):
    with pytest.raises(ConfigError) as info:
        parse_targets_file(text, "sd.yaml")
    assert info.value.file == "sd.yaml"
    assert info.value.line == line, str(info.value)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"sd.yaml:{line}: ")


def test_json_syntax_error_has_line():
    with pytest.raises(ConfigError) as info:
        parse_targets_file('[\n {"targets": ["a:1"]},\n {"targets": ["b:2"],}\n]', "sd.json")
    assert info.value.line == 3
    assert "invalid JSON" in str(info.value)


def test_json_semantic_error_has_line():
    text = '[\n  {"targets": ["a:1"]},\n  {"targets": ["a:1"]}\n]'
    with pytest.raises(ConfigError) as info:
        parse_targets_file(text, "sd.json")
    assert str(info.value).startswith("sd.json:3: ")


def test_load_targets_file_reads_and_reports_missing_file(tmp_path):
    f = tmp_path / "sd.yaml"
    f.write_text("- targets: [a:1]\n")
    assert [t.name for t in load_targets_file(str(f))] == ["a:1"]
    with pytest.raises(ConfigError) as info:
        load_targets_file(str(tmp_path / "missing.yaml"))
    assert "cannot read targets file" in str(info.value)
    f.write_bytes(b"- targets: [\xff]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_targets_file(str(f))


# ---------------------------------------------------------------- watcher


class Recorder:
    def __init__(self):
        self.changes: list[tuple[TargetConfig, ...]] = []
        self.errors: list[ConfigError] = []

    def on_change(self, targets):
        self.changes.append(targets)

    async def on_error(self, exc):  # a coroutine callback must work as well
        self.errors.append(exc)


def names(targets):
    return [t.name for t in targets]


def rewrite(path, text):
    """Atomic replace, as Kubernetes and careful generators do."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def test_watcher_reports_new_sets_keeps_old_set_on_broken_file_and_recovers(tmp_path):
    path = str(tmp_path / "sd.yaml")
    rewrite(path, "- targets: [a:1, b:2]\n")
    rec = Recorder()
    w = TargetsFileWatcher(path, 0.05, rec.on_change, rec.on_error)

    async def scenario():
        assert names(w.load_initial()) == ["a:1", "b:2"]
        assert await w.check() is False  # unchanged
        rewrite(path, "- targets: [a:1, b:2]\n")  # same content, new inode: no reload
        assert await w.check() is False
        rewrite(path, "- targets: [a:1, c:3]\n")
        assert await w.check() is True
        assert names(rec.changes[-1]) == ["a:1", "c:3"]

        rewrite(path, "- targets: [a:1, c:3\n")  # broken
        assert await w.check() is True
        assert len(rec.errors) == 1 and "invalid YAML" in str(rec.errors[0])
        assert names(w.targets) == ["a:1", "c:3"] and not w.ok
        assert await w.check() is False  # the same broken text is reported once
        assert len(rec.errors) == 1

        os.unlink(path)  # missing file: another error, still the old set
        assert await w.check() is True
        assert "cannot read" in str(rec.errors[-1])
        assert names(w.targets) == ["a:1", "c:3"]

        rewrite(path, "- targets: [a:1, c:3]\n")  # fixed with the old set: error clears
        assert await w.check() is True
        assert w.ok and names(rec.changes[-1]) == ["a:1", "c:3"]
        assert w.failures == 2

    asyncio.run(scenario())


def test_watcher_load_initial_raises_on_broken_file(tmp_path):
    path = tmp_path / "sd.yaml"
    path.write_text("- targets: [http://x]\n")
    with pytest.raises(ConfigError) as info:
        TargetsFileWatcher(str(path)).load_initial()
    assert str(info.value).startswith(f"{path}:1: ")


def test_watcher_run_loop_picks_up_changes_and_stops(tmp_path):
    path = str(tmp_path / "sd.json")
    rewrite(path, '[{"targets": ["a:1"]}]')
    seen: list[list[str]] = []
    done = asyncio.Event

    async def scenario():
        finished = done()

        def on_change(targets):
            seen.append(names(targets))
            if names(targets) == ["b:2"]:
                finished.set()
            else:
                rewrite(path, '[{"targets": ["b:2"]}]')

        w = TargetsFileWatcher(path, 0.02, on_change)
        task = asyncio.create_task(w.run())
        await finished.wait()
        w.stop()
        await task

    asyncio.run(scenario())
    assert seen == [["a:1"], ["b:2"]]


def test_watcher_trigger_rechecks_now_and_callback_errors_do_not_kill_the_loop(tmp_path):
    path = str(tmp_path / "sd.yaml")
    rewrite(path, "- targets: [a:1]\n")
    calls: list[list[str]] = []

    async def scenario():
        got_second = asyncio.Event()

        def on_change(targets):
            calls.append(names(targets))
            if len(calls) == 1:
                raise RuntimeError("callback bug")
            got_second.set()

        w = TargetsFileWatcher(path, 3600, on_change)  # would never tick again by itself
        task = asyncio.create_task(w.run())
        while not calls:
            await asyncio.sleep(0.01)
        rewrite(path, "- targets: [b:2]\n")
        w.trigger()
        await got_second.wait()
        w.stop()
        await task

    asyncio.run(scenario())
    assert calls == [["a:1"], ["b:2"]]
