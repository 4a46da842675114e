"""target_down names a data-parallel supervisor port (issue 10 §7): with
``--data-parallel-multi-port-external-lb`` the supervisor answers ``/health`` but 404s ``/metrics``;
one target per rank (``port + i``) is the fix. A plain wrong URL gets no such hint."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from sidecar.config.settings import TargetConfig, parse_windows
from sidecar.derive import TargetTracker
from sidecar.explain import explain
from sidecar.model import ScrapeOutcome
from sidecar.scrape import scrape


async def _scrape_server(health: int) -> tuple[str, str | None]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=health)

    app = web.Application()
    app.router.add_get("/health", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    try:
        async with aiohttp.ClientSession() as session:
            target = TargetConfig(name="sup", url=f"http://127.0.0.1:{port}/metrics")
            outcome = await scrape(session, target, timeout=3.0, max_bytes=1 << 20)
    finally:
        await runner.cleanup()
    return outcome.reason or "", outcome.error


@pytest.mark.parametrize("health, hinted", [(200, True), (404, False), (503, False)])
def test_404_metrics_with_a_healthy_health_names_the_supervisor_port(health, hinted):
    reason, error = asyncio.run(_scrape_server(health))
    assert reason == "http_status" and error.startswith("HTTP 404")
    assert ("data-parallel supervisor" in error) is hinted
    tracker = TargetTracker("sup", parse_windows("1m"), url="http://h:8000/metrics")
    snap = tracker.observe(ScrapeOutcome(1000.0, 0.01, reason=reason, error=error))
    (d,) = snap.diagnoses
    x = explain(d, snap)
    assert x.code == "target_down"
    if hinted:
        assert x.causes[0].text.startswith("a data-parallel supervisor port")
        assert "port + i" in x.fix[0]
    else:
        assert not any("supervisor" in c.text for c in x.causes)
