"""The fast parser against the exact reference, prometheus_client's own parsers.

``sidecar.parser.parse`` materialises only wanted samples; whatever it returns must equal what
``prometheus_client`` reads from the same body, filtered to the same names. Proven on every real
capture and on hypothesis-generated bodies (text and OpenMetrics); garbage must only ever raise
:class:`ParseError` carrying a line number.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from sidecar.normalize import WANTED, normalise
from sidecar.parser import ParseError, is_openmetrics, parse
from testkit.captures import all_captures

OM_CTYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_CTYPE = "text/plain; version=0.0.4; charset=utf-8"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CAPTURES = all_captures()


# ---------------------------------------------------------------- helpers


def _key(name: str, labels, value: float) -> tuple:
    """A hashable, NaN-aware, label-order-free form of one sample."""
    v = "NaN" if math.isnan(value) else float(value)
    return (name, tuple(sorted(dict(labels).items())), v)


def reference(body: str, content_type: str | None, wanted) -> Counter:
    """The multiset of samples prometheus_client reads, filtered to ``wanted`` names."""
    fams = om_families(body) if is_openmetrics(content_type) else text_families(body)
    keep = wanted if callable(wanted) else wanted.__contains__
    return Counter(_key(s.name, s.labels, s.value) for f in fams for s in f.samples if keep(s.name))


def ours(body: str | bytes, content_type: str | None, wanted) -> Counter:
    parsed = parse(body, content_type, wanted)
    return Counter(_key(n, labels, v) for n, labels, v in parsed.samples)


def is_vllm(name: str) -> bool:
    return name.startswith("vllm:") or name.startswith("ray_vllm_")


# ---------------------------------------------------------------- every real capture


def test_fixtures_are_present():
    assert len(CAPTURES) >= 30, "expected the shared vLLM captures (VLLM_SIDECAR_FIXTURES?)"
    assert {c.vllm_version for c in CAPTURES} >= {"0.32.0", "0.10.1.1.post2", "0.8.5.post2"}


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda c: c.id)
def test_fixture_wanted_samples_equal_reference(cap):
    want = reference(cap.body.decode(), cap.content_type, WANTED)
    got = ours(cap.body, cap.content_type, WANTED)
    assert got == want
    # the body is not trivially empty for what the sidecar reads (the idle V0 body has 1 sample)
    assert sum(got.values()) >= 1


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda c: c.id)
def test_fixture_all_vllm_samples_equal_reference(cap):
    """wanted=None keeps every ``vllm:`` sample: covers every family, lora_requests_info too."""
    text = cap.body.decode()
    want = reference(text, cap.content_type, is_vllm)
    parsed = parse(cap.body, cap.content_type)
    got = Counter(_key(n, labels, v) for n, labels, v in parsed.samples)
    assert got == want
    assert parsed.vllm_lines == sum(want.values())
    assert parsed.openmetrics is False  # vLLM answered text even to the OpenMetrics Accept


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda c: c.id)
def test_fixture_str_and_bytes_agree_and_labels_keep_body_order(cap):
    a = parse(cap.body, cap.content_type, WANTED).samples
    b = parse(cap.body.decode(), cap.content_type, WANTED).samples
    assert a == b
    for name, labels, _ in a:
        assert name in WANTED
        assert len({k for k, _ in labels}) == len(labels)


def test_lora_requests_info_empty_and_comma_values():
    cap = next(c for c in CAPTURES if "0.8.5" in c.folder and c.file == "004.prom")
    lora = [s for s in parse(cap.body, cap.content_type).samples if s[0] == "vllm:lora_requests_info"]
    assert len(lora) == 1
    assert dict(lora[0][1]) == {"max_lora": "0", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    body = (
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b{1},c=\\"x\\"",'
        'waiting_lora_adapters="d,e\\\\"} 1.7e+09\n'
    )
    want = reference(body, TEXT_CTYPE, is_vllm)
    assert ours(body, TEXT_CTYPE, None) == want
    (sample,) = parse(body, TEXT_CTYPE).samples
    assert dict(sample[1]) == {
        "max_lora": "4",
        "running_lora_adapters": 'a,b{1},c="x"',
        "waiting_lora_adapters": "d,e\\",
    }


def test_openmetrics_body_stops_at_eof_and_drops_exemplars():
    body = (
        "# TYPE vllm:prefix_cache_queries counter\n"
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 12.0 # {trace_id="a"} 1.0\n'
        'vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25 1700000000.5\n'
        "# EOF\n"
    )
    parsed = parse(body, OM_CTYPE, WANTED)
    assert parsed.openmetrics
    assert Counter(_key(*s) for s in parsed.samples) == reference(body, OM_CTYPE, WANTED)
    assert len(parsed.samples) == 3


def test_space_between_name_and_label_set_is_valid_text():
    """The text format separates tokens by any blanks: ``name {l="v"} 1`` is valid (Go's expfmt
    and prometheus_client both accept it)."""
    body = 'vllm:kv_cache_usage_perc {engine="0",model_name="m"} 0.5\n'
    assert ours(body, TEXT_CTYPE, WANTED) == reference(body, TEXT_CTYPE, WANTED)


# ---------------------------------------------------------------- generated valid bodies

OTHER_NAMES = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
NAMES = st.one_of(
    st.sampled_from(sorted(WANTED)),
    OTHER_NAMES,
    st.sampled_from(
        ["vllm:lora_requests_info", "vllm:num_requests_swapped_total", "process_start_time_seconds"]
    ),
)
LABEL_NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: not n.startswith("__")
)
HOSTILE = st.sampled_from(
    [
        "a,b",
        "{x}",
        "}",
        "{",
        '"',
        "\\",
        '\\"',
        "\n",
        'a="b"',
        " , ",
        "# x",
        "=",
        ",}",
        "\\n",
        "ü€😀",
        "",
        " ",
        "\t",
    ]
)
LABEL_VALUES = st.lists(
    st.one_of(HOSTILE, st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)), max_size=4
).map("".join)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
VALUES = st.one_of(
    st.sampled_from(
        [
            "NaN",
            "+Inf",
            "-Inf",
            "Inf",
            "0",
            "-0",
            "1e3",
            "1.5E-7",
            "-2.5e+10",
            "1.7954061622302732e+09",
            "10786.0",
            "0.0001220703125",
            ".5",
            "5.",
        ]
    ),
    FLOATS.map(repr),
    st.integers(-(10**15), 10**15).map(str),
)


def escape_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


@st.composite
def label_sets(draw):
    names = draw(st.lists(LABEL_NAMES, max_size=4, unique=True))
    return [(n, draw(LABEL_VALUES)) for n in names]


@st.composite
def text_sample_line(draw, name):
    labels = draw(label_sets())
    sep = draw(st.sampled_from([",", ", ", " ,", ",\t"]))
    eq = draw(st.sampled_from(["=", " = ", "="]))
    parts = [f'{k}{eq}"{escape_value(v)}"' for k, v in labels]
    if labels or draw(st.booleans()):
        trailing = "," if labels and draw(st.booleans()) else ""
        inner = sep.join(parts) + trailing
        pad = draw(st.sampled_from(["", " "])) if labels else ""
        ls = "{" + pad + inner + pad + "}"
    else:
        ls = ""
    # tokens are separated by blanks or tabs; a blank may also stand between name and '{'
    gap = draw(st.sampled_from([" ", " ", "\t"]))
    before_labels = draw(st.sampled_from(["", "", " ", "\t"])) if ls else ""
    line = f"{name}{before_labels}{ls}{gap}{draw(VALUES)}"
    if draw(st.booleans()):
        line += f"{gap}{draw(st.integers(-(2**53), 2**53))}"
    indent = draw(st.sampled_from(["", "", "", " ", "\t"]))
    return indent + line


@st.composite
def text_bodies(draw):
    """A valid Prometheus text body: families of samples with optional HELP/TYPE and blanks."""
    lines: list[str] = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=8)):
        if draw(st.booleans()):
            help_text = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
            lines.append(f"# HELP {name} {escape_help(help_text)}".rstrip())
        if draw(st.booleans()):
            # counter only for ``_total`` names: prometheus_client renames a bare counter's samples
            types = ["gauge", "untyped"] + (["counter"] if name.endswith("_total") else [])
            lines.append(f"# TYPE {name} {draw(st.sampled_from(types))}")
        for _ in range(draw(st.integers(1, 3))):
            lines.append(draw(text_sample_line(name)))
            if draw(st.integers(0, 5)) == 0:
                lines.append(draw(st.sampled_from(["", " ", '# a comment, {with} "quotes"'])))
    end = draw(st.sampled_from(["\n", "", "\n\n"]))
    return "\n".join(lines) + end


@given(text_bodies(), st.sampled_from([TEXT_CTYPE, "text/plain; version=1.0.0; charset=utf-8", None, ""]))
@FUZZ
@example('vllm:lora_requests_info{running_lora_adapters="a,b",waiting_lora_adapters="c}"} 1\n', TEXT_CTYPE)
def test_generated_text_bodies_agree_with_reference(body, ctype):
    want = reference(body, ctype, WANTED)
    assert ours(body, ctype, WANTED) == want
    assert ours(body.encode(), ctype, WANTED) == want
    all_vllm = reference(body, ctype, is_vllm)
    parsed = parse(body, ctype)
    assert Counter(_key(*s) for s in parsed.samples) == all_vllm
    assert parsed.vllm_lines == sum(all_vllm.values())


@st.composite
def om_bodies(draw):
    """A valid OpenMetrics body: typed gauge/counter families, exemplars, ``# EOF``."""
    fams = draw(
        st.lists(
            st.one_of(
                st.sampled_from(sorted(n[: -len("_total")] for n in WANTED if n.endswith("_total"))),
                OTHER_NAMES,
            ),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    lines: list[str] = []
    used: set[str] = set()
    for fam in fams:
        if fam.endswith(
            ("_total", "_created", "_bucket", "_count", "_sum", "_info", "_gcount", "_gsum")
        ) or any(fam.startswith(u) or u.startswith(fam) for u in used):
            continue
        used.add(fam)
        typ = draw(st.sampled_from(["gauge", "counter"]))
        if draw(st.booleans()):
            help_text = draw(st.from_regex(r"[a-zA-Z0-9,{}=#][a-zA-Z0-9 ,{}=#]{0,15}", fullmatch=True))
            lines.append(f"# HELP {fam} {help_text}")
        lines.append(f"# TYPE {fam} {typ}")
        seen_labels: set = set()
        for _ in range(draw(st.integers(1, 3))):
            labels = draw(label_sets())
            key = tuple(sorted(k for k, _ in labels)), tuple(sorted(labels))
            if key[1] in seen_labels:
                continue
            seen_labels.add(key[1])
            ls = ("{" + ",".join(f'{k}="{escape_value(v)}"' for k, v in labels) + "}") if labels else ""
            ts = f" {draw(st.integers(0, 2**31))}.5" if draw(st.booleans()) else ""
            if typ == "gauge":
                lines.append(f"{fam}{ls} {draw(VALUES)}{ts}")
            else:
                value = draw(st.sampled_from(["0", "1.5", "10786.0", "1e3", "+Inf"]))
                ex = ' # {trace_id="x,}"} 1.0' if draw(st.booleans()) else ""
                lines.append(f"{fam}_total{ls} {value}{ts}{ex}")
                if draw(st.booleans()):
                    lines.append(f"{fam}_created{ls} 1.7954061622302732e+09{ts}")
    assume(lines)
    return "\n".join(lines) + "\n# EOF\n"


@given(om_bodies())
@FUZZ
def test_generated_openmetrics_bodies_agree_with_reference(body):
    try:
        want = reference(body, OM_CTYPE, WANTED)
        all_vllm = reference(body, OM_CTYPE, is_vllm)
    except ValueError:
        assume(False)  # a corner the generator got wrong for the strict OM reference
    assert ours(body, OM_CTYPE, WANTED) == want
    assert Counter(_key(*s) for s in parse(body, OM_CTYPE).samples) == all_vllm


# ---------------------------------------------------------------- garbage


def _check_only_parse_error(body, ctype):
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    n_lines = text.count("\n") + 1
    try:
        parsed = parse(body, ctype, WANTED)
    except ParseError as exc:
        assert isinstance(exc.line, int) and 1 <= exc.line <= n_lines, exc
        assert str(exc).startswith(f"line {exc.line}: ")
        return
    for name, labels, value in parsed.samples:  # whatever it accepted is well-formed
        assert name in WANTED and isinstance(value, float)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels)


REAL_BODIES = [c.body.decode() for c in CAPTURES if c.file == "004.prom"]


@st.composite
def mutated_bodies(draw):
    body = draw(st.one_of(text_bodies(), st.sampled_from(REAL_BODIES)))
    if len(body) > 4000:  # a window of a real body keeps each example cheap
        lines = body.split("\n")
        start = draw(st.integers(0, len(lines) - 1))
        body = "\n".join(lines[start : start + 40])
    chars = list(body)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = draw(st.integers(0, max(0, len(chars) - 1)))
        ch = draw(
            st.one_of(
                st.sampled_from(list('{}",=\\ #\n\t\x00') + ["\r"]),
                st.characters(blacklist_categories=("Cs",)),
            )
        )
        if op == "insert" or not chars:
            chars.insert(pos, ch)
        elif op == "delete":
            del chars[pos]
        else:
            chars[pos] = ch
    return "".join(chars)


@given(
    st.one_of(mutated_bodies(), st.text(max_size=200), st.binary(max_size=200)),
    st.sampled_from([TEXT_CTYPE, OM_CTYPE, None]),
)
@FUZZ
@example(b"\xff\xfe garbage", TEXT_CTYPE)
@example('vllm:kv_cache_usage_perc{engine="0" 1\n', TEXT_CTYPE)
@example('vllm:kv_cache_usage_perc{engine="0\\"} 1\n', TEXT_CTYPE)
@example("vllm:kv_cache_usage_perc\n", TEXT_CTYPE)
@example("vllm:kv_cache_usage_perc{} abc\n", OM_CTYPE)
def test_garbage_raises_only_parse_error_with_a_line(body, ctype):
    _check_only_parse_error(body, ctype)


@given(st.one_of(mutated_bodies(), st.text(max_size=200)))
@FUZZ
def test_garbage_through_normalise_raises_only_parse_error(body):
    """The scrape loop turns ParseError into reason="parse"; any other exception escapes it.
    (Hand-picked hostile label values: ``test_normalize.py``.)"""
    try:
        normalise(parse(body, TEXT_CTYPE, WANTED).samples)
    except ParseError:
        pass


@pytest.mark.parametrize(
    "body,line",
    [
        ('# HELP x y\nx 1\nvllm:kv_cache_usage_perc{a="b" 2\n', 3),
        ("\n\n\nvllm:kv_cache_usage_perc NaNx\n", 4),
        ("x 1\n9bad 1\n", 2),
        ('x 1\r\ny{a="1"} z\r\n', 2),
        (b"x 1\n\xc3\x28 1\n", 2),
    ],
)
def test_parse_error_names_the_bad_line(body, line):
    with pytest.raises(ParseError) as info:
        parse(body, TEXT_CTYPE, lambda n: True)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")


def test_values_reject_what_the_text_format_rejects():
    """Python's float() reads ``1_0`` as 10; the exposition format (and the reference) do not."""
    body = "vllm:kv_cache_usage_perc 1_0\n"
    with pytest.raises(ValueError):
        reference(body, TEXT_CTYPE, WANTED)
    with pytest.raises(ParseError):
        parse(body, TEXT_CTYPE, WANTED)


@pytest.mark.parametrize("body", [b"", "\n\n", "# HELP x y\n# TYPE x gauge\n", " \t\n\r\n", "# EOF\n"])
def test_bodies_without_samples(body):
    parsed = parse(body, TEXT_CTYPE, WANTED)
    assert parsed.samples == [] and parsed.vllm_lines == 0
    assert reference(body.decode() if isinstance(body, bytes) else body, TEXT_CTYPE, WANTED) == Counter()
