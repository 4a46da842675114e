"""``vllm-cache-sidecar doctor``: watch vLLM targets for a few seconds and explain their caching.

Scrapes every target at least twice over ``--duration`` with the service's own scrape and
derivation code, then prints per target the hit ratios, KV usage, cache config flags and every
diagnosis with its explanation and fix. Exit status: 0 healthy, 1 any warning, 2 any critical
finding or unreachable target. Works against any vLLM URL with no config file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TextIO

import aiohttp

from .api import target_dict
from .config.files import ConfigError
from .config.settings import DEFAULT_MAX_BODY_BYTES, TargetConfig, load_config, redact_url
from .derive import TargetTracker
from .diagnose import engine_name, hits_grew
from .explain import Explanation, explain_all, exposer_note, fmt_count, fmt_pct, tier_split
from .model import SEVERITIES, TargetSnapshot, Window
from .scrape import scrape
from .scrapefilter import FilterState

MAX_SCRAPES = 11
MAX_CAUSES = 5  # in text output; --json has them all
DEFAULT_TIMEOUT = 5.0
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_USAGE = 0, 1, 2, 2


@dataclass(frozen=True)
class Report:
    """One target after the observation: its last snapshot and how many scrapes it took."""

    snapshot: TargetSnapshot
    scrapes: int
    ok_scrapes: int

    @property
    def status(self) -> str:
        """``critical`` / ``warning`` / ``info`` / ``healthy``: the worst finding."""
        if not self.snapshot.up:
            return "critical"
        return self.snapshot.worst_severity or "healthy"


def exit_code(reports: Sequence[Report]) -> int:
    statuses = {r.status for r in reports}
    if "critical" in statuses:
        return EXIT_CRITICAL
    if "warning" in statuses:
        return EXIT_WARNING
    return EXIT_OK


def plan(duration: float) -> tuple[int, float]:
    """How many scrapes and how far apart: at least two, about one a second, at most 11."""
    duration = max(0.0, duration)
    n = max(2, min(MAX_SCRAPES, int(duration) + 1))
    return n, duration / (n - 1)


def window_for(duration: float) -> Window:
    """One window that covers the whole observation (its label is the duration)."""
    return Window(f"{max(0.0, duration):g}s", max(duration, 1.0) * 2 + 60.0)


# ------------------------------------------------------------------------------ observation
async def _watch(
    session: aiohttp.ClientSession,
    target: TargetConfig,
    tracker: TargetTracker,
    n: int,
    step: float,
    max_bytes: int,
    scrape_filter: str = "auto",
) -> Report:
    loop = asyncio.get_running_loop()
    start = loop.time()
    timeout = target.timeout or DEFAULT_TIMEOUT
    # the service's own filter: a probe first, then filtered scrapes, so the mode shown is real
    state = FilterState(target.url, target.scrape_filter or scrape_filter)
    done = ok = 0
    for i in range(n):
        delay = start + i * step - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        outcome = await scrape(
            session,
            target,
            timeout=timeout,
            max_bytes=max_bytes,
            identity=tracker.identity_labels,
            want_version=tracker.snapshot.version is None,
            state=state,
            restarts=tracker.restarts,
        )
        snap = tracker.observe(outcome)
        tracker.snapshot = replace(snap, scrape_mode=state.mode)
        done += 1
        ok += outcome.ok
    return Report(tracker.snapshot, done, ok)


async def observe(
    targets: Sequence[TargetConfig],
    duration: float,
    max_bytes: int = DEFAULT_MAX_BODY_BYTES,
    scrape_filter: str = "auto",
) -> list[Report]:
    """Scrape every target concurrently (each on its own schedule) and return the reports."""
    n, step = plan(duration)
    window = window_for(duration)
    trackers = [TargetTracker(t.name, (window,), url=redact_url(t.url), labels=t.labels) for t in targets]
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        return list(
            await asyncio.gather(
                *(
                    _watch(session, t, tr, n, step, max_bytes, scrape_filter)
                    for t, tr in zip(targets, trackers)
                )
            )
        )


# ------------------------------------------------------------------------------ output
_COLOURS = {
    "critical": "31;1",
    "warning": "33;1",
    "info": "36",
    "healthy": "32;1",
    "up": "32;1",
    "down": "31;1",
    "bold": "1",
    "dim": "2",
    "head": "1;4",
}


class Style:
    """ANSI colours on a terminal, nothing otherwise (or with NO_COLOR set)."""

    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, text: str, kind: str) -> str:
        if not self.colour or kind not in _COLOURS:
            return text
        return f"\033[{_COLOURS[kind]}m{text}\033[0m"


def clean(text: Any) -> str:
    """Remote strings made safe for a terminal: control characters (escape sequences) shown
    as ``\\xNN`` instead of being interpreted."""
    out = []
    for ch in str(text):
        o = ord(ch)
        out.append(ch if (o >= 0x20 and not 0x7F <= o <= 0x9F) else f"\\x{o:02x}")
    return "".join(out)


def _table(rows: list[list[str]], style: Style, kinds: list[list[str]] | None = None) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for ri, row in enumerate(rows):
        cells = []
        for ci, cell in enumerate(row):
            padded = cell.ljust(widths[ci]) if ci < len(row) - 1 else cell
            kind = "head" if ri == 0 else (kinds[ri - 1][ci] if kinds else "")
            cells.append(style(padded, kind) if kind else padded)
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _flags_line(s: TargetSnapshot) -> str:
    if not s.cache_configs:
        return "cache config   unknown (no vllm:cache_config_info)"
    parts = []
    for c in s.cache_configs:
        on = {True: "ON", False: "OFF", None: "unknown"}[c.enable_prefix_caching]
        if c.enable_prefix_caching is False and hits_grew(s, c):  # the counters win
            on = 'ON (hits grow; the flag says enable_prefix_caching="False")'
        bits = [f"{clean(engine_name(c))}: prefix caching {on}"]
        if c.block_size:
            bits.append(f"block_size {c.block_size}")
        if c.num_gpu_blocks:
            bits.append(f"{c.num_gpu_blocks:,} KV blocks")
        if c.hash_algo:
            bits.append(f"hash {clean(c.hash_algo)}")
        if c.kv_offloading_backend and c.kv_offloading_backend.lower() != "none":
            bits.append(f"offloading {clean(c.kv_offloading_backend)}")
        parts.append(", ".join(bits))
    return "cache config   " + "; ".join(parts)


def _engine_rows(s: TargetSnapshot) -> tuple[list[list[str]], list[list[str]]]:
    label = s.windows[0] if s.windows else "window"
    rows = [
        [
            "MODEL",
            "ENGINE",
            f"HIT RATIO {label}",
            "LIFETIME",
            f"QUERIES {label}",
            f"HITS {label}",
            "KV USAGE",
            "RUNNING",
            "WAITING",
        ]
    ]
    kinds = []
    for e in s.engines:
        w = e.windows[0] if e.windows else None
        windowed = "n/a (V0)" if e.v0 else fmt_pct(w.hit_ratio if w else None)
        life = fmt_pct(e.lifetime_hit_ratio) + (" (blocks)" if e.v0 else "")
        kv = e.current.kv_usage
        rows.append(
            [
                clean(e.model_name) or "-",
                clean(engine_name(e)[len("engine ") :]),
                windowed,
                life,
                "n/a" if e.v0 or not w else fmt_count(w.queries),
                "n/a" if e.v0 or not w else fmt_count(w.hits),
                fmt_pct(kv),
                fmt_count(e.current.running),
                fmt_count(e.current.waiting),
            ]
        )
        ratio_kind = ""
        if w and not e.v0 and not math.isnan(w.hit_ratio):
            ratio_kind = "warning" if w.hit_ratio == 0 else "healthy"
        kv_kind = "warning" if kv is not None and kv >= 0.9 else ""
        kinds.append(["bold", "", ratio_kind, "", "", "", kv_kind, "", ""])
    return rows, kinds


def _tier_lines(s: TargetSnapshot) -> list[str]:
    """ "hits by tier" per engine where vLLM tells the tier: device first, then host, ..."""
    out = []
    for e in s.engines:
        w = e.windows[0] if e.windows else None
        if (
            w is None
            or e.v0
            or not (e.current.hits_by_source or e.current.external_queries or e.current.tier_queries)
        ):
            continue
        split = ", ".join(f"{name} {fmt_pct(r, 0)}" for _, name, r in tier_split(w, short=True))
        tiers = "".join(f"; offload tier {clean(t)} {fmt_pct(r, 0)} of chunks" for t, r in w.tier_ratios())
        out.append(f"hits by tier   {clean(engine_name(e))}, {w.window}: {clean(split)}{tiers}")
    return out


def _refused_lines(s: TargetSnapshot) -> list[str]:
    """Impossible values vLLM sent (never exported): what it said, and why refused."""
    return [
        f"refused        {clean(r.series)} on {clean(engine_name(r))}: vLLM said "
        f"{r.value!r} ({clean(r.why)}); not exported"
        for r in s.refused
    ]


def verdict(s: TargetSnapshot, xs: Sequence[Explanation]) -> str:
    """One line a person reads first: caching on?, hit ratio, and the worst finding."""
    if not s.up:
        if s.last_error_reason == "no_vllm_metrics":
            return "answers, but exposes no vLLM metrics (stats disabled or still starting)"
        return f"unreachable ({s.last_error_reason or 'error'})"
    parts = [
        {True: "prefix caching ON", False: "prefix caching OFF", None: "prefix caching unknown"}[
            s.prefix_caching_enabled
        ]
    ]
    ws = [e.windows[0] for e in s.engines if e.windows and not e.v0 and e.windows[0].span > 0]
    queries, hits = sum(w.queries for w in ws), sum(w.hits for w in ws)
    label = s.windows[0] if s.windows else "window"
    if queries > 0:
        parts.append(
            f"hit ratio {fmt_pct(hits / queries)} over {label} "
            f"({fmt_count(hits)} of {fmt_count(queries)} tokens)"
        )
    elif ws:
        parts.append(f"no prefix-cache queries in {label}")
    else:
        v0 = [e.lifetime_hit_ratio for e in s.engines if e.v0]
        if v0:
            parts.append(f"V0 block hit ratio {fmt_pct(v0[0])} since start")
    if xs:
        parts.append(f"{xs[0].severity.upper()}: {xs[0].title}")
        top = xs[0].causes[0] if xs[0].causes else None
        if top is not None and top.because:
            parts.append(f"most likely {top.text.split(':')[0]} ({top.because})")
    return "; ".join(parts)


def _wrap(text: str, indent: str, width: int, first: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent + first,
        subsequent_indent=indent + " " * len(first),
        break_on_hyphens=False,
        break_long_words=False,
    ) or [indent + first]


def _explanation(x: Explanation, style: Style, width: int) -> list[str]:
    sev = style(f"[{x.severity.upper()}]", x.severity)
    out = [f"  {sev} {style(x.title, 'bold')} ({x.code})"]
    out += _wrap(clean(x.summary), "      ", width)
    out.append("      What the numbers show:")
    for n in x.numbers:
        out += _wrap(clean(n), "        ", width, "- ")
    if x.causes:
        out.append("      Likely causes, most likely first:")
        for i, c in enumerate(x.causes[:MAX_CAUSES], 1):
            out += _wrap(clean(c.text), "        ", width, f"{i}. ")
            if c.because:
                out += [
                    style(line, "info")
                    for line in _wrap("fits the evidence: " + clean(c.because), "           ", width)
                ]
        if len(x.causes) > MAX_CAUSES:
            out.append(f"        (+{len(x.causes) - MAX_CAUSES} less likely; see --json)")
    if x.fix:
        out.append("      Fix:")
        for i, f in enumerate(x.fix, 1):
            out += _wrap(clean(f), "        ", width, f"{i}. ")
    if x.confirm:
        out += _wrap(clean(x.confirm), "      ", width, "Confirm: ")
    return out


def render_text(reports: Sequence[Report], duration: float, style: Style, width: int = 100) -> str:
    lines = [
        style(f"vllm-cache-sidecar doctor: {len(reports)} target(s) observed for {duration:g}s", "bold"),
        "",
    ]
    for r in reports:
        s = r.snapshot
        state = style("UP", "up") if s.up else style("DOWN", "down")
        lines.append(f"{style('==', 'dim')} {style(clean(s.name), 'bold')}  {clean(s.url)}  {state}")
        about = [f"{r.ok_scrapes}/{r.scrapes} scrapes ok"]
        if s.version:
            about.append(f"vLLM {clean(s.version)}")
        if s.up:
            about.append(f"metric schema {clean(s.schema)}")
            if s.exposer != "vllm":
                about.append(f"exposer {clean(s.exposer)}")
        if s.scrape_mode:
            about.append(f"scrape mode {s.scrape_mode}")
        if s.labels:
            about.append("labels " + ", ".join(f"{clean(k)}={clean(v)}" for k, v in s.labels))
        lines.append("  target         " + "; ".join(about))
        xs = explain_all(s)
        kind = "healthy" if not xs and s.up else (xs[0].severity if xs else "critical")
        lines += [
            style(ln, kind) if i == 0 else ln
            for i, ln in enumerate(_wrap(clean(verdict(s, xs)), "  ", width, "verdict        "))
        ]
        if s.up:
            note = exposer_note(s)
            if note:
                lines += _wrap(clean(note), "  ", width, "note           ")
            lines.append("  " + _flags_line(s))
            lines += ["  " + ln for ln in _tier_lines(s) + _refused_lines(s)]
            if s.engines:
                lines.append("")
                rows, kinds = _engine_rows(s)
                lines += _table(rows, style, kinds)
                running = [e.current.running for e in s.engines if e.current.running is not None]
                if len(s.engines) > 1 and running:
                    lines.append(
                        f"  {len(s.engines)} engines, {fmt_count(sum(running))} requests running in all"
                    )
        lines.append("")
        if not xs:
            lines.append("  " + style("[OK] healthy: no findings", "healthy"))
        for x in xs:
            lines += _explanation(x, style, width)
            lines.append("")
        lines.append("")
    code = exit_code(reports)
    counts = {
        sev: sum(1 for r in reports for d in r.snapshot.diagnoses if d.severity == sev)
        for sev in reversed(SEVERITIES)
    }
    result = {0: "healthy", 1: "warning", 2: "critical"}[code]
    lines.append(
        style(f"Result: {result}", result)
        + " ("
        + ", ".join(f"{n} {sev}" for sev, n in counts.items())
        + f"); exit {code}"
    )
    return "\n".join(lines) + "\n"


def render_json(reports: Sequence[Report], duration: float) -> str:
    targets = []
    for r in reports:
        d = target_dict(r.snapshot)
        by_code = {x.code: x for x in explain_all(r.snapshot)}
        for item in d["diagnoses"]:
            x = by_code.get(item["code"])
            item["explanation"] = x.as_dict() if x else None
        d["status"] = r.status
        d["scrapes"] = r.scrapes
        d["successful_scrapes"] = r.ok_scrapes
        targets.append(d)
    code = exit_code(reports)
    doc = {
        "duration_seconds": duration,
        "exit_code": code,
        "status": {0: "healthy", 1: "warning", 2: "critical"}[code],
        "targets": targets,
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------ entry point
def resolve_targets(ns: argparse.Namespace) -> tuple[tuple[TargetConfig, ...], int]:
    """Targets from --target, else --config (and its targets_file), else vLLM's default URL."""
    return _resolve(ns)[:2]


def _resolve(ns: argparse.Namespace) -> tuple[tuple[TargetConfig, ...], int, str]:
    """Targets, the body cap and the scrape filter setting (flag, env, config)."""
    flags: dict[str, Any] = {"targets": list(ns.target)} if getattr(ns, "target", None) else {}
    if getattr(ns, "scrape_filter", None):
        flags["scrape_filter"] = ns.scrape_filter
    config = load_config(getattr(ns, "config", None), flags)
    targets = config.targets
    if config.targets_file and "targets" not in flags:
        from .config.targets import load_targets_file

        names = {t.name for t in targets}
        targets += tuple(t for t in load_targets_file(config.targets_file) if t.name not in names)
    return targets, config.max_body_bytes, config.scrape_filter


def main(ns: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    try:
        targets, max_bytes, scrape_filter = _resolve(ns)
    except (ConfigError, ValueError) as exc:
        print(f"vllm-cache-sidecar doctor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    duration = max(0.0, float(ns.duration))
    try:
        reports = asyncio.run(observe(targets, duration, max_bytes, scrape_filter))
    except KeyboardInterrupt:
        print("vllm-cache-sidecar doctor: interrupted", file=sys.stderr)
        return 130
    if ns.json:
        text = render_json(reports, duration)
    else:
        tty = out.isatty()
        style = Style(tty and not os.environ.get("NO_COLOR"))
        width = min(110, max(60, shutil.get_terminal_size((100, 24)).columns - 2)) if tty else 100
        text = render_text(reports, duration, style, width)
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:  # `doctor | head`: the reader left; the exit code still counts
        pass
    return exit_code(reports)
