"""``python -m sidecar check-config FILE``: the real command in a subprocess.

Exit 0 and the effective config (YAML) on stdout; exit 2 and exactly ``FILE:LINE: message`` on
stderr for a bad file; never a secret on either stream.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VLLM_SIDECAR_") and k not in ("POD_NAME", "POD_NAMESPACE")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def check_config(path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", path],
        cwd=REPO,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def write(tmp_path: Path, text: str, name: str = "sidecar.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


def line_of(path: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(Path(path).read_text().split("\n"), 1) if needle in line]
    return hits[nth - 1]


GOOD = """
listen: 127.0.0.1:9500
interval: 2s
windows: [10s, 1m]
labels:
  cluster: c1
targets:
  - name: decode-0
    url: http://10.0.0.7:8000
    labels: {role: decode}
    timeout: 1s
    basic_auth:
      username: scraper
      password: pa55-not-for-eyes
  - url: http://scrape:url-secret-99@vllm-1.llm:8000/metrics
    bearer_token_file: /var/run/secrets/token
"""


def test_good_file_prints_the_effective_config(tmp_path):
    p = write(tmp_path, GOOD)
    r = check_config(p)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["listen"] == "127.0.0.1:9500"
    assert doc["interval"] == 2.0
    assert doc["windows"] == ["10s", "1m"]
    assert doc["static_labels"] == {"cluster": "c1"}
    a, b = doc["targets"]
    assert a["name"] == "decode-0" and a["url"] == "http://10.0.0.7:8000/metrics"
    assert a["labels"] == {"role": "decode"} and a["timeout"] == 1.0
    assert a["basic_auth"]["username"] == "scraper"
    assert b["name"] == "vllm-1.llm:8000"
    assert b["url"] == "http://vllm-1.llm:8000/metrics"
    assert b["bearer_token_file"] == "/var/run/secrets/token"


def test_check_config_never_prints_a_secret(tmp_path):
    r = check_config(write(tmp_path, GOOD))
    assert r.returncode == 0
    for secret in ("pa55-not-for-eyes", "url-secret-99"):
        assert secret not in r.stdout and secret not in r.stderr


def test_defaults_and_environment_are_part_of_the_effective_config(tmp_path):
    p = write(tmp_path, "# only a comment\n")
    r = check_config(p)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["targets"] == [{"name": "local", "url": "http://127.0.0.1:8000/metrics"}]
    assert doc["listen"] == "0.0.0.0:9490" and doc["interval"] == 5.0
    assert doc["windows"] == ["1m", "5m"]
    r = check_config(p, VLLM_SIDECAR_INTERVAL="3", POD_NAME="vllm-0", POD_NAMESPACE="llm")
    doc = yaml.safe_load(r.stdout)
    assert doc["interval"] == 3.0
    assert doc["static_labels"] == {"pod": "vllm-0", "namespace": "llm"}


def test_targets_file_targets_are_shown(tmp_path):
    sd = write(
        tmp_path,
        """
        - targets: ["10.0.0.9:8000"]
          labels: {team: x}
        """,
        "sd.yaml",
    )
    r = check_config(write(tmp_path, f"targets_file: {sd}\n"))
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["targets_file"] == sd
    assert [t["name"] for t in doc["targets_file_targets"]] == ["10.0.0.9:8000"]


BAD = {
    "unknown_key": ("interval: 5\nintervall: 6\n", "intervall"),
    "bad_url": ("targets:\n  - name: a\n    url: ftp://h:1/metrics\n", "url:"),
    "bad_duration": ("listen: 127.0.0.1:1\ninterval: 5 minutes\n", "interval"),
    "duplicate_key": ("interval: 5\nlisten: 127.0.0.1:1\ninterval: 6\n", "interval: 6"),
    "bad_yaml": ("listen: 127.0.0.1:1\nwindows: 1m\n  bad: indent\n", "bad: indent"),
    "bad_label_name": (
        "targets:\n  - url: http://h:1\n    labels:\n      ok: x\n      bad-name: y\n",
        "bad-name",
    ),
    "bad_target_timeout": ("targets:\n  - url: http://h:1\n    timeout: soon\n", "timeout"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_exits_2_with_file_line_message(tmp_path, kind):
    text, needle = BAD[kind]
    p = write(tmp_path, text)
    r = check_config(p)
    assert r.returncode == 2
    assert r.stdout == ""
    m = re.fullmatch(rf"{re.escape(p)}:(\d+): (\S.*)\n", r.stderr)
    assert m, r.stderr
    assert int(m.group(1)) == line_of(p, needle)


@pytest.mark.parametrize(
    "text",
    [
        "interval: 5\ntargets:\n  - name: a\n    url: http://h1:1\n  - name: a\n    url: http://h2:1\n",
        "interval: 5\ntargets:\n  - url: http://h1:1\n    timeout: 9s\n",
    ],
)
def test_cross_checks_also_exit_2_with_file_line_message(tmp_path, text):
    p = write(tmp_path, text)
    r = check_config(p)
    assert r.returncode == 2 and r.stdout == ""
    assert re.fullmatch(rf"{re.escape(p)}:\d+: \S.*\n", r.stderr), r.stderr


def test_bad_file_error_never_prints_a_password(tmp_path):
    p = write(tmp_path, 'targets:\n  - url: "http://u:hunter2@h1:notaport/metrics"\n')
    r = check_config(p)
    assert r.returncode == 2
    assert r.stderr.startswith(f"{p}:2: ")
    assert "hunter2" not in r.stderr and "hunter2" not in r.stdout


def test_missing_file_exits_2(tmp_path):
    p = str(tmp_path / "absent.yaml")
    r = check_config(p)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"{p}: ") and r.stderr.count("\n") == 1
