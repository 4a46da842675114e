"""OfflineCollector with a real ``vllm.LLM`` on CPU (each run in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from demo.vllm_server import vllm_environment

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("offline_run.py")
ROOT = Path(__file__).resolve().parents[2]


def run_offline(model_dir: Path, mode: str, logs: Path) -> dict:
    env = vllm_environment()
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = logs / f"offline-{mode}.log"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(model_dir), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.write_text(proc.stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"offline run failed ({proc.returncode}):\n" + "\n".join(
        proc.stdout.splitlines()[-40:]
    )
    return json.loads(lines[-1][len("REPORT ") :])


def test_offline_caching_on_matches_vllm_counters(model_dir, logs):
    out = run_offline(model_dir, "on", logs)
    report, before, after = out["report"], out["before"], out["after"]
    queries = after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"]
    hits = after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"]
    assert report["prefix_cache_queries"] == queries > 0
    assert report["prefix_cache_hits"] == hits > 0
    assert report["prefix_cache_hit_ratio"] == pytest.approx(hits / queries)
    # 44 prompts on 2 shared prefixes of 3+ full blocks: most prompt tokens are cache hits
    assert 0.3 < report["prefix_cache_hit_ratio"] < 1.0
    assert report["prompt_tokens"] == after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"]
    assert report["prefix_caching_enabled"] is True
    assert 0.0 < report["kv_cache_usage_max"] <= 1.0  # the long batch held KV blocks
    assert "prefix_caching_disabled" not in report["diagnoses"]
    assert "zero_hit_rate" not in report["diagnoses"]
    # the get_metrics() conversion normalises exactly like a scrape of the same registry
    assert out["scrape_diffs"] == []


def test_offline_caching_off_is_diagnosed(model_dir, logs):
    report = run_offline(model_dir, "off", logs)["report"]
    assert report["prefix_caching_enabled"] is False
    assert "prefix_caching_disabled" in report["diagnoses"]
    assert report["prefix_cache_hits"] == 0
    assert report["prefix_cache_hit_ratio"] is None  # NaN, sent as null in the JSON line
    assert "zero_hit_rate" not in report["diagnoses"]
    assert report["prompt_tokens"] > 0
