"""The soak's arithmetic (``bench/soak.py``) on synthetic data: the window, the RSS slope, the
growth flags, the lateness of scrape cycles and the tracked-target count. The soak itself runs
for an hour outside CI (``make soak``); these check that what it prints means what it says."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict

import pytest

from bench.soak import COLUMNS, Row, lateness, read_csv, settled, summarize, tracked_targets


def _row(minute: int, rss: float, fds: int = 20, conns: int = 12, tasks: int | str = 1004) -> Row:
    return Row(
        elapsed_s=60.0 * minute,
        rss_mb=rss,
        cpu_s=20.0 * minute,
        cpu_frac=0.33,
        fds=fds,
        tcp_conns=conns,
        tcp_established=conns,
        tasks=tasks,
        scrape_tasks=1000,
        targets_configured=1000,
        targets_tracked=1000,
        targets_up=1000,
        churns=minute // 3,
        scrapes=12000,
        late_targets=1 if minute == 7 else 0,
        gap_max_ratio=1.9 if minute == 7 else 1.02,
        gap_p99_ratio=1.01,
        metrics_gets=12,
        metrics_errors=0,
        metrics_max_ms=40.0,
        loadavg=1.0,
    )


def _write(tmp_path, rows: list[Row]):
    path = tmp_path / "soak.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    return path


def test_an_hour_fits_the_last_40_minutes_and_finds_the_leaking_column(tmp_path):
    # RSS: a fast start-up climb for 20 minutes, then exactly +0.6 MB/h; connections leak one a
    # minute after minute 30; fds and tasks stay flat
    rows = [
        _row(m, rss=(60.0 + m if m <= 20 else 80.0 + 0.01 * (m - 20)), conns=12 + max(0, m - 30))
        for m in range(1, 61)
    ]
    sm = summarize(read_csv(_write(tmp_path, rows)))
    assert sm.minutes == 60
    assert (sm.window_from_s, sm.window_to_s) == (1200.0, 3600.0)
    assert sm.rss_slope_mb_h == pytest.approx(0.6)
    assert sm.rss_slope_se_mb_h == pytest.approx(0.0, abs=1e-9)
    assert sm.rss_slope_rel_pct_h == pytest.approx(100 * 0.6 / sm.rss_mean_mb)
    assert sm.trends["tcp_conns"].grew and sm.trends["tcp_conns"].last == 42
    assert not sm.trends["fds"].grew and sm.trends["fds"].slope_per_h == 0
    assert not sm.trends["tasks"].grew
    assert sm.peaks["rss_mb"] == pytest.approx(80.4)
    assert (sm.late_minutes, sm.gap_max_ratio) == (1, 1.9)


def test_a_short_run_fits_its_last_two_thirds_and_tolerates_missing_task_counts(tmp_path):
    rows = [
        _row(
            m,
            rss=70.0 + (0.5 if m % 2 else -0.5),
            tasks="n/a",
            fds=[20, 20, 20, 20, 20, 20, 19, 18, 22, 20][m - 1],
        )
        for m in range(1, 11)
    ]
    loaded = read_csv(_write(tmp_path, rows))
    assert [r["elapsed_s"] for r in settled(loaded)] == [240.0, 300.0, 360.0, 420.0, 480.0, 540.0, 600.0]
    sm = summarize(loaded)
    assert abs(sm.rss_slope_mb_h) < 2 * sm.rss_slope_se_mb_h  # noise only: within its error
    assert math.isnan(sm.peaks["tasks"]) and not sm.trends["tasks"].grew
    assert not sm.trends["fds"].grew  # ends above where it started, but only by noise


def test_lateness_counts_long_gaps_and_targets_nobody_scrapes_any_more():
    t0, t1, iv = 1000.0, 1060.0, 5.0
    hits = {
        "steady": [995.0 + 5 * i for i in range(14)],  # every 5 s through the minute
        "stalled": [995.0 + 5 * i for i in range(6)],  # last scrape at 1020: open gap of 40 s
        "hiccup": [995.0, 1000.0, 1005.0, 1015.0, 1020.0],  # one 10 s gap, then nothing
        "gone": [990.0],  # removed before the minute: not among the names, still counted as scrapes
    }
    late = lateness(hits, ["steady", "stalled", "hiccup"], t0, t1, iv)
    assert late.late_targets == 3 - 1
    assert late.gap_max_ratio == pytest.approx(40.0 / iv)
    assert late.scrapes == 12 + 5 + 4  # in [t0, t1): the scrape at t1 belongs to the next minute
    only_steady = lateness(hits, ["steady"], t0, t1, iv)
    assert (only_steady.late_targets, only_steady.gap_max_ratio) == (0, 1.0)


def test_tracked_targets_reads_target_up_whatever_the_label_order():
    body = (
        b"# TYPE vllm_sidecar_target_up gauge\n"
        b'vllm_sidecar_target_up{target="a"} 1.0\n'
        b'vllm_sidecar_target_up{namespace="llm",target="b"} 0.0\n'
        b'vllm_sidecar_target_up{subtarget="x",target="c"} 1.0\n'
        b'vllm_sidecar_target_restarts_total{target="d"} 0.0\n'
    )
    assert tracked_targets(body) == (3, 2)
