"""The twin host: both arms' RealMan controllers on the MuJoCo physics, driven through RealMan's
SDK on loopback as the arm drivers drive them.

What the controllers report is the physics: a streamed path is followed with a lag the
reference does not have, and a gripper closed on a cube stops at the cube's width.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from ate_core.config import replace_in
from ate_ros.images import image_to_rgb
from ate_ros.nodes.arm_node import ArmNode
from ate_ros.nodes.camera_node import CameraNode
from ate_ros.nodes.joint_state_aggregator import JointStateAggregator
from ate_ros.nodes.supervisor_node import SupervisorNode
from arm_rig import SIDES, robot_config
from conftest import free_port, free_udp_port, next_loopback_ip, sdk_push_port
from test_supervisor_node import ChunkSender, engage, no_cameras
from ate_core.robot.config import BimanualConfig, load_config
from ate_core.robot.models import GRIPPER_MAX_OPENING_M, arm_model
from ate_core.twin.model import TwinRobot
from ate_core.twin.twin import Twin
from ate_ros.drivers.realman_sdk import PushSample, SdkArm, sdk
from ate_ros.sim.realman_protocol import ControllerProtocol, MeasuredPlant, PushConfig
from ate_ros.sim.twin_host import TwinHost

pytestmark = pytest.mark.ros  # real RealMan SDK on loopback

CONFIG = "config/bimanual.yaml"


@pytest.fixture(scope="module")
def cfg() -> BimanualConfig:
    return load_config(CONFIG)


@dataclass
class Arm:
    sdk: SdkArm
    pushes: List[Tuple[float, np.ndarray]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pushed_since(self, t: float) -> List[Tuple[float, np.ndarray]]:
        with self.lock:
            return [p for p in self.pushes if p[0] >= t]


@contextlib.contextmanager
def hosted(cfg: BimanualConfig, twin: Twin,
           cameras: bool = False) -> Iterator[Tuple[TwinHost, Dict[str, Arm]]]:
    """The host on fresh loopback addresses, each arm connected through the SDK."""
    ips = {side: next_loopback_ip() for side in ("left", "right")}
    endpoints = {side: {"ip": ip, "tcp_port": 0, "push_port": sdk_push_port(slot),
                        "push_ip": ip} for slot, (side, ip) in enumerate(ips.items())}
    host = TwinHost(cfg, twin, endpoints, cameras=cameras)
    arms: Dict[str, Arm] = {}
    try:
        host.start()
        for side, ip in ips.items():
            arm = Arm(sdk().new_arm())
            arms[side] = arm

            def on_push(push: PushSample, arm: Arm = arm) -> None:
                with arm.lock:
                    arm.pushes.append((time.monotonic(), np.degrees(push.positions_rad)))

            sdk().subscribe(ip, host.emulators[side].model.dof, on_push)
            assert arm.sdk.rm_create_robot_arm(ip, host.emulators[side].tcp_port).id >= 1
        yield host, arms
    finally:
        for side, arm in arms.items():
            arm.sdk.rm_delete_robot_arm()
            sdk().unsubscribe(ips[side])
        host.stop()


def test_the_ideal_plant_is_the_reference_and_a_measured_one_is_what_it_was_told(cfg):
    model = arm_model(cfg.arms.left.model)
    ideal = ControllerProtocol(model, PushConfig(port=9000, ip="127.0.0.1"))
    ideal.motion.stream(np.full(model.dof, 0.1), 0.0)
    ideal.step(0.005)
    np.testing.assert_array_equal(ideal.plant.joints_rad(), ideal.motion.joints_rad)

    measured = MeasuredPlant(np.zeros(model.dof), GRIPPER_MAX_OPENING_M)
    proto = ControllerProtocol(model, PushConfig(port=9000, ip="127.0.0.1"), plant=measured)
    measured.update(np.full(model.dof, math.radians(1.5)), np.zeros(model.dof),
                    GRIPPER_MAX_OPENING_M / 2)
    packet = proto.push_packet()
    assert packet["joint_status"]["joint_position"] == [1500] * model.dof
    assert proto.handle({"command": "get_joint_degree"}, 1, 0.0)["joint"] == [1500] * model.dof
    assert proto.handle({"command": "get_gripper_state"}, 1, 0.0)["actpos"] == 500
    # The reference did not move: only the report did.
    np.testing.assert_array_equal(proto.motion.joints_rad, np.zeros(model.dof))


def test_a_streamed_path_is_followed_by_the_physics_with_a_bounded_lag(cfg):
    twin = Twin(TwinRobot.from_config(cfg))
    amplitude = np.radians([15.0, -10.0, 10.0, 15.0, -10.0, 10.0, 20.0])
    duration_s, period_s = 1.0, 0.01
    home = twin.home_rad("left")

    def path(t: float) -> np.ndarray:
        s = min(max(t / duration_s, 0.0), 1.0)
        return home + amplitude * (1 - math.cos(math.pi * s)) / 2

    with hosted(cfg, twin) as (host, arms):
        emulator, arm = host.emulators["left"], arms["left"]
        gaps = []
        start = time.monotonic()
        for k in range(int(duration_s / period_s) + 1):
            assert arm.sdk.rm_movej_canfd(np.degrees(path(k * period_s)).tolist(), False) == 0
            reference, _ = emulator.reference()
            gaps.append(np.abs(np.array(emulator.joints_deg()) - np.degrees(reference)))
            delay = start + (k + 1) * period_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        settle_from = time.monotonic()
        goal = np.degrees(path(duration_s))
        converged = False
        while time.monotonic() - settle_from < 3.0 and not converged:
            time.sleep(0.05)
            converged = np.max(np.abs(np.array(emulator.joints_deg()) - goal)) < 0.2
        pushed = arm.pushed_since(start)
        stats = host.stats()
    gaps = np.array(gaps)
    # Physics, not the reference: the servos lag it while it moves, by a bounded amount.
    assert gaps.max() > 0.01
    assert gaps.max() < 5.0, gaps.max(axis=0)
    assert converged
    # The push is the measurement too.
    assert np.max(np.abs(pushed[-1][1] - goal)) < 0.2
    assert stats.ticks > 0 and stats.skipped_ticks == 0


def test_a_gripper_closed_on_a_cube_reports_the_cube_not_the_closed_reference(cfg):
    twin = Twin(TwinRobot.from_config(cfg))
    cube = float(twin.model.geom("cube").size[0] * 2)
    with hosted(cfg, twin) as (host, arms):
        arm = arms["right"].sdk
        # Fingers just around the cube's width, then the cube between them, then close.
        assert arm.rm_set_gripper_position(int(1 + cube / GRIPPER_MAX_OPENING_M * 999) + 15,
                                           True, 5) == 0
        with host.edit() as scene:
            scene.set_object_pose("cube", scene.tcp_pose("right"))
        assert arm.rm_set_gripper_pick(500, 200, True, 5) == 0
        time.sleep(0.3)
        ret, state = arm.rm_get_gripper_state()
        assert ret == 0
        _, reference = host.emulators["right"].reference()
    opening_m = (state["actpos"] - 1) / 999 * GRIPPER_MAX_OPENING_M
    assert reference == 0.0  # the controller closed all the way
    assert cube - 0.005 < opening_m <= cube + 0.001  # the fingers stopped at the cube


def test_the_host_process_reports_real_time_on_diagnostics_and_ends_cleanly_on_sigint(
        ros, tmp_path, repo):
    data = yaml.safe_load((repo / CONFIG).read_text())
    data.setdefault("sim", {})["arms"] = {
        side: {"ip": next_loopback_ip(), "tcp_port": free_port(), "udp_port": free_udp_port()}
        for side in ("left", "right")}
    config = tmp_path / "bimanual.yaml"
    config.write_text(yaml.safe_dump(data))
    inbox = ros.subscribe(DiagnosticArray, "/diagnostics")
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id))
    proc = subprocess.Popen([sys.executable, "-m", "ate_ros.sim.twin_host", "--config",
                             str(config)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def twin_status():
            for msg in inbox.messages:
                for status in msg.status:
                    if status.name == "twin: physics":
                        return status
            return None

        status = ros.wait_for(twin_status, timeout_s=30.0, what="the twin's diagnostics")
        values = {kv.key: kv.value for kv in status.values}
        assert float(values["sim_time_s"]) > 0
        assert float(values["real_time_factor"]) > 0
        assert int(values["late_ticks"]) >= int(values["skipped_ticks"]) >= 0
        assert {"object.cube", "object.box"} <= set(values)
        assert len(values["object.cube"].split()) == 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "ate_twin listening" in out and "Traceback" not in out


def test_the_camera_node_publishes_the_twins_render_and_sees_an_arm_move(ros, cfg):
    small = replace_in(cfg, {f"cameras.{name}.{key}": value for name in cfg.cameras
                             for key, value in (("width", 128), ("height", 96))}, source="test")
    twin = Twin(TwinRobot.from_config(small))
    with Twin(TwinRobot.from_config(small)) as reference:
        expected = reference.render("head", 128, 96).astype(np.int16)
    images = ros.subscribe(Image, "/cameras/head/image_raw", qos_profile_sensor_data)
    with hosted(small, twin, cameras=True) as (host, arms):
        node_cfg = replace_in(small, {"cameras.head.source": "twin",
                                      "cameras.head.device": host.frame_block("head")},
                              source="test")
        ros.start(CameraNode, "head", config=node_cfg)
        ros.wait_for(lambda: len(images) >= 3, 20.0, "3 images from the twin")
        still = image_to_rgb(images.messages[-1]).astype(np.int16)
        # The left arm swings its shoulder toward the middle of the table, into the head's view.
        arm = arms["left"].sdk
        home = np.degrees(twin.home_rad("left"))
        for k in range(1, 101):
            target = home.copy()
            target[0] += 60.0 * k / 100
            target[1] += 30.0 * k / 100
            assert arm.rm_movej_canfd(target.tolist(), False) == 0
            time.sleep(0.01)
        time.sleep(0.5)
        images.clear()
        ros.wait_for(lambda: len(images) >= 2, 20.0, "images after the move")
        moved = image_to_rgb(images.messages[-1]).astype(np.int16)
    # The twin's scene, not a test pattern: as another twin of the same config draws it.
    assert np.abs(still - expected).mean() < 3.0
    changed = (np.abs(moved - still).max(axis=2) > 30).mean()
    assert changed > 0.02, f"only {changed:.1%} of the head camera's pixels changed"


def test_chunks_through_the_supervisor_move_the_simulated_arms_and_joint_states_follow_physics(
        ros, cfg):
    twin = Twin(TwinRobot.from_config(cfg))
    ips = {side: next_loopback_ip() for side in SIDES}
    endpoints = {side: {"ip": ip, "tcp_port": free_port(), "push_port": sdk_push_port(1 + i),
                        "push_ip": ip} for i, (side, ip) in enumerate(ips.items())}
    with TwinHost(cfg, twin, endpoints, cameras=False) as host:
        robot = robot_config({side: (ep["ip"], ep["tcp_port"], ep["push_port"])
                              for side, ep in endpoints.items()})
        joint_states = ros.subscribe(JointState, "/joint_states")
        arms = {side: ros.start(ArmNode, side, config=robot) for side in SIDES}
        try:
            ros.start(JointStateAggregator, config=robot)
            ros.wait_for(lambda: all(a.driver.wait_ready(0) for a in arms.values())
                         and len(joint_states) > 0, 20.0, "both arms ready, /joint_states")
            node = ros.start(SupervisorNode, config=no_cameras(robot, ramp_s=0.3))
            sender = ChunkSender(ros, node)
            names = node.supervisor.joint_names

            def state() -> np.ndarray:
                msg = joint_states.messages[-1]
                return np.array([dict(zip(msg.name, msg.position))[n] for n in names])

            # The aggregator publishes what it has heard: wait until that is both arms.
            ros.wait_for(lambda: set(names) <= set(joint_states.messages[-1].name), 10.0,
                         "both arms on /joint_states")

            start = state()
            goal = start.copy()
            goal[[0, 3, 8, 11]] += 0.15  # shoulder yaw and elbow of both arms
            engage(ros)
            arm_joints = np.concatenate([node.supervisor.arm_slice(side)[:7] for side in SIDES])
            # A policy at 10 Hz until the arms have settled at the goal: how long that takes
            # depends on the machine, so wait for it with a deadline rather than a fixed time.
            deadline, settled_since = time.monotonic() + 15.0, None
            while time.monotonic() < deadline:
                sender.send(state(), goal, points=16)
                time.sleep(0.1)
                if np.abs(state()[arm_joints] - goal[arm_joints]).max() < 5e-3:
                    settled_since = settled_since or time.monotonic()
                    if time.monotonic() - settled_since > 0.5:
                        break
                else:
                    settled_since = None
            published = state()
            with host.edit() as scene:
                physics = np.concatenate([scene.joint_positions(side) for side in SIDES])
        finally:
            for arm in arms.values():
                arm.driver.close()
    # The arms went where the chunks led, and /joint_states is the physics' measurement.
    np.testing.assert_allclose(published[arm_joints], goal[arm_joints], atol=5e-3)
    np.testing.assert_allclose(published[arm_joints], physics, atol=2e-3)
    assert np.abs(physics - start[arm_joints]).max() > 0.1
