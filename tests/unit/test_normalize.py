"""The normaliser on the real captures of every vLLM era, and on bodies built from them.

Expected numbers are never typed in: they are read from the same body with prometheus_client's
parser (the reference), so the tests say "the sidecar reports what vLLM's own counters say".
"""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.normalize import (
    SCHEMA_NONE,
    SCHEMA_UNKNOWN,
    SCHEMA_V0,
    SCHEMA_V1,
    SCHEMA_V1_DUAL,
    SCHEMA_V1_LEGACY,
    WANTED,
    normalise,
)
from sidecar.parser import ParseError, parse
from testkit.captures import all_captures, load_capture

CTYPE = "text/plain; version=0.0.4; charset=utf-8"
V32 = "vllm-0.32.0/prefix_on_shared"
V32_OFF = "vllm-0.32.0/prefix_off"
V32_BUSY = "vllm-0.32.0/concurrent"
V010 = "vllm-0.10.1.1.post2/prefix_on_shared"
V085 = "vllm-0.8.5.post2-v0-hidden/prefix_on_shared"
SCHEMA_BY_VERSION = {"0.32.0": SCHEMA_V1, "0.10.1.1.post2": SCHEMA_V1_DUAL, "0.8.5.post2": SCHEMA_V0}
CAPTURES = all_captures()


# ---------------------------------------------------------------- helpers


def norm(body: str | bytes, **kw):
    return normalise(parse(body, CTYPE, WANTED).samples, **kw)


def raw(body: str | bytes, name: str) -> dict[tuple, float]:
    """Reference reading of one sample name: {sorted labels: value}."""
    text = body.decode() if isinstance(body, bytes) else body
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                key = tuple(sorted(s.labels.items()))
                assert key not in out
                out[key] = float(s.value)
    return out


def raw_one(body, name: str, **labels) -> float:
    """The single value of ``name`` whose labels include ``labels``."""
    hits = [v for k, v in raw(body, name).items() if set(labels.items()) <= set(k)]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def gauge_or_none(body, name: str, engine: str) -> float | None:
    """A gauge's value, or None where the body has none (multiprocess mode before it is set)."""
    vals = [v for k, v in raw(body, name).items() if dict(k).get("engine") == engine]
    assert len(vals) <= 1
    return vals[0] if vals else None


def body_of(folder: str, file: str = "004.prom") -> str:
    return next(c.body.decode() for c in load_capture(folder) if c.file == file)


def only_engine(n):
    assert len(n.engines) == 1, n.engines
    return n.engines[0]


def drop_lines(body: str, pattern: str) -> str:
    rx = re.compile(pattern)
    return "\n".join(line for line in body.split("\n") if not rx.match(line))


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


# ---------------------------------------------------------------- schema per era


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda c: c.id)
def test_schema_names_the_era_of_every_capture(cap):
    n = norm(cap.body)
    assert n.schema == SCHEMA_BY_VERSION[cap.vllm_version]
    assert n.has_vllm


def test_idle_v0_body_with_only_cache_config_is_v0():
    body = body_of(V085, "000.prom")
    assert [line for line in body.split("\n") if line.startswith("vllm:")] and all(
        line.startswith("vllm:cache_config_info") for line in body.split("\n") if line.startswith("vllm:")
    )
    n = norm(body)
    assert n.schema == SCHEMA_V0
    assert n.engines == ()
    assert n.vllm_series == 1
    assert [c.enable_prefix_caching for c in n.cache_configs] == [True]


def test_no_vllm_series_is_schema_none():
    n = norm(
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 17.5\n"
        'python_info{version="3.11"} 1\n'
    )
    assert n.schema == SCHEMA_NONE and not n.has_vllm and n.engines == ()
    assert n.process_start == 17.5


def test_unrecognised_vllm_series_only_is_schema_unknown():
    n = norm(
        'vllm:kv_cache_usage_perc_x{engine="0"} 1\nvllm:num_requests_running{engine="0",model_name="m"} 2\n'
    )
    assert n.schema == SCHEMA_UNKNOWN and n.has_vllm
    assert only_engine(n).running == 2


# ---------------------------------------------------------------- values equal vLLM's own


@pytest.mark.parametrize("cap", [c for c in CAPTURES if c.vllm_version != "0.8.5.post2"], ids=lambda c: c.id)
def test_v1_queries_hits_usage_equal_the_raw_counters(cap):
    """Per engine (a data-parallel capture has two), every figure equals vLLM's own sample."""
    body = cap.body.decode()
    n = norm(body)
    engines = sorted(dict(k)["engine"] for k in raw(body, "vllm:prefix_cache_queries_total"))
    assert [e.engine for e in n.engines] == engines and n.identity_labels == frozenset()
    has_created = bool(raw(body, "vllm:prefix_cache_queries_created"))
    for e in n.engines:
        eng = e.engine
        assert (e.model_name, e.replica) == ("tiny", "")
        assert e.prefix_queries == raw_one(body, "vllm:prefix_cache_queries_total", engine=eng)
        assert e.prefix_hits == raw_one(body, "vllm:prefix_cache_hits_total", engine=eng)
        assert e.kv_usage == gauge_or_none(body, "vllm:kv_cache_usage_perc", eng)
        assert e.prompt_tokens == raw_one(body, "vllm:prompt_tokens_total", engine=eng)
        assert e.generation_tokens == raw_one(body, "vllm:generation_tokens_total", engine=eng)
        assert e.preemptions == raw_one(body, "vllm:num_preemptions_total", engine=eng)
        assert e.running == gauge_or_none(body, "vllm:num_requests_running", eng)
        assert e.waiting == gauge_or_none(body, "vllm:num_requests_waiting", eng)
        assert e.created == (
            raw_one(body, "vllm:prefix_cache_queries_created", engine=eng) if has_created else None
        )
        assert dict(e.request_success) == {
            dict(k)["finished_reason"]: v
            for k, v in raw(body, "vllm:request_success_total").items()
            if dict(k)["engine"] == eng
        }
        assert e.v0_hit_rate is None
        if "external_prefix_cache_queries_total" in body:
            assert e.external_queries == raw_one(body, "vllm:external_prefix_cache_queries_total", engine=eng)
            assert e.external_hits == raw_one(body, "vllm:external_prefix_cache_hits_total", engine=eng)


@pytest.mark.parametrize("cap", load_capture(V010, openmetrics=True), ids=lambda c: c.id)
def test_dual_names_are_never_double_counted(cap):
    body = cap.body.decode()
    new_q = raw_one(body, "vllm:prefix_cache_queries_total")
    old_q = raw_one(body, "vllm:gpu_prefix_cache_queries_total")
    assert new_q == old_q  # 0.10.x exports both, equal
    e = only_engine(norm(body))
    assert e.prefix_queries == new_q
    assert e.prefix_hits == raw_one(body, "vllm:prefix_cache_hits_total")
    assert e.kv_usage == raw_one(body, "vllm:kv_cache_usage_perc")


def test_dual_names_after_traffic_are_not_summed():
    body = body_of(V010)
    q = raw_one(body, "vllm:prefix_cache_queries_total")
    h = raw_one(body, "vllm:prefix_cache_hits_total")
    assert q > 0 and h > 0  # otherwise 2*q == q would prove nothing
    e = only_engine(norm(body))
    assert (e.prefix_queries, e.prefix_hits) == (q, h)
    assert 0 < e.prefix_hits / e.prefix_queries < 1


def test_new_name_wins_when_old_and_new_disagree():
    body = body_of(V010)
    q = raw_one(body, "vllm:prefix_cache_queries_total")
    body = re.sub(r"^(vllm:gpu_prefix_cache_queries_total\{[^}]*\}) \S+", r"\1 1.0", body, flags=re.M)
    assert raw_one(body, "vllm:gpu_prefix_cache_queries_total") == 1.0
    assert only_engine(norm(body)).prefix_queries == q


def test_legacy_gpu_counters_alone_are_read_as_v1_legacy():
    body = drop_lines(body_of(V010), r"vllm:(prefix_cache_|kv_cache_usage_perc)")
    n = norm(body)
    assert n.schema == SCHEMA_V1_LEGACY
    e = only_engine(n)
    assert e.prefix_queries == raw_one(body, "vllm:gpu_prefix_cache_queries_total")
    assert e.prefix_hits == raw_one(body, "vllm:gpu_prefix_cache_hits_total")
    assert e.kv_usage == raw_one(body, "vllm:gpu_cache_usage_perc")
    assert e.created == raw_one(body, "vllm:gpu_prefix_cache_queries_created")
    assert {"vllm:gpu_prefix_cache_queries", "vllm:gpu_prefix_cache_hits"} <= set(n.legacy_names)


@pytest.mark.parametrize("cap", load_capture(V085)[1:], ids=lambda c: c.id)
def test_v0_gauges_equal_the_raw_gauges(cap):
    body = cap.body.decode()
    e = only_engine(norm(body))
    assert (e.model_name, e.engine) == ("tiny", "0")  # no engine label in V0: "0"
    assert e.v0_hit_rate == raw_one(body, "vllm:gpu_prefix_cache_hit_rate")
    assert e.kv_usage == raw_one(body, "vllm:gpu_cache_usage_perc")
    assert e.prefix_queries is None and e.prefix_hits is None
    assert e.created is None  # V0 has no _created series
    assert e.prompt_tokens == raw_one(body, "vllm:prompt_tokens_total")


def test_v0_hit_rate_grows_over_the_rounds():
    rates = [only_engine(norm(c.body)).v0_hit_rate for c in load_capture(V085)[1:]]
    assert rates == sorted(rates) and rates[-1] > 0


def test_process_start_time_is_read():
    body = body_of(V32)
    assert norm(body).process_start == raw_one(body, "process_start_time_seconds")


@pytest.mark.parametrize("folder", [V32, V010, V085])
def test_histograms_equal_the_raw_buckets(folder):
    body = body_of(folder)
    e = only_engine(norm(body))
    buckets = {
        float(dict(k)["le"]): v for k, v in raw(body, "vllm:time_to_first_token_seconds_bucket").items()
    }
    assert e.ttft.buckets == tuple(sorted(buckets.items()))
    assert e.ttft.count == raw_one(body, "vllm:time_to_first_token_seconds_count")
    assert e.ttft.sum == raw_one(body, "vllm:time_to_first_token_seconds_sum")
    assert e.e2e.count == raw_one(body, "vllm:e2e_request_latency_seconds_count")
    assert e.ttft.count > 0


def test_v0_queue_time_is_read_from_its_legacy_name():
    body = body_of(V085)
    e = only_engine(norm(body))
    if raw(body, "vllm:request_queue_time_seconds_count"):
        assert e.queue.count == raw_one(body, "vllm:request_queue_time_seconds_count")
    else:
        assert e.queue.count == raw_one(body, "vllm:time_in_queue_requests_count")


# ---------------------------------------------------------------- engines, labels, pids


def test_missing_engine_label_means_engine_0():
    body = re.sub(r'engine="0",?', "", body_of(V32))
    assert 'engine="' not in body
    e = only_engine(norm(body))
    assert e.engine == "0"
    assert e.prefix_queries == raw_one(body, "vllm:prefix_cache_queries_total")
    assert [c.engine for c in norm(body).cache_configs] == ["0"]


def test_two_engines_stay_apart():
    one = body_of(V32_BUSY, "001.prom")
    other = re.sub(r'engine="0"', 'engine="1"', one)
    other = re.sub(r"^(vllm:kv_cache_usage_perc\{[^}]*\}) \S+", r"\1 0.5", other, flags=re.M)
    samples = parse(one, CTYPE, WANTED).samples + [
        s
        for s in parse(other, CTYPE, WANTED).samples
        if s[0] != "process_start_time_seconds" and "engine" in dict(s[1])
    ]  # engine-less: once
    n = normalise(samples)
    assert [e.engine for e in n.engines] == ["0", "1"]
    e0, e1 = n.engines
    assert e0.kv_usage == raw_one(one, "vllm:kv_cache_usage_perc") and e1.kv_usage == 0.5
    assert e0.prefix_queries == e1.prefix_queries == raw_one(one, "vllm:prefix_cache_queries_total")
    assert [c.engine for c in n.cache_configs] == ["0", "1"]


def _with_pid(body: str, pid: str, scale: float) -> list[str]:
    """Every labelled ``vllm:`` sample line of ``body`` with ``pid`` added and its value scaled."""
    out = []
    for line in body.split("\n"):
        m = re.match(r"^(vllm:[^{ ]+)\{(.*)\} (\S+)$", line)
        if not m or m.group(1) == "vllm:cache_config_info":
            continue
        value = float(m.group(3)) * scale
        out.append(f'{m.group(1)}{{pid="{pid}",{m.group(2)}}} {value!r}')
    return out


def test_multiprocess_pid_labels_collapse_gauges_max_counters_summed():
    base = body_of(V32_BUSY, "001.prom")
    assert raw_one(base, "vllm:kv_cache_usage_perc") > 0  # a live scrape: gauges are non-zero
    assert raw_one(base, "vllm:num_requests_running") > 0
    lines = _with_pid(base, "101", 1.0) + _with_pid(base, "202", 0.5) + _with_pid(base, "303", 3.0)
    lines += [line for line in base.split("\n") if line.startswith("vllm:cache_config_info")]
    body = "\n".join(lines) + "\n"
    e = only_engine(norm(body))
    assert e.engine == "0" and e.model_name == "tiny"

    def total(name):
        return sum(raw(body, name).values())

    def peak(name):
        return max(raw(body, name).values())

    assert e.prefix_queries == total("vllm:prefix_cache_queries_total")
    assert e.prefix_hits == total("vllm:prefix_cache_hits_total")
    assert e.prompt_tokens == total("vllm:prompt_tokens_total")
    assert e.kv_usage == peak("vllm:kv_cache_usage_perc")
    assert e.running == peak("vllm:num_requests_running")
    assert e.waiting == peak("vllm:num_requests_waiting")
    assert e.ttft.count == total("vllm:time_to_first_token_seconds_count")
    inf_bucket = dict(e.ttft.buckets)[math.inf]
    assert inf_bucket == sum(
        v for k, v in raw(body, "vllm:time_to_first_token_seconds_bucket").items() if dict(k)["le"] == "+Inf"
    )
    success: dict[str, float] = {}
    for k, v in raw(body, "vllm:request_success_total").items():
        reason = dict(k)["finished_reason"]
        success[reason] = success.get(reason, 0.0) + v
    assert dict(e.request_success) == success
    # and the fold is a fold of what was there, not of an accident of order
    assert e.kv_usage == 3.0 * raw_one(base, "vllm:kv_cache_usage_perc")
    assert e.prefix_queries == 4.5 * raw_one(base, "vllm:prefix_cache_queries_total")


def test_pid_collapse_does_not_depend_on_order():
    a = 'vllm:kv_cache_usage_perc{pid="1",engine="0",model_name="m"} 0.25\n'
    b = 'vllm:kv_cache_usage_perc{pid="2",engine="0",model_name="m"} 0.75\n'
    c = (
        'vllm:prefix_cache_queries_total{pid="1",engine="0",model_name="m"} 3\n'
        'vllm:prefix_cache_queries_total{pid="2",engine="0",model_name="m"} 4\n'
    )
    for body in (a + b + c, b + a + c):
        e = only_engine(norm(body))
        assert (e.kv_usage, e.prefix_queries) == (0.75, 7.0)


# ---------------------------------------------------------------- _created: the restart signal


def test_created_change_is_kept_as_the_restart_signal():
    body = body_of(V32)
    before = only_engine(norm(body)).created
    assert before == raw_one(body, "vllm:prefix_cache_queries_created")
    restarted = re.sub(r"^(vllm:prefix_cache_queries_created\{[^}]*\}) \S+", r"\1 1.8e+09", body, flags=re.M)
    after = only_engine(norm(restarted)).created
    assert after == 1.8e9 != before


def test_created_falls_back_to_prompt_tokens_created():
    body = drop_lines(body_of(V32), r"vllm:(gpu_)?prefix_cache_queries_created")
    assert only_engine(norm(body)).created == raw_one(body, "vllm:prompt_tokens_created")


def test_created_samples_never_become_counter_values():
    body = body_of(V32, "000.prom")
    e = only_engine(norm(body))
    assert e.prefix_queries == 0.0 and e.prompt_tokens == 0.0  # not the 1.7e9 of _created


# ---------------------------------------------------------------- cache_config_info


@pytest.mark.parametrize("folder,enabled", [(V32, True), (V32_OFF, False), (V010, True), (V085, True)])
def test_cache_config_from_fixtures(folder, enabled):
    body = body_of(folder)
    n = norm(body)
    (cfg,) = n.cache_configs
    ((labels, _),) = raw(body, "vllm:cache_config_info").items()
    lab = dict(labels)
    assert cfg.enable_prefix_caching is enabled
    assert lab["enable_prefix_caching"] == str(enabled)
    assert cfg.engine == lab.get("engine", "0")
    assert cfg.block_size == int(lab["block_size"]) == 128
    assert cfg.num_gpu_blocks == int(lab["num_gpu_blocks"])
    assert cfg.hash_algo == lab["prefix_caching_hash_algo"]
    assert cfg.kv_offloading_backend == lab.get("kv_offloading_backend")
    assert dict(cfg.labels) == lab


@pytest.mark.parametrize(
    "text,expected",
    [
        ("True", True),
        ("true", True),
        ("TRUE", True),
        ("False", False),
        ("false", False),
        ("FALSE", False),
        ("None", None),
        ("", None),
        ("maybe", None),
        (None, None),
    ],
)
def test_prefix_caching_flag_is_case_insensitive(text, expected):
    extra = "" if text is None else f',enable_prefix_caching="{text}"'
    body = f'vllm:cache_config_info{{block_size="16",engine="0"{extra}}} 1.0\n'
    (cfg,) = norm(body).cache_configs
    assert cfg.enable_prefix_caching is expected
    assert cfg.block_size == 16


def test_cache_config_per_engine():
    body = (
        'vllm:cache_config_info{enable_prefix_caching="True",engine="0"} 1\n'
        'vllm:cache_config_info{enable_prefix_caching="False",engine="1"} 1\n'
    )
    assert [(c.engine, c.enable_prefix_caching) for c in norm(body).cache_configs] == [
        ("0", True),
        ("1", False),
    ]


def test_non_numeric_cache_config_numbers_are_none():
    body = 'vllm:cache_config_info{block_size="None",num_gpu_blocks="x",engine="0"} 1\n'
    (cfg,) = norm(body).cache_configs
    assert cfg.block_size is None and cfg.num_gpu_blocks is None


# ---------------------------------------------------------------- legacy names


def test_legacy_names_per_era():
    assert norm(body_of(V32)).legacy_names == ()
    dual = set(norm(body_of(V010)).legacy_names)
    assert {
        "vllm:gpu_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries",
        "vllm:gpu_prefix_cache_hits",
    } <= dual
    assert not any(n.startswith(("vllm:prefix_cache", "vllm:kv_cache")) for n in dual)
    v0 = set(norm(body_of(V085)).legacy_names)
    assert {
        "vllm:gpu_prefix_cache_hit_rate",
        "vllm:gpu_cache_usage_perc",
        "vllm:cpu_cache_usage_perc",
        "vllm:cpu_prefix_cache_hit_rate",
    } <= v0
    for names in (dual, v0):
        assert list(names) == list(dict.fromkeys(names))  # no duplicates
        assert all(not n.endswith(("_total", "_created", "_bucket", "_sum", "_count")) for n in names)


# ---------------------------------------------------------------- LLM.get_metrics() names


def test_bare_counter_names_without_total_are_accepted():
    labels = (("engine", "0"), ("model_name", "m"))
    samples = [
        ("vllm:prefix_cache_queries", labels, 100.0),
        ("vllm:prefix_cache_hits", labels, 40.0),
        ("vllm:prompt_tokens", labels, 120.0),
        ("vllm:request_success", labels + (("finished_reason", "stop"),), 3.0),
        ("vllm:kv_cache_usage_perc", labels, 0.125),
    ]
    n = normalise(samples)
    assert n.schema == SCHEMA_V1
    e = only_engine(n)
    assert (e.prefix_queries, e.prefix_hits, e.prompt_tokens, e.kv_usage) == (100.0, 40.0, 120.0, 0.125)
    assert e.request_success == (("stop", 3.0),)


def test_bare_names_equal_wire_names_for_a_real_body():
    body = body_of(V32)
    wire = parse(body, CTYPE, WANTED).samples
    bare = [(n[: -len("_total")] if n.endswith("_total") else n, labels, v) for n, labels, v in wire]
    assert normalise(bare).engines == normalise(wire).engines


# ---------------------------------------------------------------- hostile input


def test_duplicate_series_is_a_parse_error():
    line = 'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 5\n'
    with pytest.raises(ParseError):
        norm(line + line)


def test_duplicate_series_with_labels_in_another_order_is_a_parse_error():
    """Label order carries no meaning: the same series twice must not be summed."""
    body = (
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 5\n'
        'vllm:prefix_cache_queries_total{model_name="m",engine="0"} 5\n'
    )
    with pytest.raises(ParseError):
        norm(body)


def test_duplicate_check_can_be_turned_off():
    line = 'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 5\n'
    assert only_engine(norm(line + line, check_duplicates=False)).prefix_queries == 10


@pytest.mark.parametrize(
    "body",
    [
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="abc",model_name="m"} 1\n',
        'vllm:cache_config_info{block_size="inf",engine="0"} 1\n',
        'vllm:cache_config_info{num_gpu_blocks="-Inf",engine="0"} 1\n',
    ],
)
def test_hostile_label_values_raise_only_parse_error(body):
    """``scrape.parse_body`` catches ParseError only: anything else escapes the scrape loop."""
    try:
        norm(body)
    except ParseError:
        pass


def test_commas_in_lora_label_values_do_not_disturb_the_cache_series():
    body = body_of(V085).replace('running_lora_adapters=""', 'running_lora_adapters="a,b,engine=\\"1\\"}"')
    assert raw_one(body, "vllm:lora_requests_info")
    e = only_engine(norm(body))
    assert e.engine == "0" and e.kv_usage == raw_one(body, "vllm:gpu_cache_usage_perc")


def test_new_kv_usage_name_wins_over_the_deprecated_one():
    body = body_of(V010)
    body = re.sub(r"^(vllm:gpu_cache_usage_perc\{[^}]*\}) \S+", r"\1 0.99", body, flags=re.M)
    e = only_engine(norm(body))
    assert e.kv_usage == raw_one(body, "vllm:kv_cache_usage_perc") != 0.99


def test_pid_collapse_with_a_nan_gauge_does_not_depend_on_order():
    a = 'vllm:kv_cache_usage_perc{pid="1",engine="0",model_name="m"} NaN\n'
    b = 'vllm:kv_cache_usage_perc{pid="2",engine="0",model_name="m"} 0.5\n'
    first, second = (only_engine(norm(body)).kv_usage for body in (a + b, b + a))
    assert same(first, second), (first, second)


def test_one_counter_under_both_spellings_is_not_counted_twice():
    """``_total`` (wire) and bare (``LLM.get_metrics()``) name the same counter: never summed."""
    body = (
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 5\n'
        'vllm:prefix_cache_queries{engine="0",model_name="m"} 5\n'
    )
    try:
        e = only_engine(norm(body))
    except ParseError:
        return  # refusing the body as a duplicate is fine too
    assert e.prefix_queries == 5
