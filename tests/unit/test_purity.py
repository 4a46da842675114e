"""Guard: the pure modules do no I/O, so they stay testable on fixtures and safe to reuse
(the service, ``doctor`` and the offline collector share them). Read from their own import
statements and calls, not from a hand-kept claim."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
PURE = (
    "parser",
    "normalize",
    "derive",
    "diagnose",
    "explain",
    "model",
    "exporter",
    "scrapefilter",
    "api",
    "interning",
)
#: modules whose import means I/O (network, event loop, processes, settings files)
IO_MODULES = {
    "aiohttp",
    "asyncio",
    "yaml",
    "socket",
    "subprocess",
    "ssl",
    "http",
    "urllib.request",
    "shutil",
    "glob",
    "pathlib",
    "requests",
    "httpx",
}
#: calls that read or write the file system
IO_CALLS = {
    "open",
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "listdir",
    "scandir",
    "stat",
    "exists",
    "remove",
    "unlink",
    "mkdir",
    "makedirs",
}


def _imports(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.update(f".{node.module or ''}.{a.name}".replace("..", ".") for a in node.names)
    return out


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_io(name: str) -> None:
    tree = ast.parse((SIDECAR / f"{name}.py").read_text())
    imported = _imports(tree)
    bad = {m for m in imported if m.split(".")[0] in IO_MODULES or m in IO_MODULES}
    assert not bad, f"sidecar/{name}.py imports I/O modules: {sorted(bad)}"
    # relative imports stay among the pure modules (no settings files, no scraping)
    local = {m.strip(".").split(".")[0] for m in imported if m.startswith(".")}
    assert local <= set(PURE) | {"_version"}, f"sidecar/{name}.py imports {sorted(local - set(PURE))}"
    calls = {
        n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
    }
    assert not calls & IO_CALLS, f"sidecar/{name}.py touches the file system: {calls & IO_CALLS}"


def test_the_guard_sees_io_where_there_is_some() -> None:
    """The guard can fail: the scrape loop imports aiohttp and asyncio."""
    imported = _imports(ast.parse((SIDECAR / "scrape.py").read_text()))
    assert {"aiohttp", "asyncio"} <= imported
