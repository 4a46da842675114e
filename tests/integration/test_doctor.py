"""``vllm-cache-sidecar doctor`` as users run it: a subprocess against replayed real captures."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import REPO
from testkit.bodies import get_value, set_value
from testkit.captures import FIXTURES, load_fixture
from testkit.procs import clean_env, free_port
from testkit.replay import ReplayServer

Q, H = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
V32_ON = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"
V32_OFF = FIXTURES / "vllm-0.32.0" / "prefix_off"
V10_ON = FIXTURES / "vllm-0.10.1.1.post2" / "prefix_on_shared"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def doctor_env() -> dict[str, str]:
    """Neither the developer's sidecar settings nor their NO_COLOR."""
    env = clean_env()
    env.pop("NO_COLOR", None)
    return env


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "doctor", *args],
        cwd=REPO,
        env=doctor_env(),
        capture_output=True,
        text=True,
    )


@pytest.fixture()
def replay():
    with ReplayServer() as rs:
        yield rs


def flat(text: str) -> str:
    """Output with line wrapping undone, for checking sentences."""
    return " ".join(text.split())


def pct(hits: float, queries: float) -> str:
    return f"{hits / queries * 100:.1f}%"


# ------------------------------------------------------------------------------ exit codes
def test_healthy_target_exits_0_with_the_hit_ratio(replay):
    replay.add_fixture("on", V32_ON)
    bodies, _, _ = load_fixture(V32_ON)
    r = doctor("--target", "on=" + replay.url("on"), "--duration", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert not ANSI.search(out)  # not a terminal: plain text
    assert "== on  " + replay.url("on") + "  UP" in out
    assert "prefix caching ON" in out and "block_size 128" in out
    dq0, dh0 = (
        get_value(bodies[1], Q) - get_value(bodies[0], Q),
        get_value(bodies[1], H) - get_value(bodies[0], H),
    )
    assert (
        f"  verdict        prefix caching ON; hit ratio {pct(dh0, dq0)} over 1s "
        f"({dh0:,.0f} of {dq0:,.0f} tokens)\n"
    ) in out
    # two scrapes: bodies 000 and 001; the 1s window holds exactly their difference
    dq = get_value(bodies[1], Q) - get_value(bodies[0], Q)
    dh = get_value(bodies[1], H) - get_value(bodies[0], H)
    row = next(line for line in out.splitlines() if line.strip().startswith("tiny"))
    assert pct(dh, dq) in row and f"{dq:,.0f}" in row and f"{dh:,.0f}" in row
    assert pct(get_value(bodies[1], H), get_value(bodies[1], Q)) in row  # lifetime
    assert "[OK] healthy: no findings" in out
    assert out.rstrip().endswith("Result: healthy (0 critical, 0 warning, 0 info); exit 0")


def test_info_finding_only_still_exits_0(replay):
    replay.add_fixture("old", V10_ON)
    r = doctor("--target", "old=" + replay.url("old"), "--duration", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[INFO] Old vLLM metric names (legacy_metric_names)" in r.stdout
    assert "v1-dual" in r.stdout and "vLLM 0.10.1.1" in r.stdout


def test_caching_off_exits_1_and_says_how_to_fix(replay):
    replay.add_fixture("off", V32_OFF)
    r = doctor("--target", "off=" + replay.url("off"), "--duration", "1")
    assert r.returncode == 1, r.stdout + r.stderr
    out = flat(r.stdout)
    assert "prefix caching OFF" in out
    assert "[WARNING] Prefix caching is disabled (prefix_caching_disabled)" in out
    assert "Start vLLM with --enable-prefix-caching" in out
    assert "ARM (aarch64), POWER (ppc64le), s390x and RISC-V" in out
    assert f"Confirm: curl -s {replay.url('off')} | grep vllm:cache_config_info" in out
    assert "exit 1" in out


def test_zero_hits_exits_1_and_explains(replay):
    bodies, _, version = load_fixture(V32_ON)
    start_hits = get_value(bodies[0], H)
    # queries grow, hits from every tier stay flat (vLLM 0.32 also counts them by source)
    src = "vllm:prompt_tokens_cached_by_source_total"
    start_dev = get_value(bodies[0], src, {"source": "device"})
    crafted = [set_value(set_value(b, H, start_hits), src, start_dev, {"source": "device"}) for b in bodies]
    assert get_value(crafted[2], Q) > get_value(crafted[0], Q)
    replay.add("zero", crafted, version=version)
    r = doctor("--target", "zero=" + replay.url("zero"), "--duration", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    dq = get_value(bodies[2], Q) - get_value(bodies[0], Q)
    assert "[WARNING] Prefix cache finds no hits (zero_hit_rate)" in out
    assert "verdict prefix caching ON; hit ratio 0.0% over 2s" in flat(out)
    assert f"{dq:,.0f} prompt tokens in the prefix cache and found 0: a hit ratio of 0%" in flat(out)
    assert "Likely causes, most likely first:" in out
    assert "the prompts share no prefix" in flat(out) and "shorter than one KV block" in flat(out)
    row = next(line for line in out.splitlines() if line.strip().startswith("tiny"))
    assert "0.0%" in row


def test_no_vllm_metrics_exits_2(replay):
    bodies, _, _ = load_fixture(V32_ON)
    stripped = b"\n".join(ln for ln in bodies[0].split(b"\n") if b"vllm:" not in ln)
    replay.add("bare", [stripped])
    r = doctor("--target", "bare=" + replay.url("bare"), "--duration", "0")
    assert r.returncode == 2, r.stdout + r.stderr
    out = flat(r.stdout)
    assert "verdict answers, but exposes no vLLM metrics" in out
    assert "[CRITICAL] No vLLM metrics exposed (no_vllm_metrics)" in out
    assert "Remove --disable-log-stats" in out


def test_dead_target_exits_2(replay):
    url = f"http://127.0.0.1:{free_port()}/metrics"
    r = doctor("--target", "dead=" + url, "--duration", "0")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"== dead  {url}  DOWN" in r.stdout
    assert "0/2 scrapes ok" in r.stdout
    assert "  verdict        unreachable (connect)\n" in r.stdout
    assert "[CRITICAL] vLLM target unreachable (target_down)" in r.stdout
    assert "Result: critical" in r.stdout


def test_worst_target_decides_the_exit_code(replay):
    replay.add_fixture("on", V32_ON)
    replay.add_fixture("off", V32_OFF)
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    r = doctor(
        "--target",
        "on=" + replay.url("on"),
        "--target",
        "off=" + replay.url("off"),
        "--target",
        "dead=" + dead,
        "--duration",
        "1",
    )
    assert r.returncode == 2
    assert r.stdout.index("== on ") < r.stdout.index("== off ") < r.stdout.index("== dead ")
    assert "(1 critical, 1 warning, 0 info); exit 2" in r.stdout


# ------------------------------------------------------------------------------ --json
def test_json_shape(replay):
    replay.add_fixture("off", V32_OFF)
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    r = doctor(
        "--target", "off=" + replay.url("off"), "--target", "dead=" + dead, "--duration", "1", "--json"
    )
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 2 and doc["status"] == "critical" and doc["duration_seconds"] == 1
    off, down = doc["targets"]
    assert (off["name"], off["up"], off["status"]) == ("off", True, "warning")
    assert off["scrapes"] == 2 and off["successful_scrapes"] == 2
    assert off["prefix_caching_enabled"] is False
    assert off["cache_config"][0]["block_size"] == 128
    assert off["engines"][0]["hit_ratio"] == {"lifetime": None, "1s": None}
    (d,) = off["diagnoses"]
    assert d["code"] == "prefix_caching_disabled" and d["severity"] == "warning"
    x = d["explanation"]
    assert set(x) == {"code", "severity", "title", "summary", "numbers", "causes", "fix", "confirm"}
    assert x["title"] == "Prefix caching is disabled"
    assert all(set(c) == {"text", "because", "weight"} for c in x["causes"])
    assert (down["up"], down["status"], down["last_error_reason"]) == (False, "critical", "connect")
    assert [d["code"] for d in down["diagnoses"]] == ["target_down"]


# ------------------------------------------------------------------------------ targets
def test_config_file_targets_and_default_url(replay, tmp_path: Path):
    replay.add_fixture("on", V32_ON)
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        f"targets:\n  - name: from-config\n    url: {replay.url('on')}\n    labels: {{pod: vllm-0}}\n"
    )
    r = doctor("--config", str(cfg), "--duration", "0", "--json")
    (t,) = json.loads(r.stdout)["targets"]
    assert (t["name"], t["labels"], t["up"]) == ("from-config", {"pod": "vllm-0"}, True)
    assert r.returncode == 0
    # no target at all: vLLM's default address, as target "local"
    r = doctor("--duration", "0", "--json")
    (t,) = json.loads(r.stdout)["targets"]
    assert (t["name"], t["url"]) == ("local", "http://127.0.0.1:8000/metrics")


def test_bad_config_file_exits_2(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("targets:\n  - name: x\n")
    r = doctor("--config", str(cfg), "--duration", "0")
    assert r.returncode == 2
    assert "needs a 'url'" in r.stderr


# ------------------------------------------------------------------------------ terminal
def test_terminal_gets_colour_and_hostile_strings_stay_inert(replay):
    bodies, _, version = load_fixture(V32_OFF)
    hostile = [b.replace(b'model_name="tiny"', b'model_name="ev\\u001b[2Jil"') for b in bodies]
    replay.add("off", [b.replace(b"\\u001b", b"\x1b") for b in hostile], version=version)
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "doctor",
            "--duration",
            "1",
            "--target",
            "off=" + replay.url("off"),
        ],
        cwd=REPO,
        env=doctor_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait() == 1
    out = b"".join(chunks).decode()
    assert "\x1b[33;1m[WARNING]\x1b[0m" in out  # coloured severity
    assert "\x1b[2J" not in out and "ev\\x1b[2Jil" in out  # remote escape shown, not obeyed
