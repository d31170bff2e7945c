"""The chunk executor: time-indexed targets, late points, rejection, replace/crossfade/ensemble."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.robot.config import ExecutorConfig
from ate_core.runtime.chunk import ActionChunk, ChunkRejected, make_chunk
from ate_core.runtime.executor import ChunkExecutor

JOINTS = ("left_joint1", "left_gripper")
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # a realistic epoch time: ns precision must survive it
TICK = 10 * MS  # 100 Hz


def chunk(stamp_ns: int, times_ms: Sequence[float], values: Sequence[Sequence[float]],
          joints: Sequence[str] = JOINTS) -> ActionChunk:
    return make_chunk(joints, stamp_ns, [int(round(t * MS)) for t in times_ms], values, joints)


def ramp(stamp_ns: int, start: float, slope_per_s: float, n: int = 10,
         step_ms: float = 33.0) -> ActionChunk:
    """Joint 0 rises from ``start`` at ``slope_per_s``; joint 1 is ``-`` joint 0."""
    times = [i * step_ms for i in range(n)]
    values = [[start + slope_per_s * t / 1e3, -(start + slope_per_s * t / 1e3)] for t in times]
    return chunk(stamp_ns, times, values)


def executor(mode: str, **kwargs) -> ChunkExecutor:
    return ChunkExecutor(ExecutorConfig(mode=mode, **kwargs), JOINTS)


def test_single_chunk_sampled_at_100hz_is_linear_interpolation_of_its_points() -> None:
    times_ms = [0.0, 33.0, 70.0, 100.0, 160.0]
    values = [[0.0, 1.0], [0.5, 0.2], [0.1, -0.4], [0.9, 0.0], [1.3, 0.3]]
    ex = executor("replace")
    ex.add(chunk(T0, times_ms, values), T0)
    ticks = np.arange(T0, T0 + 200 * MS, TICK)
    got = np.stack([ex.target_at(int(t)) for t in ticks])
    rel_ms = (ticks - T0) / MS
    want = np.stack([np.interp(rel_ms, times_ms, np.asarray(values)[:, j]) for j in range(2)], 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got.dtype == np.float64


def test_points_due_before_arrival_are_dropped_and_counted() -> None:
    ex = executor("replace")
    c = chunk(T0, [0, 33, 66, 99], [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    arrival = T0 + 50 * MS  # points at 0 and 33 ms are already due
    assert ex.add(c, arrival) == 2
    assert ex.stats.late_points_dropped == 2 and ex.stats.chunks_added == 1
    # Executed from arrival on: the value at 50 ms lies on the segment into the 66 ms point.
    np.testing.assert_allclose(ex.target_at(arrival), [1.0 + 17 / 33, 0.0], atol=1e-12)
    assert ex.last_added_ns == arrival and ex.newest is c


def test_point_due_exactly_at_arrival_is_not_late() -> None:
    ex = executor("replace")
    assert ex.add(chunk(T0, [0, 33], [[0.0, 0.0], [1.0, 0.0]]), T0) == 0


def test_chunk_entirely_in_the_past_is_rejected_late_and_the_target_stays() -> None:
    ex = executor("crossfade")
    ex.add(chunk(T0, [0, 500], [[1.0, 2.0], [1.0, 2.0]]), T0)
    now = T0 + 200 * MS
    before = ex.target_at(now)
    stale = chunk(T0 + 10 * MS, [0, 33, 66], [[9.0, 9.0]] * 3)
    with pytest.raises(ChunkRejected) as err:
        ex.add(stale, now)
    assert err.value.rule == "late"
    assert ex.stats.rejected["late"] == 1 and ex.stats.chunks_added == 1
    np.testing.assert_array_equal(ex.target_at(now), before)
    assert ex.newest is not stale and ex.last_added_ns == T0


@pytest.mark.parametrize("stamp_offset_ms", [0, -5])
def test_duplicate_and_out_of_order_stamps_are_rejected_order(stamp_offset_ms: int) -> None:
    ex = executor("ensemble")
    first = chunk(T0, [0, 500], [[0.0, 0.0], [1.0, 1.0]])
    ex.add(first, T0)
    replay = chunk(T0 + stamp_offset_ms * MS, [0, 500], [[5.0, 5.0], [5.0, 5.0]])
    with pytest.raises(ChunkRejected) as err:
        ex.add(replay, T0 + 10 * MS)
    assert err.value.rule == "order"
    assert ex.stats.rejected == {"names": 0, "order": 1, "late": 0, "future": 0}
    assert ex.newest is first
    np.testing.assert_allclose(ex.target_at(T0 + 250 * MS), [0.5, 0.5], atol=1e-12)


def test_a_chunk_stamped_beyond_max_future_is_rejected_and_the_next_valid_one_is_accepted() -> None:
    """A policy PC whose clock runs 10 s ahead must not silence the policy: the far-future chunk
    is refused and does not become what later stamps are compared against."""
    ex = executor("replace", max_future_s=0.05)
    ex.add(chunk(T0, [0, 500], [[0.0, 0.0], [1.0, 1.0]]), T0)
    ahead = chunk(T0 + 10_000 * MS, [0, 500], [[9.0, 9.0], [9.0, 9.0]])
    with pytest.raises(ChunkRejected) as err:
        ex.add(ahead, T0 + 10 * MS)
    assert err.value.rule == "future" and "synchronised" in str(err.value)
    assert ex.stats.rejected["future"] == 1 and ex.newest is not ahead
    valid = chunk(T0 + 20 * MS, [0, 500], [[2.0, 2.0], [3.0, 3.0]])
    assert ex.add(valid, T0 + 20 * MS) == 0
    assert ex.newest is valid and ex.stats.chunks_added == 2


def test_a_chunk_stamped_slightly_ahead_within_max_future_is_accepted() -> None:
    ex = executor("replace", max_future_s=0.05)
    ex.add(chunk(T0 + 40 * MS, [0, 500], [[0.0, 0.0], [1.0, 1.0]]), T0)
    with pytest.raises(ChunkRejected) as err:
        ex.add(chunk(T0 + 100 * MS, [0, 500], [[0.0, 0.0], [1.0, 1.0]]), T0 + 49 * MS)
    assert err.value.rule == "future"  # 51 ms ahead


def test_wrong_joint_names_or_order_are_rejected_names() -> None:
    ex = executor("replace")
    other = chunk(T0, [0], [[0.0, 0.0]], joints=("right_joint1", "right_gripper"))
    swapped = ActionChunk(JOINTS[::-1], T0, np.array([0], np.int64), np.zeros((1, 2)))
    for bad in (other, swapped):
        with pytest.raises(ChunkRejected) as err:
            ex.add(bad, T0)
        assert err.value.rule == "names"
    assert ex.stats.rejected["names"] == 2
    assert ex.target_at(T0) is None and ex.newest is None


def test_holding_after_the_end_returns_the_last_point() -> None:
    for mode in ("replace", "crossfade", "ensemble"):
        ex = executor(mode)
        ex.add(chunk(T0, [0, 33, 66], [[0.0, 0.0], [1.0, -1.0], [2.0, -2.0]]), T0)
        assert not ex.holding(T0 + 66 * MS)
        for later_ms in (67, 100, 5000):
            assert ex.holding(T0 + later_ms * MS), mode
            np.testing.assert_array_equal(ex.target_at(T0 + later_ms * MS), [2.0, -2.0])


def test_before_its_first_point_a_chunk_holds_that_point() -> None:
    ex = executor("replace")
    ex.add(chunk(T0, [40, 80], [[3.0, 1.0], [4.0, 1.0]]), T0)
    np.testing.assert_array_equal(ex.target_at(T0 + 10 * MS), [3.0, 1.0])


def test_replace_switches_to_the_new_chunk_at_once() -> None:
    ex = executor("replace")
    ex.add(ramp(T0, 0.0, 1.0), T0)
    second = ramp(T0 + 100 * MS, 5.0, -1.0)
    ex.add(second, T0 + 120 * MS)
    t = T0 + 120 * MS
    np.testing.assert_allclose(ex.target_at(t), [5.0 - 0.02, -(5.0 - 0.02)], atol=1e-12)
    assert ex.kept_chunks == 1


def test_crossfade_at_half_the_window_is_the_average_of_both_chunks() -> None:
    ex = executor("crossfade", crossfade_s=0.1)
    a, b = ramp(T0, 0.0, 1.0), ramp(T0 + 60 * MS, 4.0, -2.0)
    ex.add(a, T0)
    arrival = T0 + 80 * MS
    ex.add(b, arrival)
    np.testing.assert_allclose(ex.target_at(arrival), [0.08, -0.08], atol=1e-12)  # a alone
    half = arrival + 50 * MS
    # a at 130 ms: 0.13; b at 70 ms after its stamp: 4 - 0.14 = 3.86.
    np.testing.assert_allclose(ex.target_at(half), [(0.13 + 3.86) / 2, -(0.13 + 3.86) / 2],
                               atol=1e-12)
    done = arrival + 100 * MS
    np.testing.assert_allclose(ex.target_at(done), [4.0 - 2.0 * 0.12, -(4.0 - 2.0 * 0.12)],
                               atol=1e-12)


def test_third_chunk_arriving_mid_fade_fades_from_the_blend_without_a_jump() -> None:
    window_s, slope = 0.1, 0.5
    ex = executor("crossfade", crossfade_s=window_s)
    replace = executor("replace")
    chunks = [(ramp(T0, 0.0, slope, n=30), T0),
              (ramp(T0 + 90 * MS, 1.0, slope, n=30), T0 + 100 * MS),
              (ramp(T0 + 140 * MS, 2.0, slope, n=30), T0 + 150 * MS)]  # b is half faded in
    targets, replaced = [], []
    pending = list(chunks)
    for t in range(T0, T0 + 400 * MS, TICK):
        while pending and pending[0][1] <= t:
            c, arrival = pending.pop(0)
            ex.add(c, arrival)
            replace.add(c, arrival)
        targets.append(ex.target_at(t)[0])
        replaced.append(replace.target_at(t)[0])
    steps = np.abs(np.diff(targets))
    # Two fades overlap at most; no two values differ by more than the range of all points.
    points = np.concatenate([c.positions[:, 0] for c, _ in chunks])
    spread = points.max() - points.min()
    bound = slope * 0.01 + 2 * spread * 0.01 / window_s
    assert steps.max() <= bound + 1e-12
    assert np.abs(np.diff(replaced)).max() > 0.9  # what replace would have done
    # At c's arrival the target is still the a/b blend: (1-0.5) a + 0.5 b at 150 ms.
    at_c = targets[15]
    np.testing.assert_allclose(at_c, 0.5 * 0.075 + 0.5 * (1.0 + 0.03), atol=1e-12)


def test_zero_crossfade_window_behaves_like_replace() -> None:
    fade, replace = executor("crossfade", crossfade_s=0.0), executor("replace")
    for ex in (fade, replace):
        ex.add(ramp(T0, 0.0, 1.0), T0)
        ex.add(ramp(T0 + 50 * MS, 3.0, 1.0), T0 + 60 * MS)
    for t in range(T0 + 60 * MS, T0 + 400 * MS, TICK):
        np.testing.assert_array_equal(fade.target_at(t), replace.target_at(t))


def test_ensemble_is_the_act_weighted_mean_of_the_covering_chunks() -> None:
    k = 0.5
    ex = executor("ensemble", ensemble_k=k)
    a = chunk(T0, [0, 300], [[0.0, 10.0], [3.0, 10.0]])
    b = chunk(T0 + 50 * MS, [0, 300], [[1.0, 20.0], [1.0, 20.0]])
    c = chunk(T0 + 100 * MS, [0, 300], [[5.0, 30.0], [2.0, 30.0]])
    ex.add(a, T0)
    ex.add(b, T0 + 50 * MS)
    ex.add(c, T0 + 100 * MS)
    t = T0 + 200 * MS
    values = np.array([[2.0, 10.0], [1.0, 20.0], [4.0, 30.0]])  # a, b, c at 200 ms
    weights = np.exp(-k * np.arange(3))  # i = 0 is the oldest
    np.testing.assert_allclose(ex.target_at(t), weights @ values / weights.sum(), atol=1e-12)
    # Past a's end only b and c cover: b is now the oldest and has weight 1.
    t = T0 + 320 * MS
    values = np.array([[1.0, 20.0], [5.0 - 2.2, 30.0]])
    weights = np.exp(-k * np.arange(2))
    np.testing.assert_allclose(ex.target_at(t), weights @ values / weights.sum(), atol=1e-12)


def test_ensemble_keeps_only_the_newest_max_chunks() -> None:
    ex = executor("ensemble", ensemble_k=0.0, max_chunks=2)
    for i, value in enumerate([100.0, 1.0, 3.0]):
        ex.add(chunk(T0 + i * MS, [0, 500], [[value, value]] * 2), T0 + i * MS)
    assert ex.kept_chunks == 2
    np.testing.assert_allclose(ex.target_at(T0 + 100 * MS), [2.0, 2.0], atol=1e-12)


def test_ensemble_counts_a_chunk_only_from_its_arrival() -> None:
    ex = executor("ensemble", ensemble_k=0.0)
    ex.add(chunk(T0, [0, 500], [[0.0, 0.0]] * 2), T0)
    ex.add(chunk(T0 + 10 * MS, [0, 500], [[4.0, 4.0]] * 2), T0 + 100 * MS)
    np.testing.assert_allclose(ex.target_at(T0 + 50 * MS), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(ex.target_at(T0 + 100 * MS), [2.0, 2.0], atol=1e-12)


def test_crossfade_beyond_max_chunks_folds_the_oldest_without_a_jump() -> None:
    ex = executor("crossfade", crossfade_s=0.2, max_chunks=1)
    ex.add(chunk(T0, [0, 1000], [[0.0, 0.0]] * 2), T0)
    ex.add(chunk(T0 + 1 * MS, [0, 1000], [[1.0, 1.0]] * 2), T0 + 100 * MS)
    mid = ex.target_at(T0 + 150 * MS)
    np.testing.assert_allclose(mid, [0.25, 0.25], atol=1e-12)
    ex.add(chunk(T0 + 2 * MS, [0, 1000], [[-1.0, -1.0]] * 2), T0 + 150 * MS)
    assert ex.kept_chunks == 1
    np.testing.assert_allclose(ex.target_at(T0 + 150 * MS), mid, atol=1e-12)
    np.testing.assert_allclose(ex.target_at(T0 + 250 * MS), [0.25 * 0.5 - 0.5] * 2, atol=1e-12)
    np.testing.assert_allclose(ex.target_at(T0 + 350 * MS), [-1.0, -1.0], atol=1e-12)


def test_completed_fades_forget_the_chunks_they_replaced() -> None:
    ex = executor("crossfade", crossfade_s=0.05, max_chunks=8)
    for i in range(6):
        ex.add(ramp(T0 + i * 100 * MS, float(i), 0.0), T0 + i * 100 * MS + 5 * MS)
    assert ex.kept_chunks == 2  # the newest, fading in, and the one it fades from
    np.testing.assert_allclose(ex.target_at(T0 + 600 * MS), [5.0, -5.0], atol=1e-12)


def test_clear_forgets_every_chunk() -> None:
    ex = executor("crossfade")
    ex.add(ramp(T0, 0.0, 1.0), T0)
    ex.clear()
    assert ex.target_at(T0 + 10 * MS) is None
    assert ex.newest is None and ex.last_added_ns is None and ex.kept_chunks == 0
    assert not ex.holding(T0 + 10 * MS)


def test_stamps_must_keep_increasing_across_clear() -> None:
    ex = executor("replace")
    first = ramp(T0, 0.0, 1.0)
    ex.add(first, T0)
    ex.clear()
    with pytest.raises(ChunkRejected) as err:
        ex.add(first, T0 + 10 * MS)  # the same chunk delivered again after an e-stop
    assert err.value.rule == "order"
    ex.add(ramp(T0 + 20 * MS, 0.0, 1.0), T0 + 20 * MS)
    assert ex.target_at(T0 + 20 * MS) is not None


# -- properties over random chunk streams -------------------------------------------------------


@dataclass
class Stream:
    """Adds at random times between 100 Hz ticks; records what was accepted and every target."""

    accepted: List[Tuple[int, ActionChunk]] = field(default_factory=list)
    ticks: List[Tuple[int, Optional[np.ndarray]]] = field(default_factory=list)


@st.composite
def chunk_streams(draw) -> List[Tuple[int, ActionChunk]]:
    """(arrival_ns, chunk) in arrival order: stamps up to 300 ms before arrival, sometimes
    out of order or entirely late, 1-6 points 1-100 ms apart, values in [-3, 3]."""
    events = []
    now = T0
    for _ in range(draw(st.integers(1, 10))):
        now += draw(st.integers(0, 250)) * MS
        stamp = now - draw(st.integers(0, 300)) * MS
        n = draw(st.integers(1, 6))
        offset = draw(st.integers(0, 50))
        gaps = draw(st.lists(st.integers(1, 100), min_size=n - 1, max_size=n - 1))
        times = np.cumsum([offset] + gaps).tolist()
        values = draw(st.lists(st.lists(st.floats(-3, 3), min_size=2, max_size=2),
                               min_size=n, max_size=n))
        events.append((now, chunk(stamp, times, values)))
    return events


def run_stream(ex: ChunkExecutor, events: List[Tuple[int, ActionChunk]]) -> Stream:
    out = Stream()
    pending = list(events)
    end = events[-1][0] + 500 * MS
    for t in range(T0, end, TICK):
        while pending and pending[0][0] <= t:
            arrival, c = pending.pop(0)
            try:
                ex.add(c, arrival)
                out.accepted.append((arrival, c))
            except ChunkRejected as err:
                assert err.rule in ("order", "late")
        out.ticks.append((t, ex.target_at(t)))
    return out


def point_range(chunks: Sequence[ActionChunk]) -> Tuple[np.ndarray, np.ndarray]:
    points = np.concatenate([c.positions for c in chunks])
    return points.min(axis=0), points.max(axis=0)


def max_slope_per_ns(chunks: Sequence[ActionChunk]) -> np.ndarray:
    slopes = [np.abs(np.diff(c.positions, axis=0)) / np.diff(c.times_ns)[:, None]
              for c in chunks if len(c) > 1]
    return np.max(np.concatenate(slopes), axis=0) if slopes else np.zeros(2)


@settings(max_examples=150, deadline=None)
@given(events=chunk_streams(), mode=st.sampled_from(["replace", "crossfade", "ensemble"]),
       crossfade_s=st.floats(0.0, 0.3), ensemble_k=st.floats(0.0, 3.0),
       max_chunks=st.integers(1, 4))
def test_every_target_is_finite_and_inside_the_points_of_the_accepted_chunks(
        events, mode, crossfade_s, ensemble_k, max_chunks) -> None:
    """All modes are convex combinations of clamped linear interpolations of chunk points."""
    ex = ChunkExecutor(ExecutorConfig(mode=mode, crossfade_s=crossfade_s, ensemble_k=ensemble_k,
                                      max_chunks=max_chunks), JOINTS)
    stream = run_stream(ex, events)
    first_arrival = stream.accepted[0][0] if stream.accepted else None
    for t, target in stream.ticks:
        if first_arrival is None or t < first_arrival:
            assert target is None
            continue
        so_far = [c for arrival, c in stream.accepted if arrival <= t]
        lo, hi = point_range(so_far)
        assert target is not None and target.shape == (2,) and np.isfinite(target).all()
        assert np.all(target >= lo - 1e-9) and np.all(target <= hi + 1e-9), (t, target, lo, hi)
    assert ex.stats.chunks_added == len(stream.accepted)
    assert ex.kept_chunks <= max_chunks


@settings(max_examples=150, deadline=None)
@given(events=chunk_streams(), window_ms=st.integers(20, 300), max_chunks=st.integers(1, 4))
def test_crossfade_change_per_tick_is_bounded_by_chunk_slopes_and_fades(
        events, window_ms, max_chunks) -> None:
    """Per joint, |T(t2) - T(t1)| <= S dt + F D dt / W.

    T_k = (1 - w_k) T_{k-1} + w_k p_k, so T_k' = (1 - w_k) T_{k-1}' + w_k p_k'
    + w_k' (p_k - T_{k-1}). Each p_k is piecewise linear with |p_k'| <= S (the steepest segment
    of any accepted chunk); |w_k'| is 1/W while chunk k fades in and 0 otherwise; p_k and T_{k-1}
    both lie in the range of all points, so |p_k - T_{k-1}| <= D (that range's width). By
    induction |T'| <= S + F D / W, F the number of fades in progress (a folded base is a
    constant inside that range, slope 0). T is continuous, and an add keeps its value at the
    arrival, so the bound integrates over a tick even when chunks arrive inside it; F counts
    the chunks whose fade window (a, a + W) meets the tick.
    """
    window_ns = window_ms * MS
    ex = ChunkExecutor(ExecutorConfig(mode="crossfade", crossfade_s=window_ms / 1e3,
                                      max_chunks=max_chunks), JOINTS)
    stream = run_stream(ex, events)
    for (t1, y1), (t2, y2) in zip(stream.ticks, stream.ticks[1:]):
        if y1 is None:
            continue
        so_far = [c for arrival, c in stream.accepted if arrival <= t2]
        lo, hi = point_range(so_far)
        fades = sum(1 for arrival, _ in stream.accepted
                    if arrival <= t2 and arrival + window_ns > t1)
        dt = t2 - t1
        bound = max_slope_per_ns(so_far) * dt + fades * (hi - lo) * dt / window_ns
        assert np.all(np.abs(y2 - y1) <= bound + 1e-9), (t1, y1, y2, bound)


def test_at_each_due_time_the_target_is_exactly_that_point() -> None:
    n = 50
    values = [[math.sin(i / 5.0), math.cos(i / 7.0)] for i in range(n)]
    c = chunk(T0, [33.0 * i for i in range(n)], values)
    ex = executor("replace")
    ex.add(c, T0)
    for i, due in enumerate(c.due_ns):
        np.testing.assert_array_equal(ex.target_at(int(due)), values[i])
