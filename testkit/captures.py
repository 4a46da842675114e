"""Readers of recorded vLLM ``/metrics`` captures.

A capture folder (e.g. ``vllm-0.32.0/prefix_on_shared``) holds the bodies one real vLLM served,
scrape after scrape, and a ``meta.json`` listing them in order: per scrape the plain body and,
where recorded, the body fetched with the OpenMetrics Accept header. Two roots hold folders: the
shared captures (``<repo>/../shared/fixtures``, or wherever ``VLLM_SIDECAR_FIXTURES`` points) and
the project's own (``tests/fixtures``: a real data-parallel vLLM). Every reader here goes through
:func:`capture_dir`, so a folder name means the same bodies to every test, fuzzer and benchmark.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit import REPO

#: ``<repo>/../shared/fixtures`` unless ``VLLM_SIDECAR_FIXTURES`` points elsewhere
FIXTURES = Path(os.environ.get("VLLM_SIDECAR_FIXTURES") or REPO.parent / "shared" / "fixtures")
#: the project's own captures (a real data-parallel vLLM, recorded here), read like the shared ones
OWN_FIXTURES = REPO / "tests" / "fixtures"
ROOTS = (FIXTURES, OWN_FIXTURES)
#: the content type of a scrape whose ``meta.json`` entry names none
TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"


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


def capture_root(folder: str) -> Path:
    """The root that holds ``folder`` (shared captures first)."""
    for root in ROOTS:
        if (root / folder / "meta.json").is_file():
            return root
    raise FileNotFoundError(f"no capture folder {folder!r} in {', '.join(map(str, ROOTS))}")


def capture_dir(folder: str | Path) -> Path:
    """The directory of ``folder``: a path to a folder with a ``meta.json`` as it is, otherwise a
    name looked up in :data:`ROOTS`."""
    path = Path(folder)
    if (path / "meta.json").is_file():
        return path
    return capture_root(str(folder)) / folder


def capture_folders() -> list[str]:
    """Every folder holding a ``meta.json``, relative to its root (:data:`ROOTS`), sorted."""
    return sorted({str(p.parent.relative_to(root)) for root in ROOTS for p in root.glob("*/*/meta.json")})


def _meta(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    base = capture_dir(folder)
    return base, json.loads((base / "meta.json").read_text())


def _capture(
    folder: str | Path, base: Path, entry: dict[str, Any], scrape: dict[str, Any], meta: dict[str, Any]
) -> Capture:
    return Capture(
        str(folder),
        entry["file"],
        (base / entry["file"]).read_bytes(),
        entry.get("content_type") or TEXT_004,
        scrape.get("note", ""),
        entry.get("ts", 0.0),
        meta.get("vllm_version", ""),
    )


def load_capture(
    folder: str | Path, *, openmetrics: bool = False, prefer_openmetrics: bool = False
) -> list[Capture]:
    """The bodies of ``folder`` (a name in :data:`ROOTS` or a directory) in ``meta.json`` order.

    By default one plain body per scrape. ``openmetrics=True`` adds the body fetched with the
    OpenMetrics Accept header right after the plain body of the same scrape;
    ``prefer_openmetrics=True`` takes it instead of the plain body where the scrape has one.
    """
    base, meta = _meta(folder)
    out: list[Capture] = []
    for s in meta["scrapes"]:
        om = s.get("openmetrics")
        if prefer_openmetrics and om:
            entries = [om]
        else:
            entries = [s] + ([om] if openmetrics and om else [])
        out.extend(_capture(folder, base, e, s, meta) for e in entries)
    return out


def capture_bodies(folder: str | Path) -> list[bytes]:
    """The plain bodies of ``folder``, one per scrape, in order (counters grow along them)."""
    return [c.body for c in load_capture(folder)]


def load_fixture(folder: str | Path, openmetrics: bool = False) -> tuple[list[bytes], list[str], str | None]:
    """Bodies, content types and vLLM version of a capture folder, one body per scrape (the
    OpenMetrics one where recorded, with ``openmetrics``): what a replayed target serves."""
    caps = load_capture(folder, prefer_openmetrics=openmetrics)
    meta = _meta(folder)[1]
    return [c.body for c in caps], [c.content_type for c in caps], meta.get("vllm_version")


def all_captures() -> list[Capture]:
    """Every body of every folder (plain and OpenMetrics-requested)."""
    return [c for f in capture_folders() for c in load_capture(f, openmetrics=True)]
