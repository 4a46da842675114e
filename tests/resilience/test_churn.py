"""Target churn: 1,000 targets added and removed again and again through targets-file reloads.

The file is rewritten each round and picked up by the service's own watcher
(:class:`sidecar.config.reload.TargetsFileWatcher` calling ``Sidecar.targets_file_changed``, as
``run()`` wires it). After each round ``/metrics`` holds exactly the current targets' series
(with the current static labels), no scrape task is left behind, no connection of a removed
target stays open, and the memory held by the process (tracemalloc, after a full collection)
does not grow from round to round. The fake vLLM keeps connections alive, as vLLM does. It runs
with the service's own HTTP client (one connection per target, closed when the target goes) and
with aiohttp (a shared pool, bounded, closed at shutdown).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tracemalloc
from pathlib import Path

import aiohttp
import pytest
from faultserver import FaultServer, real_bodies
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.reload import TargetsFileWatcher
from sidecar.config.settings import Config
from sidecar.derive import TargetTracker
from sidecar.model import Window
from sidecar.service import MAX_CONNECTIONS, Sidecar

N = 1000
ROUNDS = 3
KEEP = (
    "vllm:prefix_cache_",
    "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prompt_tokens_total",
    "vllm:num_requests_",
)


def small_body() -> bytes:
    """A real body cut down to the series the sidecar reads most (so 1,000 scrapes stay cheap)."""
    lines = [ln for ln in real_bodies()[-1].decode().split("\n") if any(k in ln for k in KEEP)]
    return ("\n".join(lines) + "\n").encode()


def write_targets(path: Path, port: int, names: list[str], rnd: int) -> None:
    """file_sd JSON: one group per target (``name`` label), all served by the same fake vLLM."""
    groups = [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {"name": n, "__metrics_path__": "/vllm/metrics", "round": str(rnd)},
        }
        for n in names
    ]
    path.write_text(json.dumps(groups))


async def series_targets(http: aiohttp.ClientSession, port: int) -> set[tuple[str, str]]:
    """(target, round label) of every series in ``/metrics`` that has a target."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {
        (s.labels["target"], s.labels.get("round", ""))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if "target" in s.labels
    }


def scrape_tasks() -> int:
    """The service's per-target loops still alive (named ``scrape:<target>``)."""
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("scrape:") and not t.done())


async def all_scraped(sidecar: Sidecar, names: set[str]) -> None:
    while True:
        snaps = {s.name: s for s in sidecar.snapshots()}
        if set(snaps) == names and all(s.scraped for s in snaps.values()):
            return
        await asyncio.sleep(0.1)


async def open_connections(server: FaultServer, at_most: int) -> int:
    """The server's open connections once they are down to ``at_most`` (closing takes a few loop
    turns); the count as it is if they never get there (a hang guard, not a time limit)."""
    for _ in range(500):
        if server.connections <= at_most:
            break
        await asyncio.sleep(0.01)
    return server.connections


async def _churn(tmp: Path, own_client: bool) -> tuple[list[int], list[int], list[int], list[int]]:
    server = await FaultServer(static={"vllm": small_body()}).start()
    path = tmp / "targets.json"
    path.write_text("[]")
    # A short interval: the service spreads first scrapes over one interval, so every target of
    # a round has been scraped within about a second.
    config = Config(
        listen="127.0.0.1:0", interval=1.0, windows=(Window("5m", 300.0),), targets=(), targets_file=str(path)
    )
    sidecar = Sidecar(config, own_client=own_client)
    watcher = TargetsFileWatcher(
        str(path), on_change=sidecar.targets_file_changed, on_error=sidecar.targets_file_failed
    )
    sidecar.extra_targets = watcher.load_initial()
    await sidecar.start()
    memory: list[int] = []  # after each round's removal
    live: list[int] = []  # with the round's 1,000 targets in place
    tasks_left: list[int] = []
    connections: list[int] = []  # the fake vLLM's open connections after each round's removal
    # own client: each removed target's connection is closed at once; aiohttp: its pool keeps
    # some idle (for seconds), never more than its limit
    idle = 0 if own_client else MAX_CONNECTIONS
    try:
        async with aiohttp.ClientSession() as http:
            for rnd in range(ROUNDS):
                # Half of the names carry over from the previous round with a changed label (so
                # they restart), half are new; the other half of the old ones go away.
                names = [f"t{i}" for i in range(rnd * N // 2, rnd * N // 2 + N)]
                write_targets(path, server.port, names, rnd)
                assert await watcher.check(), "the reload was not picked up"
                await asyncio.wait_for(all_scraped(sidecar, set(names)), 120)
                assert await series_targets(http, sidecar.port) == {(n, str(rnd)) for n in names}
                if rnd > 0:
                    gc.collect()
                    live.append(tracemalloc.get_traced_memory()[0])
                path.write_text("[]")
                assert await watcher.check()
                for _ in range(20):  # let the cancelled scrape tasks unwind
                    await asyncio.sleep(0.01)
                assert await series_targets(http, sidecar.port) == set()
                assert sidecar.snapshots() == []
                tasks_left.append(scrape_tasks())
                connections.append(await open_connections(server, idle))
                gc.collect()
                trackers = [o for o in gc.get_objects() if isinstance(o, TargetTracker)]
                assert trackers == [], f"{len(trackers)} trackers of removed targets still alive"
                if rnd == 0:  # round 0 warms caches (interned strings, pools); trace from here
                    tracemalloc.start()
                memory.append(tracemalloc.get_traced_memory()[0])
        # the targets really were scraped (on a loaded machine some first scrapes time out while
        # waiting for a connection, before any request reaches the server: not every target of
        # every round needs to have been answered)
        assert server.requests["vllm"] >= N
    finally:
        tracemalloc.stop()
        await sidecar.stop()
        connections.append(await open_connections(server, 0))  # shutdown closes every one
        await server.stop()
    return memory, live, tasks_left, connections


@pytest.mark.parametrize("own_client", [True, False], ids=["own_client", "aiohttp"])
def test_churn_through_reloads_leaks_no_series_no_tasks_and_no_memory(
    tmp_path: Path, own_client: bool
) -> None:
    # pytest keeps every captured log record for its report: the service's warnings (a scrape
    # that times out on a loaded machine) would count as growth. Measure the service, not pytest.
    log = logging.getLogger("sidecar")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        memory, live, tasks_left, connections = asyncio.run(_churn(tmp_path, own_client))
    finally:
        log.setLevel(level)
    assert tasks_left == [0] * ROUNDS
    if own_client:
        assert connections[:-1] == [0] * ROUNDS, connections
    else:
        assert max(connections[:-1]) <= MAX_CONNECTIONS, connections
    assert connections[-1] == 0
    # Allocations made since round 0 and still alive after all targets are gone: they must not
    # grow with the number of rounds. The slack (1 MiB) is well under what one round of 1,000
    # targets holds while live, so leaking a round's targets would fail here.
    slack = 1024 * 1024
    assert min(live) - memory[-1] > 2 * slack, ([m // 1024 for m in live], memory[-1] // 1024)
    growth = memory[-1] - memory[1]
    assert growth < slack, [m // 1024 for m in memory]
