"""Watch the targets file and hand every new, valid target list to the service.

Polling (default every 5 s) rather than inotify: it works the same on every filesystem, and on a
Kubernetes ConfigMap mount, whose files change by an atomic symlink swap that inotify watchers of
the old inode miss. The content is compared, not just the mtime, so a rewrite with the same
mtime or a swap to an older file is still seen, and a touch without change is not a reload.

A broken file (bad YAML, bad address, missing) keeps the last good set: ``on_error`` gets the
:class:`~sidecar.config.files.ConfigError` so the service can raise an error series, and the next good
version clears it (``on_change`` is called then even if the targets equal the old set, so the
service knows the error is gone).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.config.files import ConfigError
from sidecar.config.settings import TargetConfig
from sidecar.config.targets import parse_targets_file, read_targets_file

log = logging.getLogger(__name__)

OnChange = Callable[[tuple[TargetConfig, ...]], "Awaitable[None] | None"]
OnError = Callable[[ConfigError], "Awaitable[None] | None"]


class TargetsFileWatcher:
    """Polls ``path``; calls ``on_change(targets)`` on a new valid version, ``on_error(error)`` on a
    new broken one. Callbacks may be plain functions or coroutines.

    State for metrics and the status page: :attr:`targets` (last good set), :attr:`last_error`
    (``None`` when the current file is good), :attr:`last_success` (unix time of the last good
    load), :attr:`reloads` / :attr:`failures` (counts).
    """

    def __init__(
        self,
        path: str,
        interval: float = 5.0,
        on_change: OnChange | None = None,
        on_error: OnError | None = None,
        *,
        defaults: TargetConfig | None = None,
    ):
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self.on_error = on_error
        self.defaults = defaults
        self.targets: tuple[TargetConfig, ...] = ()
        self.last_error: ConfigError | None = None
        self.last_success: float | None = None
        self.reloads = 0
        self.failures = 0
        self._digest: bytes | None = None
        self._stop = asyncio.Event()
        self._poke = asyncio.Event()

    @property
    def ok(self) -> bool:
        return self.last_error is None

    def load_initial(self) -> tuple[TargetConfig, ...]:
        """Load synchronously at start. Raises :class:`ConfigError` for a broken file, so the
        service can refuse to start on a bad file instead of running with no targets."""
        text = read_targets_file(self.path)
        targets = parse_targets_file(text, self.path, self.defaults)
        self._accept(text, targets)
        return targets

    async def check(self) -> bool:
        """Look at the file once; returns True when a callback was called."""
        try:
            text = read_targets_file(self.path)
        except ConfigError as exc:
            return await self._fail(None, exc)
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest == self._digest:
            return False
        try:
            targets = parse_targets_file(text, self.path, self.defaults)
        except ConfigError as exc:
            return await self._fail(digest, exc)
        had_error = self.last_error is not None
        changed = targets != self.targets
        self._accept(text, targets)
        if changed or had_error:
            log.info("targets file %s: %d targets", self.path, len(targets))
            await _call(self.on_change, targets)
            return True
        return False

    async def run(self) -> None:
        """Poll until :meth:`stop`. A callback that raises is logged and does not stop the loop."""
        self._stop.clear()
        while not self._stop.is_set():
            try:
                await self.check()
            except Exception:  # a bug in a callback must not end central mode
                log.exception("targets file %s: reload callback failed", self.path)
            self._poke.clear()
            await _first(self._stop.wait(), self._poke.wait(), timeout=self.interval)

    def trigger(self) -> None:
        """Check now instead of at the next tick (e.g. on SIGHUP)."""
        self._digest = None
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()

    # -------------------------------------------------------------- internals

    def _accept(self, text: str, targets: tuple[TargetConfig, ...]) -> None:
        self._digest = hashlib.sha256(text.encode("utf-8")).digest()
        self.targets = targets
        self.last_error = None
        self.last_success = time.time()
        self.reloads += 1

    async def _fail(self, digest: bytes | None, exc: ConfigError) -> bool:
        same = self.last_error is not None and str(self.last_error) == str(exc)
        self.last_error = exc
        if digest is not None:
            self._digest = digest  # do not re-parse (and re-report) the same broken text
        else:
            self._digest = None  # unreadable: look again next time
        if same:
            return False
        self.failures += 1
        log.warning(
            "targets file %s: %s (keeping the %d previous targets)", self.path, exc, len(self.targets)
        )
        await _call(self.on_error, exc)
        return True


async def _call(callback: Callable[[Any], Any] | None, arg: Any) -> None:
    if callback is None:
        return
    result = callback(arg)
    if inspect.isawaitable(result):
        await result


async def _first(*aws: Awaitable[Any], timeout: float) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
