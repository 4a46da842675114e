"""Shared pytest fixtures and hooks, nothing else.

Helpers that tests import (captures, bodies, processes, certificates, the replay server) live in
``testkit/``; import them from there, never from this file. Nothing here may mock the code under
test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.captures import FIXTURES

# ---------------------------------------------------------------- real vLLM captures (fixtures)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"fixtures not found at {FIXTURES} (set VLLM_SIDECAR_FIXTURES)")
    return FIXTURES


# ---------------------------------------------------------------- CI: nothing may skip (lead)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (``CI=true``) a skipped test is a failure: CI installs every tool the suite
    needs, so a skip there means a missing install step, not an optional extra."""
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("CI", "").lower() in ("1", "true", "yes")
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run everything: {report.longrepr}"
