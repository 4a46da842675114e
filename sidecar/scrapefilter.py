"""Ask vLLM only for the samples the sidecar reads: the contract's "Asking vLLM for less".

vLLM's exact ``/metrics`` renders all ~600 lines and ignores the query; ``/metrics/`` (trailing
slash) reaches prometheus_client's ASGI app, which honours ``name[]=<sample name>`` (exact sample
names: prometheus_client's ``RestrictedRegistry`` keeps a sample only when its own name was asked
for, so a histogram needs ``_bucket``, ``_sum`` and ``_count`` each, and a counter ``_total`` and
``_created``). This module is the pure state machine around that, one :class:`FilterState` per
target; :mod:`sidecar.scrape` does the I/O. Rules (also in docs/metrics.md, "Asking vLLM for less"):

* only a target URL whose path ends in ``/metrics``; other paths are always scraped in full;
* a full scrape (the *probe*) first, again after a restart is seen and every 10 minutes; the
  filter then asks for exactly the wanted sample names (``normalize.WANTED``, generated from the
  alias table) that the probe held. It is used only when the probe held at least one name of a vLLM
  family the normaliser reads (``vllm:cache_config_info`` and ``process_start_time_seconds`` alone
  do not count: an idle V0 engine holds nothing else until its first request, and a filter built
  then would hide its figures until the next probe). While the filter cannot be used, every
  (full) scrape is a probe, so it starts as soon as vLLM shows its families;
* a filtered answer is *honoured* when it is a 200 holding every requested family (a family is the
  samples of one metric: ``x_total`` + ``x_created``; ``x_bucket`` + ``x_sum`` + ``x_count``).
  Anything else is *not honoured*: the cycle retries in full, no scrape error is recorded, the
  target scrapes in full until the next probe, and it is logged once;
* families vLLM drops while idle are excepted, without a list of which ones: when a 200 lacks
  families, the full retry decides. If the full body lacks them too, vLLM dropped them; the full
  body becomes the new probe and the filter stays. If the full body holds them, the filter is
  not honoured (a multiprocess registry answering partly, a proxy cutting the query);
* a 200 holding every requested family *and* samples nobody asked for (a server or proxy that
  ignored the query, vLLM's exact route) is honoured: its numbers are right and used, with no
  retry. It saved nothing, though, so the target goes to full mode until the next probe and the
  mode says so truthfully;
* a filtered request that times out leaves no time to retry: the timeout is recorded as it would
  be in full mode; after three in a row the target scrapes in full until the next probe (a route
  that hangs must not cost every cycle, but one slow cycle of an overloaded sidecar must not
  turn a thousand targets to full scrapes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urlsplit, urlunsplit

from .interning import SharedTable
from .normalize import CACHE_CONFIGS, PROCESS_START, ROUTES, WANTED, is_vllm_name

AUTO, OFF = "auto", "off"
SETTINGS = (AUTO, OFF)
FILTERED, FULL = "filtered", "full"
MODES = (FILTERED, FULL)
#: filtered requests in a row that must time out before the target scrapes in full
TIMEOUTS_TO_FALL_BACK = 3
#: seconds between probes while the filter is in use (contract: every 10 minutes)
PROBE_INTERVAL = 600.0
#: wanted names that alone do not make a filter worth it (see the module docstring)
_STATIC = CACHE_CONFIGS | {PROCESS_START}
#: name lists in use, one tuple per distinct list (bounded: a handful of vLLM versions)
_SHARED: SharedTable[tuple[str, ...], tuple[str, ...]] = SharedTable(64)


def family_of(sample_name: str) -> str:
    """The family a wanted sample belongs to, from the alias table (a name it does not route,
    such as ``vllm:cache_config_info``, is its own family)."""
    route = ROUTES.get(sample_name)
    return route[2].family if route is not None else sample_name


def families(sample_names: Iterable[str]) -> frozenset[str]:
    return frozenset(family_of(n) for n in sample_names)


@lru_cache(maxsize=64)
def _families_asked(names: tuple[str, ...]) -> frozenset[str]:
    return families(names)


def applies(url: str) -> bool:
    """The filter is only for a URL whose path ends in ``/metrics`` (vLLM's own route)."""
    return urlsplit(url).path.endswith("/metrics")


@lru_cache(maxsize=64)
def _query(names: tuple[str, ...]) -> str:
    """The ``name[]`` query of a name list: one string shared by every target asking the same."""
    return "&".join("name%5B%5D=" + quote(n, safe=":") for n in names)


def filtered_url(url: str, names: Iterable[str]) -> str:
    """``.../metrics`` -> ``.../metrics/?name%5B%5D=<name>&...`` (any query of the target kept
    first). ``[]`` is percent-encoded as RFC 3986 wants in a query (aiohttp would do it anyway);
    ``:`` may stay as it is."""
    parts = urlsplit(url)
    query = _query(tuple(names))
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path + "/", query, ""))


def request_names(present: Iterable[str], wanted: Collection[str] = WANTED) -> tuple[str, ...]:
    """The sample names to ask for: the wanted ones the probe held (sorted, so the URL is stable),
    or ``()`` when none of them is a vLLM family the normaliser reads. The strings and the tuple
    are shared by every target whose probe held the same names (memory at thousands of targets)."""
    present = set(present)
    names = tuple(sorted(n for n in wanted if n in present))
    if not any(n not in _STATIC for n in names):
        return ()
    return _SHARED.share(names, names)


@dataclass(frozen=True)
class Request:
    """What to GET this cycle."""

    url: str
    filtered: bool
    probe: bool  # a full scrape whose body (re)builds the filter


@dataclass(frozen=True)
class Verdict:
    """How a filtered answer compares with what was asked."""

    honoured: bool
    why: str = ""  # when not honoured (or honoured but ignored): for the log
    missing: frozenset[str] = frozenset()  # requested families absent from a 200
    ignored: bool = False  # honoured, but it held samples nobody asked for


def check(
    status: int,
    present: Iterable[str],
    requested: Collection[str],
    vllm_lines: int,
    parse_error: str | None = None,
) -> Verdict:
    """Judge a filtered answer: HTTP ``status``, the name of every wanted sample line it held
    (``present``, one per line), the names asked for, and how many ``vllm:`` sample lines the
    body had in all (vLLM's and Ray Serve's names; more than the asked-for lines: the query was
    ignored)."""
    if status != 200:
        kind = "a redirect" if 300 <= status < 400 else f"HTTP {status}"
        return Verdict(False, f"the filtered route answered {kind}")
    if parse_error is not None:
        return Verdict(False, f"the filtered answer does not parse: {parse_error}")
    present = list(present)
    missing = _families_asked(tuple(requested)) - families(set(present))
    if missing:
        what = "an empty answer" if not present else f"{len(missing)} requested familie(s) missing"
        return Verdict(False, f"{what} ({', '.join(sorted(missing)[:3])}...)", frozenset(missing))
    asked = set(requested)
    kept = sum(1 for n in present if n in asked and is_vllm_name(n))
    if vllm_lines > kept:
        return Verdict(True, "the server ignored the name[] filter (it answered in full)", ignored=True)
    return Verdict(True)


@dataclass
class FilterState:
    """One target's filter: what the last probe held, and whether the filter is in use."""

    url: str
    setting: str = AUTO
    names: tuple[str, ...] = ()  # to request; () while the filter cannot be used
    probed_at: float | None = None  # monotonic time of the last probe
    probed_restarts: int = 0  # tracker.restarts at the last probe
    fallback: str | None = None  # why the target scrapes in full until the next probe
    logged: str | None = None  # the last fallback reason logged (logged once)
    timeouts: int = 0  # filtered requests in a row that timed out

    @property
    def enabled(self) -> bool:
        return self.setting == AUTO and applies(self.url)

    @property
    def mode(self) -> str:
        """``filtered`` while scrapes between probes are filtered; the periodic probe does not
        flip it (it is one full scrape among filtered ones)."""
        return FILTERED if self.enabled and self.names and self.fallback is None else FULL

    def next_request(self, now: float, restarts: int) -> Request:
        if not self.enabled:
            return Request(self.url, False, False)
        due = (
            self.probed_at is None
            or not self.names
            or restarts != self.probed_restarts
            or now - self.probed_at >= PROBE_INTERVAL
        )
        if due:
            return Request(self.url, False, True)
        if self.fallback is not None:
            return Request(self.url, False, False)
        return Request(filtered_url(self.url, self.names), True, False)

    def probed(self, present: Iterable[str], now: float, restarts: int) -> None:
        """A successful full scrape taken as a probe: rebuild the filter from what it held."""
        self.names = request_names(present)
        self.probed_at = now
        self.probed_restarts = restarts
        self.fallback = None

    def timed_out(self) -> str | None:
        """A filtered request timed out. Only ``TIMEOUTS_TO_FALL_BACK`` in a row make the target
        scrape in full: one timeout is as likely the sidecar's own overload (measured: under
        CPU starvation a third to nine tenths of 1,000 targets fell back at once, and full
        scrapes cost the sidecar and vLLM more, which feeds the overload)."""
        self.timeouts += 1
        if self.timeouts < TIMEOUTS_TO_FALL_BACK:
            return None
        return self.fall_back(f"{self.timeouts} filtered requests in a row timed out")

    def answered(self) -> None:
        self.timeouts = 0

    def fall_back(self, why: str) -> str | None:
        """Scrape in full until the next probe; returns the message to log, once per reason."""
        self.fallback = why
        if why == self.logged:
            return None
        self.logged = why
        return f"name[] filter: {why}; scraping in full until the next probe"

    def after_full_retry(
        self, verdict: Verdict, full_present: Iterable[str], now: float, restarts: int
    ) -> str | None:
        """After a not-honoured 200 that lacked families, the full retry succeeded: if the full
        body lacks them too, vLLM dropped them (a new probe); else the filter failed."""
        full_present = list(full_present)
        if verdict.missing and not (verdict.missing & families(full_present)):
            self.probed(full_present, now, restarts)
            return None
        return self.fall_back(verdict.why)
