"""The supervisor's tick statistics, as /diagnostics and the control-loop benchmark report them."""

import math

from ate_core.runtime.tick_timing import TickTiming

MS = 1_000_000


def test_punctual_ticks_have_no_error_and_miss_nothing():
    timing = TickTiming(10 * MS)
    for i in range(101):
        timing.record(5 * MS + i * 10 * MS)
    s = timing.summary()
    assert s["ticks"] == 101 and s["missed"] == 0
    assert s["period_p50_ms"] == s["period_p99_ms"] == 10.0 and s["error_p99_ms"] == 0.0


def test_a_late_tick_counts_the_periods_it_skipped():
    timing = TickTiming(10 * MS)
    for t in (0, 10, 20, 51, 61):  # 20 -> 51 ms: the ticks due at 30 and 40 ms never ran
        timing.record(t * MS)
    s = timing.summary()
    assert s["missed"] == 2 and s["ticks"] == 5
    assert math.isclose(s["period_p99_ms"], 31.0, rel_tol=0.05)
    assert s["error_p99_ms"] > 20.0


def test_a_slightly_late_tick_is_error_not_a_miss():
    timing = TickTiming(10 * MS)
    for t in (0, 10, 24, 34):
        timing.record(t * MS)
    assert timing.summary()["missed"] == 0


def test_no_periods_yet_reports_nan_not_zero():
    timing = TickTiming(10 * MS)
    timing.record(0)
    s = timing.summary()
    assert s["ticks"] == 1 and math.isnan(s["period_p50_ms"]) and math.isnan(s["error_p99_ms"])


def test_the_window_keeps_only_recent_periods():
    timing = TickTiming(10 * MS, window=10)
    t = 0
    for _ in range(50):
        t += 30 * MS  # a bad start ...
        timing.record(t)
    for _ in range(20):
        t += 10 * MS  # ... then punctual: only these stay in the window
        timing.record(t)
    s = timing.summary()
    assert s["period_p99_ms"] == 10.0 and s["missed"] == 98
