"""Serve recorded vLLM ``/metrics`` bodies as live fake targets on loopback.

For tests, benchmarks and trying dashboards without a GPU: each target is a sequence of bodies
served at ``/<name>/metrics`` (and ``/<name>/version``); every GET moves one step forward and the
last body repeats. Tests can also set the position, the delay or the HTTP status of a target.

Like vLLM, ``/<name>/metrics/`` (trailing slash) answers prometheus_client's ``name[]`` filter:
only the named samples, with their families' HELP/TYPE, restricted and rendered by
prometheus_client itself (its parser, ``restricted_registry`` and exposition), so the filtered
bodies are what vLLM's prometheus_client app would send. ``Fake.slash_route`` makes that route
misbehave for tests of the fallback (see :data:`SLASH_ROUTES`).

    python -m testkit.replay ../shared/fixtures/vllm-0.32.0/prefix_on_shared --port 18000
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from aiohttp import web

from testkit.captures import TEXT_004, load_fixture

#: how ``/<name>/metrics/`` answers: ``filter`` as prometheus_client does; ``ignore`` the query
#: (the full body, as vLLM's exact ``/metrics`` would); ``404``; ``redirect`` (307 to
#: ``/metrics``, as a framework may); ``empty`` (a 200 with no samples: a multiprocess registry);
#: ``500``
SLASH_ROUTES = ("filter", "ignore", "404", "redirect", "empty", "500")


@dataclass
class Fake:
    bodies: list[bytes]
    content_type: str = TEXT_004
    version: str | None = "0.32.0"
    position: int = 0
    advance: bool = True
    delay: float = 0.0  # seconds before answering
    status: int = 200
    hits: int = 0
    content_types: list[str] = field(default_factory=list)  # per body, overrides content_type
    slash_route: str = "filter"  # one of SLASH_ROUTES
    slash_hits: int = 0  # GETs of /metrics/, however answered
    filtered_hits: int = 0  # GETs of /metrics/ with a name[] query that reached the body
    last_names: tuple[str, ...] = ()  # the name[] of the last such GET


class _Families:
    """A prometheus_client collector of the families parsed from one recorded body."""

    def __init__(self, families: list) -> None:
        self._families = families

    def collect(self) -> list:
        return self._families

    def describe(self) -> list:
        return self._families


@lru_cache(maxsize=256)
def restricted_body(
    body: bytes, content_type: str, names: tuple[str, ...], accept: str = ""
) -> tuple[bytes, str]:
    """``body`` restricted to the sample ``names`` exactly as prometheus_client's ``name[]`` does
    (``CollectorRegistry.restricted_registry``: a sample is kept only when its own name was asked
    for), rendered by the encoder prometheus_client picks for ``accept``. Cached: the same bodies
    and names come back every scrape."""
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import CollectorRegistry

    text = body.decode("utf-8")
    if "application/openmetrics-text" in (content_type or ""):
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Families(list(text_string_to_metric_families(text))))
    encoder, out_type = choose_encoder(accept)
    return encoder(registry.restricted_registry(names)), out_type


class InThread:
    """Run an async server (``start()``/``stop()`` coroutines) on its own loop in a thread, so
    synchronous tests can use it as a context manager."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def start_in_thread(self):
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=main, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self):
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


class ReplayServer(InThread):
    """An aiohttp server of fake vLLM targets. Use :meth:`start_in_thread` from sync code."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.fakes: dict[str, Fake] = {}
        self._runner: web.AppRunner | None = None

    def add(
        self,
        name: str,
        bodies: list[bytes],
        content_type: str = TEXT_004,
        version: str | None = "0.32.0",
        **kw,
    ) -> Fake:
        fake = Fake(list(bodies), content_type, version, **kw)
        self.fakes[name] = fake
        return fake

    def add_fixture(self, name: str, directory: str | Path, openmetrics: bool = False, **kw) -> Fake:
        bodies, types, version = load_fixture(directory, openmetrics)
        return self.add(name, bodies, types[0], version, content_types=types, **kw)

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}/metrics"

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        fake = self.fakes.get(request.match_info["name"])
        if fake is None:
            raise web.HTTPNotFound()
        slash = request.path.endswith("/")
        names = request.query.getall("name[]", [])
        fake.slash_hits += slash
        if slash and fake.slash_route == "404":
            raise web.HTTPNotFound()
        if slash and fake.slash_route == "redirect":
            raise web.HTTPTemporaryRedirect(request.path.rstrip("/"))
        if slash and fake.slash_route == "500":
            raise web.HTTPInternalServerError()
        if fake.delay:
            await asyncio.sleep(fake.delay)
        fake.hits += 1
        if slash and names:
            fake.filtered_hits += 1
            fake.last_names = tuple(names)
        if fake.status != 200:
            return web.Response(status=fake.status, text="replayed error\n")
        i = min(fake.position, len(fake.bodies) - 1)
        ctype = fake.content_types[i] if i < len(fake.content_types) else fake.content_type
        if fake.advance and fake.position < len(fake.bodies) - 1:
            fake.position += 1
        body = fake.bodies[i]
        if slash and names and fake.slash_route in ("filter", "empty"):
            accept = request.headers.get("Accept", "")
            chosen = () if fake.slash_route == "empty" else names
            body, ctype = restricted_body(body, ctype, tuple(chosen), accept)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _version(self, request: web.Request) -> web.Response:
        fake = self.fakes.get(request.match_info["name"])
        if fake is None or fake.version is None:
            raise web.HTTPNotFound()
        return web.json_response({"version": fake.version})

    def add_routes(self, app: web.Application) -> None:
        """The fake vLLM routes: ``/metrics``, ``/metrics/`` (the ``name[]`` filter), ``/version``."""
        app.router.add_get("/{name}/metrics", self._metrics)
        app.router.add_get("/{name}/metrics/", self._metrics)
        app.router.add_get("/{name}/version", self._version)

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testkit.replay", description=__doc__)
    p.add_argument("fixture", nargs="+", help="capture folders (with meta.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--cycle", action="store_true", help="start over after the last body")
    ns = p.parse_args(argv)
    server = ReplayServer(ns.host, ns.port)
    for i, d in enumerate(ns.fixture):
        server.add_fixture(f"t{i}", d)

    async def serve() -> None:
        await server.start()
        for name in server.fakes:
            print(server.url(name), flush=True)
        while True:
            await asyncio.sleep(1)
            if ns.cycle:
                for f in server.fakes.values():
                    if f.position >= len(f.bodies) - 1:
                        f.position = 0

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
