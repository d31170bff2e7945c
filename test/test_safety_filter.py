"""The supervisor's safety filter: what every command it lets through satisfies, and why."""

import dataclasses
import math
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.robot.config import WorkspaceBox, load_config
from ate_core.robot.collision import CapsuleModel
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.safety import RULES, FilterResult, Intervention, SafetyFilter

CFG = load_config("config/bimanual.yaml")
LAYOUT = layout_from_config(CFG)
SAFETY = CFG.supervisor.safety
PERIOD_S = 0.01
FILTER = SafetyFilter(LAYOUT, SAFETY, PERIOD_S, CFG.gripper.max_opening_m)
J = len(LAYOUT.joint_names)
LEFT = slice(0, 8)  # left_joint1..7, left_gripper
RIGHT = slice(8, 16)
LEFT_GRIPPER, RIGHT_GRIPPER = 7, 15
HOME = np.r_[CFG.arms.left.home_rad, 0.05, CFG.arms.right.home_rad, 0.05]
REST = np.zeros(J)
CAPSULES = CapsuleModel(SAFETY.link_radius_m)


def pose(left: Sequence[float] = None, right: Sequence[float] = None,
         grippers: Tuple[float, float] = (0.05, 0.05)) -> np.ndarray:
    q = HOME.copy()
    if left is not None:
        q[0:7] = left
    if right is not None:
        q[8:15] = right
    q[LEFT_GRIPPER], q[RIGHT_GRIPPER] = grippers
    return q


def tcp(q: np.ndarray, side: str) -> np.ndarray:
    arm = LAYOUT.arm(side)
    span = LEFT if side == "left" else RIGHT
    return arm.tcp_pose(q[span][:7])[:3, 3]


def clearance(q: np.ndarray) -> float:
    return CAPSULES.clearance_m(LAYOUT, {"left": q[0:7], "right": q[8:15]})


def box_excess(point: np.ndarray, box: WorkspaceBox) -> float:
    gap = np.maximum(np.maximum(np.array(box.min_m) - point, 0.0), point - np.array(box.max_m))
    return float(np.linalg.norm(gap))


def run(flt: SafetyFilter, start: np.ndarray, targets: Sequence[np.ndarray],
        velocity: np.ndarray = REST) -> Iterator[Tuple[np.ndarray, np.ndarray, FilterResult]]:
    """Feed targets tick by tick, each command becoming the next previous: (prev, prev_v, result)."""
    prev, prev_v = start.copy(), velocity.copy()
    for target in targets:
        result = flt.clamp(target, prev, prev_v)
        yield prev, prev_v, result
        prev, prev_v = result.positions, result.velocities


def final(flt: SafetyFilter, start: np.ndarray, target: np.ndarray, ticks: int) -> FilterResult:
    result = None
    for _, _, result in run(flt, start, [target] * ticks):
        pass
    return result


def rules_of(result: FilterResult, side: str) -> set:
    return {i.rule for i in result.interventions if i.arm == side}


def assert_safe(prev: np.ndarray, prev_v: np.ndarray, result: FilterResult,
                flt: SafetyFilter = FILTER) -> None:
    """The invariants every command keeps, checked with the layout's own kinematics."""
    q, v = result.positions, result.velocities
    assert q.shape == v.shape == (J,) and q.dtype == v.dtype == np.float64
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(v))
    assert np.all(q >= flt.lower - 1e-9) and np.all(q <= flt.upper + 1e-9)
    assert np.all(np.abs(q - prev) <= flt.max_velocity * PERIOD_S + 1e-9)
    np.testing.assert_allclose(v, (q - prev) / PERIOD_S, rtol=0, atol=1e-9)
    for side in ("left", "right"):
        assert box_excess(tcp(q, side), flt.config.workspace[side]) <= 1e-9, side
    assert clearance(q) >= flt.config.min_arm_distance_m - 1e-6
    # Interventions are well formed and unique.
    assert all(i.rule in RULES and i.arm in ("left", "right") for i in result.interventions)
    assert len(set(result.interventions)) == len(result.interventions)
    # Only position-type rules may decelerate harder than the acceleration cap.
    excused = {"joint_limit", "workspace", "arm_distance"}
    for side, span in (("left", LEFT), ("right", RIGHT)):
        if not rules_of(result, side) & excused:
            dv = np.abs(v[span] - prev_v[span])
            assert np.all(dv <= flt.max_acceleration[span] * PERIOD_S + 1e-6), side


# ------------------------------------------------------------------------------ properties

NASTY = st.sampled_from([math.nan, math.inf, -math.inf, 1e6, -1e6, 20.0, -20.0])
ANY_VALUE = st.one_of(st.floats(-4.0, 4.0), st.floats(-50.0, 50.0), NASTY)
NOISE = st.lists(st.floats(-0.5, 0.5), min_size=J, max_size=J).map(np.array)

REACH_RIGHT = [-1.57, 1.57, 0.0, 0.0, 0.0, 0.0, 0.0]  # left arm laid across to the right arm
REACH_LEFT = [1.57, 1.57, 0.0, 0.0, 0.0, 0.0, 0.0]
BEHIND = [2.9, 0.5, 0.0, 1.6, 0.0, 1.0, 0.0]  # TCP behind the base, x < -0.05
LOW = [0.0, 2.2, 0.0, 1.5, 0.0, 1.0, 0.0]  # TCP towards the table
GOALS = {
    "reach_right": pose(left=REACH_RIGHT),
    "reach_left": pose(right=REACH_LEFT),
    "cross_both": pose(left=REACH_RIGHT, right=REACH_LEFT),
    "behind": pose(left=BEHIND, right=[-v for v in BEHIND]),
    "low": pose(left=LOW, right=LOW),
    "home": HOME,
}
STARTS = {
    "home": HOME,
    "left_near_right": pose(left=[-0.8, 1.0, 0.0, 0.8, 0.0, 1.0, 0.0]),
    "right_near_left": pose(right=[0.8, 1.0, 0.0, 0.8, 0.0, 1.0, 0.0]),
    "left_low": pose(left=[0.0, 2.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
}


@st.composite
def goals(draw) -> np.ndarray:
    kind = draw(st.sampled_from(["wild", *GOALS]))
    if kind == "wild":
        return np.array(draw(st.lists(ANY_VALUE, min_size=J, max_size=J)))
    goal = GOALS[kind] + draw(NOISE)
    goal[LEFT_GRIPPER], goal[RIGHT_GRIPPER] = draw(st.floats(-0.1, 0.2)), draw(st.floats(-0.1, 0.2))
    return goal


@st.composite
def chunks(draw) -> List[np.ndarray]:
    """20-100 ticks through 1-4 goals, some ticks corrupted (NaN, inf, huge values)."""
    ticks = draw(st.integers(20, 100))
    waypoints = draw(st.lists(goals(), min_size=1, max_size=4))
    targets = [waypoints[k * len(waypoints) // ticks].copy() for k in range(ticks)]
    for tick, joint, value in draw(st.lists(st.tuples(st.integers(0, ticks - 1),
                                                      st.integers(0, J - 1), NASTY), max_size=6)):
        targets[tick][joint] = value
    return targets


def test_every_start_state_is_safe():
    for name, q in STARTS.items():
        assert FILTER.violations(q) == (), name


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(STARTS)), goals())
def test_one_tick_from_rest_keeps_every_invariant(start, target):
    prev = STARTS[start]
    assert_safe(prev, REST, FILTER.clamp(target, prev, REST))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(STARTS)), chunks())
def test_every_tick_of_a_chunk_keeps_every_invariant(start, targets):
    for prev, prev_v, result in run(FILTER, STARTS[start], targets):
        assert_safe(prev, prev_v, result)
        assert FILTER.violations(result.positions) == ()


@st.composite
def any_start(draw) -> np.ndarray:
    """Anywhere inside the joint limits: often outside a box or with the arms intersecting."""
    return np.array([draw(st.floats(lo, hi)) for lo, hi in zip(FILTER.lower, FILTER.upper)])


@settings(max_examples=40, deadline=None)
@given(any_start(), chunks())
def test_from_an_unsafe_start_no_tick_makes_a_violation_worse(start, targets):
    boxes = SAFETY.workspace
    for prev, prev_v, result in run(FILTER, start, targets):
        q = result.positions
        assert np.all(np.isfinite(q))
        assert np.all(q >= FILTER.lower - 1e-9) and np.all(q <= FILTER.upper + 1e-9)
        assert np.all(np.abs(q - prev) <= FILTER.max_velocity * PERIOD_S + 1e-9)
        for side in ("left", "right"):
            before = box_excess(tcp(prev, side), boxes[side])
            assert box_excess(tcp(q, side), boxes[side]) <= before + 1e-9, side
        assert clearance(q) >= min(clearance(prev), SAFETY.min_arm_distance_m) - 1e-6


# ------------------------------------------------------------------------------ limits


def test_limits_are_the_rated_ones_scaled_and_moved_inwards():
    deg = math.pi / 180
    assert FILTER.joint_names == LAYOUT.joint_names
    assert FILTER.upper[1] == pytest.approx(130 * deg - 0.05)
    assert FILTER.lower[6] == pytest.approx(-360 * deg + 0.05)
    assert (FILTER.lower[LEFT_GRIPPER], FILTER.upper[LEFT_GRIPPER]) == (0.0, 0.070)
    assert FILTER.max_velocity[0] == pytest.approx(0.5 * 180 * deg)
    assert FILTER.max_velocity[10] == pytest.approx(0.5 * 225 * deg)
    assert FILTER.max_velocity[RIGHT_GRIPPER] == pytest.approx(0.1)
    assert FILTER.max_acceleration[3] == pytest.approx(0.2 * 3000 * deg)
    assert FILTER.max_acceleration[LEFT_GRIPPER] == math.inf


# ------------------------------------------------------------------------------ behaviours


def test_a_feasible_small_step_passes_unchanged():
    target = HOME + np.r_[np.full(7, 5e-4), 1e-4, np.full(7, -5e-4), -1e-4]
    result = FILTER.clamp(target, HOME, REST)
    np.testing.assert_array_equal(result.positions, target)
    np.testing.assert_allclose(result.velocities, (target - HOME) / PERIOD_S, atol=1e-12)
    assert result.interventions == ()


def test_nan_target_holds_that_arm_only_and_is_counted():
    target = HOME + 5e-4
    target[2] = math.nan
    result = FILTER.clamp(target, HOME, REST)
    np.testing.assert_array_equal(result.positions[LEFT], HOME[LEFT])
    np.testing.assert_array_equal(result.positions[RIGHT], target[RIGHT])
    assert result.interventions == (Intervention("non_finite", "left"),)


def test_nan_target_while_moving_brakes_within_the_acceleration_cap():
    velocity = np.zeros(J)
    velocity[0] = 1.0
    target = HOME.copy()
    target[LEFT] = math.inf
    ticks = list(run(FILTER, HOME, [target] * 20, velocity))
    for prev, prev_v, result in ticks:
        assert_safe(prev, prev_v, result)
        assert ("non_finite", "left") in {(i.rule, i.arm) for i in result.interventions}
    # 1 rad/s at 10.5 rad/s^2 stops in 10 ticks.
    assert ticks[-1][2].velocities[0] == 0.0


def test_target_across_a_joint_limit_stops_at_the_limit_minus_margin():
    # The wrist roll: turning it moves no link, so only the joint limit can stop it.
    start = HOME.copy()
    start[6] = 5.5
    target = start.copy()
    target[6] = 9.0  # beyond its 360 deg
    ticks = list(run(FILTER, start, [target] * 100))
    assert ("joint_limit", "left") in {(i.rule, i.arm) for i in ticks[0][2].interventions}
    for prev, prev_v, result in ticks:
        assert_safe(prev, prev_v, result)
        assert result.positions[6] <= FILTER.upper[6]
    end = ticks[-1][2]
    assert end.positions[6] == pytest.approx(2 * math.pi - SAFETY.joint_margin_rad, abs=1e-9)
    assert end.velocities[6] == pytest.approx(0.0, abs=1e-6)


def test_braking_towards_a_limit_never_needs_more_than_the_acceleration_cap():
    # Full speed straight at joint 4's limit: the braking cap starts slowing it in time.
    start = HOME.copy()
    start[3] = FILTER.upper[3] - 0.5
    velocity = np.zeros(J)
    velocity[3] = FILTER.max_velocity[3]
    target = start.copy()
    target[3] = 10.0
    for prev, prev_v, result in run(FILTER, start, [target] * 100, velocity):
        assert result.positions[3] <= FILTER.upper[3]
        assert abs(result.velocities[3] - prev_v[3]) <= FILTER.max_acceleration[3] * PERIOD_S + 1e-6
    assert result.positions[3] == pytest.approx(FILTER.upper[3], abs=1e-9)


def test_a_big_jump_is_limited_to_the_velocity_cap():
    # Already at full speed (so acceleration is not what limits), asked for a 1 rad jump.
    velocity = np.zeros(J)
    velocity[9] = FILTER.max_velocity[9]
    target = HOME.copy()
    target[9] += 1.0
    result = FILTER.clamp(target, HOME, velocity)
    assert result.positions[9] - HOME[9] == pytest.approx(FILTER.max_velocity[9] * PERIOD_S,
                                                          rel=1e-12)
    assert result.interventions == (Intervention("velocity", "right"),)


def test_a_gripper_jump_is_limited_to_the_gripper_speed():
    target = HOME.copy()
    target[LEFT_GRIPPER] = 0.0
    result = FILTER.clamp(target, HOME, REST)
    assert result.positions[LEFT_GRIPPER] == pytest.approx(0.05 - 0.1 * PERIOD_S, abs=1e-15)
    assert result.interventions == (Intervention("velocity", "left"),)


def test_an_abrupt_reversal_respects_the_acceleration_cap():
    velocity = np.zeros(J)
    velocity[0] = 1.0  # left base joint turning at 1 rad/s
    target = HOME.copy()
    target[0] -= 0.005  # asked to go the other way at 0.5 rad/s at once
    result = FILTER.clamp(target, HOME, velocity)
    a_dt = FILTER.max_acceleration[0] * PERIOD_S
    assert result.velocities[0] == pytest.approx(1.0 - a_dt, abs=1e-9)
    assert result.positions[0] > HOME[0]  # still moving forward, slower
    assert result.interventions == (Intervention("acceleration", "left"),)


def test_a_step_out_of_the_box_stops_at_the_box_boundary():
    # The left TCP starts 1 cm inside a box wall at x = 0.32 and is driven forward through it.
    boxes = dict(SAFETY.workspace, left=WorkspaceBox((-0.05, -0.25, -0.30), (0.32, 0.85, 0.80)))
    flt = SafetyFilter(LAYOUT, dataclasses.replace(SAFETY, workspace=boxes), PERIOD_S, 0.07)
    target = HOME.copy()
    target[3] -= 0.6  # elbow opens: the TCP goes forward
    target[RIGHT] += 1e-4  # the right arm's own small step is not affected
    ticks = list(run(flt, HOME, [target] * 150))
    hit = [k for k, (_, _, r) in enumerate(ticks) if ("workspace", "left") in
           {(i.rule, i.arm) for i in r.interventions}]
    assert hit, "the box never stopped the left arm"
    for prev, prev_v, result in ticks:
        assert_safe(prev, prev_v, result, flt)
        assert {i.arm for i in result.interventions if i.rule == "workspace"} <= {"left"}
    # Within the search's resolution of one step (a few um) of the wall, from inside.
    x = tcp(ticks[-1][2].positions, "left")[0]
    assert 0.32 - 1e-4 <= x <= 0.32 + 1e-9
    np.testing.assert_array_equal(ticks[0][2].positions[RIGHT], target[RIGHT])


def test_driving_one_arm_into_the_other_stops_at_the_minimum_clearance():
    target = pose(left=REACH_RIGHT)
    ticks = list(run(FILTER, HOME, [target] * 300))
    counted = {(i.rule, i.arm) for _, _, r in ticks for i in r.interventions}
    assert {("arm_distance", "left"), ("arm_distance", "right")} <= counted
    for prev, prev_v, result in ticks:
        assert_safe(prev, prev_v, result)
    end = ticks[-1][2].positions
    assert clearance(end) == pytest.approx(SAFETY.min_arm_distance_m, abs=1e-3)
    assert clearance(pose(left=REACH_RIGHT)) < 0  # the target itself would collide


def test_a_start_outside_the_box_may_move_back_in_but_not_further_out():
    start = pose(left=[2.8, 0.5, 0.0, 1.6, 0.0, 1.0, 0.0])  # TCP 0.24 m behind x = -0.05
    box = SAFETY.workspace["left"]
    assert FILTER.violations(start) == (Intervention("workspace", "left"),)
    further = start.copy()
    further[0] += 0.001  # turning on towards 180 deg moves the TCP further back
    assert box_excess(tcp(further, "left"), box) > box_excess(tcp(start, "left"), box)
    result = FILTER.clamp(further, start, REST)
    np.testing.assert_array_equal(result.positions, start)
    assert result.interventions == (Intervention("workspace", "left"),)

    back = HOME.copy()  # all the way home: the filter walks it back in
    outside = box_excess(tcp(start, "left"), box)
    for _, _, result in run(FILTER, start, [back] * 150):
        now = box_excess(tcp(result.positions, "left"), box)
        assert now <= outside + 1e-12
        assert "workspace" not in rules_of(result, "left")
        outside = now
    assert outside == 0.0


def test_a_start_inside_the_minimum_clearance_may_move_apart_but_not_closer():
    start = pose(left=[-1.0, 1.2, 0.0, 0.3, 0.0, 1.0, 0.0])
    before = clearance(start)
    assert before < SAFETY.min_arm_distance_m
    closer = start.copy()
    closer[0] -= 0.001
    assert clearance(closer) < before
    result = FILTER.clamp(closer, start, REST)
    np.testing.assert_array_equal(result.positions, start)
    assert set(result.interventions) == {Intervention("arm_distance", "left"),
                                         Intervention("arm_distance", "right")}

    for _, _, result in run(FILTER, start, [HOME] * 150):
        now = clearance(result.positions)
        # Never closer while too close; free above the minimum once out.
        assert now >= min(before, SAFETY.min_arm_distance_m) - 1e-9
        before = now
    assert before >= SAFETY.min_arm_distance_m


def test_gripper_is_clamped_to_its_opening_range():
    target = HOME.copy()
    target[LEFT_GRIPPER], target[RIGHT_GRIPPER] = -0.02, 0.5
    first = FILTER.clamp(target, HOME, REST)
    assert {(i.rule, i.arm) for i in first.interventions} >= {("gripper_range", "left"),
                                                              ("gripper_range", "right")}
    end = final(FILTER, HOME, target, 100)
    assert end.positions[LEFT_GRIPPER] == 0.0
    assert end.positions[RIGHT_GRIPPER] == CFG.gripper.max_opening_m


def test_a_float32_rounding_past_a_limit_is_clipped_but_not_reported():
    # A float32 chunk holding the gripper fully open asks for 0.07000000029 m: clipped to the
    # limit, but not an intervention every tick.
    start = HOME.copy()
    start[RIGHT_GRIPPER] = CFG.gripper.max_opening_m
    target = start.copy()
    target[RIGHT_GRIPPER] = float(np.float32(CFG.gripper.max_opening_m))
    assert target[RIGHT_GRIPPER] > CFG.gripper.max_opening_m
    result = FILTER.clamp(target, start, REST)
    assert result.positions[RIGHT_GRIPPER] == CFG.gripper.max_opening_m
    assert result.interventions == ()
    target[RIGHT_GRIPPER] = CFG.gripper.max_opening_m + 1e-4  # a real excess still counts
    assert Intervention("gripper_range", "right") in FILTER.clamp(target, start, REST).interventions


def test_holding_still_is_always_accepted():
    for name, q in STARTS.items():
        result = FILTER.clamp(q, q, REST)
        np.testing.assert_array_equal(result.positions, q)
        assert result.interventions == (), name


def test_the_callers_arrays_are_not_modified():
    target = HOME + 0.3
    target[4] = math.nan
    copies = [a.copy() for a in (target, HOME, REST)]
    FILTER.clamp(target, HOME, REST)
    for original, copy in zip((target, HOME, REST), copies):
        np.testing.assert_array_equal(original, copy)


def test_a_non_finite_previous_state_is_a_caller_error():
    prev = HOME.copy()
    prev[9] = math.nan
    with pytest.raises(ValueError, match="previous is not finite for \\['right_joint2'\\]"):
        FILTER.clamp(HOME, prev, REST)
    velocity = REST.copy()
    velocity[LEFT_GRIPPER] = math.inf
    with pytest.raises(ValueError, match="previous_velocity.*left_gripper"):
        FILTER.clamp(HOME, HOME, velocity)


def test_a_wrong_joint_count_names_the_expected_joints():
    with pytest.raises(ValueError, match="target has shape \\(15,\\), expected 16 \\(left_joint1"):
        FILTER.clamp(HOME[:15], HOME, REST)


def test_violations_name_each_broken_rule_and_arm():
    q = HOME.copy()
    q[6] = 7.0  # the wrist roll beyond 360 deg (the TCP does not move)
    q[RIGHT_GRIPPER] = 0.2
    assert FILTER.violations(q) == (Intervention("joint_limit", "left"),
                                    Intervention("gripper_range", "right"))
    q = HOME.copy()
    q[10] = math.nan
    assert FILTER.violations(q) == (Intervention("non_finite", "right"),)
    assert set(FILTER.violations(pose(left=REACH_RIGHT))) >= {
        Intervention("workspace", "left"), Intervention("arm_distance", "left"),
        Intervention("arm_distance", "right")}


def test_a_layout_arm_without_a_workspace_box_is_rejected():
    boxes = {"left": SAFETY.workspace["left"]}
    with pytest.raises(ValueError, match="no workspace box for arms \\['right'\\]"):
        SafetyFilter(LAYOUT, dataclasses.replace(SAFETY, workspace=boxes), PERIOD_S, 0.07)


@pytest.mark.parametrize("dt_s", [0.001, 0.004, 0.01, 0.025])
def test_the_caps_are_per_the_time_since_the_previous_command(dt_s: float) -> None:
    far = pose(left=np.array(CFG.arms.left.home_rad) + 0.5, grippers=(0.0, 0.07))
    result = FILTER.clamp(far, HOME, REST, dt_s)
    step = np.abs(result.positions - HOME)
    assert np.all(step <= FILTER.max_velocity * dt_s * (1 + 1e-12))
    accel = np.abs(result.velocities) / dt_s
    joints = np.isfinite(FILTER.max_acceleration)
    assert np.all(accel[joints] <= FILTER.max_acceleration[joints] * (1 + 1e-9))
    np.testing.assert_allclose(result.velocities, (result.positions - HOME) / dt_s)
    # The grippers have no acceleration cap: their step is the speed cap's, for this dt.
    assert step[LEFT_GRIPPER] == pytest.approx(SAFETY.gripper_velocity_m_s * dt_s)


@pytest.mark.parametrize("dt_s", [0.0, -0.01, math.nan, math.inf])
def test_a_time_since_the_previous_command_that_is_not_a_positive_time_is_refused(dt_s) -> None:
    with pytest.raises(ValueError, match="dt_s"):
        FILTER.clamp(HOME, HOME, REST, dt_s)
