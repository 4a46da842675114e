"""Target churn: 1,000 targets added and removed again and again through ``Sidecar.set_targets``.

(The same entry point a targets-file reload calls.) After each round ``/metrics`` holds exactly
the current targets' series, no scrape task is left behind, and the memory held by the process
(tracemalloc, after a full collection) does not grow from round to round.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import aiohttp
from faultserver import FaultServer, real_bodies
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Config, TargetConfig, Window
from sidecar.service import Sidecar

N = 1000
ROUNDS = 4
KEEP = ("vllm:prefix_cache_", "vllm:kv_cache_usage_perc", "vllm:cache_config_info",
        "vllm:prompt_tokens_total", "vllm:num_requests_")


def small_body() -> bytes:
    """A real body cut down to the series the sidecar reads most (so 1,000 scrapes stay cheap)."""
    lines = [ln for ln in real_bodies()[-1].decode().split("\n")
             if any(k in ln for k in KEEP)]
    return ("\n".join(lines) + "\n").encode()


async def targets_in_metrics(http: aiohttp.ClientSession, port: int) -> set[str]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {s.labels["target"] for fam in text_string_to_metric_families(text)
            for s in fam.samples if "target" in s.labels}


def scrape_tasks() -> int:
    """The service's per-target loops still alive (named ``scrape:<target>``)."""
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("scrape:") and not t.done())


async def all_scraped(sidecar: Sidecar, names: set[str]) -> None:
    while True:
        snaps = {s.name: s for s in sidecar.snapshots()}
        if set(snaps) == names and all(s.scraped for s in snaps.values()):
            return
        await asyncio.sleep(0.1)


async def _churn() -> tuple[list[int], list[int]]:
    server = await FaultServer(static={"vllm": small_body()}).start()
    # A long interval: each target is scraped once right after it is added, then waits.
    config = Config(listen="127.0.0.1:0", interval=60.0, windows=(Window("5m", 300.0),),
                    targets=())
    sidecar = Sidecar(config)
    await sidecar.start()
    tasks_before = scrape_tasks()
    memory: list[int] = []
    tasks_after: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            for rnd in range(ROUNDS):
                # Half of the names carry over from the previous round (with a changed URL, so
                # they restart), half are new; the other half of the old ones go away.
                names = [f"t{i}" for i in range(rnd * N // 2, rnd * N // 2 + N)]
                targets = tuple(TargetConfig(n, server.url("vllm") + f"?round={rnd}")
                                for n in names)
                sidecar.set_targets(targets)
                await asyncio.wait_for(all_scraped(sidecar, set(names)), 120)
                assert await targets_in_metrics(http, sidecar.port) == set(names)
                sidecar.set_targets(())
                for _ in range(20):  # let the cancelled scrape tasks unwind
                    await asyncio.sleep(0.01)
                assert await targets_in_metrics(http, sidecar.port) == set()
                assert sidecar.snapshots() == []
                tasks_after.append(scrape_tasks())
                gc.collect()
                if rnd == 0:  # round 0 warms caches (interned strings, pools); trace from here
                    tracemalloc.start()
                memory.append(tracemalloc.get_traced_memory()[0])
        assert server.requests["vllm"] >= ROUNDS * N
    finally:
        tracemalloc.stop()
        await sidecar.stop()
        await server.stop()
    return memory, [t - tasks_before for t in tasks_after]


def test_churn_leaks_no_series_no_tasks_and_no_memory() -> None:
    memory, extra_tasks = asyncio.run(_churn())
    assert extra_tasks == [0] * ROUNDS
    # Allocations made since round 0 and still alive after all targets are gone: they must not
    # grow with the number of rounds. 1 MiB of slack is under a tenth of what one round of
    # 1,000 leaked targets would hold (a scraped target's state is tens of KiB).
    growth = memory[-1] - memory[1]
    assert growth < 1024 * 1024, [m // 1024 for m in memory]
