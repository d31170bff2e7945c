"""Teleoperation over DDS: leaders -> teleop node -> supervisor (teleop mode) -> arm nodes ->
RealMan SDK -> emulated followers; the leaders are a second emulated pair read through the SDK,
a device publishing JointState, or the keyboard jog."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger

from ate_core.robot.config import LeaderConfig
from ate_ros.nodes.jog_node import JogNode
from ate_ros.nodes.supervisor_node import SupervisorNode
from ate_ros.nodes.teleop_node import TeleopNode
from arm_rig import SIDES, emulated_arms
from ate_ros.sim.realman_emulator import RealManEmulator
from conftest import REPO, free_port, free_udp_port, next_loopback_ip
from test_supervisor_node import latest_diag, no_cameras

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too

SHORT = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7", "gripper")


def engage_teleop(ros, timeout_s: float = 10.0) -> None:
    """Engage teleop once the supervisor has heard the arms and the leaders."""
    def accepted() -> bool:
        answer = ros.call(SetBool, "/ate/engage_teleop", SetBool.Request(data=True))
        if not answer.success:
            time.sleep(0.05)
        return answer.success

    ros.wait_for(accepted, timeout_s, "teleop engaged")


def follower(rig, side: str) -> np.ndarray:
    joints, opening = rig.emulators[side].reference()
    return np.array([*joints, opening])


class Device:
    """A leader device publishing both arms' joints (RealMan's short names) at 100 Hz."""

    def __init__(self, ros, start: Dict[str, np.ndarray]) -> None:
        self.positions = {s: np.array(v, dtype=float) for s, v in start.items()}
        self.pubs = {s: ros.publisher(JointState, f"/leader/{s}_arm/joint_states") for s in SIDES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for side, pub in self.pubs.items():
                pub.publish(JointState(name=list(SHORT),
                                       position=[float(v) for v in self.positions[side]]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


@pytest.fixture
def device_rig(ros):
    with emulated_arms(ros) as rig:
        # A long jump hold, so that a busy machine cannot stretch the test past it.
        cfg = no_cameras(rig.cfg, ramp_s=0.3, leader=LeaderConfig(jump_hold_s=2.0))
        ros.start(TeleopNode, config=cfg)
        node = ros.start(SupervisorNode, config=cfg)
        device = Device(ros, {s: follower(rig, s) for s in SIDES})
        try:
            engage_teleop(ros)
            yield rig, node, device
        finally:
            device.close()


@contextlib.contextmanager
def leader_arms(ros, tmp_path):
    """A second pair of emulated RealMan arms, read through the SDK by their own arm nodes in
    the /leader namespace, each in a process of its own as on the robot (in this process, eight
    nodes on one executor would starve some of them on a busy machine)."""
    data = yaml.safe_load((REPO / "config/bimanual.yaml").read_text())
    emulators: Dict[str, RealManEmulator] = {}
    procs: List[subprocess.Popen] = []
    try:
        for side in SIDES:
            ip, tcp, udp = next_loopback_ip(), free_port(), free_udp_port()
            data["arms"][side].update(ip=ip, tcp_port=tcp, udp_port=udp)
            emulators[side] = RealManEmulator(ip=ip, tcp_port=tcp, push_port=udp,
                                              initial_joints_deg=np.degrees(
                                                  data["arms"][side]["home_rad"]).tolist()).start()
        config = tmp_path / "leaders.yaml"
        config.write_text(yaml.safe_dump(data))
        env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id))
        for side in SIDES:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ate_ros.nodes.arm_node", "--ros-args", "-r",
                 f"__ns:=/leader/{side}_arm", "-p", f"arm:={side}", "-p",
                 f"config_file:={config}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        yield emulators
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            print(out)
        for emulator in emulators.values():
            emulator.stop()


def test_leader_arms_read_through_the_sdk_move_the_followers(ros, tmp_path):
    with emulated_arms(ros) as rig, leader_arms(ros, tmp_path) as leaders:
        cfg = no_cameras(rig.cfg, ramp_s=0.3)
        teleop = ros.start(TeleopNode, config=cfg)
        node = ros.start(SupervisorNode, config=cfg)
        start = {s: np.array(leaders[s].reference()[0]) for s in SIDES}
        offset = np.array([0.3, 0.0, 0.0, -0.25, 0.0, 0.0, 0.2])
        for side in SIDES:  # the leaders stand away from the followers: a ramp, then tracking
            leaders[side].place(start[side] + 0.3 * offset, 0.05)
        engage_teleop(ros, 60.0)  # the leaders' processes start (imports, SDK) meanwhile
        for k in range(1, 51):  # an operator moving both leaders over a second, by hand
            for side in SIDES:
                leaders[side].place(start[side] + (0.3 + 0.7 * k / 50) * offset,
                                    0.05 - 0.02 * k / 50)
            time.sleep(0.02)
        goal = {s: np.array([*leaders[s].reference()[0], leaders[s].reference()[1]])
                for s in SIDES}
        try:
            ros.wait_for(lambda: all(np.allclose(follower(rig, s), goal[s], atol=2e-3)
                                     for s in SIDES), 5.0, "the followers at the leaders' pose")
        except AssertionError as e:
            raise AssertionError(f"{e}: followers {[follower(rig, s) for s in SIDES]}, leaders "
                                 f"{list(goal.values())}; supervisor {node.supervisor.mode} "
                                 f"{node.supervisor.reason} {dict(node.supervisor.counts)} "
                                 f"faults {node._last_output.faults} forwarded {teleop.forwarded} "
                                 f"leader {node.supervisor.leader()}") from None
        counts = [len(rig.emulators[s].commands("movej_canfd")) for s in SIDES]
        assert min(counts) > 50, counts  # streamed, not jumped


def test_a_leader_step_is_limited_by_the_caps_and_a_jump_holds(ros, device_rig):
    rig, node, device = device_rig
    sup = node.supervisor
    commands = ros.subscribe(JointState, "/left_arm/command")
    diags = ros.subscribe(DiagnosticArray, "/diagnostics")
    time.sleep(0.5)  # the engage ramp is over
    step = device.positions["left"].copy()
    step[0] += 0.8 * sup.config.leader.max_jump_rad  # a fast hand: one sample, not a jump
    commands.clear()
    device.positions["left"] = step
    ros.wait_for(lambda: np.allclose(follower(rig, "left"), step, atol=2e-3), 5.0,
                 "the left follower at the stepped leader")
    msgs = list(commands.messages)
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs])
    path = np.array([m.position for m in msgs])
    assert len(path) > 20  # spread over many ticks, not taken in one
    cap = sup.safety.max_velocity[sup.arm_slice("left")]
    assert np.all(np.abs(np.diff(path, axis=0)) <= cap * np.diff(stamps)[:, None] + 1e-6)
    assert np.all(path[:, 0] <= step[0] + 1e-9)  # no overshoot past the leader

    jump = step.copy()
    jump[0] += 2.5 * sup.config.leader.max_jump_rad
    device.positions["left"] = jump
    jumped = time.monotonic()
    time.sleep(0.5)
    held = follower(rig, "left")
    assert time.monotonic() - jumped < sup.config.leader.jump_hold_s
    assert held[0] <= step[0] + 1e-4  # it never moved on towards the jump
    ros.wait_for(lambda: latest_diag(diags).get("count.leader_jump.left") == "1", 3.0,
                 "the jump counted on /diagnostics")
    ros.wait_for(lambda: np.allclose(follower(rig, "left"), jump, atol=2e-3),
                 5.0 + sup.config.leader.jump_hold_s, "the follower ramped to the leader after the hold")


def test_an_estop_during_teleop_latches(ros, device_rig):
    rig, node, device = device_rig
    commands = ros.subscribe(JointState, "/right_arm/command")
    time.sleep(0.5)
    assert ros.call(Trigger, "/ate/estop").success
    estopped_ns = node.get_clock().now().nanoseconds
    for side in SIDES:
        ros.wait_for(lambda s=side: rig.emulators[s].commands("set_arm_stop"), 2.0,
                     f"{side} controller told to stop")
    for k in range(30):  # the leader keeps moving: nothing follows
        device.positions["right"] = device.positions["right"] + np.array([0.005] + [0.0] * 7)
        time.sleep(0.01)
    time.sleep(0.1)
    held = np.array([m.position for m in commands.messages
                     if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec > estopped_ns])
    assert len(held) > 20 and np.ptp(held, axis=0).max() == 0.0
    assert not ros.call(SetBool, "/ate/engage_teleop", SetBool.Request(data=True)).success
    assert ros.call(Trigger, "/ate/rearm").success
    rearmed_ns = node.get_clock().now().nanoseconds
    time.sleep(0.3)
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in commands.messages]
    assert not [t for t in stamps if t > rearmed_ns]  # re-armed is idle: no command since
    engage_teleop(ros)  # and a new engage ramps to the leader again
    ros.wait_for(lambda: np.allclose(follower(rig, "right"), device.positions["right"], atol=2e-3),
                 5.0, "the right follower at its leader after re-engaging")


def test_the_keyboard_jog_moves_a_joint_through_the_supervisor(ros):
    with emulated_arms(ros) as rig:
        cfg = no_cameras(rig.cfg, ramp_s=0.2)
        read, write = os.pipe()
        with os.fdopen(read, "r") as keys, os.fdopen(write, "w") as typing:
            jog = ros.start(JogNode, config=cfg, keys=keys)
            ros.start(SupervisorNode, config=cfg)
            ros.wait_for(jog.jog.ready, 5.0, "the jog started from the measured joints")
            start = follower(rig, "right")
            engage_teleop(ros)
            typing.write("a4++++-g+")  # right arm, joint 4 up three steps, gripper up one
            typing.flush()
            step = cfg.teleop.jog_step_rad
            goal = start.copy()
            goal[3] += 3 * step
            goal[7] = min(goal[7] + step / 10, cfg.gripper.max_opening_m)
            ros.wait_for(lambda: np.allclose(follower(rig, "right"), goal, atol=2e-3), 5.0,
                         "the right arm at the jogged target")
            np.testing.assert_allclose(follower(rig, "left")[:7],
                                       np.array(cfg.arms.left.home_rad), atol=2e-3)
