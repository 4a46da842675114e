"""The image's install, replayed without Docker: what the Dockerfile's build stage does, step by
step, then the installed command run for real.

1. copy the build context the way .dockerignore lets it through (pyproject.toml, README.md,
   sidecar/) into an empty folder, as ``COPY`` does;
2. ``python -m pip wheel --wheel-dir W .`` (the project's wheel and its dependencies' wheels);
3. ``python -m venv V`` and ``V/bin/python -m pip install --no-index --find-links W
   vllm-cache-sidecar==VERSION`` (offline: only those wheels);
4. ``vllm-cache-sidecar --help``, then ``vllm-cache-sidecar run`` against a replayed capture and a
   dead target, from a folder outside the repository so nothing is imported from the source tree.

The wheel itself must hold the service alone: ``sidecar/`` and its metadata, none of the demo,
test or bench helpers, and exactly the runtime dependencies the service's own imports need.

pip needs a package index for step 2 (as docker build does).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from testkit import REPO
from testkit.captures import FIXTURES
from testkit.procs import SidecarProcess, clean_env, wait_until
from testkit.replay import ReplayServer

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def build_context(dest: Path) -> Path:
    """The files .dockerignore lets into the build context (an allowlist of ``!`` lines)."""
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    dest.mkdir(parents=True, exist_ok=True)
    for name in allowed:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run(cmd, **kw):
    kw.setdefault("env", ENV)
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


#: modules the service imports that only an extra provides (the offline collector runs inside
#: the user's vLLM process): module -> the extra that names it
EXTRA_MODULES = {"vllm": "vllm"}
#: this environment without PYTHONPATH (so nothing comes from a source tree), for pip and the venv
ENV = {
    k: v
    for k, v in clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1").items()
    if k != "PYTHONPATH"
}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The project's wheel and its dependencies' wheels, built from the image's build context."""
    base = tmp_path_factory.mktemp("image")
    src = build_context(base / "src")
    wheels = base / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), "."], cwd=src)
    assert (wheels / f"vllm_cache_sidecar-{VERSION}-py3-none-any.whl").exists()
    return wheels


@pytest.fixture(scope="module")
def wheel(wheels) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(wheels / f"vllm_cache_sidecar-{VERSION}-py3-none-any.whl") as whl:
        yield whl


@pytest.fixture(scope="module")
def installed(wheels) -> Path:
    """A fresh virtualenv holding only the built wheel and its dependencies."""
    venv = wheels.parent / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheels),
            f"vllm-cache-sidecar=={VERSION}",
        ]
    )
    run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(venv)])  # as the image does
    return venv


def tree(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


def test_the_wheel_holds_the_package_and_nothing_else(installed):
    py = str(installed / "bin" / "python")
    out = run([py, "-c", "import sidecar, sys; print(sidecar.__file__); print(sys.prefix)"], cwd=installed)
    module_file, prefix = out.stdout.split()
    assert module_file.startswith(str(installed)), module_file  # not the source tree
    files = run([py, "-m", "pip", "show", "-f", "vllm-cache-sidecar"]).stdout
    assert "sidecar/py.typed" in files
    assert "tests/" not in files and "bench/" not in files


def test_the_wheel_ships_the_service_alone(wheel):
    """Only ``sidecar/`` and the wheel's metadata: no demo, test kit, tests, bench or fuzz."""
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"sidecar", f"vllm_cache_sidecar-{VERSION}.dist-info"}, tops
    modules = {n for n in wheel.namelist() if n.endswith(".py")}
    assert "sidecar/cli.py" in modules and "sidecar/py.typed" in wheel.namelist()
    for helper in (
        "demo",
        "testkit",
        "tests",
        "bench",
        "fuzz",
        "tinymodel",
        "traffic",
        "vllm_server",
        "replay",
        "bodies",
    ):
        assert not [n for n in modules if re.search(rf"(^|/){helper}(/|\.py$)", n)], helper


def _third_party_imports() -> set[str]:
    """Top-level modules outside the standard library that ``sidecar/*.py`` import, wherever
    the import statement sits (module level or inside a function)."""
    found: set[str] = set()
    for path in (REPO / "sidecar").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"sidecar"}


def _normal(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def test_the_wheel_requires_exactly_what_the_service_imports(wheel, installed):
    """Requires-Dist (without extras) is the set of distributions that provide the third-party
    modules ``sidecar/`` imports: no more (httpx left with the demo), no fewer. The module ->
    distribution map comes from the installed packages' own metadata."""
    meta = Parser().parsestr(wheel.read(f"vllm_cache_sidecar-{VERSION}.dist-info/METADATA").decode())
    required = {
        _normal(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        for req in meta.get_all("Requires-Dist", [])
        if "extra ==" not in req
    }
    imported = _third_party_imports()
    for module, extra in EXTRA_MODULES.items():
        assert module in imported and extra in meta.get_all("Provides-Extra", []), module
    py = str(installed / "bin" / "python")
    provides = json.loads(
        run(
            [py, "-c", "import importlib.metadata as m, json; print(json.dumps(m.packages_distributions()))"],
            cwd=installed,
        ).stdout
    )
    needed = imported - set(EXTRA_MODULES)
    missing = needed - set(provides)
    assert not missing, f"imported but not installed with the wheel: {missing}"
    assert {_normal(d) for m in needed for d in provides[m]} == required


def test_console_script_checks_a_config_file(installed, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("targets:\n  - name: vllm\n    url: http://127.0.0.1:8000/metrics\n")
    out = run([str(installed / "bin" / "vllm-cache-sidecar"), "check-config", str(cfg)], cwd=tmp_path)
    assert "http://127.0.0.1:8000/metrics" in out.stdout + out.stderr


def test_console_script_help(installed):
    out = run([str(installed / "bin" / "vllm-cache-sidecar"), "--help"], cwd=installed)
    for command in ("run", "doctor", "check-config"):
        assert command in out.stdout
    out = run([str(installed / "bin" / "vllm-cache-sidecar"), "run", "--help"], cwd=installed)
    for flag in (
        "--target",
        "--listen",
        "--interval",
        "--windows",
        "--web-config",
        "--targets-file",
        "--log-format",
    ):
        assert flag in out.stdout


def test_installed_service_runs_scrapes_and_stops_cleanly(installed, tmp_path):
    fixture = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"
    if not (fixture / "meta.json").exists():
        pytest.skip(f"no fixtures at {FIXTURES}")
    with ReplayServer() as replay:
        replay.add_fixture("vllm", fixture)
        args = [
            "--interval",
            "1",
            "--windows",
            "10s,30s",
            "--target",
            f"vllm={replay.url('vllm')}",
            "--target",
            "dead=http://127.0.0.1:9/metrics",
        ]
        home = tmp_path / "home"
        home.mkdir()
        # the image's environment; no PYTHONPATH, so nothing comes from the source tree
        env = ENV | {"HOME": str(home)}
        before = tree(installed, tmp_path)
        sidecar = SidecarProcess(
            args, tmp_path, env=env, command=[str(installed / "bin" / "vllm-cache-sidecar")]
        )
        try:
            base = sidecar.base
            assert httpx.get(base + "/healthz").status_code == 200
            wait_until(lambda: httpx.get(base + "/readyz").status_code == 200, "the installed sidecar ready")
            text = httpx.get(base + "/metrics").text
            assert 'vllm_sidecar_target_up{target="vllm"} 1.0' in text
            assert 'vllm_sidecar_target_up{target="dead"} 0.0' in text
            assert "vllm_sidecar_prefix_cache_hit_ratio{" in text
        finally:
            rc = sidecar.stop()
    assert rc == 0
    # a read-only root filesystem is fine: the service wrote nothing, not even bytecode
    assert tree(installed, tmp_path) == before


def test_installed_image_supports_basic_auth_web_configs(installed, tmp_path):
    """bcrypt must be a runtime dependency: a web config with basic_auth_users has to load in
    the image exactly as it does in development."""
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: $2b$04$" + "a" * 53 + "\n")
    out = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import sys; from sidecar.config.web import load_web_config; "
            "print(load_web_config(sys.argv[1]).auth_enabled)",
            str(web),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
