"""Short coverage-guided runs of every fuzz target (fuzz/), in CI.

Each target runs for a fixed number of executions (no wall-clock limit) with a fixed seed, from
the committed seed corpus, in its own process; it must exit 0 (no crash, no invariant broken).
The long campaigns are ``make fuzz FUZZ_RUNS=1000000`` (see fuzz/README.md). Every input that
once crashed a target lives in fuzz/regressions/<target>/ and is replayed here without atheris.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import pipeline
from fuzz.run import fuzz_args

REPO = Path(__file__).resolve().parents[2]
REGRESSIONS = REPO / "fuzz" / "regressions"
#: executions per target: a few seconds each on a loaded 2-core machine
RUNS = {"parser": 4000, "pipeline": 1500, "config": 1000}

#: the pipeline invariants CI checks: None = every one in pipeline.INVARIANTS (issue 10 landed;
#: name a subset here only while a known, tracked gap is being fixed)
PIPELINE_HOLDING_TODAY: tuple[str, ...] | None = None


def pipeline_checks() -> list | None:
    if PIPELINE_HOLDING_TODAY is None:
        return None
    return [pipeline.INVARIANTS[n] for n in PIPELINE_HOLDING_TODAY]


@pytest.mark.parametrize("target", sorted(RUNS))
def test_short_fuzz_run_finds_nothing(target, tmp_path):
    pytest.importorskip("atheris", reason="atheris has wheels for x86_64 Linux and arm64 macOS only")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if target == "pipeline" and PIPELINE_HOLDING_TODAY is not None:
        env["FUZZ_INVARIANTS"] = ",".join(PIPELINE_HOLDING_TODAY)
    cmd = [
        sys.executable,
        "-m",
        f"fuzz.{target}",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
        *fuzz_args(target, RUNS[target], tmp_path / "found"),
    ]
    (tmp_path / "found").mkdir()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Done {RUNS[target]} in" in proc.stderr  # it really ran that many executions


def regression_inputs() -> list:
    return [
        pytest.param(p, id=f"{p.parent.name}/{p.name}")
        for p in sorted(REGRESSIONS.glob("*/*"))
        if p.is_file() and p.name != "README"
    ]


@pytest.mark.parametrize("path", regression_inputs())
def test_every_input_that_once_crashed_a_target_is_handled(path):
    target = importlib.import_module(f"fuzz.{path.parent.name}")
    if path.parent.name == "pipeline":
        target.test_one_input(path.read_bytes(), pipeline_checks())
    else:
        target.test_one_input(path.read_bytes())
