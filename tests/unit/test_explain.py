"""Explanations of every diagnosis rule, on real vLLM captures and bodies crafted from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sidecar.config.settings import parse_windows
from sidecar.derive import TargetTracker
from sidecar.diagnose import CODES
from sidecar.explain import EXPLAINERS, Explanation, explain, explain_all
from sidecar.model import ScrapeOutcome, TargetSnapshot
from sidecar.scrape import parse_body
from testkit.bodies import multi_engine, no_hits
from testkit.captures import FIXTURES, capture_bodies

V32_ON = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"
V32_OFF = FIXTURES / "vllm-0.32.0" / "prefix_off"
V32_CONC = FIXTURES / "vllm-0.32.0" / "concurrent"
V10_ON = FIXTURES / "vllm-0.10.1.1.post2" / "prefix_on_shared"
V085_ON = FIXTURES / "vllm-0.8.5.post2-v0-hidden" / "prefix_on_shared"
T0 = 1_800_000_000.0


def bodies(folder: Path) -> list[str]:
    return [b.decode() for b in capture_bodies(folder)]


def sub(body: str, pattern: str, repl) -> str:
    """A regex replacement that must change something (so a crafted case never silently
    degrades into the original body)."""
    out, n = re.subn(pattern, repl, body, flags=re.M)
    assert n, f"pattern {pattern!r} matched nothing"
    return out


def feed(seq: list[str | None], windows: str = "1m,5m", name: str = "t") -> TargetSnapshot:
    """Run bodies through the real parse + derivation, one second apart; None = connect error."""
    tracker = TargetTracker(name, parse_windows(windows), url="http://vllm.test:8000/metrics")
    snap = tracker.snapshot
    for i, body in enumerate(seq):
        t = T0 + i
        if body is None:
            outcome = ScrapeOutcome(
                t, 0.001, reason="connect", error="ClientConnectorError: connection refused"
            )
        else:
            outcome = parse_body(body.encode(), "text/plain; version=0.0.4", t, 0.001)
        snap = tracker.observe(outcome)
    return snap


def only(snap: TargetSnapshot, code: str) -> Explanation:
    found = [d for d in snap.diagnoses if d.code == code]
    assert found, f"{code} not diagnosed; got {[d.code for d in snap.diagnoses]}"
    return explain(found[0], snap)


def text_of(x: Explanation) -> str:
    return " ".join(
        [x.title, x.summary, *x.numbers, *(c.text + " " + c.because for c in x.causes), *x.fix, x.confirm]
    )


def set_hits_flat(body: str) -> str:
    """No hit from any tier (the hit counter and vLLM 0.32's hits by source)."""
    assert "vllm:prefix_cache_hits_total" in body
    return no_hits(body).decode()


# ------------------------------------------------------------------------------ coverage
def test_every_contract_code_has_an_explainer():
    assert set(EXPLAINERS) == set(CODES)


def test_healthy_capture_has_nothing_to_explain():
    snap = feed(bodies(V32_ON))
    assert snap.up and snap.prefix_caching_enabled is True
    assert explain_all(snap) == ()


# ------------------------------------------------------------------------------ caching off
def test_prefix_caching_disabled_on_real_capture():
    snap = feed(bodies(V32_OFF))
    x = only(snap, "prefix_caching_disabled")
    assert x.severity == "warning" and x.title == "Prefix caching is disabled"
    assert any('enable_prefix_caching="False"' in n for n in x.numbers)
    assert any("--enable-prefix-caching" in f for f in x.fix)
    assert "vllm:cache_config_info" in x.confirm and 'enable_prefix_caching="True"' in x.confirm
    joined = text_of(x)
    for word in ("ARM", "POWER", "s390x", "RISC-V", "Mamba", "sliding"):
        assert word in joined
    # No hybrid / sliding-window evidence in this Llama capture: the flags rank first, and the
    # platform cause cites the CPU block size as its evidence.
    assert x.causes[0].text.startswith("the flags")
    platform = next(c for c in x.causes if c.text.startswith("the platform"))
    assert "128" in platform.because
    mamba = next(c for c in x.causes if c.text.startswith("the model type"))
    assert mamba.because == ""


def test_hybrid_model_evidence_ranks_model_type_first():
    seq = [sub(b, r'mamba_cache_mode="none"', 'mamba_cache_mode="align"') for b in bodies(V32_OFF)]
    x = only(feed(seq), "prefix_caching_disabled")
    assert x.causes[0].text.startswith("the model type")
    assert "mamba_cache_mode=align" in x.causes[0].because


def test_attention_free_model_evidence():
    seq = [sub(b, r'is_attention_free="False"', 'is_attention_free="True"') for b in bodies(V32_OFF)]
    x = only(feed(seq), "prefix_caching_disabled")
    assert x.causes[0].text.startswith("the model type")
    assert "is_attention_free=True" in x.causes[0].because


def test_sliding_window_evidence_on_old_vllm():
    # one body repeated: hits do not grow, so the flag is not contradicted by the counters
    seq = [
        sub(b, r'enable_prefix_caching="True"', 'enable_prefix_caching="False"')
        for b in bodies(V10_ON)[-1:] * 3
    ]
    seq = [sub(b, r'sliding_window="None"', 'sliding_window="4096"') for b in seq]
    x = only(feed(seq), "prefix_caching_disabled")
    assert x.causes[0].text.startswith("sliding-window")
    assert "sliding_window=4096" in x.causes[0].because
    # vLLM 0.10's cache_config_info carries cpu_kvcache_space_bytes: a CPU build.
    platform = next(c for c in x.causes if c.text.startswith("the platform"))
    assert "cpu_kvcache_space_bytes" in platform.because


# ------------------------------------------------------------------------------ zero hits
def test_zero_hits_with_long_prompts_blames_the_prompts_not_the_block_size():
    snap = feed([set_hits_flat(b) for b in bodies(V32_ON)])
    x = only(snap, "zero_hit_rate")
    assert x.title == "Prefix cache finds no hits"
    assert "10,786" in x.numbers[0] and "0%" in x.numbers[0]
    assert "539" in x.numbers[1] and "128" in x.numbers[1]  # mean prompt vs block size
    assert x.causes[0].text.startswith("the prompts share no prefix")
    short = next(c for c in x.causes if "shorter than one KV block" in c.text)
    assert short.because == ""  # 539 tokens is > 4 blocks: the short-prefix cause does not fit


def test_zero_hits_with_prompts_shorter_than_one_block_says_so():
    def short_prompts(body: str) -> str:
        body = set_hits_flat(body)
        count = float(re.search(r"^vllm:request_prompt_tokens_count\{[^}]*\} (\S+)", body, re.M).group(1))
        return sub(
            body,
            r"^(vllm:request_prompt_tokens_sum\{[^}]*\}) .*$",
            lambda m: f"{m.group(1)} {count * 40:.1f}",
        )

    x = only(feed([short_prompts(b) for b in bodies(V32_ON)]), "zero_hit_rate")
    top = x.causes[0]
    assert "shorter than one KV block" in top.text and "128 on vLLM CPU builds" in top.text
    assert top.because == "mean prompt 40 tokens <= one 128-token block"
    assert "at least one block long (128 tokens)" in x.fix[0]  # the matching fix comes first


def test_zero_hits_with_full_kv_cache_suspects_eviction():
    seq = [
        sub(set_hits_flat(b), r"^(vllm:kv_cache_usage_perc\{[^}]*\}) .*$", r"\1 0.97") for b in bodies(V32_ON)
    ]
    snap = feed(seq)
    x = only(snap, "zero_hit_rate")
    assert x.causes[0].text.startswith("cached blocks are evicted")
    assert x.causes[0].because == "KV usage 97.0%"
    assert x.fix[0].startswith("If KV usage is high")
    kv = only(snap, "kv_cache_pressure")
    assert "97.0%" in kv.numbers[0]


def test_zero_hits_on_data_parallel_engines_suspects_routing():
    seq = [multi_engine([set_hits_flat(b)] * 2).decode() for b in bodies(V32_ON)]
    x = only(feed(seq), "zero_hit_rate")
    routing = next(c for c in x.causes if "prefix-aware routing" in c.text)
    assert routing.because == "2 engines"


def test_zero_hits_on_v0_engine():
    seq = [
        sub(b, r"^(vllm:gpu_prefix_cache_hit_rate\{[^}]*\}) .*$", r"\1 0.0")
        if "gpu_prefix_cache_hit_rate{" in b
        else b
        for b in bodies(V085_ON)
    ]
    snap = feed(seq)
    x = only(snap, "zero_hit_rate")
    grew = snap.engines[0].windows[0].prompt_tokens  # from the first body holding the counter
    assert grew > 0 and "V0" in x.numbers[0] and f"{grew:,.0f}" in x.numbers[0]


# ------------------------------------------------------------------------------ connector
def test_external_connector_names_kv_transfer_config():
    seq = [
        sub(b, r"^(vllm:external_prefix_cache_queries_total\{[^}]*\}) .*$", r"\1 4096.0")
        for b in bodies(V32_ON)
    ]
    x = only(feed(seq), "external_kv_connector")
    assert x.severity == "info"
    joined = text_of(x)
    assert "--kv-transfer-config" in joined and "NIXL" in joined
    assert "4,096" in x.numbers[0]
    # no external hits at all: the "connector finds nothing" cause is raised
    assert any(c.because == "0 external hits" for c in x.causes)


# ------------------------------------------------------------------------------ no metrics / down
def _strip_vllm(body: str) -> str:
    kept = [ln for ln in body.splitlines() if "vllm:" not in ln]
    return "\n".join(kept) + "\n"


def test_no_vllm_metrics_explains_disable_log_stats_and_startup():
    b = bodies(V32_ON)
    x = only(feed([_strip_vllm(b[0])]), "no_vllm_metrics")
    assert x.severity == "critical"
    joined = text_of(x)
    assert "--disable-log-stats" in joined and "starting" in joined
    # after a good scrape, a body without vllm: series most likely means a restart in progress
    x2 = only(feed([b[0], _strip_vllm(b[0])]), "no_vllm_metrics")
    assert x2.causes[0].text.startswith("the server is still starting")
    assert "restarting" in x2.causes[0].because


def test_target_down_connect_ranks_by_history():
    x = only(feed([None]), "target_down")
    assert "connect" in x.numbers[0] and "No scrape of this target has succeeded" in x.numbers[1]
    assert "not running" in x.causes[0].text
    x2 = only(feed([bodies(V32_ON)[0], None]), "target_down")
    assert x2.causes[0].text == "vLLM crashed or is restarting"


@pytest.mark.parametrize(
    "error,top",
    [
        ("HTTP 404 Not Found", "the path is wrong"),
        ("HTTP 401 Unauthorized", "a proxy in front of vLLM needs"),
        ("HTTP 502 Bad Gateway", "vLLM or a proxy in front"),
    ],
)
def test_target_down_http_status_ranks_by_status_code(error, top):
    tracker = TargetTracker("t", parse_windows("1m"), url="http://vllm.test:8000/metrics")
    snap = tracker.observe(ScrapeOutcome(T0, 0.01, reason="http_status", error=error))
    x = only(snap, "target_down")
    assert x.causes[0].text.startswith(top)
    assert x.causes[0].because == error[:8]


# ------------------------------------------------------------------------------ info rules
def test_legacy_names_dual_era():
    x = only(feed(bodies(V10_ON)), "legacy_metric_names")
    assert "v1-dual" in x.numbers[0] and "0.9.2 - 0.11" in x.numbers[0]
    assert "vllm:gpu_prefix_cache_queries" in x.numbers[1]
    assert any("vllm_sidecar_" in f for f in x.fix)


def test_legacy_names_v0_era_with_hidden_metrics():
    x = only(feed(bodies(V085_ON)), "legacy_metric_names")
    assert "V0 engine" in x.numbers[0]
    hidden = next(c for c in x.causes if "--show-hidden-metrics-for-version" in c.text)
    assert hidden.weight == 2  # cpu_* / swapped names are only there with hidden metrics on


def test_counter_reset_after_restart():
    b = bodies(V32_ON)
    snap = feed(b + [b[1]])  # counters fall back: vLLM restarted
    x = only(snap, "counter_reset")
    assert "1 time(s)" in x.numbers[0] and "empty prefix cache" in x.numbers[1]


def test_no_traffic_on_idle_server():
    idle = bodies(V32_ON)[0]
    x = only(feed([idle, idle]), "no_traffic")
    assert x.severity == "info" and "No prompt tokens" in x.numbers[0]
    assert x.fix[0].startswith("Nothing is wrong with caching")


def test_kv_pressure_with_preemptions():
    seq = bodies(V32_CONC)
    seq = seq[:-1] + [sub(seq[-1], r"^(vllm:num_preemptions_total\{[^}]*\}) .*$", r"\1 3.0")]
    x = only(feed(seq), "kv_cache_pressure")
    assert any("3 request(s) were preempted" in n for n in x.numbers)
    assert x.causes[0].because == "3 preemptions"
    assert any("--gpu-memory-utilization" in f for f in x.fix)


@pytest.mark.parametrize("folder", [V32_ON, V32_OFF, V32_CONC, V10_ON, V085_ON])
def test_every_explanation_is_complete_and_json_ready(folder):
    snap = feed(bodies(folder))
    for x in explain_all(snap):
        assert x.title and x.numbers and x.causes and x.fix
        weights = [c.weight for c in x.causes]
        assert weights == sorted(weights, reverse=True)
        json.dumps(x.as_dict())
