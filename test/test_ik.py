"""Damped least-squares IK of RM75-B and RM65-B, checked against their forward kinematics."""

import math
import re

import numpy as np
import pytest

from ate_core.robot.ik import (ArmIK, IKInputError, IKSettings, geometric_jacobian,
                               rotation_from_vector, rotation_vector, solve)
from ate_core.robot.kinematics import flange_pose
from ate_core.robot.layout import ArmPlacement, MountPose
from ate_core.robot.models import RM65_B, RM75_B, ArmModel

MODELS = (RM75_B, RM65_B)
#: Flange 0.31 m in front of the base, 0.215 m up, pointing down (config/bimanual.yaml's home
#: for RM75-B; the same pose for RM65-B, whose joints 2 and 3 carry a 90 deg offset).
HOME = {RM75_B.name: np.array([0.0, 0.5, 0.0, 1.6, 0.0, 1.0, 0.0]),
        RM65_B.name: np.array([0.0, -0.5, -1.6, 0.0, -1.0, 0.0])}
TARGETS = 500
POSITION_TOL_M = 1e-3
ROTATION_TOL_RAD = 1e-3


def random_q(model: ArmModel, rng: np.random.Generator, margin: float) -> np.ndarray:
    """Joint angles within the limits less the solver's margin: poses the solver may reach."""
    return rng.uniform(np.array(model.lower_rad) + margin, np.array(model.upper_rad) - margin)


def pose_errors(reached: np.ndarray, target: np.ndarray):
    return (float(np.linalg.norm(reached[:3, 3] - target[:3, 3])),
            float(np.linalg.norm(rotation_vector(target[:3, :3] @ reached[:3, :3].T))))


def assert_within_limits(ik: ArmIK, q: np.ndarray) -> None:
    assert np.all(q >= ik.lower_rad) and np.all(q <= ik.upper_rad), q


def rot_z(a: float) -> np.ndarray:
    out = np.eye(4)
    out[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return out


def solve_random_targets(model: ArmModel, start: str):
    ik = ArmIK(model)
    rng = np.random.default_rng(14)
    solved = 0
    for _ in range(TARGETS):
        q_target = random_q(model, rng, ik.settings.joint_margin_rad)
        target = flange_pose(model, q_target)
        if start == "home":
            q_start = HOME[model.name]
        else:
            q_start = np.clip(q_target + rng.normal(0.0, 0.3, model.dof),
                              model.lower_rad, model.upper_rad)
        result = ik.solve(target, q_start)
        assert_within_limits(ik, result.q_rad)
        position_error, rotation_error = pose_errors(flange_pose(model, result.q_rad), target)
        # The reported residuals are the forward kinematics' own, converged or not.
        assert position_error == pytest.approx(result.position_error_m, abs=1e-9)
        assert rotation_error == pytest.approx(result.rotation_error_rad, abs=1e-9)
        if result.converged:
            assert position_error < POSITION_TOL_M and rotation_error < ROTATION_TOL_RAD
            solved += 1
    return solved


# ------------------------------------------------------------------ random reachable targets


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("start", ["home", "perturbed"])
def test_random_reachable_poses_are_solved_within_the_limits(model, start):
    solved = solve_random_targets(model, start)
    print(f"{model.name} from {start}: {solved}/{TARGETS} solved")
    assert solved == TARGETS, f"{model.name} from {start}: {solved}/{TARGETS} solved"


def test_solutions_of_the_redundant_arm_stay_near_the_rest_posture():
    rng = np.random.default_rng(3)
    home = HOME[RM75_B.name]
    pulled, free = ArmIK(RM75_B), ArmIK(RM75_B, settings=IKSettings(null_space_gain=0.0))
    distance = {"pulled": [], "free": []}
    for _ in range(20):
        target = flange_pose(RM75_B, home + rng.normal(0.0, 0.3, 7))
        for name, ik in (("pulled", pulled), ("free", free)):
            result = ik.solve(target, home)
            assert result.converged
            distance[name].append(np.linalg.norm(result.q_rad - home))
    assert np.mean(distance["pulled"]) < np.mean(distance["free"])


# ------------------------------------------------------------------ Jacobian


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_jacobian_matches_finite_differences_of_the_forward_kinematics(model):
    rng = np.random.default_rng(7)
    base = MountPose((0.1, -0.3, 0.05), (0.3, -0.2, 1.1)).matrix()
    tool = MountPose((0.01, -0.02, 0.12), (0.0, 0.4, 0.2)).matrix()
    h = 1e-6
    for _ in range(5):
        q = random_q(model, rng, 0.0)
        jac = geometric_jacobian(model, q, base=base, tool=tool)
        numeric = np.zeros((6, model.dof))
        for i in range(model.dof):
            dq = np.zeros(model.dof)
            dq[i] = h
            plus = flange_pose(model, q + dq, base=base, tool=tool)
            minus = flange_pose(model, q - dq, base=base, tool=tool)
            numeric[:3, i] = (plus[:3, 3] - minus[:3, 3]) / (2 * h)
            numeric[3:, i] = rotation_vector(plus[:3, :3] @ minus[:3, :3].T) / (2 * h)
        np.testing.assert_allclose(jac, numeric, atol=1e-7)


def test_jacobian_of_a_batch_is_the_stack_of_single_jacobians():
    q = np.random.default_rng(8).uniform(-1.0, 1.0, (4, 3, 7))
    batch = geometric_jacobian(RM75_B, q)
    assert batch.shape == (4, 3, 6, 7)
    np.testing.assert_allclose(batch[2, 1], geometric_jacobian(RM75_B, q[2, 1]), atol=1e-15)


def test_rotation_vector_inverts_rodrigues_up_to_half_a_turn():
    rng = np.random.default_rng(9)
    for angle in (0.0, 1e-9, 1e-4, 0.5, 2.0, math.pi - 1e-5, math.pi):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        rotvec = rotation_vector(rotation_from_vector(angle * axis))
        if angle < math.pi - 1e-3:
            np.testing.assert_allclose(rotvec, angle * axis, atol=1e-9)
        else:  # at pi, axis and -axis are the same rotation
            np.testing.assert_allclose(rotation_from_vector(rotvec),
                                       rotation_from_vector(angle * axis), atol=1e-9)


# ------------------------------------------------------------------ placement and modes


def test_solving_in_base_link_puts_the_tcp_of_a_mounted_arm_on_the_target():
    placement = ArmPlacement("left", RM75_B, MountPose((0.05, 0.3, 0.9), (0.0, 0.6, 0.3)),
                             MountPose((0.0, 0.0, 0.12)))
    target = placement.tcp_pose(np.array([0.3, 0.8, -0.2, 1.2, 0.1, 0.9, 0.4]))
    result = solve(placement, target, HOME[RM75_B.name])
    assert result.converged
    reached = placement.tcp_pose(result.q_rad)
    assert pose_errors(reached, target)[0] < 1e-4 and pose_errors(reached, target)[1] < 1e-4
    flange = solve(placement, placement.flange_pose(result.q_rad), HOME[RM75_B.name],
                   frame="flange")
    assert flange.converged


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_a_spin_about_the_tool_axis_is_no_error_when_only_the_axis_counts(model):
    ik = ArmIK(model, settings=IKSettings(orientation="z_axis"))
    q = HOME[model.name]
    spun = ik.solve(flange_pose(model, q) @ rot_z(0.8), q)
    assert spun.converged and spun.iterations == 0 and spun.rotation_error_rad == 0.0

    rng = np.random.default_rng(11)
    target = flange_pose(model, random_q(model, rng, 0.05)) @ rot_z(rng.uniform(-3, 3))
    result = ik.solve(target, q)
    reached = flange_pose(model, result.q_rad)
    assert result.converged
    assert np.linalg.norm(reached[:3, 3] - target[:3, 3]) < 1e-4
    assert math.acos(min(1.0, reached[:3, 2] @ target[:3, 2])) < 1e-4


def test_position_only_mode_reaches_the_point_whatever_the_orientation():
    ik = ArmIK(RM65_B, settings=IKSettings(orientation="none"))
    target = np.eye(4)
    target[:3, 3] = (0.35, -0.1, 0.3)
    result = ik.solve(target, HOME[RM65_B.name])
    assert result.converged and result.rotation_error_rad == 0.0
    assert np.linalg.norm(flange_pose(RM65_B, result.q_rad)[:3, 3] - target[:3, 3]) < 1e-4


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_a_target_2_m_away_is_reported_unreachable_with_its_residual(model):
    ik = ArmIK(model)
    target = np.eye(4)
    target[:3, 3] = (2.0, 0.0, 0.3)
    result = ik.solve(target, HOME[model.name])
    assert not result.converged
    assert result.attempts == ik.settings.restarts + 1
    # Both arms reach 0.61 m from the shoulder (joint 2, 0.2405 m above the base).
    least_error = np.linalg.norm(target[:3, 3] - [0.0, 0.0, 0.2405]) - 0.61
    assert least_error - 1e-9 <= result.position_error_m < least_error + 0.05
    position_error, _ = pose_errors(flange_pose(model, result.q_rad), target)
    assert position_error == pytest.approx(result.position_error_m, abs=1e-9)
    assert_within_limits(ik, result.q_rad)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_targets_beyond_the_reach_are_refused_never_answered(model):
    """Targets 0.65 to 1 m from the shoulder, in every direction, with random orientations:
    beyond the 0.61 m reach, so no solution exists and none may be reported as one."""
    ik = ArmIK(model, settings=IKSettings(restarts=3))
    rng = np.random.default_rng(15)
    shoulder = np.array([0.0, 0.0, 0.2405])
    for _ in range(30):
        direction = rng.normal(size=3)
        target = np.eye(4)
        target[:3, :3] = rotation_from_vector(rng.normal(size=3))
        target[:3, 3] = shoulder + rng.uniform(0.65, 1.0) * direction / np.linalg.norm(direction)
        result = ik.solve(target, HOME[model.name])
        assert not result.converged
        assert result.position_error_m > 0.03
        assert_within_limits(ik, result.q_rad)


def _skewed_rotation():
    t = np.eye(4)
    t[0, 1] = 0.1
    return t


def _bottom_row():
    t = np.eye(4)
    t[3, 0] = 1.0
    return t


def _nan_target():
    t = np.eye(4)
    t[1, 3] = np.nan
    return t


@pytest.mark.parametrize("target, q_start, message", [
    (np.eye(3), HOME[RM75_B.name], "target: expected a 4x4 transform, got shape (3, 3)"),
    ("left", HOME[RM75_B.name], "target: expected a 4x4 transform"),
    (_nan_target(), HOME[RM75_B.name], "target: contains non-finite values"),
    (_bottom_row(), HOME[RM75_B.name], "target: bottom row"),
    (_skewed_rotation(), HOME[RM75_B.name], "target: rotation block is not a rotation"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), HOME[RM75_B.name], "target: rotation block is not a rotation"),
    (np.eye(4), np.zeros(6), "q_start: expected 7 joint angles of RM75-B, got shape (6,)"),
    (np.eye(4), np.full(7, np.inf), "q_start: contains non-finite values"),
    (np.eye(4), np.degrees(HOME[RM75_B.name]),
     "q_start[1]: 28.6479 rad is outside the joint limits"),
])
def test_malformed_requests_raise_naming_what_was_wrong(target, q_start, message):
    with pytest.raises(IKInputError, match=r"^" + re.escape(message)):
        ArmIK(RM75_B).solve(target, q_start)


@pytest.mark.parametrize("kwargs, message", [
    ({"orientation": "yaw"}, "IKSettings.orientation: 'yaw' is not one of"),
    ({"max_iterations": 0}, "IKSettings.max_iterations: 0 is outside"),
    ({"position_tolerance_m": -1e-3}, "IKSettings.position_tolerance_m: -0.001 must be > 0"),
    ({"damping": float("nan")}, "IKSettings.damping: nan must be > 0"),
    ({"restarts": 2.5}, "IKSettings.restarts: expected int, got 2.5"),
])
def test_bad_settings_raise_naming_the_setting(kwargs, message):
    with pytest.raises(IKInputError, match=re.escape(message)):
        IKSettings(**kwargs)


def test_a_rest_posture_of_the_wrong_arm_is_refused():
    with pytest.raises(IKInputError, match=r"^rest: expected 7 joint angles"):
        ArmIK(RM75_B).solve(np.eye(4), HOME[RM75_B.name], rest=HOME[RM65_B.name])


# ------------------------------------------------------------------ straight lines


def distance_to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = np.clip((points - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
    return np.linalg.norm(points - (a + s[:, None] * (b - a)), axis=1)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_a_20_cm_straight_line_keeps_the_tcp_within_1_mm_of_it(model):
    placement = ArmPlacement("right", model, MountPose((0.0, -0.3, 0.0)),
                             MountPose((0.0, 0.0, 0.12)))
    ik = ArmIK.for_placement(placement)
    q0 = HOME[model.name]
    start = placement.tcp_pose(q0)
    target = start @ rot_z(0.5)
    target[:3, 3] += (0.05, 0.12, 0.15)  # 0.2 m: a lift and a sideways carry, turning the gripper
    line = ik.straight_line(q0, target)
    assert line.converged and line.failed_waypoint is None, line.reason
    assert line.q_rad.shape == (line.waypoints, model.dof) and line.waypoints >= 41
    tcp = placement.tcp_pose(line.q_rad)
    assert np.max(distance_to_segment(tcp[:, :3, 3], start[:3, 3], target[:3, 3])) < 1e-3
    assert pose_errors(tcp[-1], target)[0] < 1e-3 and pose_errors(tcp[-1], target)[1] < 0.01
    assert np.max(np.abs(np.diff(line.q_rad, axis=0))) <= 0.2
    for q in line.q_rad:
        assert_within_limits(ik, q)


def test_a_line_leaving_the_workspace_fails_at_the_first_unreachable_waypoint():
    ik = ArmIK(RM75_B)
    q0 = HOME[RM75_B.name]
    target = flange_pose(RM75_B, q0)
    target[:3, 3] += (1.5, 0.0, 0.0)
    line = ik.straight_line(q0, target, step_m=0.02)
    assert not line.converged
    assert 0 < line.failed_waypoint < line.waypoints - 1
    assert line.q_rad.shape == (line.failed_waypoint, 7)
    assert f"waypoint {line.failed_waypoint} of {line.waypoints - 1}" in line.reason
    solved = flange_pose(RM75_B, line.q_rad)[:, :3, 3]
    start = flange_pose(RM75_B, q0)[:3, 3]
    assert np.max(distance_to_segment(solved, start, target[:3, 3])) < 1e-3


def test_a_line_whose_joints_would_jump_fails_at_that_waypoint():
    ik = ArmIK(RM65_B)
    q0 = HOME[RM65_B.name]
    target = flange_pose(RM65_B, q0)
    target[:3, 3] += (0.0, 0.1, 0.0)
    line = ik.straight_line(q0, target, max_joint_step_rad=1e-3)
    assert not line.converged and line.failed_waypoint == 1
    assert line.q_rad.shape == (1, 6)
    assert "a joint jumps" in line.reason and f"of {line.waypoints - 1}" in line.reason
