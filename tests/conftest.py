"""Shared test fixtures.

Sections are owned by different people: keep each one small and add new ones below, clearly
headed. Nothing here may mock the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
import pytest

from testkit.bodies import scale_counters

# ---------------------------------------------------------------- real vLLM captures (fixtures)

REPO = Path(__file__).resolve().parent.parent
#: ``<repo>/../shared/fixtures`` unless ``VLLM_SIDECAR_FIXTURES`` points elsewhere
FIXTURES = Path(os.environ.get("VLLM_SIDECAR_FIXTURES") or REPO.parent / "shared" / "fixtures")
#: the project's own captures (a real data-parallel vLLM, recorded here), read like the shared ones
OWN_FIXTURES = REPO / "tests" / "fixtures"
ROOTS = (FIXTURES, OWN_FIXTURES)


def capture_root(folder: str) -> Path:
    """The root that holds ``folder`` (shared captures first)."""
    for root in ROOTS:
        if (root / folder / "meta.json").is_file():
            return root
    raise FileNotFoundError(f"no capture folder {folder!r} in {', '.join(map(str, ROOTS))}")


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
    """Every folder holding a ``meta.json``, relative to its root (:data:`ROOTS`), sorted."""
    return sorted({str(p.parent.relative_to(root)) for root in ROOTS
                   for p in root.glob("*/*/meta.json")})


def load_capture(folder: str, *, openmetrics: bool = False) -> list[Capture]:
    """The bodies of ``folder`` in ``meta.json`` order.

    With ``openmetrics=True`` also the bodies fetched with the OpenMetrics Accept header, each
    right after the plain body of the same scrape.
    """
    base = capture_root(folder) / folder
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


# ---------------------------------------------------------------- process and TLS helpers for tests
# Shared by the integration and unit tests that start real processes or need certificates:
# free loopback ports, one polling guard, the real sidecar CLI as a subprocess, test-time PKI and
# "traffic keeps flowing" bodies. Nothing here replaces code under test.

#: how long a helper waits for a process by default: a guard against hanging, never a timing limit
GUARD_SECONDS = 90.0


def free_port() -> int:
    """A loopback port nobody listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0, pause: float = 0.2):
    """Poll ``check`` until it returns something truthy and return that.

    ``timeout`` only stops a broken build from hanging the suite; it is never a timing assertion.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened within {timeout:g}s: {what} (last: {last!r})")
        time.sleep(pause)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``VLLM_SIDECAR_*`` (the sidecar reads its settings
    from there, so a developer's shell must not change what a test starts), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SIDECAR_")}
    env.update(extra)
    return env


def terminate(proc: subprocess.Popen | None, timeout: float = 30.0) -> int | None:
    """SIGTERM ``proc`` if it still runs, kill it if it outlives ``timeout``; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def sidecar_cli(*args: str, cwd: Path | str = REPO) -> subprocess.CompletedProcess:
    """``python -m sidecar ARGS`` run to completion (for commands that exit by themselves)."""
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, cwd=cwd, env=clean_env(PYTHONPATH=str(REPO)))


class SidecarProcess:
    """The real service as users start it: ``python -m sidecar run --listen 127.0.0.1:0
    --log-format json ARGS``. The port comes from the ``listening on`` log line; stdout and
    stderr are read on threads (so the pipes never fill) into :attr:`lines`.

    ``command`` replaces ``python -m sidecar`` (e.g. an installed console script), ``env``
    replaces the default clean environment with the repository on ``PYTHONPATH``.
    """

    def __init__(self, args: Sequence[str], cwd: Path | str = REPO, *,
                 command: Sequence[str] = (), env: dict[str, str] | None = None,
                 scheme: str = "http"):
        command = list(command) or [sys.executable, "-m", "sidecar"]
        self.proc = subprocess.Popen(
            [*command, "run", "--listen", "127.0.0.1:0", "--log-format", "json", *args],
            cwd=cwd, env=clean_env(PYTHONPATH=str(REPO)) if env is None else env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self._listening = threading.Event()
        self._readers = [threading.Thread(target=self._read, args=(stream, watch), daemon=True)
                         for stream, watch in ((self.proc.stderr, True), (self.proc.stdout, False))]
        for reader in self._readers:
            reader.start()
        if not self._listening.wait(GUARD_SECONDS) or self.port is None:
            self.stop()
            raise AssertionError("sidecar did not start:\n" + self.logs)
        self.base = f"{scheme}://127.0.0.1:{self.port}"

    def _read(self, stream, watch: bool) -> None:
        for line in stream:
            self.lines.append(line)
            if watch and self.port is None:
                try:
                    msg = json.loads(line).get("msg", "")
                except (ValueError, AttributeError):
                    msg = ""
                if msg.startswith("listening on "):
                    self.port = int(msg.split()[2].rpartition(":")[2])
                    self._listening.set()
        if watch:
            self._listening.set()  # exited before listening: do not wait for the guard

    @property
    def logs(self) -> str:
        return "".join(self.lines)

    def metrics(self, **httpx_kw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``/metrics`` parsed with prometheus_client: (name, sorted labels) -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.base + "/metrics", **httpx_kw).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (kill after ``timeout``), wait for the log readers; the exit code."""
        rc = terminate(self.proc, timeout)
        for reader in self._readers:
            reader.join(10)
        assert rc is not None
        return rc


# certificates made at test time (``cryptography`` is imported only by the tests that use them)

def _x509_name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _signed(subject: str, issuer, public_key, signing_key, extensions):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_x509_name(subject)).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(cn: str = "test-ca"):
    """A self-signed CA valid from an hour ago for a day: ``(key, certificate)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _signed(cn, _x509_name(cn), key.public_key(), key,
                   [(x509.BasicConstraints(ca=True, path_length=None), True)])
    return key, cert


def issue(ca, cn: str, sans: Sequence[str] = ("127.0.0.1", "localhost"), client: bool = False):
    """A server (or, with ``client``, client) certificate signed by ``ca``: ``(key, cert)``.
    SANs that start with a digit are IP addresses, the others DNS names."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.IPAddress(ipaddress.ip_address(s)) if s[0].isdigit() else x509.DNSName(s)
           for s in sans]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = _signed(cn, ca_cert.subject, key.public_key(), ca_key,
                   [(x509.SubjectAlternativeName(alt), False),
                    (x509.ExtendedKeyUsage([usage]), False)])
    return key, cert


def pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# bodies that keep traffic flowing after a capture ends

COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def growing(bodies: list[bytes], extra: int) -> list[bytes]:
    """The real bodies, then ``extra`` copies of the last one with every counter and histogram
    series scaled up step by step (x1.05, x1.10, ...), so windowed rates and latency stay defined
    for as long as a test runs. Gauges and label sets stay exactly as vLLM wrote them."""
    last = bodies[-1]
    names = tuple({line.split("{")[0].split()[0] for line in last.decode().split("\n")
                   if line.strip() and not line.startswith("#")})
    counters = tuple(n for n in names if n.endswith(COUNTER_SUFFIXES))
    return list(bodies) + [scale_counters(last, counters, 1 + 0.05 * k)
                           for k in range(1, extra + 1)]
