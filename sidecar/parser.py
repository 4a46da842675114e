"""A fast, escape-aware reader of Prometheus text (0.0.4 / 1.0.0) and OpenMetrics bodies.

Why our own instead of ``prometheus_client.parser``: a vLLM body is ~600 lines of which the sidecar
needs ~100; the reference parser builds an object for every sample of every family and costs
several times more CPU per scrape. This reader checks every line's shape cheaply but materialises
only the samples whose names the caller asks for. ``prometheus_client``'s parser stays the exact
reference: ``tests/unit/test_parser.py`` proves both agree on every fixture and on generated bodies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass

from .interning import SharedTable

#: a sample: (name, labels as ((key, value), ...) in body order, value)
Sample = tuple[str, tuple[tuple[str, str], ...], float]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,?)[ \t]*')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE_RE = re.compile(r"\\[\\\"n]")


#: raw label-set text -> parsed labels, shared by all targets (bounded by entries and by the
#: characters held, or a target sending new 100 kB label sets would fill gigabytes; cleared
#: when full)
#: the cost of an entry is twice its text (the key and about as much in the parsed values); the
#: real label sets average 60 chars, so 100,000 of them fit in 16 M
_LABELS: SharedTable[str, tuple[tuple[str, str], ...]] = SharedTable(100_000, 16 << 20)


def _remember_labels(raw: str, labels: tuple[tuple[str, str], ...]) -> None:
    _LABELS.add(raw, labels, 2 * len(raw))


class ParseError(ValueError):
    """The body is not valid exposition text; ``line`` is 1-based."""

    def __init__(self, line: int, message: str, text: str | None = None):
        self.line = line
        self.message = message
        self.text = text
        super().__init__(str(self))

    def __str__(self) -> str:
        snippet = ""
        if self.text is not None:
            t = self.text if len(self.text) <= 80 else self.text[:77] + "..."
            snippet = f": {t!r}"
        return f"line {self.line}: {self.message}{snippet}"


@dataclass(frozen=True)
class Parsed:
    """What the sidecar keeps of one body."""

    samples: list[Sample]
    vllm_lines: int  # every ``vllm:`` (or Ray Serve ``ray_vllm_``) sample line, wanted or not
    openmetrics: bool


def is_openmetrics(content_type: str | None) -> bool:
    return content_type is not None and "application/openmetrics-text" in content_type.lower()


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value)


def _parse_labels(line: str, pos: int, lineno: int) -> tuple[tuple[tuple[str, str], ...], int]:
    """Labels from ``line[pos] == '{'``; returns them and the index after ``}``."""
    labels: list[tuple[str, str]] = []
    i = pos + 1
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == "}":
            return tuple(labels), i + 1
        m = _LABEL_RE.match(line, i)
        if m is None:
            raise ParseError(lineno, "malformed label set", line)
        labels.append((m.group(1), _unescape(m.group(2))))
        i = m.end()
        if not m.group(3):
            if i < n and line[i] == "}":
                return tuple(labels), i + 1
            raise ParseError(lineno, "expected ',' or '}' in label set", line)


def _parse_value(rest: str, lineno: int, line: str) -> float:
    text = rest.strip()
    if not text:
        raise ParseError(lineno, "missing value", line)
    token = text.split(None, 1)[0]
    if "_" in token:  # float() reads ``1_0`` as 10; the exposition format does not
        raise ParseError(lineno, f"invalid value {token!r}", line)
    try:
        return float(token)
    except ValueError:
        raise ParseError(lineno, f"invalid value {token!r}", line) from None


def _decode(body: bytes | str) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise ParseError(line, f"invalid UTF-8 at byte {exc.start}") from None


def _is_vllm(name: str) -> bool:
    return name.startswith("vllm:") or name.startswith("ray_vllm_")


#: what one line of a learnt body requires of the same line of the next body (:class:`Layout`)
_SAME, _OTHER, _SAMPLE, _EOF = range(4)
#: (kind, text, name, labels): ``_SAME``/``_EOF`` the whole line; ``_OTHER`` a sample line the
#: caller does not want, by its name; ``_SAMPLE`` a wanted sample line up to its value
_Entry = tuple[int, str, str, tuple[tuple[str, str], ...]]
_WS = frozenset(" \t\r\n\v\f\x1c\x1d\x1e\x1f\x85\xa0")


class Layout:
    """One target's memo of its last body's lines, to read the next body by position.

    Why: a vLLM answers the same lines scrape after scrape; only the values change. A body whose
    lines match the learnt ones (comments equal, each sample line starting with the same name
    and label text, then a lone value token) is read by slicing off each value, skipping the
    name and label parsing. Anything else - a line more or less, other labels, a timestamp, a
    value ``float`` does not read - is parsed in full as if there were no memo, and learnt.
    Learnt layouts are interned across targets (a fleet of one model answers the same lines).
    """

    __slots__ = ("entries", "wanted", "om", "vllm_lines")

    def __init__(self) -> None:
        self.entries: tuple[_Entry, ...] = ()
        self.wanted: object = None
        self.om = False
        self.vllm_lines = 0

    def recall(self, lines: list[str], om: bool, wanted: object) -> list[Sample] | None:
        """The samples of ``lines`` read by position, or None when they do not match the memo."""
        entries = self.entries
        if not entries or om != self.om or wanted is not self.wanted:
            return None
        if len(lines) != len(entries) and not (entries[-1][0] == _EOF and len(lines) > len(entries)):
            return None
        samples: list[Sample] = []
        append = samples.append
        for line, (kind, text, name, labels) in zip(lines, entries):
            if kind == _SAMPLE:
                if not line.startswith(text):
                    return None
                rest = line[len(text) :]
                if "_" in rest:
                    return None
                try:
                    append((name, labels, float(rest)))
                except ValueError:
                    return None
            elif kind == _OTHER:
                n = len(text)
                if not line.startswith(text) or len(line) == n or line[n] not in "{ \t":
                    return None
            elif line != text:
                return None
        return samples

    def learn(self, entries: list[_Entry] | None, om: bool, wanted: object, vllm_lines: int) -> None:
        """Remember a body parsed in full (``entries`` None: it cannot be read by position)."""
        self.entries = _intern(tuple(entries)) if entries else ()
        self.om, self.wanted, self.vllm_lines = om, wanted, vllm_lines


#: layouts shared by targets; bounded by entries and by their cost (about bytes: the text kept and
#: ~80 per line), or a target answering a different 2 MB body each scrape would keep gigabytes here
_LAYOUTS: SharedTable[tuple[_Entry, ...], tuple[_Entry, ...]] = SharedTable(1_000, 32 << 20)
#: bodies above these are not learnt (a blank line costs ~80 bytes in a layout); the real 0.32
#: body has 609 lines and 50 kB
_LEARN_MAX_LINES = 20_000
_LEARN_MAX_CHARS = 2 << 20


def _cost(entries: tuple[_Entry, ...]) -> int:
    return sum([len(e[1]) for e in entries]) + 80 * len(entries)


def _intern(entries: tuple[_Entry, ...]) -> tuple[_Entry, ...]:
    found = _LAYOUTS.get(entries)
    if found is not None:
        return found
    return _LAYOUTS.add(entries, entries, _cost(entries))


def _lone_token(rest: str) -> bool:
    """``rest`` is one space and one value token with no whitespace around or inside it.

    Not needed for correctness (a value ``float`` reads after the same prefix is what a full
    parse reads), but a body with timestamps or exemplars would miss the memo every scrape: such
    a body is not learnt at all."""
    return len(rest) > 1 and rest[0] == " " and not _WS.intersection(rest[1:])


def parse(
    body: bytes | str,
    content_type: str | None = None,
    wanted: Container[str] | Callable[[str], bool] | None = None,
    layout: Layout | None = None,
) -> Parsed:
    """Parse ``body``; keep samples whose name is in ``wanted`` (all vLLM samples if None).

    ``vllm_lines`` counts vLLM's samples whether wanted or not, also as Ray Serve names them.
    ``layout``: the target's :class:`Layout` memo (the result is the same, only cheaper; pass the
    same ``wanted`` object every time).

    Every sample line is checked for a valid metric name; lines the caller wants are parsed fully.
    Raises :class:`ParseError` with the line number on the first malformed line.
    """
    text = _decode(body)
    om = is_openmetrics(content_type)
    lines = text.split("\n")
    if layout is not None:
        recalled = layout.recall(lines, om, wanted)
        if recalled is not None:
            return Parsed(recalled, layout.vllm_lines, om)
    learn = layout is not None and len(lines) <= _LEARN_MAX_LINES and len(text) <= _LEARN_MAX_CHARS
    entries: list[_Entry] | None = [] if learn else None
    want: Callable[[str], bool]
    if wanted is None:
        want = _is_vllm
    elif callable(wanted):
        want = wanted
    else:
        want = wanted.__contains__
    samples: list[Sample] = []
    vllm_lines = 0
    name_match = _NAME_RE.match
    for lineno, line in enumerate(lines, 1):
        if not line:
            if entries is not None:
                entries.append((_SAME, line, "", ()))
            continue
        c = line[0]
        if c == "#":
            if om and line.startswith("# EOF"):
                if entries is not None:
                    entries.append((_EOF, line, "", ()))
                break
            if entries is not None:
                entries.append((_SAME, line, "", ()))
            continue
        if c in " \t\r":
            entries = None  # not read by position: parsed in full every time
            line = line.strip()
            if not line:
                continue
            if line[0] == "#":
                continue
        m = name_match(line)
        if m is None:
            raise ParseError(lineno, "expected a metric name", line)
        end = m.end()
        if end < len(line) and line[end] not in "{ \t":
            raise ParseError(lineno, "expected '{' or a space after the metric name", line)
        if end == len(line):
            raise ParseError(lineno, "missing value", line)
        name = m.group(0)
        if name.startswith("vllm:") or name.startswith("ray_vllm_"):
            vllm_lines += 1
        if not want(name):
            if entries is not None:
                entries.append((_OTHER, name, "", ()))
            continue
        while line[end] in " \t" and end + 1 < len(line) and line[end + 1] in " \t{":
            end += 1  # ``name {labels} value`` is valid text too
        if line[end] == "{":
            # Label sets repeat exactly from scrape to scrape (and across targets of a model):
            # reuse the parsed tuple for text seen before. A key is only ever a text that parses
            # as one whole label set, so a hit parses exactly as a miss would.
            close = line.rfind("}") + 1
            raw = line[end:close]
            labels = _LABELS.get(raw)
            if labels is None:
                labels, end = _parse_labels(line, end, lineno)
                if end == close:
                    _remember_labels(raw, labels)
            else:
                end = close
        else:
            labels = ()
        rest = line[end:]
        if entries is not None:
            if _lone_token(rest):
                entries.append((_SAMPLE, line[: end + 1], name, labels))
            else:
                entries = None  # a timestamp or an exemplar: parsed in full every time (cheaper)
        if om and " # " in rest:
            rest = rest.split(" # ", 1)[0]
        samples.append((name, labels, _parse_value(rest, lineno, line)))
    if layout is not None:
        layout.learn(entries, om, wanted, vllm_lines)
    return Parsed(samples, vllm_lines, om)
