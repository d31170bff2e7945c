"""The emulated controller's Cartesian motions and frames, without sockets: `movej_p`, `movel`,
`movec`, `moves` with `trajectory_connect`, refusals, work and tool frames. The same commands
sent by RealMan's SDK over loopback are in test_realman_emulator.py, and RealMan's own demos run
with scripts/realman_demos.py."""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import pytest

from ate_core.robot import kinematics
from ate_core.robot.cartesian_path import pose_from_xyz_rpy
from ate_core.robot.models import PUSH_CYCLE_UNIT_S, RM65_B, RM75_B
from ate_ros.sim.realman_protocol import ControllerProtocol, PushConfig

#: RealMan's RM_75 demo posture and the flange pose it gives ([0, 20, 0, 70, 0, 90, 0] deg).
READY_DEG = [0, 20, 0, 70, 0, 90, 0]
READY_POSE = [0.297557, 0.0, 0.337061, math.pi, 0.0, math.pi]


def wire(pose: List[float]) -> List[int]:
    return [int(round(v * 1e6)) for v in pose[:3]] + [int(round(a * 1e3)) for a in pose[3:]]


def controller(model=RM75_B, joints_deg=READY_DEG) -> ControllerProtocol:
    return ControllerProtocol(model, PushConfig(port=8089, ip="127.0.0.1"),
                              initial_joints_rad=np.radians(joints_deg))


def run(c: ControllerProtocol, timeout_s: float = 60.0) -> Tuple[list, list, list]:
    """Step until the planned motion arrives: (arrivals, tcp positions, reported types)."""
    arrivals, track, kinds = [], [], []
    for _ in range(int(timeout_s / PUSH_CYCLE_UNIT_S)):
        arrivals += c.step(PUSH_CYCLE_UNIT_S)
        track.append(kinematics.flange_pose(c.model, c.motion.joints_rad)[:3, 3])
        kinds.append(c.handle({"command": "get_arm_current_trajectory"}, 1, 0.0)["type"])
        if arrivals:
            break
    return arrivals, np.array(track), kinds


def reported(c: ControllerProtocol) -> np.ndarray:
    pose = c.handle({"command": "get_current_arm_state"}, 1, 0.0)["arm_state"]["pose"]
    return np.array(pose[:3]) * 1e-6


def test_movej_p_moves_in_joint_space_to_a_pose_and_arrives_there():
    c = controller()
    target = [0.25, 0.1, 0.3, math.pi, 0.0, math.pi]
    assert c.handle({"command": "movej_p", "pose": wire(target), "v": 50}, 3, 0.0)["receive_state"]
    arrivals, _, kinds = run(c)
    assert [a.tag for a in arrivals] == [3] and "movej" in kinds and kinds[-1] == "none"
    flange = kinematics.flange_pose(c.model, c.motion.joints_rad)
    np.testing.assert_allclose(flange[:3, 3], target[:3], atol=2e-5)
    sent = np.array(wire(target), float) * ([1e-6] * 3 + [1e-3] * 3)  # what the wire carries
    np.testing.assert_allclose(flange[:3, :3], pose_from_xyz_rpy(sent)[:3, :3], atol=2e-5)
    np.testing.assert_allclose(reported(c), target[:3], atol=2e-5)


@pytest.mark.parametrize("model, joints", [(RM75_B, READY_DEG), (RM65_B, [0, 20, 70, 0, 90, 0])],
                         ids=["RM75-B", "RM65-B"])
def test_movel_keeps_the_tool_on_the_straight_line(model, joints):
    c = controller(model, joints)
    start = kinematics.flange_pose(model, c.motion.joints_rad)
    end = start[:3, 3] + [-0.1, 0.05, -0.05]
    pose = [*end, math.pi, 0.0, math.pi] if model is RM75_B else None
    if pose is None:  # RM65-B's ready posture points elsewhere: keep its rotation
        from ate_core.robot.cartesian_path import xyz_rpy_from_pose
        pose = [*end, *xyz_rpy_from_pose(start)[3:]]
    assert c.handle({"command": "movel", "pose": wire(pose), "v": 30}, 1, 0.0)["receive_state"]
    arrivals, track, kinds = run(c)
    assert arrivals and "movel" in kinds
    d = (end - start[:3, 3]) / np.linalg.norm(end - start[:3, 3])
    rel = track - start[:3, 3]
    off_line = np.linalg.norm(rel - np.outer(rel @ d, d), axis=1)
    assert off_line.max() < 0.001
    np.testing.assert_allclose(track[-1], end, atol=2e-5)


def test_movec_runs_the_arc_and_its_loops_and_moves_runs_a_spline_through_its_points():
    c = controller()
    center = np.array(READY_POSE[:3]) - [0.04, 0.0, 0.0]
    via = [*(center + [0.0, 0.04, 0.0]), *READY_POSE[3:]]
    to = [*(center + [0.0, -0.04, 0.0]), *READY_POSE[3:]]
    request = {"command": "movec", "pose": {"pose_via": wire(via), "pose_to": wire(to)}, "v": 50,
               "loop": 1}
    assert c.handle(request, 1, 0.0)["receive_state"]
    arrivals, track, kinds = run(c)
    assert arrivals and "movec" in kinds
    radius = np.linalg.norm(track - center, axis=1)
    assert np.abs(radius - 0.04).max() < 0.001
    angles = np.unwrap(np.arctan2(track[:, 1] - center[1], track[:, 0] - center[0]))
    assert abs(angles[-1] - angles[0]) == pytest.approx(1.5 * math.pi + 2 * math.pi, abs=0.05)

    points = [[0.28, 0.05, 0.3], [0.25, 0.1, 0.25], [0.22, 0.05, 0.2]]
    for k, p in enumerate(points):
        reply = c.handle({"command": "moves", "pose": wire([*p, *READY_POSE[3:]]), "v": 50,
                          "trajectory_connect": int(k < len(points) - 1)}, 1, 0.0)
        assert reply["receive_state"]
        if k < len(points) - 1:  # queued: nothing moves until the last point
            assert not c.motion.planned_move_active
    arrivals, track, kinds = run(c)
    assert arrivals and "moves" in kinds
    for p in points:
        assert np.linalg.norm(track - p, axis=1).min() < 0.002


def test_connected_motions_run_back_to_back_with_one_arrival():
    c = controller()
    a = [0.25, 0.0, 0.3, math.pi, 0.0, math.pi]
    b = [0.25, 0.1, 0.3, math.pi, 0.0, math.pi]
    assert c.handle({"command": "movel", "pose": wire(a), "v": 50, "trajectory_connect": 1}, 1, 0.0)["receive_state"]
    assert c.handle({"command": "movej", "joint": [0, 20000, 0, 70000, 0, 90000, 0], "v": 50,
                     "trajectory_connect": 1}, 1, 0.0)["receive_state"]
    assert c.handle({"command": "movel", "pose": wire(b), "v": 50, "trajectory_connect": 0}, 1, 0.0)["receive_state"]
    arrivals, track, kinds = run(c)
    assert len(arrivals) == 1
    assert [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]] == ["movel", "movej", "movel", "none"]
    assert np.linalg.norm(track - a[:3], axis=1).min() < 1e-4
    np.testing.assert_allclose(track[-1], b[:3], atol=2e-5)


def test_unreachable_poses_and_impossible_arcs_are_refused_and_nothing_moves():
    c = controller()
    before = c.motion.joints_rad
    far = [1.5, 0.0, 0.3, math.pi, 0.0, math.pi]  # 1.5 m: beyond the 0.61 m reach
    for request in ({"command": "movej_p", "pose": wire(far)}, {"command": "movel", "pose": wire(far)},
                    {"command": "movec", "pose": {"pose_via": wire([0.25, 0, READY_POSE[2], math.pi, 0, math.pi]),
                                                  "pose_to": wire([0.2, 0, READY_POSE[2], math.pi, 0, math.pi])}},
                    {"command": "movel", "pose": [1, 2, 3]}):
        assert c.handle({**request, "v": 50}, 1, 0.0) == {"command": request["command"], "receive_state": False}
    # A refusal drops what was queued with trajectory_connect.
    assert c.handle({"command": "moves", "pose": wire(READY_POSE), "trajectory_connect": 1}, 1, 0.0)["receive_state"]
    assert not c.handle({"command": "movel", "pose": wire(far)}, 1, 0.0)["receive_state"]
    assert c.cartesian.queued == 0
    assert c.step(PUSH_CYCLE_UNIT_S) == [] and not c.motion.planned_move_active
    np.testing.assert_array_equal(c.motion.joints_rad, before)
    assert c.handle({"command": "get_current_arm_state"}, 1, 0.0)["arm_state"]["err"] == [0]


def test_tool_and_work_frames_change_what_poses_mean():
    c = controller()
    tool = {"command": "set_manual_tool_frame", "tool_name": "gripper", "tool_pose": [0, 0, 100_000, 0, 0, 0],
            "payload": 500, "position": [0, 0, 50_000]}
    assert c.handle(tool, 1, 0.0) == {"command": "set_manual_tool_frame", "manual_tool_frame": True}
    assert c.handle(tool, 1, 0.0)["manual_tool_frame"] is False  # exists already
    assert c.handle({"command": "set_change_tool_frame", "tool_name": "gripper"}, 1, 0.0)["change_tool_frame"]
    # The reported pose is the tool's: 10 cm further along the flange's z (pointing down).
    np.testing.assert_allclose(reported(c), np.array(READY_POSE[:3]) - [0, 0, 0.1], atol=2e-6)
    assert c.handle({"command": "get_current_tool_frame"}, 1, 0.0) == {
        "state": "current_tool_frame", "tool_name": "gripper", "pose": [0, 0, 100000, 0, 0, 0],
        "payload": 500, "position": [0, 0, 50000]}
    assert c.handle({"command": "set_delete_tool_frame", "tool_name": "gripper"}, 1, 0.0)["delete_tool_frame"] is False

    work = {"command": "set_manual_work_frame", "frame_name": "table", "frame_pose": [100_000, 0, 0, 0, 0, 0]}
    assert c.handle(work, 1, 0.0)["manual_work_frame"]
    assert c.handle({"command": "set_change_work_frame", "frame_name": "table"}, 1, 0.0)["change_work_frame"]
    assert c.handle({"command": "get_total_work_frame"}, 1, 0.0) == {
        "state": "total_work_frame", "frame_names": ["World", "table"]}
    # movel to (0.15, 0, 0.2) in the table frame, tool frame "gripper": the tool ends 0.1 m
    # further along x than the numbers say, and the flange 0.1 m above it.
    target = [0.15, 0.0, 0.2, math.pi, 0.0, math.pi]
    assert c.handle({"command": "movel", "pose": wire(target), "v": 50}, 1, 0.0)["receive_state"]
    assert run(c)[0]
    flange = kinematics.flange_pose(c.model, c.motion.joints_rad)[:3, 3]
    np.testing.assert_allclose(flange, [0.25, 0.0, 0.3], atol=1e-4)  # 0.1 m x the wire's 0.4 mrad
    np.testing.assert_allclose(reported(c), target[:3], atol=2e-5)
    assert c.handle({"command": "get_work_frame", "frame_name": "nowhere"}, 1, 0.0) == {
        "command": "get_work_frame", "get_state": False}
    for name in ("a" * 11, ""):
        assert not c.handle({**work, "frame_name": name}, 1, 0.0)["manual_work_frame"]


def test_drag_teaching_follows_the_hand_records_the_joints_and_saves_them():
    c = controller()
    start = c.motion.joints_rad
    assert c.handle({"command": "save_trajectory"}, 1, 0.0)[-1] == {
        "command": "save_trajectory", "save_state": False, "total_num": 0}  # nothing recorded
    assert c.handle({"command": "start_drag_teach", "trajectory_record": 1}, 1, 0.0) == {
        "command": "start_drag_teach", "drag_teach": True}
    assert c.push_packet()["arm_current_status"] == "current_drag"
    assert not c.handle({"command": "movej", "joint": [0] * 7, "v": 50}, 1, 0.0)["receive_state"]
    assert c.motion.hand_guide(start + np.radians([10, -5, 0, 5, 0, 0, 20]))
    for _ in range(200):  # 1 s: the hand is followed within the joints' limits
        c.step(PUSH_CYCLE_UNIT_S)
    np.testing.assert_allclose(c.motion.joints_rad, start + np.radians([10, -5, 0, 5, 0, 0, 20]), atol=1e-9)
    assert c.motion.hand_guide(np.full(7, 100.0))  # far outside: held at the limits
    for _ in range(2000):
        c.step(PUSH_CYCLE_UNIT_S)
    np.testing.assert_allclose(c.motion.joints_rad, c.model.upper_rad, atol=1e-9)
    assert c.handle({"command": "stop_drag_teach"}, 1, 0.0)["drag_teach"]
    assert not c.motion.hand_guide(start)  # the hand moves nothing once teaching is off
    saved = c.handle({"command": "save_trajectory"}, 1, 0.0)
    assert saved[-1] == {"command": "save_trajectory", "save_state": True, "total_num": 2201}
    points = np.radians(np.array([m["point"] for m in saved[:-1]], float) / 1000.0)
    assert len(points) == 2201
    np.testing.assert_allclose(points[0], start, atol=1e-5)
    np.testing.assert_allclose(points[-1], c.model.upper_rad, atol=1e-5)
    steps = np.abs(np.diff(points, axis=0)) / PUSH_CYCLE_UNIT_S
    assert np.all(steps <= np.array(c.model.max_velocity_rad_s) * 1.01 + 0.2)  # 0.001 deg rounding
    assert c.handle({"command": "movej", "joint": [0] * 7, "v": 50}, 1, 0.0)["receive_state"]
