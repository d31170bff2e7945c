"""The supervisor node end to end: chunks over DDS -> supervisor -> arm nodes -> real SDK -> emulators."""

from __future__ import annotations

import dataclasses
import time
from typing import Dict

import pytest
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.robot.config import BimanualConfig
from ate_core.runtime.chunk import make_chunk
from ate_ros.chunk_msgs import chunk_to_trajectory
from ate_ros.nodes.supervisor_node import SupervisorNode
from arm_rig import SIDES, emulated_arms

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too

MS = 1_000_000


def no_cameras(cfg: BimanualConfig, **supervisor) -> BimanualConfig:
    """The rig's robot without cameras (no camera watchdog), with supervisor overrides."""
    sup = dataclasses.replace(cfg.supervisor, **supervisor)
    return dataclasses.replace(cfg, cameras={}, supervisor=sup)


def whole_state(rig) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for side in SIDES:
        msg = rig.states[side].messages[-1]
        out.update(zip(msg.name, msg.position))
    return out


def emulator_joints(rig, side: str) -> np.ndarray:
    return np.radians(rig.emulators[side].joints_deg())


class ChunkSender:
    """Publishes chunks from the measured state towards a fixed goal, stamped now."""

    def __init__(self, ros, node: SupervisorNode) -> None:
        self.ros, self.node = ros, node
        self.pub = ros.publisher(JointTrajectory, "/ate/action_chunk")
        ros.wait_for_subscribers(self.pub)

    def send(self, start: np.ndarray, goal: np.ndarray, points: int = 30, dt_ms: int = 33,
             positions: np.ndarray = None) -> None:
        names = self.node.supervisor.joint_names
        if positions is None:
            positions = start[None] + np.linspace(0, 1, points)[:, None] * (goal - start)[None]
        now = self.node.get_clock().now().nanoseconds
        chunk = make_chunk(names, now, np.arange(len(positions)) * dt_ms * MS, positions, names)
        self.pub.publish(chunk_to_trajectory(chunk))


def engage(ros, timeout_s: float = 5.0) -> None:
    """Engage once the supervisor has heard both arms (it refuses before that, with a reason)."""
    answers = []

    def accepted() -> bool:
        answers.append(ros.call(SetBool, "/ate/engage", SetBool.Request(data=True)))
        if not answers[-1].success:
            time.sleep(0.05)
        return answers[-1].success

    ros.wait_for(accepted, timeout_s, "engage accepted")


def measured_vector(rig, names) -> np.ndarray:
    state = whole_state(rig)
    return np.array([state[n] for n in names])


def latest_diag(inbox) -> Dict[str, str]:
    for msg in reversed(inbox.messages):
        for status in msg.status:
            if status.name == "supervisor":
                return {kv.key: kv.value for kv in status.values}
    return {}


def test_chunks_move_both_emulated_arms_along_them(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg, ramp_s=0.3))
        sender = ChunkSender(ros, node)
        names = node.supervisor.joint_names
        start = measured_vector(rig, names)
        goal = start.copy()
        goal[[0, 3, 8, 11]] += 0.15  # shoulder yaw and elbow of both arms
        engage(ros)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # a policy at 10 Hz, each chunk reaching the goal in 0.5 s
            sender.send(measured_vector(rig, names), goal, points=16)
            time.sleep(0.1)
        time.sleep(0.7)  # the last chunk ends at the goal; the executor holds it
        for side in SIDES:
            idx = node.supervisor.arm_slice(side)[:7]
            np.testing.assert_allclose(emulator_joints(rig, side), goal[idx], atol=2e-3)
            assert len(rig.emulators[side].commands("movej_canfd")) > 200


def test_estop_latches_stops_the_controllers_and_rearm_needs_engage(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg, ramp_s=0.2))
        sender = ChunkSender(ros, node)
        names = node.supervisor.joint_names
        commands = ros.subscribe(JointState, "/left_arm/command")
        start = measured_vector(rig, names)
        goal = start + 0.3 * np.isin(np.arange(16), [0, 8])
        engage(ros)
        for _ in range(5):
            sender.send(measured_vector(rig, names), goal)
            time.sleep(0.1)
        answer = ros.call(Trigger, "/ate/estop")
        assert answer.success, answer.message
        for side in SIDES:
            ros.wait_for(lambda s=side: rig.emulators[s].commands("set_arm_stop"), 2.0,
                         f"{side} controller told to stop")
        time.sleep(0.05)
        commands.clear()
        for _ in range(5):  # the policy keeps going: nothing moves
            sender.send(measured_vector(rig, names), goal)
            time.sleep(0.1)
        held = np.array([m.position for m in commands.messages])
        assert len(held) > 30 and np.ptp(held, axis=0).max() == 0.0
        assert not ros.call(SetBool, "/ate/engage", SetBool.Request(data=True)).success
        assert ros.call(Trigger, "/ate/rearm").success
        time.sleep(0.1)
        commands.clear()
        time.sleep(0.3)
        assert len(commands) == 0  # re-armed is idle: no commands until engaged
        before = measured_vector(rig, names)
        engage(ros)
        sender.send(before, before - 0.1 * np.isin(np.arange(16), [0, 8]))
        ros.wait_for(lambda: len(commands) > 20, 3.0, "commands after re-engage")
        first = np.array(commands.messages[0].position)
        cap = node.supervisor.safety.max_velocity * node.supervisor.period_s
        assert np.all(np.abs(first - before[node.supervisor.arm_slice("left")]) <= cap[:8] + 1e-4)


def test_lost_controller_stops_the_other_arm_and_disengages(ros):
    with emulated_arms(ros) as rig:
        ros.start(SupervisorNode, config=no_cameras(rig.cfg))
        diags = ros.subscribe(DiagnosticArray, "/diagnostics")
        engage(ros)
        rig.emulators["right"].pause_push()  # the right controller goes silent
        ros.wait_for(lambda: rig.emulators["left"].commands("set_arm_stop"), 3.0,
                     "the left controller told to stop")
        ros.wait_for(lambda: latest_diag(diags).get("mode") == "idle", 3.0, "idle on diagnostics")
        assert "controller lost (right)" in latest_diag(diags)["reason"]
        assert latest_diag(diags)["count.lost_controller.right"] == "1"
        rig.emulators["right"].resume_push()


def test_dry_run_publishes_previews_and_never_commands(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg, dry_run=True, ramp_s=0.1))
        sender = ChunkSender(ros, node)
        names = node.supervisor.joint_names
        preview = ros.subscribe(JointState, "/left_arm/command_preview")
        real = ros.subscribe(JointState, "/left_arm/command")
        for emulator in rig.emulators.values():
            emulator.clear_commands()
        engage(ros)
        start = measured_vector(rig, names)
        for _ in range(5):
            sender.send(start, start + 0.1)
            time.sleep(0.1)
        assert len(preview) > 30 and len(real) == 0
        assert not rig.emulators["left"].commands("movej_canfd")


def test_malformed_chunks_are_rejected_and_counted(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg))
        sender = ChunkSender(ros, node)
        diags = ros.subscribe(DiagnosticArray, "/diagnostics")
        names = node.supervisor.joint_names
        start = measured_vector(rig, names)
        now = node.get_clock().now().nanoseconds
        bad = chunk_to_trajectory(make_chunk(names, now, [0, MS, 2 * MS], [start] * 3, names))
        bad.points[2].positions[4] = float("nan")
        sender.pub.publish(bad)
        misnamed = chunk_to_trajectory(make_chunk(names, now, [0, MS], [start, start], names))
        misnamed.joint_names[3] = "left_joint99"
        sender.pub.publish(misnamed)
        ros.wait_for(lambda: latest_diag(diags).get("count.chunk_non_finite.policy") == "1"
                     and latest_diag(diags).get("count.chunk_names.policy") == "1", 5.0,
                     "both rejections counted")
        assert node.supervisor.executor.newest is None


def test_dangerous_chunks_never_produce_an_unsafe_command_over_dds(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg, ramp_s=0.1))
        sender = ChunkSender(ros, node)
        sup = node.supervisor
        names = sup.joint_names
        inboxes = {side: ros.subscribe(JointState, f"/{side}_arm/command") for side in SIDES}
        engage(ros)
        start = measured_vector(rig, names)
        goals = []
        g = start.copy(); g[1] = 5.0; goals.append(g)                      # across a joint limit
        g = start.copy(); g[0] = -1.57; g[1] = 1.0; g[3] = 0.6; goals.append(g)  # left arm into the right
        g = start.copy(); g[9] = -1.0; g[11] = 0.0; goals.append(g)         # right TCP up, out of its box
        g = start.copy(); g[[2, 10]] += 2.5; goals.append(g)                # far too fast
        for goal in goals:
            for _ in range(15):
                sender.send(measured_vector(rig, names), goal, points=3, dt_ms=33)
                time.sleep(0.1)
        by_stamp: Dict[tuple, Dict[str, JointState]] = {}
        for side in SIDES:
            for msg in inboxes[side].messages:
                by_stamp.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), {})[side] = msg
        ticks = [(stamp[0] * 10**9 + stamp[1], v) for stamp, v in sorted(by_stamp.items())
                 if len(v) == 2]
        assert len(ticks) > 50
        previous = None
        for stamp_ns, tick in ticks:
            q = np.empty(16)
            for side in SIDES:
                q[sup.arm_slice(side)] = tick[side].position
            assert sup.safety.violations(q) == (), sup.safety.violations(q)
            if previous is not None:  # the caps hold by the commands' stamps
                dt = (stamp_ns - previous[0]) * 1e-9
                assert np.all(np.abs(q - previous[1]) <= sup.safety.max_velocity * dt + 1e-9)
            previous = (stamp_ns, q)
        rules = {rule for (rule, _), n in sup.counts.items() if n}
        assert {"joint_limit", "arm_distance", "workspace", "velocity"} <= rules, rules


def _at_rest(inbox, last: int = 10) -> bool:
    tail = np.array([m.position for m in inbox.messages[-last:]])
    return len(tail) == last and np.ptp(tail, axis=0).max() == 0.0


def test_a_silent_policy_makes_the_arms_hold(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg, ramp_s=0.1))
        sender = ChunkSender(ros, node)
        names = node.supervisor.joint_names
        diags = ros.subscribe(DiagnosticArray, "/diagnostics")
        commands = ros.subscribe(JointState, "/left_arm/command")
        engage(ros)
        start = measured_vector(rig, names)
        goal = start + 0.5 * np.isin(np.arange(16), [0, 8])
        for _ in range(3):  # chunks that would keep moving for 2 s, then the policy goes silent
            sender.send(measured_vector(rig, names), goal, points=60)
            time.sleep(0.1)
        ros.wait_for(lambda: latest_diag(diags).get("count.stale_chunk.policy") == "1", 4.0,
                     "the stale-chunk watchdog")
        ros.wait_for(lambda: _at_rest(commands), 2.0, "the left arm held at rest")
        assert latest_diag(diags)["mode"] == "engaged" and latest_diag(diags)["holding"] == "True"


def test_a_silent_camera_makes_the_arms_hold(ros):
    from sensor_msgs.msg import CameraInfo
    from rclpy.qos import qos_profile_sensor_data

    with emulated_arms(ros) as rig:
        cfg = dataclasses.replace(no_cameras(rig.cfg, ramp_s=0.1),
                                  cameras={"head": rig.cfg.cameras["head"]})
        node = ros.start(SupervisorNode, config=cfg)
        sender = ChunkSender(ros, node)
        names = node.supervisor.joint_names
        camera = ros.publisher(CameraInfo, "/cameras/head/camera_info", qos_profile_sensor_data)
        ros.wait_for_subscribers(camera)
        diags = ros.subscribe(DiagnosticArray, "/diagnostics")
        commands = ros.subscribe(JointState, "/right_arm/command")
        for _ in range(5):
            camera.publish(CameraInfo())
            time.sleep(0.03)
        engage(ros)
        start = measured_vector(rig, names)
        goal = start + 0.5 * np.isin(np.arange(16), [0, 8])
        for _ in range(5):  # camera and policy alive
            camera.publish(CameraInfo())
            sender.send(measured_vector(rig, names), goal, points=60)
            time.sleep(0.05)
        assert latest_diag(diags).get("count.stale_camera.head") is None
        for _ in range(10):  # the camera goes silent, the policy carries on
            sender.send(measured_vector(rig, names), goal, points=60)
            time.sleep(0.1)
        assert latest_diag(diags).get("count.stale_camera.head") == "1"
        assert _at_rest(commands)


def test_a_stale_joint_state_makes_the_arms_hold(ros):
    with emulated_arms(ros) as rig:
        node = ros.start(SupervisorNode, config=no_cameras(rig.cfg, ramp_s=0.1))
        sender = ChunkSender(ros, node)
        names = node.supervisor.joint_names
        commands = ros.subscribe(JointState, "/left_arm/command")
        engage(ros)
        start = measured_vector(rig, names)
        goal = start + 0.5 * np.isin(np.arange(16), [0, 8])
        sender.send(start, goal, points=60)
        time.sleep(0.2)
        rig.emulators["right"].pause_push()  # the right arm's state stops, not for long
        time.sleep(0.4)
        counts = dict(node.supervisor.counts)
        assert counts.get(("stale_joint_state", "right")) == 1
        assert counts.get(("lost_controller", "right")) is None
        assert _at_rest(commands)  # the other arm holds too: both follow one plan
        rig.emulators["right"].resume_push()
