"""The sidecar's HTTP face: /metrics, /healthz, /readyz, /api/v1/targets and the status page.

Handlers only read the current snapshots; no request can make the sidecar fetch anything.
The status page and the JSON API (with ``explain``, their largest dependency) are imported on
their first request: a service nobody looks at does not carry them (start-up RSS, issue 11).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder

from .model import TargetSnapshot


class State(Protocol):
    def metrics(self, openmetrics: bool = False) -> bytes: ...

    def snapshots(self) -> Sequence[TargetSnapshot]: ...

    def ready(self) -> bool: ...


def _status_page(snapshots: Sequence[TargetSnapshot]) -> str:
    from . import statuspage  # on first use: see the module docstring

    return statuspage.render(snapshots, time.time())


def build_app(state: State, middlewares: Sequence[Middleware] = ()) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        # prometheus_client's negotiation decides the format; the body comes pre-rendered
        _, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = state.metrics(openmetrics=content_type.startswith("application/openmetrics-text"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if state.ready():
            return web.Response(text="ready\n")
        waiting = [s.name for s in state.snapshots() if not s.scraped]
        return web.Response(status=503, text="waiting for first scrape of: " + ", ".join(waiting) + "\n")

    async def targets(request: web.Request) -> web.Response:
        from .api import targets_document  # on first use: see the module docstring

        doc = targets_document(state.snapshots())
        return web.Response(text=json.dumps(doc, allow_nan=False), content_type="application/json")

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            text=_status_page(state.snapshots()),
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/targets", targets)
    app.router.add_get("/", index)
    return app
