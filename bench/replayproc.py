"""A replay server process: N fake vLLM targets serving real bodies, logging when each is scraped.

Runs in its own process so its CPU never counts against the sidecar's. The routes are those of
:meth:`testkit.replay.ReplayServer.add_routes`: ``/<name>/metrics`` (the full body, as vLLM's exact
route) and ``/<name>/metrics/?name[]=...`` answered the way vLLM's prometheus_client app does (only
the named samples, with their families' HELP/TYPE), so the sidecar's filtered mode is what gets
measured. ``GET /_stats?since=T`` returns, per target, the unix times of its ``/metrics`` requests
since ``T`` (either route); ``&filtered=1`` only those of filtered requests (``/metrics/`` with a
``name[]`` query). The bench derives from them whether the scrape cycles stayed on time and which
mode each scraper used.

    python -m bench.replayproc --targets 1000 --kind one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict

from aiohttp import web

from testkit.replay import ReplayServer

from .bodies import bodies


class LoggingReplay(ReplayServer):
    """:class:`testkit.replay.ReplayServer` that also records every scrape's arrival time."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.log: dict[str, list[float]] = defaultdict(list)
        self.filtered: dict[str, list[float]] = defaultdict(list)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        now, name = time.time(), request.match_info["name"]
        self.log[name].append(now)
        if request.path.endswith("/") and "name[]" in request.query:
            self.filtered[name].append(now)
        return await super()._metrics(request)

    async def _stats(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        log = self.filtered if request.query.get("filtered") else self.log
        doc = {name: [t for t in times if t >= since] for name, times in log.items()}
        return web.Response(text=json.dumps(doc), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/_stats", self._stats)
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001


async def serve(n: int, kind: str, prefix: str) -> None:
    server = LoggingReplay()
    seq = bodies(kind)
    for i in range(n):
        server.add(f"{prefix}{i}", seq, version="0.32.0")
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=int, required=True)
    p.add_argument("--kind", choices=("one", "eight"), default="one")
    p.add_argument("--prefix", default="t")
    ns = p.parse_args()
    try:
        asyncio.run(serve(ns.targets, ns.kind, ns.prefix))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
