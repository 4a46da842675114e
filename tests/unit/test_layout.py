"""The parser's per-target memo (:class:`sidecar.parser.Layout`): the same result, cheaper.

A body whose lines match the last one's is read by position. These tests prove that reading is
never different from a full parse - same samples, same ``vllm_lines``, the same error on the
same line - on every real capture and on learnt bodies edited in hostile ways; and that the memo
is actually used.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import parser
from sidecar.normalize import WANTED
from sidecar.parser import Layout, ParseError, parse
from testkit.captures import capture_folders, load_capture

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"
V32 = "vllm-0.32.0/prefix_on_shared"


def outcome(body: str | bytes, ctype: str, layout: Layout | None) -> tuple[object, ...]:
    """What a parse gives (NaN-safe, comparable): the samples and count, or the error."""
    try:
        p = parse(body, ctype, WANTED, layout)
    except ParseError as exc:
        return ("error", str(exc))
    return ("ok", repr(p.samples), p.vllm_lines, p.openmetrics)


def read_along(bodies: Sequence[str | bytes], ctype: str) -> int:
    """Parse each body fresh and through one Layout; they must agree. How many were recalled."""
    layout, recalled = Layout(), 0
    for body in bodies:
        text = body.decode() if isinstance(body, bytes) else body
        recalled += layout.recall(text.split("\n"), "openmetrics" in ctype, WANTED) is not None
        assert outcome(body, ctype, layout) == outcome(body, ctype, None)
    return recalled


@pytest.mark.parametrize("folder", capture_folders())
def test_every_capture_reads_the_same_by_position(folder: str) -> None:
    caps = load_capture(folder, openmetrics=True)
    for ctype in {c.content_type for c in caps}:
        bodies = [c.body for c in caps if c.content_type == ctype]
        read_along(bodies + bodies[::-1], ctype)


def test_the_memo_is_used_while_the_lines_stay() -> None:
    body = load_capture(V32)[-1].body.decode()
    line = next(ln for ln in body.split("\n") if ln.startswith("vllm:prefix_cache_queries_total"))
    grown = [body.replace(line, line.rsplit(" ", 1)[0] + f" {v}") for v in (1e6, 2e6, 3e6)]
    assert read_along(grown, TEXT) == 2
    assert ("vllm:prefix_cache_queries_total", (("engine", "0"), ("model_name", "tiny")), 3e6) in parse(
        grown[-1], TEXT, WANTED
    ).samples


def learnt_then(edited: str, ctype: str = TEXT, base: str | None = None) -> None:
    """Learn ``base`` (the real 0.32 body), then read ``edited``: as a full parse would."""
    base = base if base is not None else load_capture(V32)[-1].body.decode()
    layout = Layout()
    parse(base, ctype, WANTED, layout)
    assert layout.entries, "the real body is learnt"
    assert outcome(edited, ctype, layout) == outcome(edited, ctype, None)


def first(body: str, prefix: str) -> str:
    return next(ln for ln in body.split("\n") if ln.startswith(prefix))


BODY = load_capture(V32)[-1].body.decode()
HITS = first(BODY, "vllm:prefix_cache_hits_total")
UNREAD = first(BODY, "vllm:estimated_flops_per_gpu_total")


@pytest.mark.parametrize(
    "edit",
    [
        HITS + " 1700000000000",  # a timestamp: the value is not the last token
        HITS.rsplit(" ", 1)[0] + " 1_0",  # float() reads 1_0; the format does not
        HITS.rsplit(" ", 1)[0] + " ",  # no value
        HITS.rsplit(" ", 1)[0] + "  7",  # two spaces
        HITS.rsplit(" ", 1)[0] + " 7\r",  # CRLF
        " " + HITS,  # leading space
        HITS.rsplit(" ", 1)[0] + " NaN",
        HITS.rsplit(" ", 1)[0] + " +Inf",
        HITS.rsplit(" ", 1)[0] + ' 7 # {a="b"} 1',  # an exemplar in a text body
        HITS.replace("model_name", "model_name2"),  # other labels
        HITS.replace("{", " {", 1),  # ``name {labels}``
        UNREAD.replace("vllm:estimated_flops", "vllm:estimated-flops"),  # a broken unread name
        UNREAD.split("{")[0],  # an unread name without a value
        UNREAD.split("{")[0] + "{garbage",  # an unread line: only its name is checked
    ],
)
def test_hostile_edits_of_one_line_read_as_a_full_parse(edit: str) -> None:
    target = HITS if HITS.split("{")[0] in edit or edit.startswith(" ") else UNREAD
    learnt_then(BODY.replace(target, edit))


def test_bodies_with_timestamps_are_not_learnt() -> None:
    """Their values sit before a token that changes every scrape: learning them would only cost."""
    layout = Layout()
    parse(BODY.replace(HITS, HITS + " 1700000000000"), TEXT, WANTED, layout)
    assert layout.entries == ()
    parse(BODY, TEXT, WANTED, layout)
    assert layout.entries


def test_lines_added_or_removed_read_as_a_full_parse() -> None:
    learnt_then(BODY + 'vllm:num_requests_running{engine="1",model_name="tiny"} 1\n')
    learnt_then(BODY.replace(HITS + "\n", ""))
    learnt_then(BODY.replace("# HELP vllm:prefix_cache_hits", "# HELP  vllm:prefix_cache_hits"))
    learnt_then(BODY.rstrip("\n"))


def test_openmetrics_eof_and_after() -> None:
    om = BODY.rstrip("\n") + "\n# EOF\n"
    learnt_then(om + "garbage after EOF\n", OM, om)
    learnt_then(om.replace("# EOF", "# EOF garbage"), OM, om)
    learnt_then(om, TEXT, om)  # same lines, other content type: learnt as OpenMetrics, read as text
    learnt_then(om.replace("# EOF\n", ""), OM, om)


EDIT_CHARS = st.sampled_from(list(' \t_#{}",=e5.-+\r\x1cNaInf\n') + ["\u0661", "\u00a0"])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_small_edit_reads_as_a_full_parse(data: st.DataObject) -> None:
    """Insert, delete or replace a few characters anywhere in a learnt body."""
    text = BODY
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text) - 1))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        c = data.draw(EDIT_CHARS)
        text = text[:i] + (c if op != "delete" else "") + text[i + (op != "insert") :]
    learnt_then(text, data.draw(st.sampled_from([TEXT, OM])))


def retained_bytes(fn: Callable[[], object]) -> int:
    """What ``fn`` leaves allocated (its result dropped), measured by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def test_a_big_body_is_not_learnt() -> None:
    """Blank lines kept ~80 bytes each in their target's layout (a 16 MB body: 1.3 GB)."""
    layout = Layout()
    body = "\n" * (1 << 16)
    assert retained_bytes(lambda: parse(body, TEXT, WANTED, layout)) < 1 << 20
    assert layout.entries == ()
    assert outcome(body, TEXT, layout) == outcome(body, TEXT, None)


def test_the_shared_layouts_stay_bounded_in_memory() -> None:
    """A target answering a new body each scrape left each layout in the interning table, bounded
    only by count: 1,000 layouts of up to 16 MB bodies."""
    layout = Layout()
    lines = [f"# {'x' * 100_000}"] * 18

    def scrapes() -> None:
        for i in range(30):
            parse("\n".join([f"# {i}", *lines, ""]), TEXT, WANTED, layout)

    assert retained_bytes(scrapes) < parser._LAYOUTS.max_cost * 3 // 2
    assert layout.entries  # learnt all the same


def test_the_label_set_cache_stays_bounded_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_LABELS`` was bounded by entries only: new 1 MB label sets each scrape filled gigabytes
    (100,000 of them). Checked with a smaller budget, to stay quick."""
    monkeypatch.setattr(parser._LABELS, "max_cost", 1 << 20)
    big = "x" * (1 << 17)

    def scrapes() -> None:
        for i in range(14):
            parse(f'vllm:num_requests_running{{a="{i}-{big}"}} 1\n', TEXT, WANTED)

    assert retained_bytes(scrapes) < parser._LABELS.max_cost * 3 // 2
