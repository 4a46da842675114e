"""First scrapes: spread over the interval, on a common 250 ms grid (one wakeup per slot)."""

from __future__ import annotations

import random

from sidecar.service import SLOT_SECONDS, first_scrape_at


def test_first_scrapes_fall_on_slots_spread_over_the_interval():
    random.seed(7)
    starts = [first_scrape_at(1000.1, 5.0, False) for _ in range(2000)]
    assert all(1000.1 <= t <= 1005.1 + SLOT_SECONDS for t in starts)
    assert all(abs(t / SLOT_SECONDS - round(t / SLOT_SECONDS)) < 1e-9 for t in starts)
    assert len(set(starts)) >= 19  # 20 slots per 5 s interval, all in use


def test_short_intervals_are_spread_without_slots_and_scraped_targets_start_now():
    random.seed(7)
    starts = {first_scrape_at(50.0, 0.3, False) for _ in range(50)}
    assert len(starts) == 50 and all(50.0 <= t <= 50.3 for t in starts)
    assert first_scrape_at(50.0, 5.0, True) == 50.0
