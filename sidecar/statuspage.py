"""The human status page at ``/``: one server-rendered HTML document, no external assets.

Clusters are often offline, so everything is inline (CSS, SVG sparklines); the page refreshes
itself with ``<meta http-equiv=refresh>`` and needs no JavaScript (the server's CSP forbids it).
Every string that comes from a target (names, labels, model names, errors, versions) is escaped
here, in one helper, because remote servers choose those values.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Sequence

from .diagnose import engine_name
from .explain import Explanation, explain_all, exposer_note, fmt_count, fmt_pct, tier_split
from .model import EngineState, TargetSnapshot, finite

REFRESH_SECONDS = 10
SPARK_W, SPARK_H = 240, 40


def esc(value: object) -> str:
    """Escape for HTML text and double-quoted attributes."""
    return html.escape(str(value), quote=True)


def age(seconds: float | None) -> str:
    """``3s ago``, ``4m ago``... for a number of seconds."""
    if seconds is None or math.isnan(seconds):
        return "never"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.1f}h ago"
    return f"{s / 86400:.1f}d ago"


# ------------------------------------------------------------------------------ pieces
def sparkline(points: Sequence[tuple[float, float]], start: float, end: float, label: str) -> str:
    """An inline SVG of hit ratio (0..1) over time; gaps where the ratio is undefined."""
    if end <= start:
        end = start + 1.0

    def xy(t: float, r: float) -> tuple[float, float]:
        x = (min(max(t, start), end) - start) / (end - start) * (SPARK_W - 4) + 2
        y = SPARK_H - 2 - min(max(r, 0.0), 1.0) * (SPARK_H - 4)
        return x, y

    segments: list[list[tuple[float, float]]] = [[]]
    for t, r in points:
        if r is None or math.isnan(r):
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(xy(t, r))
    shapes = []
    for seg in segments:
        if len(seg) == 1:
            x, y = seg[0]
            shapes.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" class="sp-dot"/>')
        elif seg:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            area = f"{seg[0][0]:.1f},{SPARK_H - 2} {pts} {seg[-1][0]:.1f},{SPARK_H - 2}"
            shapes.append(
                f'<polygon points="{area}" class="sp-area"/><polyline points="{pts}" class="sp-line"/>'
            )
    if not any(segments):  # plain HTML: SVG text would stretch with the chart
        return f'<div class="spark sp-empty" role="img" aria-label="{esc(label)}">no queries yet</div>'
    mid = SPARK_H / 2
    return (
        f'<svg class="spark" viewBox="0 0 {SPARK_W} {SPARK_H}" preserveAspectRatio="none" '
        f'role="img" aria-label="{esc(label)}">'
        f'<line x1="0" y1="2" x2="{SPARK_W}" y2="2" class="sp-grid"/>'
        f'<line x1="0" y1="{mid}" x2="{SPARK_W}" y2="{mid}" class="sp-grid"/>'
        f'<line x1="0" y1="{SPARK_H - 2}" x2="{SPARK_W}" y2="{SPARK_H - 2}" class="sp-base"/>'
        + "".join(shapes)
        + "</svg>"
    )


def kv_bar(usage: float | None) -> str:
    u = finite(usage)
    if u is None:
        return '<div class="bar"><div class="fill none" style="width:0%"></div></div>'
    pct = min(max(u, 0.0), 1.0) * 100
    level = "high" if u >= 0.9 else "mid" if u >= 0.7 else "low"
    return (
        f'<div class="bar" role="meter" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{pct:.1f}"><div class="fill {level}" style="width:{pct:.1f}%">'
        f"</div></div>"
    )


def _ratio_cell(target: str, e: EngineState, window: str, ratio: float | None, detail: str) -> str:
    r = finite(ratio)
    cls = "na" if r is None else ("zero" if r == 0 else "ok")
    return (
        f'<div class="ratio {cls}"><span class="rl">{esc(window)}</span>'
        f'<span class="rv" data-target="{esc(target)}" data-model="{esc(e.model_name)}" '
        f'data-engine="{esc(e.engine)}" data-replica="{esc(e.replica)}" '
        f'data-window="{esc(window)}">{fmt_pct(r)}</span>'
        f'<span class="rd">{esc(detail)}</span></div>'
    )


def engine_block(s: TargetSnapshot, e: EngineState, now: float) -> str:
    cells = []
    if not e.v0:
        for w in e.windows:
            detail = (
                f"{fmt_count(w.hits)} of {fmt_count(w.queries)} tokens hit"
                if w.span > 0
                else "waiting for 2nd scrape"
            )
            cells.append(_ratio_cell(s.name, e, w.window, w.hit_ratio, detail))
    life_detail = (
        "V0 block ratio"
        if e.v0
        else f"{fmt_count(e.current.prefix_hits)} of {fmt_count(e.current.prefix_queries)} since start"
    )
    cells.append(_ratio_cell(s.name, e, "lifetime", e.lifetime_hit_ratio, life_detail))
    longest = e.windows[-1] if e.windows else None
    span_label = longest.window if longest else "window"
    seconds = longest.seconds if longest else 60.0
    spark = sparkline(e.ratio_points, now - seconds, now, f"hit ratio per scrape over the last {span_label}")
    kv = e.current.kv_usage
    kv_text = fmt_pct(kv)
    return (
        f'<div class="engine"><h3><span class="model">{esc(e.model_name or "-")}</span>'
        f'<span class="eng">{esc(engine_name(e))}</span></h3>'
        f'<div class="ratios">{"".join(cells)}</div>'
        f'<div class="charts"><figure class="sp">{spark}<figcaption>hit ratio per scrape, '
        f"last {esc(span_label)} (0&ndash;100%)</figcaption></figure>"
        f'<div class="kv"><div class="kvh"><span>KV cache usage</span>'
        f'<strong class="kvv" data-target="{esc(s.name)}" data-model="{esc(e.model_name)}" '
        f'data-engine="{esc(e.engine)}" data-replica="{esc(e.replica)}">{kv_text}</strong>'
        f"</div>{kv_bar(kv)}"
        f'<div class="kvd">running {fmt_count(e.current.running)} &middot; waiting '
        f"{fmt_count(e.current.waiting)}</div></div></div>{tiers_block(e)}</div>"
    )


def tiers_block(e: EngineState) -> str:
    """Which tier served the hits in the shortest window ("engine KV memory 41%, CPU offload
    12%, external 0%"); nothing where vLLM does not tell the tier."""
    w = e.windows[0] if e.windows else None
    c = e.current
    if w is None or e.v0 or not (c.hits_by_source or c.external_queries or c.tier_queries):
        return ""
    chips = [
        f'<span class="chip tier" data-source="{esc(src)}">{esc(name)} '
        f"<strong>{fmt_pct(finite(r))}</strong></span>"
        for src, name, r in tier_split(w, short=True)
    ]
    chips += [
        f'<span class="chip tier" data-tier="{esc(t)}">offload tier {esc(t)} '
        f"<strong>{fmt_pct(finite(r))}</strong> of chunks</span>"
        for t, r in w.tier_ratios()
    ]
    return f'<div class="tiers"><span class="tl">hits by tier, {esc(w.window)}</span>{"".join(chips)}</div>'


def refused_block(s: TargetSnapshot) -> str:
    """Impossible values vLLM sent in the last scrape: what it said; never exported."""
    if not s.refused:
        return ""
    items = [
        f"<code>{esc(r.series)}</code> on {esc(engine_name(r))}: vLLM said "
        f"<code>{esc(repr(r.value))}</code> ({esc(r.why)})"
        for r in s.refused
    ]
    return '<div class="refused"><h4>Refused as impossible (not exported)</h4>' + _list(items) + "</div>"


def flags_block(s: TargetSnapshot) -> str:
    if not s.cache_configs:
        return '<div class="flags"><span class="chip">cache config unknown</span></div>'
    chips = []
    for c in s.cache_configs:
        state = {
            True: ("on", "prefix caching ON"),
            False: ("off", "prefix caching OFF"),
            None: ("", "prefix caching unknown"),
        }[c.enable_prefix_caching]
        eng = f" ({esc(engine_name(c))})" if len(s.cache_configs) > 1 else ""
        chips.append(
            f'<span class="chip {state[0]}" data-flag="enable_prefix_caching">{state[1]}{eng}</span>'
        )
        if c.block_size:
            chips.append(f'<span class="chip">block_size {c.block_size}</span>')
        if c.num_gpu_blocks:
            chips.append(f'<span class="chip">{c.num_gpu_blocks:,} KV blocks</span>')
        if c.hash_algo:
            chips.append(f'<span class="chip">hash {esc(c.hash_algo)}</span>')
        if c.kv_offloading_backend and c.kv_offloading_backend.lower() not in ("none", ""):
            chips.append(f'<span class="chip">offloading {esc(c.kv_offloading_backend)}</span>')
    return f'<div class="flags">{"".join(chips)}</div>'


def _list(items: Iterable[str], tag: str = "ul") -> str:
    return f"<{tag}>" + "".join(f"<li>{i}</li>" for i in items) + f"</{tag}>"


def diagnosis_block(x: Explanation) -> str:
    causes = [
        esc(c.text) + (f' <span class="fits">fits: {esc(c.because)}</span>' if c.because else "")
        for c in x.causes
    ]
    body = [
        f'<p class="sum">{esc(x.summary)}</p>',
        "<h4>What the numbers show</h4>",
        _list(esc(n) for n in x.numbers),
    ]
    if causes:
        body += ["<h4>Likely causes, most likely first</h4>", _list(causes, "ol")]
    if x.fix:
        body += ["<h4>Fix</h4>", _list((esc(f) for f in x.fix), "ol")]
    if x.confirm:
        body.append(f'<p class="confirm">Confirm: <code>{esc(x.confirm)}</code></p>')
    opened = " open" if x.severity in ("critical", "warning") else ""
    return (
        f'<details class="diag {esc(x.severity)}" data-code="{esc(x.code)}"{opened}>'
        f'<summary><span class="sev">{esc(x.severity)}</span> <strong>{esc(x.title)}</strong>'
        f' <code>{esc(x.code)}</code></summary><div class="why">{"".join(body)}</div></details>'
    )


def target_block(s: TargetSnapshot, now: float) -> str:
    if not s.scraped:
        state, state_text = "pending", "PENDING"
    else:
        state, state_text = ("up", "UP") if s.up else ("down", "DOWN")
    worst = s.worst_severity or ("healthy" if s.up else "")
    meta = [f'<span class="url">{esc(s.url)}</span>']
    if s.version:
        meta.append(f"vLLM {esc(s.version)}")
    if s.up:
        meta.append(f"schema {esc(s.schema)}")
        if s.exposer != "vllm":
            meta.append(f"exposer {esc(s.exposer)}")
    if s.scrape_mode:
        meta.append(f'scrape <span class="mode">{esc(s.scrape_mode)}</span>')
    last = s.last_scrape
    scraped = age(now - last) if last is not None else "not scraped yet"
    took = f" in {s.scrape_duration * 1000:.0f} ms" if s.scrape_duration is not None else ""
    meta.append(f'last scrape <span class="age">{esc(scraped)}</span>{took}')
    if not s.up and s.last_success:
        meta.append(f"last success {esc(age(now - s.last_success))}")
    if s.restarts:
        meta.append(f"{s.restarts} restart(s) seen")
    labels = "".join(f'<span class="label">{esc(k)}={esc(v)}</span>' for k, v in s.labels)
    parts = [
        f'<section class="target {state} sev-{esc(worst)}" data-target="{esc(s.name)}">'
        f'<div class="thead"><h2><span class="dot {state}"></span>{esc(s.name)}</h2>'
        f'<span class="pill {state}">{state_text}</span></div>'
        f'<div class="meta">{" &middot; ".join(meta)}</div>'
        + (f'<div class="labels">{labels}</div>' if labels else "")
    ]
    if not s.up and s.last_error:
        parts.append(f'<p class="error">{esc(s.last_error_reason or "error")}: {esc(s.last_error)}</p>')
    if s.up:
        note = exposer_note(s)
        if note:
            parts.append(f'<p class="note">{esc(note)}</p>')
        parts.append(flags_block(s))
        parts.append(refused_block(s))
        parts += [engine_block(s, e, now) for e in s.engines]
        running = [e.current.running for e in s.engines if e.current.running is not None]
        if len(s.engines) > 1 and running:
            parts.append(
                f'<p class="total">{len(s.engines)} engines, '
                f"{fmt_count(sum(running))} requests running in all</p>"
            )
    xs = explain_all(s)
    if xs:
        parts.append('<div class="diags">' + "".join(diagnosis_block(x) for x in xs) + "</div>")
    elif s.up:
        parts.append('<p class="healthy">No findings: prefix caching looks healthy.</p>')
    parts.append("</section>")
    return "".join(parts)


CSS = """
:root{--bg:#f4f6f9;--card:#fff;--fg:#1c2430;--muted:#667085;--line:#e3e8ef;--ok:#12a150;
--warn:#d98a00;--crit:#d92d20;--info:#2e90fa;--accent:#6941c6;--chip:#eef2f6}
@media (prefers-color-scheme:dark){:root{--bg:#0f141b;--card:#171e27;--fg:#e6ebf1;
--muted:#98a2b3;--line:#2a3441;--chip:#222c38}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--info)}
header{padding:18px 16px 8px;max-width:1100px;margin:0 auto}
h1{font-size:22px;margin:0 0 4px}
.sub{color:var(--muted);margin:0;font-size:13px}
.totals{display:flex;gap:8px;flex-wrap:wrap;margin-top:10px}
.totals span{background:var(--card);border:1px solid var(--line);border-radius:999px;
padding:2px 10px;font-size:13px}
.totals .t-critical{color:var(--crit);border-color:var(--crit);font-weight:600}
.totals .t-warning{color:var(--warn);border-color:var(--warn);font-weight:600}
.totals .t-info{color:var(--info)}
main{max-width:1100px;margin:0 auto;padding:8px 12px 32px;display:grid;gap:14px}
.target{background:var(--card);border:1px solid var(--line);border-left:5px solid var(--line);
border-radius:12px;padding:14px 16px;overflow-wrap:anywhere}
.target.sev-healthy{border-left-color:var(--ok)}.target.sev-info{border-left-color:var(--info)}
.target.sev-warning{border-left-color:var(--warn)}.target.sev-critical{border-left-color:var(--crit)}
.thead{display:flex;align-items:center;gap:10px;justify-content:space-between}
h2{font-size:18px;margin:0;display:flex;align-items:center;gap:8px;min-width:0}
.dot{width:10px;height:10px;border-radius:50%;background:var(--muted);flex:none}
.dot.up{background:var(--ok)}.dot.down{background:var(--crit)}
.pill{font-size:12px;font-weight:700;padding:2px 10px;border-radius:999px;color:#fff;
background:var(--muted);flex:none}
.pill.up{background:var(--ok)}.pill.down{background:var(--crit)}
.meta{color:var(--muted);font-size:13px;margin-top:4px}
.url{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.labels,.flags{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.label,.chip{background:var(--chip);border-radius:6px;padding:1px 8px;font-size:12.5px;
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.chip.on{background:#d1fadf;color:#05603a;font-weight:600}
.tiers{margin-top:8px;display:flex;flex-wrap:wrap;gap:6px;align-items:center}
.tiers .tl,.total,.note{color:var(--muted);font-size:12.5px}
.refused{border-left:3px solid var(--warn);padding-left:10px;margin:8px 0;font-size:13px}
.chip.off{background:#fef0c7;color:#93370d;font-weight:600}
.error{background:#fef3f2;color:#b42318;border-radius:8px;padding:8px 10px;font-size:13.5px}
.engine{border-top:1px solid var(--line);margin-top:12px;padding-top:10px}
h3{font-size:15px;margin:0 0 8px;display:flex;gap:10px;align-items:baseline}
.eng{color:var(--muted);font-weight:400;font-size:13px}
.ratios{display:grid;grid-template-columns:repeat(auto-fit,minmax(96px,1fr));gap:8px}
.ratio{background:var(--chip);border-radius:10px;padding:8px 10px;display:flex;flex-direction:column}
.rl{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.rv{font-size:24px;font-weight:700;font-variant-numeric:tabular-nums}
.ratio.ok .rv{color:var(--ok)}.ratio.zero .rv{color:var(--warn)}.ratio.na .rv{color:var(--muted)}
.rd{font-size:11.5px;color:var(--muted)}
.charts{display:grid;grid-template-columns:minmax(0,1.4fr) minmax(0,1fr);gap:14px;margin-top:10px;
align-items:start}
@media (max-width:640px){.charts{grid-template-columns:1fr}.rv{font-size:21px}}
figure{margin:0}
.spark{width:100%;height:48px;display:block;background:var(--chip);border-radius:8px}
.sp-line{fill:none;stroke:var(--accent);stroke-width:2;vector-effect:non-scaling-stroke}
.sp-area{fill:var(--accent);opacity:.12}
.sp-dot{fill:var(--accent)}
.sp-grid{stroke:var(--line);stroke-dasharray:3 3;vector-effect:non-scaling-stroke}
.sp-base{stroke:var(--muted);opacity:.4;vector-effect:non-scaling-stroke}
.sp-empty{display:flex;align-items:center;justify-content:center;color:var(--muted);font-size:12px}
figcaption,.kvd{font-size:11.5px;color:var(--muted);margin-top:3px}
.kvh{display:flex;justify-content:space-between;font-size:13px;margin-bottom:4px}
.bar{height:14px;background:var(--chip);border-radius:7px;overflow:hidden}
.fill{height:100%;border-radius:7px}
.fill.low{background:var(--ok)}.fill.mid{background:var(--warn)}.fill.high{background:var(--crit)}
.diags{margin-top:12px;display:grid;gap:8px}
.diag{border:1px solid var(--line);border-radius:10px;padding:8px 12px}
.diag.critical{background:rgba(217,45,32,.06);border-color:rgba(217,45,32,.35)}
.diag.warning{background:rgba(217,138,0,.07);border-color:rgba(217,138,0,.4)}
.diag.info{background:rgba(46,144,250,.05)}
summary{cursor:pointer}
summary code,.confirm code{font-size:12px;color:var(--muted)}
.sev{font-size:11px;font-weight:700;text-transform:uppercase;padding:1px 7px;border-radius:5px;
color:#fff;background:var(--info)}
.critical .sev{background:var(--crit)}.warning .sev{background:var(--warn)}
.why{font-size:13.5px}
.why h4{margin:10px 0 2px;font-size:13px}
.why ul,.why ol{margin:2px 0;padding-left:22px}
.sum{margin:6px 0 0;font-weight:500}
.fits{display:inline-block;background:#e0eaff;color:#3538cd;border-radius:5px;padding:0 6px;
font-size:12px}
.confirm code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--fg)}
.healthy{color:var(--ok);font-weight:600;margin:10px 0 0}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
"""


def render(snapshots: Sequence[TargetSnapshot], now: float, refresh: int = REFRESH_SECONDS) -> str:
    """The whole page for the current snapshots, as of unix time ``now``."""
    snaps = list(snapshots)
    up = sum(1 for s in snaps if s.up)
    counts = {
        sev: sum(1 for s in snaps for d in s.diagnoses if d.severity == sev)
        for sev in ("critical", "warning", "info")
    }
    totals = [f"<span>{up}/{len(snaps)} up</span>"]
    totals += [f'<span class="t-{sev}">{n} {sev}</span>' for sev, n in counts.items() if n]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    body = "".join(target_block(s, now) for s in snaps) or '<p class="sub">No targets configured.</p>'
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        f"<title>vllm-cache-sidecar: {up}/{len(snaps)} up</title><style>{CSS}</style></head>"
        "<body><header><h1>vLLM prefix cache</h1>"
        f'<p class="sub">{len(snaps)} target(s) &middot; as of {stamp} &middot; refreshes every '
        f'{int(refresh)}s &middot; <a href="api/v1/targets">JSON</a> &middot; '
        f'<a href="metrics">metrics</a></p>'
        f'<div class="totals">{"".join(totals)}</div></header>'
        f"<main>{body}</main><footer>vllm-cache-sidecar</footer></body></html>\n"
    )
