"""Hypothesis fuzzing of the parser and the derivation.

Properties: the parser raises nothing but :class:`~sidecar.parser.ParseError` and reads every
valid body exactly as written; a scrape body can never crash the pipeline; hit ratios are always
in [0, 1] or NaN; the sidecar's own counters never decrease; prefix-cache counters are vLLM's
values passed through, so they drop when vLLM restarts, and ``target_restarts_total`` counts each
such drop (that is how a user tells a reset from a bug).
"""

from __future__ import annotations

import math

from faultserver import real_bodies, set_sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.derive import TargetTracker
from sidecar.exporter import families
from sidecar.model import REASONS, ScrapeOutcome, Window
from sidecar.normalize import WANTED, normalise
from sidecar.parser import ParseError, parse
from sidecar.scrape import parse_body

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CONTENT_TYPES = st.sampled_from([None, TEXT, OM])
BODIES = real_bodies() + real_bodies("vllm-0.10.1.1.post2/prefix_on_shared")
TEMPLATE = real_bodies()[-1]
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def ratio_ok(r: float) -> bool:
    return math.isnan(r) or 0.0 <= r <= 1.0


# ------------------------------------------------------------------ parser


@FUZZ
@given(body=st.binary(max_size=3000), ctype=CONTENT_TYPES)
def test_arbitrary_bytes_raise_only_parse_error(body: bytes, ctype: str | None) -> None:
    for wanted in (None, WANTED, lambda name: True):
        try:
            parsed = parse(body, ctype, wanted)
        except ParseError:
            continue
        try:
            normalise(parsed.samples)
        except ParseError:
            pass


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["insert", "delete", "flip", "dup_line", "truncate"]))
        if op == "insert":
            body[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del body[pos : pos + draw(st.integers(1, 40))]
        elif op == "flip" and pos < len(body):
            body[pos] = draw(st.sampled_from(b'{}",= \n\\#\xff0aE+-.'))
        elif op == "dup_line":
            start = body.rfind(b"\n", 0, pos) + 1
            end = body.find(b"\n", pos)
            line = bytes(body[start : end if end >= 0 else len(body)])
            body[start:start] = line + b"\n"
        else:
            del body[pos:]
    return bytes(body)


@FUZZ
@given(body=mutated(), ctype=CONTENT_TYPES)
def test_mutated_real_bodies_never_break_a_scrape(body: bytes, ctype: str | None) -> None:
    outcome = parse_body(body, ctype, 1.8e9, 0.01)  # must not raise, whatever the body
    assert outcome.reason in (None, "parse", "no_vllm_metrics")
    tracker = TargetTracker("t", (Window("1m", 60.0),))
    snap = tracker.observe(outcome)
    for e in snap.engines:
        assert ratio_ok(e.lifetime_hit_ratio)
    families([snap])  # renders


NAMES = st.one_of(
    st.sampled_from(sorted(WANTED)), st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,24}", fullmatch=True)
)
LABEL_NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12))
LABEL_VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def valid_bodies(draw: st.DrawFn) -> tuple[str, list[tuple[str, tuple, float]]]:
    lines, expected = [], []
    for _ in range(draw(st.integers(0, 25))):
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["# HELP x some help", "# TYPE x counter", "#", ""])))
        name = draw(NAMES)
        names = draw(st.lists(LABEL_NAMES, max_size=4, unique=True))
        labels = tuple((k, draw(LABEL_VALUES)) for k in names)
        value = draw(VALUES)
        text = (
            f"{name}{{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}"
            if labels or draw(st.booleans())
            else name
        )
        ts = f" {draw(st.integers(0, 2**40))}" if draw(st.booleans()) else ""
        sep = draw(st.sampled_from([" ", "\t", "  "]))
        lines.append(f"{text}{sep}{fmt(float(value)) if isinstance(value, float) else value}{ts}")
        expected.append((name, labels, float(value)))
    return "\n".join(lines) + "\n", expected


@FUZZ
@given(case=valid_bodies())
def test_valid_bodies_are_read_exactly_as_written(case) -> None:
    text, expected = case
    got = parse(text.encode("utf-8"), TEXT, lambda name: True).samples
    assert [(n, lab) for n, lab, _ in got] == [(n, lab) for n, lab, _ in expected]
    assert all(same(a[2], b[2]) for a, b in zip(got, expected))
    assert parse(text.encode("utf-8"), TEXT).vllm_lines == sum(
        1 for n, _, _ in expected if n.startswith(("vllm:", "ray_vllm_"))
    )


# ------------------------------------------------------------------ derivation

COUNTER_VALUES = st.one_of(
    st.floats(min_value=0, max_value=1e15),
    st.integers(0, 10**7).map(float),
    st.sampled_from([math.nan, math.inf, -1.0, 0.0]),
)
GOOD = st.tuples(
    st.just("ok"),
    COUNTER_VALUES,
    COUNTER_VALUES,
    st.one_of(st.floats(0, 1), st.sampled_from([math.nan, 1.5, -0.1])),
    COUNTER_VALUES,
)
BAD = st.tuples(st.just("fail"), st.sampled_from(REASONS))
STEPS = st.lists(st.tuples(st.one_of(GOOD, BAD), st.floats(0.05, 200)), min_size=1, max_size=14)


_MARKS = {
    "vllm:prefix_cache_queries_total": "@Q@",
    "vllm:prefix_cache_hits_total": "@H@",
    "vllm:kv_cache_usage_perc": "@KV@",
    "vllm:prompt_tokens_total": "@P@",
}
_FORM = TEMPLATE
for _name, _mark in _MARKS.items():
    _FORM = set_sample(_FORM, _name, _mark)
_FORM_TEXT = _FORM.decode()


def body_for(queries: float, hits: float, kv: float, prompt: float) -> bytes:
    """The real template body with these four values (markers put in once, for speed)."""
    text = _FORM_TEXT
    for mark, v in (("@Q@", queries), ("@H@", hits), ("@KV@", kv), ("@P@", prompt)):
        text = text.replace(mark, fmt(v))
    return text.encode()


def exported(snap) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list] = {}
    for fam in families([snap]):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@FUZZ
@given(steps=STEPS)
def test_derivation_invariants_hold_for_any_sequence(steps) -> None:
    tracker = TargetTracker("t", (Window("10s", 10.0), Window("1m", 60.0)))
    t = 1.8e9
    errors: dict[tuple, float] = {}
    restarts = 0.0
    last_queries: float | None = None
    for step, dt in steps:
        t += dt
        if step[0] == "fail":
            outcome = ScrapeOutcome(t, 0.01, reason=step[1], error="fuzzed failure")
        else:
            outcome = parse_body(body_for(*step[1:]), TEXT, t, 0.01)
            assert outcome.ok, outcome.error
        snap = tracker.observe(outcome)
        series = exported(snap)
        # hit ratios: always in [0, 1] or NaN, in the snapshot and on the wire
        for e in snap.engines:
            assert ratio_ok(e.lifetime_hit_ratio)
            assert all(ratio_ok(w.hit_ratio) for w in e.windows)
        assert all(ratio_ok(v) for _, v in series.get("vllm_sidecar_prefix_cache_hit_ratio", []))
        # the sidecar's own counters never decrease
        for labels, v in series["vllm_sidecar_scrape_errors_total"]:
            key = labels["reason"]
            assert v >= errors.get(key, 0.0)
            errors[key] = v
        ((_, r),) = series["vllm_sidecar_target_restarts_total"]
        assert r >= restarts
        if step[0] == "ok":
            queries, hits, kv = step[1], step[2], step[3]
            # impossible values are never exported (contract "Impossible values"): a counter
            # below 0 or NaN, hits above queries (both refused), usage outside 0..1
            possible = 0 <= queries < math.inf and not (0 <= hits < math.inf and hits > queries)
            if possible:
                # pass-through: exactly vLLM's value, even when it went down
                ((_, q),) = series["vllm_sidecar_prefix_cache_queries_total"]
                assert same(q, queries)
                # ... and a drop below the last seen value is counted as a restart
                if last_queries is not None and queries < last_queries:
                    assert r >= restarts + 1
                last_queries = queries
            else:
                assert "vllm_sidecar_prefix_cache_queries_total" not in series
                assert series["vllm_sidecar_out_of_range_values_total"]
            usage = [v for _, v in series.get("vllm_sidecar_kv_cache_usage_ratio", [])]
            assert usage == ([kv] if 0 <= kv <= 1 else [])
            assert series["vllm_sidecar_target_up"][0][1] == 1.0
        else:
            assert series["vllm_sidecar_target_up"][0][1] == 0.0
            assert "vllm_sidecar_prefix_cache_queries_total" not in series
            assert "vllm_sidecar_kv_cache_usage_ratio" not in series
        restarts = r
