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
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.replay import ReplayServer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("VLLM_SIDECAR_FIXTURES") or ROOT.parent / "shared" / "fixtures")
CAPTURE = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"
GUARD_SECONDS = 90  # against hanging only; never a performance limit


class Sidecar:
    def __init__(self, args: list[str], cwd: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SIDECAR_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--listen", "127.0.0.1:0", "--log-format",
             "json", "--interval", "1", "--windows", "10s", *args],
            cwd=cwd, env=dict(env, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        started = threading.Event()

        def read():
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                try:
                    msg = json.loads(line).get("msg", "")
                except ValueError:
                    msg = ""
                if msg.startswith("listening on "):
                    self.port = int(msg.split()[2].rpartition(":")[2])
                    started.set()
            started.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        started.wait(GUARD_SECONDS)
        if self.port is None:
            self.stop()
            raise AssertionError("sidecar did not start:\n" + "".join(self.lines))
        self.base = f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = httpx.get(self.base + "/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def up(self) -> dict[str, float]:
        return {dict(labels)["target"]: v for (name, labels), v in self.metrics().items()
                if name == "vllm_sidecar_target_up"}

    def value(self, name: str) -> float | None:
        for (n, _), v in self.metrics().items():
            if n == name:
                return v
        return None

    def targets_with_series(self) -> set[str]:
        return {dict(labels).get("target") for (_, labels), _ in self.metrics().items()} - {None}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        return self.proc.returncode


def wait_until(fn, what: str):
    deadline = time.monotonic() + GUARD_SECONDS
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what} (last: {last!r})")


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
    return {"targets": [f"127.0.0.1:{rs.port}"],
            "labels": {"name": name, "__metrics_path__": f"/{name}/metrics", **labels}}


def test_targets_file_is_watched_and_reloaded(replay, tmp_path):
    sd = tmp_path / "targets.json"
    write_atomically(sd, json.dumps([group(replay, "a", pod="vllm-a", namespace="llm"),
                                     group(replay, "b", pod="vllm-b", namespace="llm")]))
    sidecar = Sidecar(["--targets-file", str(sd)], tmp_path)
    try:
        wait_until(lambda: sidecar.up() == {"a": 1.0, "b": 1.0}, "a and b up")
        labels = [dict(lab) for (n, lab), _ in sidecar.metrics().items()
                  if n == "vllm_sidecar_target_up" and dict(lab)["target"] == "a"][0]
        assert (labels["pod"], labels["namespace"]) == ("vllm-a", "llm")
        assert sidecar.value("vllm_sidecar_config_last_reload_successful") == 1.0

        # remove b, add c: c starts, every series of b vanishes, a keeps going
        hits_a = replay.fakes["a"].hits
        write_atomically(sd, json.dumps([group(replay, "a", pod="vllm-a", namespace="llm"),
                                         group(replay, "c")]))
        wait_until(lambda: sidecar.up() == {"a": 1.0, "c": 1.0}, "c up, b gone")
        assert "b" not in sidecar.targets_with_series()
        names = {t["name"] for t in httpx.get(sidecar.base + "/api/v1/targets").json()["targets"]}
        assert names == {"a", "c"}
        hits_b = replay.fakes["b"].hits
        wait_until(lambda: replay.fakes["a"].hits > hits_a + 2, "a still scraped")
        assert replay.fakes["b"].hits <= hits_b + 1  # b's loop stopped (one in flight at most)

        # a broken file keeps the old set and raises the error series
        write_atomically(sd, '[{"targets": ["127.0.0.1:1"]},\n {"targets": "oops"}]')
        wait_until(lambda: sidecar.value("vllm_sidecar_config_last_reload_successful") == 0.0,
                   "reload error raised")
        assert sidecar.up() == {"a": 1.0, "c": 1.0}
        assert (sidecar.value("vllm_sidecar_config_reload_failures_total") or 0) >= 1
        assert any(f"{sd}:2:" in line for line in sidecar.lines), "FILE:LINE in the log"

        # fixed: the error clears, the new set applies
        write_atomically(sd, json.dumps([group(replay, "d")]))
        wait_until(lambda: sidecar.up() == {"d": 1.0}, "only d")
        assert sidecar.value("vllm_sidecar_config_last_reload_successful") == 1.0
    finally:
        assert sidecar.stop() == 0


def test_sighup_reloads_config_and_keeps_the_old_one_when_broken(replay, tmp_path):
    cfg = tmp_path / "sidecar.yaml"
    write_atomically(cfg, yaml.safe_dump({"targets": [{"name": "a", "url": replay.url("a")}]}))
    sidecar = Sidecar(["--config", str(cfg)], tmp_path)
    try:
        wait_until(lambda: sidecar.up() == {"a": 1.0}, "a up")
        write_atomically(cfg, yaml.safe_dump({"targets": [
            {"name": "a", "url": replay.url("a")},
            {"name": "b", "url": replay.url("b"), "labels": {"role": "decode"}}]}))
        sidecar.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sidecar.up() == {"a": 1.0, "b": 1.0}, "b added by SIGHUP")

        write_atomically(cfg, "targets:\n  - name: a\n    url: [not, a, url]\n")
        sidecar.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sidecar.value("vllm_sidecar_config_last_reload_successful") == 0.0,
                   "reload error raised")
        assert sidecar.up() == {"a": 1.0, "b": 1.0}
    finally:
        assert sidecar.stop() == 0


def test_broken_targets_file_at_start_is_refused_with_file_and_line(tmp_path):
    sd = tmp_path / "targets.yaml"
    sd.write_text("- targets:\n  - ok:1\n  - http://bad:2/metrics\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SIDECAR_")}
    result = subprocess.run([sys.executable, "-m", "sidecar", "run", "--listen", "127.0.0.1:0",
                             "--targets-file", str(sd)], capture_output=True, text=True,
                            cwd=tmp_path, env=dict(env, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert f"{sd}:3:" in result.stdout + result.stderr
