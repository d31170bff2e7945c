"""The emulator's motion model: limits hold every step, stops stop, the gripper keeps its speed."""

from __future__ import annotations

import math
from typing import List

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.robot.models import GRIPPER_MAX_OPENING_M, RM65_B, RM75_B, ArmModel
from ate_ros.sim.arm_motion import (
    ARM_DEVICE,
    ERR_TARGET_OVER_LIMIT,
    GRIPPER_DEVICE,
    GRIPPER_WIRE_PER_S_PER_SPEED,
    ArmMotion,
    Arrival,
    ArmStatus,
    GripperMode,
    GripperMotion,
    wire_to_opening_m,
)

DT = 0.005


def _limits(model: ArmModel):
    return (np.asarray(model.lower_rad), np.asarray(model.upper_rad),
            np.asarray(model.max_velocity_rad_s), np.asarray(model.max_acceleration_rad_s2))


class LimitWatch:
    """Steps a model and asserts the controller's limits after every single step."""

    def __init__(self, arm: ArmMotion, dt: float = DT) -> None:
        self.arm = arm
        self.dt = dt
        self.lower, self.upper, self.vmax, self.amax = _limits(arm.model)
        self.v = arm.velocities_rad_s
        self.arrivals: List[Arrival] = []

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.arrivals += self.arm.step(self.dt)
            q, v = self.arm.joints_rad, self.arm.velocities_rad_s
            assert np.all(q >= self.lower - 1e-12) and np.all(q <= self.upper + 1e-12)
            assert np.all(np.abs(v) <= self.vmax * (1 + 1e-9))
            assert np.all(np.abs(v - self.v) <= self.amax * self.dt * (1 + 1e-9) + 1e-12)
            self.v = v


def _random_targets(model: ArmModel, margin: float = 0.0):
    lower, upper, _, _ = _limits(model)
    return st.lists(st.floats(0.0, 1.0), min_size=model.dof, max_size=model.dof).map(
        lambda u: lower + margin + np.asarray(u) * (upper - lower - 2 * margin))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), follow=st.booleans(), dt=st.sampled_from([0.002, 0.005, 0.01]),
       model=st.sampled_from([RM75_B, RM65_B]))
def test_stream_respects_velocity_acceleration_and_position_limits_every_step(data, follow, dt, model):
    arm = ArmMotion(model)
    watch = LimitWatch(arm, dt)
    now = 0.0
    for _ in range(6):
        target = data.draw(_random_targets(model))
        gap_steps = data.draw(st.integers(1, 40))
        assert arm.stream(target, now, follow)
        watch.step(gap_steps)
        now += gap_steps * dt


@settings(max_examples=15, deadline=None)
@given(data=st.data(), percent=st.integers(20, 100))
def test_movej_respects_limits_and_arrives_exactly_once(data, percent):
    arm = ArmMotion(RM75_B)
    watch = LimitWatch(arm)
    target = data.draw(_random_targets(RM75_B))
    assert arm.move_joints(target, percent, tag="me")
    for _ in range(5000):
        watch.step()
        if watch.arrivals:
            break
    assert watch.arrivals == [Arrival(ARM_DEVICE, "me")]
    np.testing.assert_allclose(arm.joints_rad, target, atol=1e-9)
    assert arm.status == ArmStatus.IDLE and not arm.planned_move_active
    watch.step(50)
    assert watch.arrivals == [Arrival(ARM_DEVICE, "me")]


def test_smooth_100hz_stream_is_tracked_within_a_tenth_of_a_degree_one_period_behind():
    arm = ArmMotion(RM75_B)
    watch = LimitWatch(arm)
    amplitude = np.radians([30, -20, 25, 40, -30, 20, 60])

    def trajectory(t: float) -> np.ndarray:
        s = min(max(t / 1.5, 0.0), 1.0)
        return amplitude * (1 - math.cos(math.pi * s)) / 2

    errors = []
    t = 0.0
    rng = np.random.default_rng(0)
    for k in range(400):
        if k % 2 == 0:  # 100 Hz sender, received with +-1 ms jitter
            arm.stream(trajectory(t), t + rng.uniform(-0.001, 0.001))
        watch.step()
        t += DT
        if t > 0.1:
            errors.append(np.max(np.abs(arm.joints_rad - trajectory(t - 0.010))))
    assert math.degrees(max(errors)) < 0.1
    np.testing.assert_allclose(arm.joints_rad, amplitude, atol=math.radians(0.001))


def test_target_outside_limits_is_refused_latched_as_0x1002_and_the_arm_stays():
    arm = ArmMotion(RM75_B, np.radians([10, 0, 0, 0, 0, 0, 0]))
    target = np.radians([10, 131, 0, 0, 0, 0, 0])  # J2 limit is 130 deg
    assert not arm.stream(target, 0.0)
    assert not arm.move_joints(target, 50)
    for _ in range(100):
        arm.step(DT)
    np.testing.assert_allclose(arm.joints_rad, np.radians([10, 0, 0, 0, 0, 0, 0]))
    assert arm.errors == (ERR_TARGET_OVER_LIMIT,)
    arm.clear_errors()
    assert arm.errors == ()


def test_refused_target_keeps_following_the_last_good_one():
    arm = ArmMotion(RM75_B)
    good = np.radians([5, 0, 0, 0, 0, 0, 0])
    arm.stream(good, 0.0)
    assert not arm.stream(np.radians([5, 0, 0, 0, 0, 0, 400]), 0.01)
    for _ in range(200):
        arm.step(DT)
    np.testing.assert_allclose(arm.joints_rad, good, atol=1e-9)


def test_wrong_joint_count_and_nan_are_refused():
    arm = ArmMotion(RM65_B)
    assert not arm.stream([0.0] * 7, 0.0)
    assert not arm.stream([0.0, float("nan"), 0, 0, 0, 0], 0.0)
    assert arm.status == ArmStatus.IDLE


def test_movej_moves_all_joints_together_at_the_requested_share_of_max_speed():
    arm = ArmMotion(RM75_B)
    target = np.radians([90, -45, 30, 10, 0, 5, -20])
    arm.move_joints(target, 50)
    peak = np.zeros(7)
    fractions = []
    while arm.planned_move_active:
        arm.step(DT)
        peak = np.maximum(peak, np.abs(arm.velocities_rad_s))
        moving = target != 0
        fractions.append(arm.joints_rad[moving] / target[moving])
    # Joint 1 (90 deg at 90 deg/s) limits the move and cruises at 50 % of 180 deg/s.
    assert math.degrees(peak[0]) == pytest.approx(90.0, rel=1e-3)
    assert np.all(peak <= np.asarray(RM75_B.max_velocity_rad_s) * 0.5 + 1e-9)
    # Synchronised: every joint has covered the same share of its distance at every step.
    for f in fractions:
        assert np.ptp(f) < 1e-6


def test_movej_takes_longer_at_lower_speed():
    def duration(percent: float) -> float:
        arm = ArmMotion(RM75_B)
        arm.move_joints(np.radians([60, 0, 0, 0, 0, 0, 0]), percent)
        steps = 0
        while arm.planned_move_active:
            arm.step(DT)
            steps += 1
        return steps * DT

    assert duration(100) < duration(50) < duration(10)
    assert duration(10) == pytest.approx(60 / 18 + 18 / (0.9 * 3000), abs=0.02)


def test_new_movej_replaces_the_running_one_which_never_reports_arrival():
    arm = ArmMotion(RM75_B)
    watch = LimitWatch(arm)
    arm.move_joints(np.radians([40, 0, 0, 0, 0, 0, 0]), 50, tag="first")
    watch.step(40)
    arm.move_joints(np.radians([-10, 10, 0, 0, 0, 0, 0]), 50, tag="second")
    watch.step(1000)
    assert watch.arrivals == [Arrival(ARM_DEVICE, "second")]


def test_stream_takes_over_a_planned_move_without_arrival():
    arm = ArmMotion(RM75_B)
    watch = LimitWatch(arm)
    arm.move_joints(np.radians([40, 0, 0, 0, 0, 0, 0]), 50, tag="move")
    watch.step(40)
    arm.stream(arm.joints_rad, 0.0)
    assert not arm.planned_move_active
    watch.step(400)
    assert watch.arrivals == []
    assert arm.status == ArmStatus.IDLE


def test_stop_zeroes_velocity_at_once_and_drops_plan_and_stream_target():
    arm = ArmMotion(RM75_B)
    arm.move_joints(np.radians([60, 0, 0, 0, 0, 0, 0]), 100, tag="move")
    for _ in range(60):
        arm.step(DT)
    assert abs(arm.velocities_rad_s[0]) > 1.0
    arm.stop()
    held = arm.joints_rad
    assert np.all(arm.velocities_rad_s == 0.0)
    arrivals = []
    for _ in range(200):
        arrivals += arm.step(DT)
    np.testing.assert_array_equal(arm.joints_rad, held)
    assert arrivals == [] and arm.status == ArmStatus.STOP and not arm.planned_move_active


def test_stream_after_stop_starts_from_where_the_arm_stopped():
    arm = ArmMotion(RM75_B)
    watch = LimitWatch(arm)
    arm.stream(np.radians([30, 0, 0, 0, 0, 0, 0]), 0.0, follow=True)
    watch.step(30)
    arm.stop()
    watch.v = arm.velocities_rad_s  # the quick stop itself is the one allowed jump
    watch.step(10)
    arm.stream(np.radians([-5, 0, 0, 0, 0, 0, 0]), 10.0)
    watch.step(300)
    np.testing.assert_allclose(arm.joints_rad, np.radians([-5, 0, 0, 0, 0, 0, 0]), atol=1e-9)


def test_slow_stop_decelerates_all_joints_together_within_the_acceleration_limit():
    arm = ArmMotion(RM75_B)
    watch = LimitWatch(arm)
    arm.move_joints(np.radians([100, -80, 60, 0, 0, 0, 0]), 100)
    watch.step(40)
    v0 = arm.velocities_rad_s
    assert np.max(np.abs(v0)) > 1.0
    arm.slow_stop()
    assert arm.status == ArmStatus.SLOW_STOP
    ratios = []
    steps = 0
    while arm.status == ArmStatus.SLOW_STOP:
        watch.step()
        steps += 1
        moving = np.abs(v0) > 0
        ratios.append(arm.velocities_rad_s[moving] / v0[moving])
    assert arm.status == ArmStatus.IDLE and np.all(arm.velocities_rad_s == 0.0)
    # Took about as long as the hardest-braking joint needs at full deceleration.
    t_min = np.max(np.abs(v0) / np.asarray(RM75_B.max_acceleration_rad_s2))
    assert steps * DT == pytest.approx(t_min, abs=2 * DT)
    for r in ratios:
        assert np.ptp(r) < 1e-9  # same fraction of speed left on every joint: same path
    assert not arm.planned_move_active


def test_idle_arm_holds_its_position():
    q0 = np.radians([1, 2, 3, 4, 5, 6, 7])
    arm = ArmMotion(RM75_B, q0)
    for _ in range(1000):
        arm.step(DT)
    np.testing.assert_array_equal(arm.joints_rad, q0)


def test_power_off_stops_and_refuses_motion():
    arm = ArmMotion(RM75_B)
    arm.set_powered(False)
    assert not arm.stream(np.radians([1, 0, 0, 0, 0, 0, 0]), 0.0)
    assert not arm.move_joints(np.radians([1, 0, 0, 0, 0, 0, 0]), 50)
    arm.set_powered(True)
    assert arm.move_joints(np.radians([1, 0, 0, 0, 0, 0, 0]), 50)


def test_initial_joints_outside_limits_are_rejected():
    with pytest.raises(ValueError, match="outside the joint limits"):
        ArmMotion(RM75_B, np.radians([0, 170, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="need 6 values"):
        ArmMotion(RM65_B, np.zeros(7))


@pytest.mark.parametrize("model", [RM75_B, RM65_B])
def test_flange_pose_points_straight_up_at_zero_and_quaternion_matches_euler(model):
    pose = ArmMotion(model).flange_pose()
    np.testing.assert_allclose(pose.position_m, [0, 0, 0.8505], atol=1e-9)
    arm = ArmMotion(model, np.radians([20, -30, 40, 50, -60, 70, 80][: model.dof]))
    pose = arm.flange_pose()
    rx, ry, rz = pose.euler_rad
    w, x, y, z = pose.quaternion_wxyz
    assert math.isclose(w * w + x * x + y * y + z * z, 1.0, rel_tol=1e-9)

    def rot(axis: int, a: float) -> np.ndarray:
        c, s = math.cos(a), math.sin(a)
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    from_euler = rot(2, rz) @ rot(1, ry) @ rot(0, rx)
    from_quat = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    np.testing.assert_allclose(from_euler, from_quat, atol=1e-9)
    assert np.linalg.norm(pose.position_m) < 0.9


# ---- gripper ----------------------------------------------------------------------------------------
def test_gripper_moves_at_its_speed_and_reports_arrival_once():
    g = GripperMotion(position=1000)
    assert g.move_to(500, speed=250, tag="c")  # 500 wire/s
    assert g.mode == GripperMode.CLOSING
    arrivals = []
    steps = 0
    while g.moving:
        before = g.position
        arrivals += g.step(DT)
        assert before - g.position <= 250 * GRIPPER_WIRE_PER_S_PER_SPEED * DT + 1e-9
        steps += 1
    assert steps * DT == pytest.approx(500 / (250 * GRIPPER_WIRE_PER_S_PER_SPEED), abs=DT)
    assert g.position == 500 and g.mode == GripperMode.STOPPED_IDLE
    assert arrivals == [Arrival(GRIPPER_DEVICE, "c")]
    assert g.step(DT) == []


def test_gripper_pick_closes_and_release_opens():
    g = GripperMotion(position=300)
    g.close(1000)
    while g.moving:
        g.step(DT)
    assert g.position == 1 and g.mode == GripperMode.CLOSED_IDLE and g.opening_m == 0.0
    g.open(1000)
    assert g.mode == GripperMode.OPENING
    while g.moving:
        g.step(DT)
    assert g.position == 1000 and g.mode == GripperMode.OPEN_IDLE
    assert g.opening_m == pytest.approx(GRIPPER_MAX_OPENING_M)


def test_gripper_refuses_out_of_range_commands():
    g = GripperMotion()
    assert not g.move_to(0)
    assert not g.move_to(1001)
    assert not g.move_to(500, speed=0)
    assert not g.moving


def test_gripper_wire_to_opening_is_linear_over_0_to_70_mm():
    assert wire_to_opening_m(1) == 0.0
    assert wire_to_opening_m(1000) == pytest.approx(0.070)
    assert wire_to_opening_m(500.5) == pytest.approx(0.035)
