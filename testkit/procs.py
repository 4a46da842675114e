"""Processes for tests, the demo and the benchmark: free ports, polling, the real sidecar CLI.

Why one module: every test that starts the service must start it the way users do (the shipped
CLI, not an in-process shortcut), in a clean environment, drain its output so a pipe never fills,
and always reap it; and every wait must be a guard against hanging, never a timing assertion.
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
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from testkit import REPO

#: how long a helper waits for a process by default: a guard against hanging, never a timing limit
GUARD_SECONDS = 90.0


class StartError(RuntimeError):
    """A process exited or never became ready; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now on ``host`` (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers 200 (any failure to connect counts as no)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    check: Callable[[], Any],
    what: str,
    timeout: float = 60.0,
    pause: float = 0.2,
    tolerate: tuple[type[Exception], ...] = (),
) -> Any:
    """Poll ``check`` until it returns something truthy and return that.

    ``timeout`` only stops a broken build from hanging the suite; it is never a timing assertion.
    Exceptions of the ``tolerate`` types count as "not yet" (e.g. ``OSError`` while a server
    restarts); the last one is shown if the wait fails.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except tolerate as exc:
            last = exc
        if last and not isinstance(last, Exception):
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
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(REPO)),
    )


class SidecarProcess:
    """The real service as users start it: ``python -m sidecar run --listen LISTEN --log-format
    json ARGS``, used by the integration and e2e tests and the demo.

    The port comes from the ``listening on`` log line (so ``--listen 127.0.0.1:0`` never races
    for a port); stdout and stderr are read on threads, so the pipes never fill, into
    :attr:`lines`, or appended to ``log_path`` when given (a long-running demo keeps nothing in
    memory). The constructor starts it unless ``start=False`` (then call :meth:`start`, e.g. after
    registering it for clean-up); ``ready`` also waits for ``/readyz`` (every target scraped once,
    plain HTTP only). ``timeout`` guards each wait.

    ``command`` replaces ``python -m sidecar`` (e.g. an installed console script); ``env``
    replaces the default clean environment with this checkout on ``PYTHONPATH``;
    ``new_session`` puts it in its own session, so a Ctrl-C in the terminal reaches only the
    caller, which stops it in order.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        cwd: Path | str = REPO,
        *,
        command: Sequence[str] = (),
        env: dict[str, str] | None = None,
        scheme: str = "http",
        listen: str = "127.0.0.1:0",
        log_path: Path | str | None = None,
        ready: bool = False,
        new_session: bool = False,
        timeout: float = GUARD_SECONDS,
        start: bool = True,
    ):
        self.argv = [
            *(list(command) or [sys.executable, "-m", "sidecar"]),
            "run",
            "--listen",
            listen,
            "--log-format",
            "json",
            *args,
        ]
        self.cwd = cwd
        self.env = clean_env(PYTHONPATH=str(REPO)) if env is None else env
        self.host = listen.rpartition(":")[0]
        self.scheme = scheme
        self.log_path = None if log_path is None else Path(log_path)
        self.ready = ready
        self.new_session = new_session
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.port: int | None = None
        self.base = ""
        self._log: IO[str] | None = None
        self._log_lock = threading.Lock()
        self._listening = threading.Event()
        self._readers: list[threading.Thread] = []
        if start:
            self.start()

    @property
    def base_url(self) -> str:
        """Same as :attr:`base` (the name :class:`demo.vllm_server.VllmServer` uses)."""
        return self.base

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> SidecarProcess:
        """Spawn the service and wait until it listens (and, with ``ready``, is ready)."""
        if self.running():
            return self
        self.port = None
        self._listening.clear()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=self.new_session,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(stream, watch), daemon=True)
            for stream, watch in ((self.proc.stderr, True), (self.proc.stdout, False))
        ]
        for reader in self._readers:
            reader.start()
        if not self._listening.wait(self.timeout) or self.port is None:
            self.stop()
            raise StartError("sidecar did not start:\n" + self.log_tail())
        self.base = f"{self.scheme}://{self.host}:{self.port}"
        if self.ready:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """``/readyz`` answers 200; fail at once if the process exits."""
        deadline = time.monotonic() + self.timeout
        while not http_ok(self.base + "/readyz"):
            if not self.running():
                raise StartError("sidecar exited before it was ready:\n" + self.log_tail())
            if time.monotonic() > deadline:
                raise StartError(f"sidecar not ready after {self.timeout:.0f} s:\n" + self.log_tail())
            time.sleep(0.2)

    def _read(self, stream: IO[str], watch: bool) -> None:
        for line in stream:
            self._keep(line)
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

    def _keep(self, line: str) -> None:
        with self._log_lock:
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
                return
        self.lines.append(line)

    @property
    def logs(self) -> str:
        """Everything it wrote (both streams), from memory or from ``log_path``."""
        if self.log_path is None:
            return "".join(self.lines)
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs.splitlines()[-lines:])

    def metrics(self, **httpx_kw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``/metrics`` parsed with prometheus_client: (name, sorted labels) -> value."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.base + "/metrics", **httpx_kw).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (kill after ``timeout``), wait for the log readers; the exit code (None if it
        never started)."""
        rc = terminate(self.proc, timeout)
        for reader in self._readers:
            reader.join(10)
        if self._log is not None:
            with self._log_lock:
                self._log.close()
                self._log = None
        return rc

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
