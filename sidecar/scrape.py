"""One scrape of one vLLM: HTTP GET with a deadline and a size cap, then parse and normalise.

Every failure is classified into one of the contract's reasons and described precisely; nothing
here raises for a bad target. The parse work is pure (:mod:`sidecar.parser`,
:mod:`sidecar.normalize`); this module is the thin I/O around it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import httpget, targetauth
from .config.settings import TargetConfig
from .model import ScrapeOutcome
from .normalize import WANTED, Shape, normalise
from .parser import Layout, Parsed, ParseError, parse
from .scrapefilter import FilterState, Request, Verdict, check

ACCEPT = "text/plain;version=0.0.4"
VERSION_MAX_BYTES = 64 * 1024


class _TooLarge(Exception):
    pass


@dataclass
class Memo:
    """What one target remembers of its last body to read the next one cheaper, with the same
    result: the lines (:class:`~sidecar.parser.Layout`) and the series
    (:class:`~sidecar.normalize.Shape`). A service keeps one per target."""

    layout: Layout = field(default_factory=Layout)
    shape: Shape = field(default_factory=Shape)
    #: (layout entries, requested names, verdict) of the last filtered answer judged
    verdict: tuple[object, object, Verdict] | None = None

    def judge(self, parsed: Parsed, requested: tuple[str, ...]) -> Verdict:
        """:func:`~sidecar.scrapefilter.check` of a parsed 200 answer. The verdict depends only
        on the sample names in order and the ``vllm:`` line count, which the learnt layout fixes:
        a body read by the same layout, asked with the same names, gets the last verdict."""
        entries = self.layout.entries
        last = self.verdict
        if entries and last is not None and last[0] is entries and last[1] is requested:
            return last[2]
        verdict = check(200, [s[0] for s in parsed.samples], requested, parsed.vllm_lines)
        self.verdict = (entries, requested, verdict) if entries else None
        return verdict


def plain(target: TargetConfig) -> bool:
    """Can :mod:`sidecar.httpget` scrape this target (plain ``http://``, no auth, no TLS)?"""
    return (
        target.url.startswith("http://")
        and "@" not in target.url.split("/", 3)[2]
        and not (target.bearer_token_file or target.basic_auth or target.tls)
    )


def request_options(target: TargetConfig) -> dict[str, Any]:
    """Headers / TLS for a target (secrets read at scrape time so rotated files are picked up)."""
    if not (target.bearer_token_file or target.basic_auth or target.tls):
        return {}
    headers, ssl_ctx = targetauth.request_options(target)
    out: dict[str, Any] = {}
    if headers:
        out["headers"] = headers
    if ssl_ctx is not None:
        out["ssl"] = ssl_ctx
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


async def fetch_version(session: aiohttp.ClientSession, target: TargetConfig, timeout: float) -> str | None:
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
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, AttributeError, _TooLarge):
        return None


async def health_answers(session: aiohttp.ClientSession, target: TargetConfig, timeout: float) -> bool:
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


DP_SUPERVISOR_HINT = (
    "/health answers 200 but /metrics is 404: a data-parallel supervisor port "
    "(--data-parallel-multi-port-external-lb) has no /metrics; scrape each rank "
    "on port + i instead"
)


def _parse(
    body: bytes,
    content_type: str | None,
    started: float,
    duration: float,
    identity: frozenset[str] = frozenset(),
    memo: Memo | None = None,
) -> tuple[ScrapeOutcome, Parsed | None]:
    """Pure: body -> outcome (``parse`` / ``no_vllm_metrics`` failures, or the normalised data),
    and the parsed samples when the body parsed (the filter checks which names it held)."""
    try:
        parsed = parse(body, content_type, WANTED, memo.layout if memo is not None else None)
        norm = normalise(parsed.samples, identity=identity, shape=memo.shape if memo is not None else None)
    except ParseError as exc:
        return ScrapeOutcome(started, duration, reason="parse", error=f"invalid metrics body: {exc}"), None
    if parsed.vllm_lines == 0:
        return ScrapeOutcome(
            started,
            duration,
            reason="no_vllm_metrics",
            error="no vllm: series in the body (stats disabled with "
            "--disable-log-stats, or the engine is still starting)",
        ), parsed
    return ScrapeOutcome(started, duration, normalised=norm), parsed


def parse_body(
    body: bytes,
    content_type: str | None,
    started: float,
    duration: float,
    identity: frozenset[str] = frozenset(),
    memo: Memo | None = None,
) -> ScrapeOutcome:
    """Pure: body -> outcome (``parse`` / ``no_vllm_metrics`` failures, or the normalised data).

    ``identity``: the target's identity labels so far (``TargetTracker.identity_labels``);
    ``memo``: the target's :class:`Memo` of its last body (same result, less CPU)."""
    return _parse(body, content_type, started, duration, identity, memo)[0]


@dataclass(frozen=True)
class _Answer:
    """An HTTP answer read in full (any status), or why there is none (``reason``/``error``)."""

    status: int = 0
    body: bytes = b""
    content_type: str | None = None
    reason: str | None = None
    error: str | None = None


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    opts: dict[str, Any],
    max_bytes: int,
    deadline: float,
    timeout: float,
) -> _Answer:
    """GET ``url`` before ``deadline`` (loop time); classify every failure, never raise."""
    try:
        async with asyncio.timeout_at(deadline):
            async with session.get(url, allow_redirects=False, **opts) as resp:
                if resp.status != 200:
                    return _Answer(
                        resp.status,
                        reason="http_status",
                        error=f"HTTP {resp.status} {resp.reason or ''}".strip(),
                    )
                body = await _read_capped(resp, max_bytes)
                return _Answer(200, body, resp.headers.get("Content-Type"))
    except TimeoutError:
        return _Answer(reason="timeout", error=f"no complete answer within {timeout:g}s")
    except _TooLarge as exc:
        return _Answer(reason="too_large", error=str(exc))
    except aiohttp.ClientResponseError as exc:
        return _Answer(reason="http_status", error=f"bad HTTP response: {exc.message}")
    except aiohttp.ClientPayloadError as exc:
        return _Answer(reason="connect", error=f"connection broke while reading the body: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        return _Answer(
            reason="connect", error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        )


async def _get_plain(
    client: httpget.Client, url: str, max_bytes: int, deadline: float, timeout: float
) -> _Answer:
    """:func:`_get` through our own client: the same reasons and error texts for the same faults."""
    try:
        async with asyncio.timeout_at(deadline):
            resp = await client.get(url, max_bytes)
    except TimeoutError:
        return _Answer(reason="timeout", error=f"no complete answer within {timeout:g}s")
    except httpget.TooLarge as exc:
        return _Answer(reason="too_large", error=str(exc))
    except httpget.BadResponse as exc:
        return _Answer(reason="http_status", error=f"bad HTTP response: {exc}")
    except httpget.BrokenBody as exc:
        return _Answer(reason="connect", error=f"connection broke while reading the body: {exc}")
    except OSError as exc:
        return _Answer(
            reason="connect", error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        )
    if resp.status != 200:
        return _Answer(resp.status, reason="http_status", error=f"HTTP {resp.status} {resp.reason}".strip())
    return _Answer(200, resp.body, resp.content_type)


@dataclass(frozen=True)
class _Cycle:
    """What every GET of one scrape cycle shares."""

    session: aiohttp.ClientSession
    target: TargetConfig
    opts: dict[str, Any]
    started: float
    t0: float
    max_bytes: int
    deadline: float
    timeout: float
    identity: frozenset[str]
    memo: Memo | None
    client: httpget.Client | None = None

    async def get(self, url: str) -> _Answer:
        """GET through the target's own connection when it has one, else aiohttp."""
        if self.client is not None:
            return await _get_plain(self.client, url, self.max_bytes, self.deadline, self.timeout)
        return await _get(self.session, url, self.opts, self.max_bytes, self.deadline, self.timeout)

    def failed(self, reason: str, error: str | None) -> ScrapeOutcome:
        return ScrapeOutcome(self.started, time.perf_counter() - self.t0, reason=reason, error=error)

    def parse(self, answer: _Answer) -> tuple[ScrapeOutcome, Parsed | None]:
        return _parse(
            answer.body,
            answer.content_type,
            self.started,
            time.perf_counter() - self.t0,
            self.identity,
            self.memo,
        )


async def _full(c: _Cycle) -> tuple[ScrapeOutcome, Parsed | None]:
    """The plain GET of the target's URL (a 404 with a healthy ``/health`` gets the DP hint)."""
    answer = await c.get(c.target.url)
    if answer.reason is not None:
        error = answer.error
        if answer.status == 404 and await health_answers(c.session, c.target, min(c.timeout, 2.0)):
            error = f"{error}; {DP_SUPERVISOR_HINT}"
        return c.failed(answer.reason, error), None
    return c.parse(answer)


def _names(parsed: Parsed | None) -> set[str]:
    return {s[0] for s in parsed.samples} if parsed is not None else set()


async def scrape(
    session: aiohttp.ClientSession,
    target: TargetConfig,
    *,
    timeout: float,
    max_bytes: int,
    want_version: bool = False,
    identity: frozenset[str] = frozenset(),
    state: FilterState | None = None,
    restarts: int = 0,
    memo: Memo | None = None,
    client: httpget.Client | None = None,
) -> ScrapeOutcome:
    """Scrape ``target`` once (one cycle); never raises for anything the target does.

    ``identity``: the target's identity labels so far (``TargetTracker.identity_labels``).
    With a :class:`~sidecar.scrapefilter.FilterState` the cycle asks vLLM only for the samples the
    sidecar reads when the filter is in use, and falls back to a full GET in the same cycle (under
    the same deadline) when the filtered answer is not honoured; ``restarts`` is the tracker's
    count, which makes a new probe due; ``memo`` is the target's :class:`Memo` of its last body.
    A note to log, if any, is in ``outcome.extra["filter"]``.
    ``client``: the target's own connection (:mod:`sidecar.httpget`, for :func:`plain` targets);
    without one the GETs go through ``session`` (aiohttp).
    """
    started = time.time()
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        opts = _merge_headers(request_options(target), {"Accept": ACCEPT})
    except Exception as exc:  # noqa: BLE001 - TargetAuthError and friends carry safe messages
        return ScrapeOutcome(
            started, time.perf_counter() - t0, reason="connect", error=f"cannot prepare request: {exc}"
        )
    c = _Cycle(
        session, target, opts, started, t0, max_bytes, loop.time() + timeout, timeout, identity, memo, client
    )
    request = state.next_request(loop.time(), restarts) if state is not None else None
    note = None
    if state is not None and request is not None and request.filtered:
        outcome, note = await _filtered(c, state, request, restarts)
    else:
        outcome, parsed = await _full(c)
        if state is not None and request is not None and request.probe and outcome.ok:
            state.probed(_names(parsed), loop.time(), restarts)
    if note:
        outcome.extra["filter"] = note
    if outcome.ok and want_version:
        outcome.version = await fetch_version(session, target, timeout)
    outcome.duration = time.perf_counter() - t0
    return outcome


async def _filtered(
    c: _Cycle, state: FilterState, request: Request, restarts: int
) -> tuple[ScrapeOutcome, str | None]:
    """The filtered GET, judged; a full GET in the same cycle when it is not honoured."""
    answer = await c.get(request.url)
    if answer.reason == "timeout":  # no time left to retry: recorded as a full scrape would be
        return c.failed(answer.reason, answer.error), state.timed_out()
    state.answered()
    outcome, parsed = c.parse(answer) if answer.reason is None else (None, None)
    if answer.reason is not None and not answer.status:
        # connect, too_large, a broken answer: the route misbehaved; the full GET tells the rest
        verdict = Verdict(False, answer.error or "no answer")
    elif parsed is not None and c.memo is not None:
        verdict = c.memo.judge(parsed, state.names)
    else:
        error = outcome.error if outcome is not None and parsed is None else None
        verdict = check(
            answer.status,
            [s[0] for s in parsed.samples] if parsed else [],
            state.names,
            parsed.vllm_lines if parsed is not None else 0,
            parse_error=error,
        )
    if verdict.honoured and outcome is not None and outcome.ok:
        return outcome, state.fall_back(verdict.why) if verdict.ignored else None
    if verdict.honoured:  # every family there, yet no vllm: line: cannot be, but never trust it
        verdict = Verdict(False, (outcome.error if outcome is not None else None) or "no answer")
    full, full_parsed = await _full(c)
    if full.ok:
        now = asyncio.get_running_loop().time()
        note = state.after_full_retry(verdict, _names(full_parsed), now, restarts)
    elif answer.status:  # the filtered route answered wrongly: not honoured, whatever came next
        note = state.fall_back(verdict.why)
    else:  # nothing answered either way: the target is down, which says nothing of the filter
        note = None
    return full, note
