"""Cartesian moves and drag teaching through the arm nodes: real rclpy, RealMan's SDK, the
controller emulator on loopback, the recorder and the bag-to-episode conversion."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import dataclasses
import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from ate_core.data.bag import header_stamp_ns
from ate_core.data.convert import bag_to_episode
from ate_core.robot import kinematics
from ate_core.robot.from_config import placement_from_config
from ate_core.runtime.supervisor import Mode
from ate_ros.nodes.recorder_node import RecorderNode
from ate_ros.nodes.supervisor_node import SupervisorNode
from ate_ros.qos import LATCHED

from arm_rig import SIDES, command_msg, emulated_arms, measured
from test_supervisor_node import engage, no_cameras

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


def tcp_pose(rig, side: str, q: np.ndarray) -> np.ndarray:
    placement = placement_from_config(side, getattr(rig.cfg.arms, side))
    return kinematics.flange_pose(placement.model, q, base=placement.mount.matrix(),
                                  tool=placement.tcp.matrix())


def pose_msg(pose: np.ndarray, frame: str = "base_link") -> PoseStamped:
    msg = PoseStamped()
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose[:3, 3])
    r = pose[:3, :3]
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2.0
    msg.pose.orientation.w = w
    msg.pose.orientation.x = (r[2, 1] - r[1, 2]) / (4 * w)
    msg.pose.orientation.y = (r[0, 2] - r[2, 0]) / (4 * w)
    msg.pose.orientation.z = (r[1, 0] - r[0, 1]) / (4 * w)
    return msg


def rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    return math.acos(max(-1.0, min(1.0, (float(np.trace(a[:3, :3].T @ b[:3, :3])) - 1.0) / 2.0)))


def test_move_tcp_puts_the_tcp_at_the_pose_in_base_link_and_linear_moves_on_a_line(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        results = ros.subscribe(Bool, "/left_arm/move_tcp_result")
        joint_move = ros.publisher(PoseStamped, "/left_arm/move_tcp")
        line_move = ros.publisher(PoseStamped, "/left_arm/move_tcp_linear")
        start = tcp_pose(rig, "left", measured(rig, "left"))
        target = start.copy()
        target[:3, 3] += [0.05, 0.03, -0.04]
        ros.wait_for_subscribers(joint_move)
        joint_move.publish(pose_msg(target))
        ros.wait_for(lambda: len(results) > 0, 30.0, "the move's result")
        assert results.messages[-1].data is True
        ros.wait_for(lambda: np.linalg.norm(tcp_pose(rig, "left", measured(rig, "left"))[:3, 3]
                                            - target[:3, 3]) < 1e-3, 2.0, "the TCP at the pose")
        reached = tcp_pose(rig, "left", measured(rig, "left"))
        assert rotation_error(reached, target) < 5e-3
        assert [c.name for c in rig.emulators["left"].commands("movej_p")]

        # A straight line back up: every measured TCP position on the way lies on it.
        track = []
        done = threading.Event()
        sub = rig.states["left"]
        up = target.copy()
        up[:3, 3] += [0.0, 0.0, 0.08]
        ros.wait_for_subscribers(line_move)
        results.clear()
        sub.clear()
        line_move.publish(pose_msg(up))
        ros.wait_for(lambda: len(results) > 0, 30.0, "the linear move's result")
        done.set()
        assert results.messages[-1].data is True
        track = np.array([tcp_pose(rig, "left", np.array(m.position[:7]))[:3, 3] for m in sub.messages])
        rel = track - target[:3, 3]
        direction = np.array([0.0, 0.0, 1.0])
        off_line = np.linalg.norm(rel - np.outer(rel @ direction, direction), axis=1)
        assert len(track) > 20 and off_line.max() < 2e-3
        assert np.linalg.norm(track[-1] - up[:3, 3]) < 1e-3


def test_moves_and_drag_teaching_are_refused_while_the_arm_is_commanded_or_the_pose_is_wrong(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        results = ros.subscribe(Bool, "/left_arm/move_tcp_result")
        move = ros.publisher(PoseStamped, "/left_arm/move_tcp")
        commands = ros.publisher(JointState, "/left_arm/command")
        ros.wait_for_subscribers(move)
        ros.wait_for_subscribers(commands)
        names = (*rig.cfg.arms.left.joint_names, rig.cfg.arms.left.gripper_joint)
        hold = [*measured(rig, "left"), rig.cfg.gripper.max_opening_m]
        streaming = threading.Event()
        streaming.set()

        def stream() -> None:  # what an engaged supervisor does: commands at 100 Hz
            while streaming.is_set():
                commands.publish(command_msg(names, hold))
                time.sleep(0.01)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        try:
            ros.wait_for(lambda: rig.nodes["left"].driver.stats.commands_sent > 10, 5.0,
                         "the stream reaching the controller")
            target = tcp_pose(rig, "left", measured(rig, "left"))
            target[:3, 3] += [0.0, 0.0, -0.03]
            move.publish(pose_msg(target))
            ros.wait_for(lambda: len(results) > 0, 5.0, "the refusal")
            assert results.messages[-1].data is False
            answer = ros.call(SetBool, "/left_arm/drag_teach", SetBool.Request(data=True))
            assert not answer.success and "being commanded" in answer.message
            assert not ros.call(Trigger, "/left_arm/home").success
        finally:
            streaming.clear()
            streamer.join(2.0)
        assert not rig.emulators["left"].commands("movej_p")
        assert not rig.emulators["left"].commands("start_drag_teach")

        time.sleep(0.6)  # the stream has stopped: the arm is no longer driven
        for pose, frame in ((target, "world"), (np.eye(4), "base_link")):  # wrong frame; out of reach
            results.clear()
            move.publish(pose_msg(pose, frame))
            ros.wait_for(lambda: len(results) > 0, 10.0, "the refusal")
            assert results.messages[-1].data is False
        assert len(rig.emulators["left"].commands("movej_p")) == 1  # only the reachable-frame one


def switch_drag_teaching(ros, side: str, on: bool, timeout_s: float = 15.0) -> None:
    """Drag teaching on or off, asked again while the arm's link is down: on a loaded machine,
    with both arms and the recorder in this process, pushes have come in bursts after a second
    of silence, and the driver then reconnects (its own recovery) while a call fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = ros.call(SetBool, f"/{side}_arm/drag_teach", SetBool.Request(data=on))
        if answer.success:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"drag teaching {'on' if on else 'off'}: {answer.message}")
        time.sleep(0.1)


def test_a_drag_taught_motion_is_recorded_and_converts_to_an_episode(ros, tmp_path: Path):
    with emulated_arms(ros) as rig:
        # No camera runs here: the take's contract holds the arms' streams only.
        cfg = dataclasses.replace(rig.cfg, cameras={}, recorder=dataclasses.replace(
            rig.cfg.recorder, output_dir=str(tmp_path / "takes"), min_free_disk_gb=0.0))
        recorder = ros.start(RecorderNode, config=cfg)
        start = measured(rig, "left")
        goal = start + np.radians([15, -10, 5, 10, 0, -10, 20])
        switch_drag_teaching(ros, "left", True)
        ros.wait_for(lambda: rig.emulators["left"].arm_status == "current_drag", 2.0, "drag mode")
        # The test's own view of the arms' streams, as deep as the recorder's queue.
        topics = {side: f"/{side}_arm/joint_states" for side in rig.states}
        inboxes = {side: ros.subscribe(JointState, topic, qos=200) for side, topic in topics.items()}
        ros.wait_for(lambda: all(len(i) > 0 for i in inboxes.values()), 10.0, "the test's inboxes")
        answer = ros.call(Trigger, "/recorder/start")
        assert answer.success, answer.message
        take = recorder._take
        for inbox in inboxes.values():
            inbox.clear()
        # Counted after the clear: a message in between makes the recorder need one more.
        base = {side: take.received(topic) for side, topic in topics.items()}
        time.sleep(0.3)
        # A hand moves the arm in small steps, as a person does, over about 3 s.
        for k in range(1, 61):
            assert rig.emulators["left"].hand_guide(start + (goal - start) * k / 60)
            time.sleep(0.05)
        at_goal = ros.wait_for(lambda: next((m for m in inboxes["left"].messages if np.allclose(
            m.position[:7], goal, atol=1e-4)), None), 10.0, "the arm where the hand left it")
        goal_ns = header_stamp_ns(at_goal)
        # Under load the state pushes stall for most of a second and the recorder, sharing this
        # process's executor, takes the streams late: stop only once both arms' streams run
        # on past the goal (the episode's grid ends with the earlier of them) and the recorder
        # has every message the test has.
        ros.wait_for(lambda: all(sum(header_stamp_ns(m) > goal_ns for m in inbox.messages) >= 20
                                 for inbox in inboxes.values()), 20.0,
                     "both arms' joint states past the goal")
        seen = {side: len(inbox) for side, inbox in inboxes.items()}
        ros.wait_for(lambda: all(take.received(topics[side]) - base[side] >= seen[side]
                                 for side in topics), 20.0,
                     "the recorder caught up with the joint states")
        answer = ros.call(SetBool, "/recorder/stop", SetBool.Request(data=True))
        assert answer.success, answer.message
        switch_drag_teaching(ros, "left", False)
        assert not rig.emulators["left"].hand_guide(start)
        ros.wait_for(lambda: recorder._take is None, 10.0, "the take saved")

        bag = next((tmp_path / "takes").glob("episode_*"))
        converted = bag_to_episode(bag, fps=30.0, action_from="state")
        episode = converted.episode
        state = np.asarray(episode.state)
        left = state[:, :7]
        np.testing.assert_allclose(left[0], start, atol=1e-3)
        # The motion is in the episode, frame by frame, to where the hand left the arm.
        np.testing.assert_allclose(left[-1], goal, atol=1e-3)
        j1 = left[:, 0]
        between = (j1 > start[0] + 0.05 * (goal[0] - start[0])) & (j1 < goal[0] - 0.05 * (goal[0] - start[0]))
        assert between.sum() >= 5
        np.testing.assert_array_equal(np.asarray(episode.action), state)  # kinesthetic: action = state


def test_the_supervisor_engages_no_arm_that_something_else_has(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg))
        busy = {side: ros.subscribe(String, f"/{side}_arm/busy", qos=LATCHED) for side in SIDES}
        ros.wait_for(lambda: all(len(b) and b.messages[-1].data == "" for b in busy.values()),
                     5.0, "both arms free, latched")
        switch_drag_teaching(ros, "left", True)
        ros.wait_for(lambda: node.supervisor.busy_arms() == {"left": "drag teaching"}, 5.0,
                     "the supervisor told of the drag teaching")
        answer = ros.call(SetBool, "/ate/engage", SetBool.Request(data=True))
        assert not answer.success and "the left arm is drag teaching" in answer.message
        assert not rig.emulators["right"].commands("movej_canfd")  # neither arm was commanded
        switch_drag_teaching(ros, "left", False)
        ros.wait_for(lambda: not node.supervisor.busy_arms(), 5.0, "the arm free again")

        # Drag teaching switched on at the right arm's pendant while engaged: the push says so,
        # the supervisor lets go of the arms and stops the left one, not the one in a hand.
        # (On a loaded machine a burst-delayed push can make it lose a controller first, which
        # stops both arms for another reason: then it is engaged again.)
        for attempt in range(3):
            for emulator in rig.emulators.values():
                emulator.clear_commands()
            engage(ros)
            ros.wait_for(lambda: all(len(rig.emulators[s].commands("movej_canfd")) > 10
                                     for s in SIDES), 5.0, "both arms commanded")
            assert rig.emulators["right"].pendant_drag(True)
            ros.wait_for(lambda: node.supervisor.mode is Mode.IDLE, 5.0, "the supervisor idle")
            if "controller lost" not in node.supervisor.reason:
                break
            assert rig.emulators["right"].pendant_drag(False)
            ros.wait_for(lambda: not node.supervisor.busy_arms(), 5.0, "the arm free again")
        assert "taken over (right: drag teaching (switched on at the controller))" \
            in node.supervisor.reason
        ros.wait_for(lambda: rig.emulators["left"].commands("set_arm_stop"), 3.0,
                     "the left controller told to stop")
        assert not rig.emulators["right"].commands("set_arm_stop")
        assert rig.emulators["right"].arm_status == "current_drag"
        assert busy["right"].messages[-1].data == "drag teaching (switched on at the controller)"
        assert not ros.call(SetBool, "/ate/engage", SetBool.Request(data=True)).success
        assert rig.emulators["right"].pendant_drag(False)
        ros.wait_for(lambda: busy["right"].messages[-1].data == "", 5.0, "the right arm free")
