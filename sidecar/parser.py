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

#: a sample: (name, labels as ((key, value), ...) in body order, value)
Sample = tuple[str, tuple[tuple[str, str], ...], float]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,?)[ \t]*')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE_RE = re.compile(r"\\[\\\"n]")


#: raw label-set text -> parsed labels, shared by all targets (bounded; cleared when full)
_LABELS: dict[str, tuple[tuple[str, str], ...]] = {}
_LABELS_MAX = 100_000


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


def parse(
    body: bytes | str,
    content_type: str | None = None,
    wanted: Container[str] | Callable[[str], bool] | None = None,
) -> Parsed:
    """Parse ``body``; keep samples whose name is in ``wanted`` (all vLLM samples if None).

    ``vllm_lines`` counts vLLM's samples whether wanted or not, also as Ray Serve names them.

    Every sample line is checked for a valid metric name; lines the caller wants are parsed fully.
    Raises :class:`ParseError` with the line number on the first malformed line.
    """
    text = _decode(body)
    om = is_openmetrics(content_type)
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
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        c = line[0]
        if c == "#":
            if om and line.startswith("# EOF"):
                break
            continue
        if c in " \t\r":
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
                    if len(_LABELS) >= _LABELS_MAX:
                        _LABELS.clear()
                    _LABELS[raw] = labels
            else:
                end = close
        else:
            labels = ()
        rest = line[end:]
        if om and " # " in rest:
            rest = rest.split(" # ", 1)[0]
        samples.append((name, labels, _parse_value(rest, lineno, line)))
    return Parsed(samples, vllm_lines, om)
