"""Target ``parser``: raw bytes through :func:`sidecar.parser.parse` with both content types and
three kinds of ``wanted``; the only exception allowed is :class:`sidecar.parser.ParseError`.

    python -m fuzz.parser -atheris_runs=100000 fuzz/corpus/parser
"""

from __future__ import annotations

import math

from fuzz.common import instrumented, main

with instrumented(__name__ == "__main__"):
    from sidecar.normalize import WANTED
    from sidecar.parser import ParseError, parse

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _everything(name: str) -> bool:
    return True


def check_parsed(parsed: object) -> None:
    """What a successful parse promises: well-formed samples, and ``vllm_lines`` counting them."""
    for name, labels, value in parsed.samples:  # type: ignore[attr-defined]
        assert isinstance(name, str) and name, name
        assert isinstance(value, float) and (value == value or math.isnan(value))
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels), labels
    assert parsed.vllm_lines >= 0  # type: ignore[attr-defined]


def test_one_input(data: bytes) -> None:
    for ctype in (TEXT, OM):
        for wanted in (None, WANTED, _everything):
            try:
                parsed = parse(data, ctype, wanted)
            except ParseError:
                continue
            check_parsed(parsed)


if __name__ == "__main__":
    main(test_one_input)
