"""Wires config, one scrape loop per target, the trackers and the HTTP server together.

Each target has its own task on a jittered schedule; a slow or dead target only ever delays
itself. Snapshots are swapped in whole, so the HTTP side reads them without locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from .config.files import ConfigError
from .config.settings import Config, TargetConfig, redact_url
from .derive import TargetTracker
from .exporter import ServiceStatus, TargetRenderer, exposition
from .httpget import Client
from .model import ScrapeOutcome, TargetSnapshot
from .scrape import ACCEPT, Memo, plain, scrape
from .scrapefilter import FilterState
from .server import build_app

log = logging.getLogger("sidecar")
VERSION_RETRY_SECONDS = 60.0
MAX_CONNECTIONS = 256


@dataclass
class _Running:
    target: TargetConfig
    tracker: TargetTracker
    filter: FilterState
    memo: Memo = field(default_factory=Memo)  # what the target's last body teaches the next read
    task: asyncio.Task[None] | None = None
    client: Client | None = None  # its own keep-alive connection (plain-HTTP targets)
    renderer: TargetRenderer = field(default_factory=TargetRenderer)  # its fragment, label texts kept
    version_restarts: int = -1  # tracker.restarts when the version was last fetched
    version_tried: float = field(default=-1e18)


#: plain-HTTP targets use the service's own client; an internal switch, not a setting: the
#: tests turn it off to run the fault suite through aiohttp as well, with the same reasons
OWN_CLIENT = True

#: first scrapes land on a grid of this step on the loop's clock (one epoch for every target)
SLOT_SECONDS = 0.25


def first_scrape_at(now: float, interval: float, scraped: bool) -> float:
    """When a target's scrapes start (it keeps that phase afterwards).

    Spread over the interval, so thousands of targets do not start in the same second (timeouts,
    a memory peak of bodies in flight), but on 250 ms slots: targets of one slot share one
    event-loop wakeup instead of one each, which measured 25-34 % less CPU per scrape at 250
    targets (docs/performance.md). Short intervals (under 4 slots) are spread without slots.
    A target already scraped (a restarted task) starts at once.
    """
    if scraped:
        return now
    at = now + random.uniform(0, interval)
    if interval >= 4 * SLOT_SECONDS:
        at = math.ceil(at / SLOT_SECONDS) * SLOT_SECONDS
    return at


class Sidecar:
    """The service. ``await start()``, then ``await stop()`` (or :func:`run` until a signal)."""

    def __init__(self, config: Config, *, own_client: bool | None = None):
        """``own_client``: scrape plain-HTTP targets through :mod:`sidecar.httpget` (cheaper);
        False sends every target through aiohttp. Default: :data:`OWN_CLIENT`."""
        self.config = config
        self._own_client = OWN_CLIENT if own_client is None else own_client
        self._in_flight = asyncio.Semaphore(MAX_CONNECTIONS)
        self._running: dict[str, _Running] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.status = ServiceStatus()
        #: the process's own metrics (CPU, memory, GC), handed to the exporter on each /metrics
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        GCCollector(registry=self._process)
        self.port: int | None = None
        self.extra_targets: tuple[TargetConfig, ...] = ()

    # ------------------------------------------------------------------ state for the server
    def snapshots(self) -> list[TargetSnapshot]:
        return [r.tracker.snapshot for r in self._running.values()]

    def ready(self) -> bool:
        return all(r.tracker.snapshot.scraped for r in self._running.values())

    def metrics(self, openmetrics: bool = False) -> bytes:
        """/metrics: the targets' pre-rendered fragments and the process metrics, as one body."""
        frags = [self._fragment(r) for r in self._running.values()]
        return exposition(frags, self.config.static_labels, self.status, openmetrics, self._process.collect())

    def _fragment(self, r: _Running) -> dict[str, str]:
        return r.renderer.fragment(r.tracker.snapshot, self.config.static_labels)

    # ------------------------------------------------------------------ targets
    def set_targets(self, targets: tuple[TargetConfig, ...]) -> None:
        """Start new targets, stop removed ones (their series vanish), restart changed ones."""
        wanted = {t.name: t for t in targets}
        for name in list(self._running):
            r = self._running[name]
            if name not in wanted or wanted[name] != r.target:
                if r.task:
                    r.task.cancel()
                if r.client is not None:
                    r.client.close()
                del self._running[name]
                log.info("target %s removed", name, extra={"target": name})
        for name, t in wanted.items():
            if name not in self._running:
                tracker = TargetTracker(name, self.config.windows, url=redact_url(t.url), labels=t.labels)
                r = self._running[name] = _Running(
                    t, tracker, FilterState(t.url, self.config.scrape_filter_for(t))
                )
                if self._own_client and plain(t):
                    r.client = Client(ACCEPT, self._in_flight)
                if self._session is not None:
                    r.task = asyncio.create_task(self._loop(r), name=f"scrape:{name}")
                log.info("target %s added (%s)", name, redact_url(t.url), extra={"target": name})

    def all_targets(self) -> tuple[TargetConfig, ...]:
        seen = {t.name for t in self.config.targets}
        return self.config.targets + tuple(t for t in self.extra_targets if t.name not in seen)

    async def _loop(self, r: _Running) -> None:
        interval = self.config.interval
        loop = asyncio.get_running_loop()
        next_at = first_scrape_at(loop.time(), interval, r.tracker.snapshot.scraped)
        timeout = self.config.timeout_for(r.target)
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            want_version = r.version_restarts != r.tracker.restarts or (
                r.tracker.snapshot.version is None and loop.time() - r.version_tried > VERSION_RETRY_SECONDS
            )
            assert self._session is not None
            outcome = await scrape(
                self._session,
                r.target,
                timeout=timeout,
                max_bytes=self.config.max_body_bytes,
                want_version=want_version,
                identity=r.tracker.identity_labels,
                state=r.filter,
                restarts=r.tracker.restarts,
                memo=r.memo,
                client=r.client,
            )
            if want_version and outcome.ok:
                r.version_restarts = r.tracker.restarts
                r.version_tried = loop.time()
            was_up = r.tracker.snapshot.up or not r.tracker.snapshot.scraped
            snap = self._observe(r, outcome)
            self._fragment(r)  # render now, off the /metrics path
            if not snap.up and was_up:
                log.warning(
                    "target %s: scrape failed (%s): %s",
                    r.target.name,
                    outcome.reason,
                    outcome.error,
                    extra={"target": r.target.name, "reason": outcome.reason},
                )
            elif snap.up and not was_up:
                log.info("target %s is up again", r.target.name, extra={"target": r.target.name})
            next_at += interval
            now = loop.time()
            if next_at < now:  # we fell behind (slow target): skip, never burst
                next_at = now + interval - ((now - next_at) % interval)

    @staticmethod
    def _observe(r: _Running, outcome: ScrapeOutcome) -> TargetSnapshot:
        """The tracker's new snapshot, carrying the filter's mode (logged once when it falls back)."""
        note = outcome.extra.get("filter")
        if note:
            log.warning("target %s: %s", r.target.name, note, extra={"target": r.target.name})
        snap = r.tracker.observe(outcome)
        if snap.scrape_mode != r.filter.mode:
            snap = r.tracker.snapshot = replace(snap, scrape_mode=r.filter.mode)
        return snap

    def targets_file_changed(self, targets: tuple[TargetConfig, ...]) -> None:
        self.extra_targets = targets
        self.status = ServiceStatus(True, time.time(), self.status.reload_failures)
        self.set_targets(self.all_targets())

    def targets_file_failed(self, error: ConfigError) -> None:
        log.error("targets file: %s (keeping %d targets)", error, len(self.extra_targets))
        self.status = ServiceStatus(
            False, self.status.last_reload_success, self.status.reload_failures + 1, str(error)
        )

    def apply_config(self, config: Config) -> None:
        """A reloaded config (SIGHUP). Scrape settings that shape history restart the trackers."""
        reshaped = (config.windows, config.interval, config.max_body_bytes) != (
            self.config.windows,
            self.config.interval,
            self.config.max_body_bytes,
        )
        if config.listen != self.config.listen or config.web_config != self.config.web_config:
            log.warning("listen and web_config changes need a restart; keeping the old ones")
        self.config = replace(config, listen=self.config.listen, web_config=self.config.web_config)
        if reshaped:
            self.set_targets(())
        self.set_targets(self.all_targets())
        for r in self._running.values():  # a changed global scrape_filter applies from now on
            r.filter.setting = self.config.scrape_filter_for(r.target)
        self.status = ServiceStatus(True, time.time(), self.status.reload_failures)

    def config_failed(self, error: ConfigError) -> None:
        log.error("config reload failed, keeping the running config: %s", error)
        self.status = ServiceStatus(
            False, self.status.last_reload_success, self.status.reload_failures + 1, str(error)
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(
        self, *, ssl_context: ssl.SSLContext | None = None, middlewares: tuple[Middleware, ...] = ()
    ) -> None:
        _raise_open_files_limit()
        # At most MAX_CONNECTIONS scrapes in flight: bounds the memory of bodies being read and of
        # the keep-alive pool (a scrape waiting for a connection still counts against its timeout).
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ttl_dns_cache=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, timeout=aiohttp.ClientTimeout(total=None)
        )
        self.set_targets(self.all_targets())
        for r in self._running.values():
            if r.task is None:
                r.task = asyncio.create_task(self._loop(r), name=f"scrape:{r.target.name}")
        app = build_app(self, middlewares)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        host, port = self.config.listen_host_port
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info(
            "listening on %s:%s with %d target(s), interval %gs, windows %s",
            host,
            self.port,
            len(self._running),
            self.config.interval,
            ",".join(w.label for w in self.config.windows),
        )

    async def stop(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in self._running.values():
            if r.client is not None:
                r.client.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def _raise_open_files_limit() -> None:
    """Plain-HTTP targets keep one connection each open: lift the soft limit on open files to
    the hard one (as Go does for Prometheus), so 1,000+ targets do not hit a soft limit of 1,024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


#: paths served without basic auth, so Kubernetes probes need no credentials (they reveal nothing)
PROBE_PATHS = ("/healthz", "/readyz")


async def run(config: Config, reload_config: Callable[[], Config] | None = None) -> None:
    """Run until SIGTERM or SIGINT (stopping within a second); SIGHUP reloads the config."""
    ssl_context: ssl.SSLContext | None = None
    middlewares: tuple[Middleware, ...] = ()
    if config.web_config:
        from . import webauth
        from .config.web import load_web_config

        web = load_web_config(config.web_config)  # ConfigError: refuse to start insecurely
        for w in web.warnings:
            log.warning("web config: %s", w)
        ssl_context = webauth.ssl_context(web)
        middlewares = (webauth.middleware(web, PROBE_PATHS),)
    sidecar = Sidecar(config)
    watcher = None
    if config.targets_file:
        from .config.reload import TargetsFileWatcher

        watcher = TargetsFileWatcher(
            config.targets_file,
            interval=max(1.0, config.interval),
            on_change=sidecar.targets_file_changed,
            on_error=sidecar.targets_file_failed,
        )
        sidecar.extra_targets = watcher.load_initial()  # ConfigError: refuse a broken file
        sidecar.status = ServiceStatus(True, time.time())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def hup() -> None:
        if reload_config is not None:
            try:
                sidecar.apply_config(reload_config())
            except ConfigError as exc:
                sidecar.config_failed(exc)
        if watcher is not None:
            watcher.trigger()
        log.info("reloaded on SIGHUP")

    loop.add_signal_handler(signal.SIGHUP, hup)
    await sidecar.start(ssl_context=ssl_context, middlewares=middlewares)
    watch_task = asyncio.create_task(watcher.run()) if watcher is not None else None
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if watcher is not None and watch_task is not None:
            watcher.stop()
            await asyncio.gather(watch_task, return_exceptions=True)
        await sidecar.stop()
