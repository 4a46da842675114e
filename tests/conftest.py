"""Shared test fixtures.

Sections are owned by different people: keep each one small and add new ones below, clearly
headed. Nothing here may mock the code under test.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# ---------------------------------------------------------------- real vLLM captures (fixtures)

REPO = Path(__file__).resolve().parent.parent
#: ``<repo>/../shared/fixtures`` unless ``VLLM_SIDECAR_FIXTURES`` points elsewhere
FIXTURES = Path(os.environ.get("VLLM_SIDECAR_FIXTURES") or REPO.parent / "shared" / "fixtures")


@dataclass(frozen=True)
class Capture:
    """One ``/metrics`` body of a capture folder, as served."""

    folder: str  # e.g. ``vllm-0.32.0/prefix_on_shared``
    file: str  # e.g. ``000.prom`` or ``000.openmetrics.txt``
    body: bytes
    content_type: str
    note: str
    ts: float
    vllm_version: str

    @property
    def id(self) -> str:
        return f"{self.folder}/{self.file}"


def capture_folders() -> list[str]:
    """Every folder holding a ``meta.json``, relative to :data:`FIXTURES`, sorted."""
    return sorted(str(p.parent.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*/meta.json"))


def load_capture(folder: str, *, openmetrics: bool = False) -> list[Capture]:
    """The bodies of ``folder`` in ``meta.json`` order.

    With ``openmetrics=True`` also the bodies fetched with the OpenMetrics Accept header, each
    right after the plain body of the same scrape.
    """
    base = FIXTURES / folder
    meta = json.loads((base / "meta.json").read_text())
    out: list[Capture] = []
    for s in meta["scrapes"]:
        entries = [s] + ([s["openmetrics"]] if openmetrics and "openmetrics" in s else [])
        for e in entries:
            out.append(Capture(folder, e["file"], (base / e["file"]).read_bytes(),
                               e["content_type"], s.get("note", ""), e["ts"],
                               meta["vllm_version"]))
    return out


def all_captures() -> list[Capture]:
    """Every body of every folder (plain and OpenMetrics-requested)."""
    return [c for f in capture_folders() for c in load_capture(f, openmetrics=True)]


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
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and report.skipped \
            and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run everything: {report.longrepr}"
