"""The observation synchroniser: as-of alignment, staleness named with its age, window spacing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.runtime.obs_sync import ObservationSynchronizer, StaleSource

MS = 1_000_000


def sync(**max_age_s: float) -> ObservationSynchronizer:
    return ObservationSynchronizer(max_age_s or {"head": 0.1, "left_arm": 0.05})


def test_as_of_picks_the_newest_sample_at_or_before_the_reference_time() -> None:
    s = sync()
    for t in (0, 10, 20, 30):
        s.add("head", t * MS, f"frame{t}")
        s.add("left_arm", t * MS, f"joints{t}")
    obs = s.at(25 * MS)
    assert obs.ok
    assert obs.values == {"head": "frame20", "left_arm": "joints20"}
    assert obs.stamps_ns == {"head": 20 * MS, "left_arm": 20 * MS}
    exact = s.at(30 * MS)
    assert exact.values["head"] == "frame30"  # a sample stamped exactly at ref belongs to it
    # Never a sample from the observation's future, even when it has already arrived.
    assert s.at(29 * MS).values["head"] == "frame20"


def test_a_source_never_received_is_stale_and_named() -> None:
    s = sync()
    s.add("left_arm", 100 * MS, "joints")
    obs = s.at(100 * MS)
    assert not obs.ok
    assert [x.source for x in obs.stale] == ["head"]
    assert math.isinf(obs.stale[0].age_s)
    assert str(obs.stale[0]) == "head: nothing received"
    assert "head" not in obs.values and obs.values["left_arm"] == "joints"


def test_an_old_sample_is_stale_with_its_age_and_limit() -> None:
    s = sync()
    s.add("head", 0, "old frame")
    s.add("left_arm", 300 * MS, "joints")
    obs = s.at(310 * MS)
    assert [x.source for x in obs.stale] == ["head"]
    head = obs.stale[0]
    assert head.age_s == pytest.approx(0.31) and head.max_age_s == 0.1
    assert str(head) == "head: newest sample is 0.31 s old (max 0.10 s)"
    assert obs.values["head"] == "old frame"  # still reported, so the caller can see what it had


def test_age_exactly_at_the_limit_is_still_usable() -> None:
    s = sync()
    s.add("head", 0, "frame")
    s.add("left_arm", 0, "joints")
    assert [x.source for x in s.at(50 * MS).stale] == []
    assert [x.source for x in s.at(50 * MS + 1).stale] == ["left_arm"]


def test_out_of_order_samples_are_kept_in_stamp_order() -> None:
    s = sync()
    for t in (40, 10, 30, 20):
        s.add("head", t * MS, t)
        s.add("left_arm", t * MS, t)
    assert [s.at(t * MS + 5 * MS).values["head"] for t in (10, 20, 30, 40)] == [10, 20, 30, 40]
    assert s.newest_ns("head") == 40 * MS


def test_a_late_sample_older_than_the_history_cannot_displace_newer_ones() -> None:
    s = ObservationSynchronizer({"head": 1.0}, history=3)
    for t in (10, 20, 30):
        s.add("head", t * MS, t)
    s.add("head", 5 * MS, 5)  # arrives late, older than everything kept
    assert s.at(30 * MS).values["head"] == 30
    assert s.at(12 * MS).values["head"] == 10
    assert s.at(4 * MS).stale == (StaleSource("head", math.inf, 1.0),)


def test_history_can_differ_per_source() -> None:
    s = ObservationSynchronizer({"head": 1.0, "left_arm": 1.0}, history={"head": 2, "left_arm": 10})
    for t in range(10):
        s.add("head", t * MS, t)
        s.add("left_arm", t * MS, t)
    assert s.history == {"head": 2, "left_arm": 10}
    assert s.at(3 * MS).values == {"left_arm": 3}  # head kept only frames 8 and 9
    assert str(s.at(3 * MS).stale[0]) == "head: nothing received"
    with pytest.raises(ValueError, match="history of 'left_arm' must be an int >= 1"):
        ObservationSynchronizer({"head": 1.0, "left_arm": 1.0}, history={"head": 2})


def test_unknown_source_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="unknown observation source 'wrist'"):
        sync().add("wrist", 0, None)


def test_window_steps_back_by_the_period_oldest_first() -> None:
    s = sync(head=0.02)
    for t in range(0, 101, 10):
        s.add("head", t * MS, t)
    window = s.window(100 * MS, 3, 50 * MS)
    assert [o.ref_ns for o in window] == [0, 50 * MS, 100 * MS]
    assert [o.values["head"] for o in window] == [0, 50, 100]
    assert all(o.ok for o in window)
    shifted = s.window(104 * MS, 2, 30 * MS)
    assert [o.values["head"] for o in shifted] == [70, 100]


def test_window_before_enough_history_names_the_missing_step() -> None:
    s = sync(head=0.02)
    s.add("head", 100 * MS, "now")
    window = s.window(100 * MS, 2, 100 * MS)
    assert window[1].ok and not window[0].ok
    assert str(window[0].stale[0]) == "head: nothing received"


@settings(max_examples=60, deadline=None)
@given(stamps=st.lists(st.integers(0, 1000), min_size=1, max_size=40), ref=st.integers(0, 1100))
def test_as_of_equals_the_newest_stamp_not_after_ref(stamps, ref) -> None:
    s = ObservationSynchronizer({"x": 0.5}, history=64)
    for t in stamps:
        s.add("x", t * MS, t)
    obs = s.at(ref * MS)
    before = [t for t in stamps if t <= ref]
    if not before:
        assert "x" not in obs.values and not obs.ok
    else:
        assert obs.values["x"] == max(before) and obs.stamps_ns["x"] == max(before) * MS
        assert obs.ok == ((ref - max(before)) * MS <= 0.5e9)
