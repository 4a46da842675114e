"""The name[] filter's rules (contract: "Asking vLLM for less"), on the pure state machine, with
real vLLM captures for what a probe holds."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.normalize import WANTED
from sidecar.parser import parse
from sidecar.scrapefilter import (
    FILTERED,
    FULL,
    OFF,
    PROBE_INTERVAL,
    FilterState,
    applies,
    check,
    families,
    filtered_url,
    request_names,
)
from testkit.captures import FIXTURES
from testkit.replay import restricted_body

URL = "http://10.0.0.1:8000/metrics"
V032 = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"
V0 = FIXTURES / "vllm-0.8.5.post2-v0-hidden" / "prefix_on_shared"
TEXT = "text/plain; version=0.0.4; charset=utf-8"


def held(path: Path) -> set[str]:
    """The wanted sample names a body holds (what a probe sees)."""
    return {s[0] for s in parse(path.read_bytes(), None, WANTED).samples}


def probed(present: set[str], url: str = URL, now: float = 0.0, restarts: int = 0) -> FilterState:
    state = FilterState(url)
    assert state.next_request(now, restarts).probe
    state.probed(present, now, restarts)
    return state


# ---------------------------------------------------------------- which names, which URL
def test_the_filter_asks_for_the_wanted_names_the_probe_held_and_nothing_else() -> None:
    present = held(V032 / "004.prom")
    names = request_names(present)
    assert set(names) == present & WANTED
    assert "vllm:prefix_cache_queries_total" in names and "vllm:prefix_cache_queries_created" in names
    assert "vllm:gpu_prefix_cache_queries_total" not in names  # wanted, but not in this vLLM
    assert "vllm:prefix_cache_queries" not in names  # the bare name is never on the wire
    assert list(names) == sorted(names)  # a stable URL


def test_names_added_to_wanted_are_picked_up_from_the_table() -> None:
    present = {"vllm:kv_cache_usage_perc", "vllm:some_new_gauge"}
    assert request_names(present) == ("vllm:kv_cache_usage_perc",)
    assert request_names(present, WANTED | {"vllm:some_new_gauge"}) == (
        "vllm:kv_cache_usage_perc",
        "vllm:some_new_gauge",
    )


def test_no_filter_when_the_probe_held_no_vllm_family_the_sidecar_reads() -> None:
    assert request_names(set()) == ()
    assert request_names({"vllm:iteration_tokens_total_bucket"}) == ()
    # an idle V0 engine: only its cache config (and process start) until the first request
    idle_v0 = held(V0 / "000.prom")
    assert idle_v0 <= {"vllm:cache_config_info", "process_start_time_seconds"}
    assert request_names(idle_v0) == ()
    assert "vllm:gpu_prefix_cache_hit_rate" in request_names(held(V0 / "004.prom"))


def test_filtered_url_uses_the_slash_route_and_repeated_name_parameters() -> None:
    url = filtered_url(URL, ("vllm:a_total", "vllm:b_bucket"))
    parts = urlsplit(url)
    assert parts.path == "/metrics/"
    assert parse_qs(parts.query) == {"name[]": ["vllm:a_total", "vllm:b_bucket"]}
    assert url == "http://10.0.0.1:8000/metrics/?name%5B%5D=vllm:a_total&name%5B%5D=vllm:b_bucket"
    kept = filtered_url("https://h/pod/x/metrics?token=1", ("vllm:a_total",))
    assert kept == "https://h/pod/x/metrics/?token=1&name%5B%5D=vllm:a_total"


@pytest.mark.parametrize(
    "url,ok",
    [
        (URL, True),
        ("http://h:1/x/metrics", True),
        ("http://h:1/metrics?a=b", True),
        ("http://h:1/metrics/", False),
        ("http://h:1/stats", False),
        ("http://h:1/federate", False),
        ("http://h:1/my_metrics", False),
    ],
)
def test_only_a_path_ending_in_slash_metrics(url: str, ok: bool) -> None:
    assert applies(url) is ok
    state = FilterState(url)
    state.probed(held(V032 / "004.prom"), 0.0, 0)
    req = state.next_request(1.0, 0)
    assert req.filtered is ok
    assert state.mode == (FILTERED if ok else FULL)
    if not ok:
        assert req.url == url


# ---------------------------------------------------------------- when to probe
def test_probe_first_then_filtered() -> None:
    state = FilterState(URL)
    assert state.mode == FULL
    first = state.next_request(100.0, 0)
    assert (first.url, first.filtered, first.probe) == (URL, False, True)
    state.probed(held(V032 / "004.prom"), 100.0, 0)
    nxt = state.next_request(105.0, 0)
    assert nxt.filtered and not nxt.probe and nxt.url.startswith("http://10.0.0.1:8000/metrics/?")
    assert state.mode == FILTERED


def test_probe_again_after_a_restart() -> None:
    state = probed(held(V032 / "004.prom"), now=0.0, restarts=2)
    assert state.next_request(5.0, 2).filtered
    again = state.next_request(10.0, 3)
    assert again.probe and not again.filtered
    assert state.mode == FILTERED  # the probe is one full scrape among filtered ones
    state.probed(held(V032 / "004.prom"), 10.0, 3)
    assert state.next_request(15.0, 3).filtered


def test_probe_again_every_ten_minutes() -> None:
    state = probed(held(V032 / "004.prom"), now=1000.0)
    assert state.next_request(1000.0 + PROBE_INTERVAL - 0.1, 0).filtered
    assert state.next_request(1000.0 + PROBE_INTERVAL, 0).probe
    assert PROBE_INTERVAL == 600.0


def test_every_full_scrape_is_a_probe_while_the_filter_cannot_be_used() -> None:
    state = probed(held(V0 / "000.prom"))  # idle V0
    assert state.mode == FULL
    assert state.next_request(5.0, 0).probe
    state.probed(held(V0 / "004.prom"), 5.0, 0)  # its first requests made the families appear
    assert state.next_request(10.0, 0).filtered


def test_off_never_filters_nor_probes() -> None:
    state = FilterState(URL, OFF)
    for t in (0.0, 700.0):
        req = state.next_request(t, 0)
        assert (req.url, req.filtered, req.probe) == (URL, False, False)
    assert state.mode == FULL


# ---------------------------------------------------------------- honoured or not
def _filtered_answer(names: tuple[str, ...]) -> tuple[list[str], int]:
    """The sample line names and ``vllm:`` line count of prometheus_client's filtered answer."""
    body, _ = restricted_body((V032 / "004.prom").read_bytes(), TEXT, names, TEXT)
    parsed = parse(body, None, WANTED)
    return [s[0] for s in parsed.samples], parsed.vllm_lines


def test_a_200_holding_every_requested_family_is_honoured() -> None:
    names = request_names(held(V032 / "004.prom"))
    present, lines = _filtered_answer(names)
    assert check(200, present, names, lines).honoured
    assert not check(200, present, names, lines).ignored


def test_a_family_counts_as_held_when_any_of_its_samples_is() -> None:
    names = (
        "vllm:prefix_cache_queries_created",
        "vllm:prefix_cache_queries_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_to_first_token_seconds_count",
        "vllm:time_to_first_token_seconds_sum",
    )
    assert families(names) == {"vllm:prefix_cache_queries", "vllm:time_to_first_token_seconds"}
    # a proxy that drops _created, a server that sends no _count: the families are still there
    v = check(200, ["vllm:prefix_cache_queries_total", "vllm:time_to_first_token_seconds_bucket"], names, 2)
    assert v.honoured


@pytest.mark.parametrize(
    "status,word",
    [
        (404, "HTTP 404"),
        (500, "HTTP 500"),
        (503, "HTTP 503"),
        (301, "redirect"),
        (307, "redirect"),
        (308, "redirect"),
    ],
)
def test_any_other_status_is_not_honoured(status: int, word: str) -> None:
    names = request_names(held(V032 / "004.prom"))
    v = check(status, set(), names, 0)
    assert not v.honoured and word in v.why


def test_an_empty_or_partial_body_is_not_honoured() -> None:
    names = request_names(held(V032 / "004.prom"))
    empty = check(200, set(), names, 0)
    assert not empty.honoured and "empty" in empty.why
    assert empty.missing == families(names)
    present, lines = _filtered_answer(tuple(n for n in names if "time_to_first" not in n))
    partial = check(200, present, names, lines)
    assert not partial.honoured
    assert partial.missing == {"vllm:time_to_first_token_seconds"}


def test_an_unparseable_200_is_not_honoured() -> None:
    v = check(200, set(), ("vllm:kv_cache_usage_perc",), 0, parse_error="line 3: bad")
    assert not v.honoured and "line 3" in v.why


def test_a_full_answer_to_a_filtered_request_is_honoured_but_flagged_ignored() -> None:
    full = parse((V032 / "004.prom").read_bytes(), None, WANTED)
    names = request_names(held(V032 / "004.prom"))
    v = check(200, [s[0] for s in full.samples], names, full.vllm_lines)
    assert v.honoured and v.ignored and "ignored" in v.why


# ---------------------------------------------------------------- after a failure
def test_not_honoured_means_full_until_the_next_probe_and_one_log_line() -> None:
    state = probed(held(V032 / "004.prom"))
    note = state.fall_back("the filtered route answered HTTP 404")
    assert note and "HTTP 404" in note and "full" in note
    assert state.mode == FULL
    for t in (5.0, 10.0, PROBE_INTERVAL - 1):
        req = state.next_request(t, 0)
        assert not req.filtered and not req.probe
    assert state.next_request(PROBE_INTERVAL, 0).probe
    state.probed(held(V032 / "004.prom"), PROBE_INTERVAL, 0)
    assert state.mode == FILTERED and state.next_request(PROBE_INTERVAL + 5, 0).filtered
    assert state.fall_back("the filtered route answered HTTP 404") is None  # logged once
    assert state.fall_back("the filtered route answered HTTP 500") is not None  # a new reason


def test_a_restart_ends_the_fallback_too() -> None:
    state = probed(held(V032 / "004.prom"))
    state.fall_back("x")
    assert state.next_request(5.0, 1).probe


def test_families_vllm_dropped_are_not_a_failure_when_the_full_body_lacks_them_too() -> None:
    present = held(V032 / "004.prom")
    state = probed(present)
    names = state.names
    gone = {n for n in present if n.startswith("vllm:time_to_first_token")}
    answer, lines = _filtered_answer(tuple(n for n in names if n not in gone))
    v = check(200, answer, names, lines)
    assert not v.honoured
    assert state.after_full_retry(v, present - gone, 5.0, 0) is None  # the full body lacks them
    assert state.mode == FILTERED
    assert not set(state.names) & gone  # a new probe: no longer asked for
    assert state.probed_at == 5.0


def test_families_the_full_body_still_holds_mean_not_honoured() -> None:
    present = held(V032 / "004.prom")
    state = probed(present)
    names = state.names
    answer, lines = _filtered_answer(tuple(n for n in names if "time_to_first" not in n))
    v = check(200, answer, names, lines)
    note = state.after_full_retry(v, present, 5.0, 0)
    assert note and "missing" in note
    assert state.mode == FULL and state.probed_at == 0.0


def test_a_status_failure_is_not_excused_by_the_full_retry() -> None:
    state = probed(held(V032 / "004.prom"))
    v = check(404, set(), state.names, 0)
    assert state.after_full_retry(v, held(V032 / "004.prom"), 5.0, 0)
    assert state.mode == FULL


# ---------------------------------------------------------------- the replay server's filter
def test_the_replay_filter_is_prometheus_clients_restriction_of_the_real_body() -> None:
    body = (V032 / "004.prom").read_bytes()
    names = request_names(held(V032 / "004.prom"))
    out, ctype = restricted_body(body, TEXT, names, "text/plain;version=0.0.4")
    assert ctype.startswith("text/plain")
    want = [
        (s.name, s.labels, s.value)
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name in names
    ]
    got_families = list(text_string_to_metric_families(out.decode()))
    got = [(s.name, s.labels, s.value) for f in got_families for s in f.samples]
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert out.count(b"# HELP ") == out.count(b"# TYPE ") == len(got_families)
    assert len(out) < len(body) / 3
    # exact sample names: a histogram's _bucket alone brings neither _sum nor _count
    only, _ = restricted_body(body, TEXT, ("vllm:time_to_first_token_seconds_bucket",), TEXT)
    assert b"_bucket{" in only and b"_sum" not in only and b"_count" not in only
    # the family name alone matches no sample
    assert restricted_body(body, TEXT, ("vllm:time_to_first_token_seconds",), TEXT)[0] == b""


def test_only_three_filtered_timeouts_in_a_row_fall_back_to_full():
    """One slow cycle of an overloaded sidecar must not turn a target to full scrapes."""
    from sidecar.scrapefilter import TIMEOUTS_TO_FALL_BACK, FilterState

    state = FilterState("http://v:8000/metrics")
    state.probed(["vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"], 0.0, 0)
    assert state.mode == "filtered"
    assert state.timed_out() is None and state.timed_out() is None
    state.answered()  # an answer in between resets the count
    for _ in range(TIMEOUTS_TO_FALL_BACK - 1):
        assert state.timed_out() is None and state.mode == "filtered"
    note = state.timed_out()
    assert note and "in a row timed out" in note and state.mode == "full"


def test_a_memo_judges_as_check_and_remembers_only_what_decides() -> None:
    """``scrape.Memo.judge`` gives ``check``'s verdict; it reuses it only for a body read by the
    same learnt layout and asked with the same names."""
    from sidecar.scrape import Memo

    full = (V032 / "004.prom").read_bytes()
    names = request_names([s[0] for s in parse(full, TEXT, WANTED).samples])
    fewer = names[:-3]
    ok, _ = restricted_body(full, TEXT, names, TEXT)
    missing, _ = restricted_body(full, TEXT, fewer, TEXT)
    memo = Memo()
    verdicts = []
    for body, asked in [(ok, names), (ok, names), (full, names), (missing, names), (missing, fewer)]:
        parsed = parse(body, TEXT, WANTED, memo.layout)
        expected = check(200, [s[0] for s in parsed.samples], asked, parsed.vllm_lines)
        verdicts.append(memo.judge(parsed, asked))
        assert verdicts[-1] == expected
    assert verdicts[1] is verdicts[0]  # the same layout and names: remembered
    assert [v.honoured for v in verdicts] == [True, True, True, False, True]
    assert verdicts[2].ignored and verdicts[3].missing
