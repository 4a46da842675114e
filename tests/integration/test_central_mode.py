"""Central mode end to end: the real sidecar process on a watched Prometheus file_sd targets file,
against replayed vLLM captures.

New targets start, removed ones stop and their series vanish, a broken file keeps the old set and
raises the reload-error series, a fixed file clears it; SIGHUP reloads the config file the same
way; a broken file at start refuses to start with FILE:LINE.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import yaml

from testkit.captures import FIXTURES
from testkit.procs import GUARD_SECONDS, SidecarProcess, sidecar_cli, wait_until
from testkit.replay import ReplayServer

CAPTURE = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"


class Sidecar(SidecarProcess):
    """The real service at a one-second interval, with views of its /metrics for these tests."""

    def __init__(self, args: list[str], cwd: Path):
        super().__init__(["--interval", "1", "--windows", "10s", *args], cwd)

    def up(self) -> dict[str, float]:
        return {
            dict(labels)["target"]: v
            for (name, labels), v in self.metrics().items()
            if name == "vllm_sidecar_target_up"
        }

    def value(self, name: str) -> float | None:
        for (n, _), v in self.metrics().items():
            if n == name:
                return v
        return None

    def targets_with_series(self) -> set[str]:
        return {dict(labels).get("target") for (_, labels), _ in self.metrics().items()} - {None}


def wait_for(fn, what: str):
    """Poll ``fn`` until truthy; a guard against hanging, never a performance limit."""
    return wait_until(fn, what, timeout=GUARD_SECONDS)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture()
def replay():
    if not (CAPTURE / "meta.json").exists():
        pytest.skip(f"no fixtures at {FIXTURES}")
    with ReplayServer() as rs:
        for name in ("a", "b", "c", "d"):
            rs.add_fixture(name, CAPTURE)
        yield rs


def group(rs: ReplayServer, name: str, **labels: str) -> dict:
    """One file_sd group for fake ``name``: the address plus its path via __metrics_path__."""
    return {
        "targets": [f"127.0.0.1:{rs.port}"],
        "labels": {"name": name, "__metrics_path__": f"/{name}/metrics", **labels},
    }


def test_targets_file_is_watched_and_reloaded(replay, tmp_path):
    sd = tmp_path / "targets.json"
    write_atomically(
        sd,
        json.dumps(
            [
                group(replay, "a", pod="vllm-a", namespace="llm"),
                group(replay, "b", pod="vllm-b", namespace="llm"),
            ]
        ),
    )
    sidecar = Sidecar(["--targets-file", str(sd)], tmp_path)
    try:
        wait_for(lambda: sidecar.up() == {"a": 1.0, "b": 1.0}, "a and b up")
        labels = [
            dict(lab)
            for (n, lab), _ in sidecar.metrics().items()
            if n == "vllm_sidecar_target_up" and dict(lab)["target"] == "a"
        ][0]
        assert (labels["pod"], labels["namespace"]) == ("vllm-a", "llm")
        assert sidecar.value("vllm_sidecar_config_last_reload_successful") == 1.0

        # remove b, add c: c starts, every series of b vanishes, a keeps going
        hits_a = replay.fakes["a"].hits
        write_atomically(
            sd, json.dumps([group(replay, "a", pod="vllm-a", namespace="llm"), group(replay, "c")])
        )
        wait_for(lambda: sidecar.up() == {"a": 1.0, "c": 1.0}, "c up, b gone")
        assert "b" not in sidecar.targets_with_series()
        names = {t["name"] for t in httpx.get(sidecar.base + "/api/v1/targets").json()["targets"]}
        assert names == {"a", "c"}
        hits_b = replay.fakes["b"].hits
        wait_for(lambda: replay.fakes["a"].hits > hits_a + 2, "a still scraped")
        assert replay.fakes["b"].hits <= hits_b + 1  # b's loop stopped (one in flight at most)

        # a broken file keeps the old set and raises the error series
        write_atomically(sd, '[{"targets": ["127.0.0.1:1"]},\n {"targets": "oops"}]')
        wait_for(
            lambda: sidecar.value("vllm_sidecar_config_last_reload_successful") == 0.0, "reload error raised"
        )
        assert sidecar.up() == {"a": 1.0, "c": 1.0}
        assert (sidecar.value("vllm_sidecar_config_reload_failures_total") or 0) >= 1
        assert any(f"{sd}:2:" in line for line in sidecar.lines), "FILE:LINE in the log"

        # fixed: the error clears, the new set applies
        write_atomically(sd, json.dumps([group(replay, "d")]))
        wait_for(lambda: sidecar.up() == {"d": 1.0}, "only d")
        assert sidecar.value("vllm_sidecar_config_last_reload_successful") == 1.0
    finally:
        assert sidecar.stop() == 0


def test_sighup_reloads_config_and_keeps_the_old_one_when_broken(replay, tmp_path):
    cfg = tmp_path / "sidecar.yaml"
    write_atomically(cfg, yaml.safe_dump({"targets": [{"name": "a", "url": replay.url("a")}]}))
    sidecar = Sidecar(["--config", str(cfg)], tmp_path)
    try:
        wait_for(lambda: sidecar.up() == {"a": 1.0}, "a up")
        write_atomically(
            cfg,
            yaml.safe_dump(
                {
                    "targets": [
                        {"name": "a", "url": replay.url("a")},
                        {"name": "b", "url": replay.url("b"), "labels": {"role": "decode"}},
                    ]
                }
            ),
        )
        sidecar.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sidecar.up() == {"a": 1.0, "b": 1.0}, "b added by SIGHUP")

        write_atomically(cfg, "targets:\n  - name: a\n    url: [not, a, url]\n")
        sidecar.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: sidecar.value("vllm_sidecar_config_last_reload_successful") == 0.0, "reload error raised"
        )
        assert sidecar.up() == {"a": 1.0, "b": 1.0}
    finally:
        assert sidecar.stop() == 0


def test_broken_targets_file_at_start_is_refused_with_file_and_line(tmp_path):
    sd = tmp_path / "targets.yaml"
    sd.write_text("- targets:\n  - ok:1\n  - http://bad:2/metrics\n")
    result = sidecar_cli("run", "--listen", "127.0.0.1:0", "--targets-file", str(sd), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{sd}:3:" in result.stdout + result.stderr
