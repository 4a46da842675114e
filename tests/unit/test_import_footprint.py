"""Start-up memory: the service must not import what a plain config never uses.

Issue 11 budgets 40 MB of RSS with one target, and ~40 MB of it is imports. These modules are
imported where they are first used (the status page, the JSON API and ``explain`` on their first
request; YAML when a file is read; TLS/basic auth, targets files and ``doctor`` only when
configured or run). The test runs a fresh interpreter, so an eager import anywhere on the
service's import path makes it fail, instead of silently costing every deployment memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: imported only when used; each measured at 0.05-0.7 MB of heap (docs/performance.md)
LAZY = (
    "sidecar.statuspage",
    "sidecar.api",
    "sidecar.explain",
    "sidecar.webauth",
    "sidecar.config.web",
    "sidecar.config.reload",
    "sidecar.config.targets",
    "sidecar.doctor",
    "sidecar.offline",
    "yaml",
)


def _modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (this tree first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("code", ["import sidecar.service", "import sidecar.cli, sidecar.service"])
def test_service_imports_no_lazy_module(code: str) -> None:
    loaded = _modules(code)
    assert "sidecar.service" in loaded  # the probe really imported the service
    assert sorted(set(LAZY) & loaded) == []


def test_status_page_and_api_still_load_on_use() -> None:
    # the lazy imports resolve: the handlers' modules import and render from the service's tree
    loaded = _modules(
        "import sidecar.service, time\n"
        "from sidecar.server import _status_page\n"
        "from sidecar.model import TargetSnapshot\n"
        "assert '<html' in _status_page([TargetSnapshot(name='a', url='http://x/metrics')]).lower()"
    )
    assert {"sidecar.statuspage", "sidecar.explain"} <= loaded


def test_mime_types_are_read_on_first_use_not_at_import() -> None:
    # aiohttp's import used to make mimetypes read the system's tables (~0.35 MB) for nothing;
    # they must still be read, with the same answers, the first time anyone guesses a type
    loaded = _modules(
        "import sidecar.service, mimetypes\n"
        "assert mimetypes._db is None\n"
        "assert mimetypes.guess_type('a.json')[0] == 'application/json'\n"
        "assert mimetypes._db is not None\n"
        "from aiohttp.web_fileresponse import CONTENT_TYPES\n"
        "assert CONTENT_TYPES.guess_type('a.html')[0] == 'text/html'"
    )
    assert "aiohttp.web_fileresponse" in loaded
