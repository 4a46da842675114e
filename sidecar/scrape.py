"""One scrape of one vLLM: HTTP GET with a deadline and a size cap, then parse and normalise.

Every failure is classified into one of the contract's reasons and described precisely; nothing
here raises for a bad target. The parse work is pure (:mod:`sidecar.parser`,
:mod:`sidecar.normalize`); this module is the thin I/O around it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from .config import TargetConfig
from .model import ScrapeOutcome
from .normalize import WANTED, normalise
from .parser import ParseError, parse

ACCEPT = "text/plain;version=0.0.4"
VERSION_MAX_BYTES = 64 * 1024


class _TooLarge(Exception):
    pass


def request_options(target: TargetConfig) -> dict[str, Any]:
    """Headers / TLS for a target (secrets read at scrape time so rotated files are picked up)."""
    if not (target.bearer_token_file or target.basic_auth or target.tls):
        return {}
    try:
        from .targetauth import request_options as _opts  # provided by the security module
    except ImportError:  # pragma: no cover - the module ships with the package
        return {}
    headers, ssl_ctx, auth = _opts(target)
    out: dict[str, Any] = {}
    if headers:
        out["headers"] = headers
    if ssl_ctx is not None:
        out["ssl"] = ssl_ctx
    if auth is not None:
        out["auth"] = auth
    return out


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    length = resp.content_length
    if length is not None and length > limit:
        raise _TooLarge(f"Content-Length {length} exceeds the {limit}-byte cap")
    chunks = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise _TooLarge(f"body exceeds the {limit}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _merge_headers(opts: dict[str, Any], extra: dict[str, str]) -> dict[str, Any]:
    out = dict(opts)
    out["headers"] = {**extra, **opts.get("headers", {})}
    return out


async def fetch_version(session: aiohttp.ClientSession, target: TargetConfig,
                        timeout: float) -> str | None:
    """vLLM's ``/version`` (``{"version": "0.32.0"}``); None when it cannot be had."""
    try:
        opts = _merge_headers(request_options(target), {"Accept": "application/json"})
    except Exception:  # noqa: BLE001 - the metrics scrape reports it
        return None
    try:
        async with asyncio.timeout(timeout):
            async with session.get(target.version_url, allow_redirects=False, **opts) as resp:
                if resp.status != 200:
                    return None
                body = await _read_capped(resp, VERSION_MAX_BYTES)
        version = json.loads(body.decode("utf-8", "replace")).get("version")
        return str(version)[:64] if version else None
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError, AttributeError,
            _TooLarge):
        return None


async def health_answers(session: aiohttp.ClientSession, target: TargetConfig,
                         timeout: float) -> bool:
    """Does vLLM's ``/health`` beside the metrics path answer 200? Used to tell a data-parallel
    supervisor port (``--data-parallel-multi-port-external-lb``: ``/health`` but no
    ``/metrics``) from a wrong URL."""
    try:
        opts = request_options(target)
        async with asyncio.timeout(timeout):
            async with session.get(target.health_url, allow_redirects=False, **opts) as resp:
                return resp.status == 200
    except Exception:  # noqa: BLE001 - only a hint for the explanation; never an error
        return False


DP_SUPERVISOR_HINT = ("/health answers 200 but /metrics is 404: a data-parallel supervisor port "
                      "(--data-parallel-multi-port-external-lb) has no /metrics; scrape each rank "
                      "on port + i instead")


def parse_body(body: bytes, content_type: str | None, started: float,
               duration: float, identity: frozenset[str] = frozenset()) -> ScrapeOutcome:
    """Pure: body -> outcome (``parse`` / ``no_vllm_metrics`` failures, or the normalised data).

    ``identity``: the target's identity labels so far (``TargetTracker.identity_labels``)."""
    try:
        parsed = parse(body, content_type, WANTED)
        norm = normalise(parsed.samples, identity=identity)
    except ParseError as exc:
        return ScrapeOutcome(started, duration, reason="parse", error=f"invalid metrics body: {exc}")
    if parsed.vllm_lines == 0:
        return ScrapeOutcome(started, duration, reason="no_vllm_metrics",
                             error="no vllm: series in the body (stats disabled with "
                                   "--disable-log-stats, or the engine is still starting)")
    return ScrapeOutcome(started, duration, normalised=norm)


async def scrape(session: aiohttp.ClientSession, target: TargetConfig, *, timeout: float,
                 max_bytes: int, want_version: bool = False,
                 identity: frozenset[str] = frozenset()) -> ScrapeOutcome:
    """Scrape ``target`` once; never raises for anything the target does."""
    started = time.time()
    t0 = time.perf_counter()

    def fail(reason: str, error: str) -> ScrapeOutcome:
        return ScrapeOutcome(started, time.perf_counter() - t0, reason=reason, error=error)

    try:
        opts = _merge_headers(request_options(target), {"Accept": ACCEPT})
    except Exception as exc:  # noqa: BLE001 - TargetAuthError and friends carry safe messages
        return fail("connect", f"cannot prepare request: {exc}")
    try:
        async with asyncio.timeout(timeout):
            async with session.get(target.url, allow_redirects=False, **opts) as resp:
                if resp.status != 200:
                    status = f"HTTP {resp.status} {resp.reason or ''}".strip()
                    if resp.status == 404 and await health_answers(session, target,
                                                                   min(timeout, 2.0)):
                        status += f"; {DP_SUPERVISOR_HINT}"
                    return fail("http_status", status)
                body = await _read_capped(resp, max_bytes)
                content_type = resp.headers.get("Content-Type")
    except asyncio.TimeoutError:
        return fail("timeout", f"no complete answer within {timeout:g}s")
    except _TooLarge as exc:
        return fail("too_large", str(exc))
    except aiohttp.ClientResponseError as exc:
        return fail("http_status", f"bad HTTP response: {exc.message}")
    except aiohttp.ClientPayloadError as exc:
        return fail("connect", f"connection broke while reading the body: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        return fail("connect", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    duration = time.perf_counter() - t0
    outcome = parse_body(body, content_type, started, duration, identity)
    if outcome.ok and want_version:
        outcome.version = await fetch_version(session, target, timeout)
    outcome.duration = time.perf_counter() - t0
    return outcome
