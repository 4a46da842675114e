"""What every target shares: instrumenting the code under test, and the libFuzzer entry point.

Imports of the code under test happen inside :func:`instrumented` so atheris can add coverage
feedback to them when the module runs as a fuzzer, and nothing at all when a test imports it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager


def instrumented(active: bool, include: Iterable[str] = ("sidecar",)) -> AbstractContextManager[object]:
    """Instrument the modules imported inside the block, only when fuzzing (``active``)."""
    if not active:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=list(include))


def main(test_one_input: Callable[[bytes], None]) -> None:
    """libFuzzer's loop over ``test_one_input``; arguments as libFuzzer/atheris take them
    (``-atheris_runs=N``, ``-max_len=N``, ``-artifact_prefix=DIR/``, corpus directories)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
