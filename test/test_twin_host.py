"""The twin host: both arms' RealMan controllers on the MuJoCo physics, driven through RealMan's
SDK on loopback as the arm drivers drive them; its cameras drawn by a process of their own; its
task episodes reset and checked through ROS.

What the controllers report is the physics: a streamed path is followed with a lag the
reference does not have, and a gripper closed on a cube stops at the cube's width. A scripted
expert's commands sent as chunks through the supervisor and the arm drivers do the task as the
task's own success check judges it.
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
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import replace_in
from ate_core.runtime.chunk import make_chunk
from ate_core.runtime.supervisor import Mode
from ate_ros.chunk_msgs import chunk_to_trajectory
from ate_ros.images import image_to_rgb
from ate_ros.nodes.arm_node import ArmNode
from ate_ros.nodes.camera_node import CameraNode
from ate_ros.nodes.joint_state_aggregator import JointStateAggregator
from ate_ros.nodes.supervisor_node import SupervisorNode
from arm_rig import SIDES, robot_config
from conftest import free_port, free_udp_port, next_loopback_ip, sdk_push_port
from test_supervisor_node import ChunkSender, engage, no_cameras
from ate_core.robot.config import BimanualConfig, load_config, simulated, twin_frame_block
from ate_core.robot.models import GRIPPER_MAX_OPENING_M, arm_model
from ate_core.twin.experts import CONTROL_PERIOD_S, run_episode
from ate_core.twin.gl import TwinRenderError
from ate_core.twin.model import TwinRobot
from ate_core.twin.tasks import Task, get_task
from ate_core.twin.twin import Twin
from ate_ros.drivers.realman_sdk import PushSample, SdkArm, sdk
from ate_ros.sim.realman_protocol import ControllerProtocol, MeasuredPlant, PushConfig
from ate_ros.graph import EmulatorSpec, sim_hardware
from ate_ros.sim.twin_host import TwinHost, parse_args, twin_node

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


def _twin_status(inbox, require=lambda values: True):
    """The values of the newest ``twin: physics`` status that satisfies ``require``."""
    for msg in reversed(inbox.messages):
        for status in msg.status:
            if status.name == "twin: physics":
                values = {kv.key: kv.value for kv in status.values}
                if require(values):
                    return values
    return None


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_host_process_renders_for_the_camera_node_reports_on_diagnostics_and_ends_cleanly_on_sigint(
        ros, tmp_path, repo):
    data = yaml.safe_load((repo / CONFIG).read_text())
    data.setdefault("sim", {})["arms"] = {
        side: {"ip": next_loopback_ip(), "tcp_port": free_port(), "udp_port": free_udp_port()}
        for side in ("left", "right")}
    config = tmp_path / "bimanual.yaml"
    config.write_text(yaml.safe_dump(data))
    # The camera node as the stack starts it with the twin on (twin:=true): same size, rate
    # and shared-memory block as the host's renderer.
    cam_cfg = simulated(replace_in(load_config(config), {"sim.twin": True}, source="test"))
    inbox = ros.subscribe(DiagnosticArray, "/diagnostics")
    images = ros.subscribe(Image, "/cameras/head/image_raw", qos_profile_sensor_data)
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id))
    proc = subprocess.Popen([sys.executable, "-m", "ate_ros.sim.twin_host", "--config",
                             str(config)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        values = ros.wait_for(lambda: _twin_status(inbox), timeout_s=60.0,
                              what="the twin's diagnostics")
        assert float(values["sim_time_s"]) > 0
        assert float(values["real_time_factor"]) > 0
        assert int(values["late_ticks"]) >= int(values["skipped_ticks"]) >= 0
        assert {"object.cube", "object.box"} <= set(values)
        assert len(values["object.cube"].split()) == 3
        assert (values["task"], values["seed"]) == ("none", "0")
        # The host answers only once its renderer has drawn every camera.
        assert values["renderer"] == "rendering", values
        renderer = int(values["renderer_pid"])
        assert renderer != proc.pid and not _process_gone(renderer)
        values = ros.wait_for(lambda: _twin_status(
            inbox, lambda v: all(float(v[f"camera.{n}.fps"]) > 0 for n in cam_cfg.cameras)),
            timeout_s=10.0, what="every camera's rate on the diagnostics")
        assert all(float(values[f"camera.{n}.render_ms"]) > 0 for n in cam_cfg.cameras)
        ros.start(CameraNode, "head", config=cam_cfg)
        ros.wait_for(lambda: len(images) >= 3, 30.0, "3 images of the head camera")
        image = images.messages[-1]
        assert (image.width, image.height) == (cam_cfg.sim.camera_width,
                                               cam_cfg.sim.camera_height)
        assert image_to_rgb(image).std() > 5.0  # a scene, not a blank frame
        blocks = [twin_frame_block(cam_cfg.sim.arms.left.ip, cam_cfg.sim.arms.left.tcp_port, n)
                  for n in cam_cfg.cameras]
        assert all(os.path.exists(f"/dev/shm/{b}") for b in blocks)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "ate_twin listening" in out and "Traceback" not in out, out
    # The renderer went with the host (it was the host's child: reaped, not orphaned), and
    # so did the shared memory.
    ros.wait_for(lambda: _process_gone(renderer), 5.0, "the render process to end")
    assert not [b for b in blocks if os.path.exists(f"/dev/shm/{b}")]
    assert not os.path.exists(f"/dev/shm/ate_twin_scene_{proc.pid}_0")


@pytest.mark.parametrize("command", [[sys.executable, "-m", "ate_ros.sim.twin_host"],
                                     [str(Path(sys.executable).parent / "ate_twin")]],
                         ids=["module", "console_script"])
def test_a_twin_host_without_opengl_exits_with_the_reason(tmp_path, repo, command):
    # The console script (what launch and ate_bringup start) exits with main's status too.
    env = dict(os.environ, MUJOCO_GL="disable")
    out = subprocess.run([*command, "--config", str(repo / CONFIG)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out
    assert "ate_twin: cameras: MUJOCO_GL=disable disables rendering" in out.stderr
    assert "--no-cameras" in out.stderr and "Traceback" not in out.stderr


def test_a_renderer_that_fails_says_why_and_the_physics_goes_on(cfg):
    # Frames larger than the twin's offscreen buffer (sized for the config it was built from):
    # the render process cannot draw them.
    huge = replace_in(cfg, {f"cameras.{name}.{key}": value for name in cfg.cameras
                            for key, value in (("width", 4000), ("height", 3000))},
                      source="test")
    twin = Twin(TwinRobot.from_config(cfg))
    with hosted(huge, twin, cameras=True) as (host, arms):
        with pytest.raises(TwinRenderError, match="outside the twin's offscreen buffer"):
            host.wait_for_cameras(timeout_s=60.0)
        state = host.renderer_state()
        assert state.phase == "failed" and "4000x3000" in state.reason
        ticks = host.stats().ticks
        deadline = time.monotonic() + 5.0
        while host.stats().ticks <= ticks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host.stats().ticks > ticks


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


# ---- episodes through the stack -----------------------------------------------------------------
@dataclass
class Stack:
    """The twin host with a task, its `twin` node, both arm drivers, /joint_states and the
    supervisor, all on loopback in this process."""

    host: TwinHost
    supervisor: SupervisorNode
    joint_states: object  # Inbox of /joint_states

    def state(self) -> np.ndarray:
        """The newest /joint_states in the supervisor's joint order."""
        msg = self.joint_states.messages[-1]
        by_name = dict(zip(msg.name, msg.position))
        return np.array([by_name[n] for n in self.supervisor.supervisor.joint_names])


@contextlib.contextmanager
def twin_stack(ros, cfg: BimanualConfig, task: Task, seed: int) -> Iterator[Stack]:
    twin = Twin(TwinRobot.from_config(cfg), task.scene())
    ips = {side: next_loopback_ip() for side in SIDES}
    endpoints = {side: {"ip": ip, "tcp_port": free_port(), "push_port": sdk_push_port(1 + i),
                        "push_ip": ip} for i, (side, ip) in enumerate(ips.items())}
    with TwinHost(cfg, twin, endpoints, cameras=False, task=task, seed=seed) as host:
        robot = robot_config({side: (ep["ip"], ep["tcp_port"], ep["push_port"])
                              for side, ep in endpoints.items()})
        ros.start(twin_node, host)
        joint_states = ros.subscribe(JointState, "/joint_states")
        arms = {side: ros.start(ArmNode, side, config=robot) for side in SIDES}
        try:
            ros.start(JointStateAggregator, config=robot)
            supervisor = ros.start(SupervisorNode, config=no_cameras(robot, ramp_s=0.3))
            names = supervisor.supervisor.joint_names
            # The aggregator publishes what it has heard: wait until that is both arms.
            ros.wait_for(lambda: all(a.driver.wait_ready(0) for a in arms.values())
                         and len(joint_states) > 0
                         and set(names) <= set(joint_states.messages[-1].name), 20.0,
                         "both arms ready and on /joint_states")
            yield Stack(host, supervisor, joint_states)
        finally:
            for arm in arms.values():
                arm.driver.close()


def _trigger(ros, name: str) -> Trigger.Response:
    return ros.call(Trigger, name, Trigger.Request(), timeout_s=10.0)


def _home(twin: Twin, stack: Stack) -> np.ndarray:
    """The whole robot at home, grippers open, in the supervisor's joint order."""
    out = np.zeros(len(stack.supervisor.supervisor.joint_names))
    for side in SIDES:
        out[stack.supervisor.supervisor.arm_slice(side)] = [*twin.home_rad(side),
                                                             GRIPPER_MAX_OPENING_M]
    return out


def test_a_reset_puts_the_next_seeds_scene_and_the_arms_at_home_and_they_stay_there(ros, cfg):
    task, seed = get_task("pick_place"), 7
    with twin_stack(ros, cfg, task, seed) as stack:
        host, names = stack.host, stack.supervisor.supervisor.joint_names
        sender = ChunkSender(ros, stack.supervisor)
        # Away from the start: both arms moved, the right gripper half closed, the cube pushed.
        start = stack.state()
        goal = start.copy()
        goal[[0, 3, 8, 11]] += 0.2
        goal[stack.supervisor.supervisor.arm_slice("right")[-1]] = 0.035
        engage(ros)
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and np.abs(stack.state() - goal).max() > 0.01:
            sender.send(stack.state(), goal, points=16)
            time.sleep(0.1)
        assert np.abs(stack.state() - goal).max() <= 0.01
        assert ros.call(SetBool, "/ate/engage", SetBool.Request(data=False)).success
        # As the main job does: reset only once the supervisor has brought the arms to rest and
        # commands nothing (disengaging still commands; under load that takes a while).
        ros.wait_for(lambda: stack.supervisor.supervisor.mode is Mode.IDLE, 10.0,
                     "the supervisor idle after disengaging")
        # ... and the last commands through the arm drivers have reached the controllers (on a
        # busy machine one arriving after the reset pulled an arm back to where it was).
        settled = stack.state()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = stack.state()
            if np.abs(now - settled).max() < 1e-4:
                break
            settled = now
        with host.edit() as scene:
            pushed = scene.object_pose("cube")
            pushed[:2, 3] += (0.05, 0.05)
            scene.set_object_pose("cube", pushed)

        for expected_seed in (seed, seed + 1):
            answer = _trigger(ros, "/twin/reset")
            assert answer.success, answer.message
            assert answer.message.startswith(f"seed={expected_seed}: cube at ("), answer.message
            fresh = Twin(TwinRobot.from_config(cfg), task.scene())
            task.reset(fresh, expected_seed)
            home = _home(fresh, stack)
            # The controllers hold the arms where the reset put them: every /joint_states
            # for a second after the first one at home is at home too.
            try:
                ros.wait_for(lambda: np.abs(stack.state() - home).max() < 2e-3, 5.0,
                             "/joint_states at home")
            except AssertionError:
                raise AssertionError(f"off home by {np.round(stack.state() - home, 4)}")
            stack.joint_states.clear()
            time.sleep(1.0)
            held = [dict(zip(m.name, m.position)) for m in stack.joint_states.messages]
            assert len(held) > 20
            worst = max(np.abs(np.array([h[n] for n in names]) - home).max() for h in held)
            assert worst < 2e-3, f"an arm left home by {worst:.4f} after the reset"
            # The objects are where a fresh reset with that seed puts them, and stay there.
            with host.edit() as scene:
                cube = scene.object_pose("cube")[:3, 3]
                target = scene.target_position()
            np.testing.assert_allclose(cube, fresh.object_pose("cube")[:3, 3], atol=2e-3)
            np.testing.assert_allclose(target, fresh.target_position(), atol=1e-9)
            check = _trigger(ros, "/twin/check")
            assert not check.success and "cm from the target" in check.message, check.message
        diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        values = ros.wait_for(lambda: _twin_status(diagnostics), 5.0, "the twin's diagnostics")
        assert (values["task"], values["seed"]) == ("pick_place", str(seed + 1))


def test_episode_services_without_a_task_say_to_start_with_one(ros, cfg):
    twin = Twin(TwinRobot.from_config(cfg))
    with hosted(cfg, twin) as (host, _):
        ros.start(twin_node, host)
        for service in ("/twin/reset", "/twin/check"):
            answer = _trigger(ros, service)
            assert not answer.success and "--task" in answer.message, answer.message


def test_a_scripted_expert_through_the_stack_lifts_the_box_as_the_task_check_says(ros, cfg):
    """The expert's 100 Hz command stream, computed offline on a twin reset with the same seed,
    goes out as action chunks (what a policy sends) through the engaged supervisor and both
    arm drivers to the twin host's controllers; the twin's own success check then says the box
    is lifted."""
    task, seed = get_task("lift_box"), 3
    offline = Twin(TwinRobot.from_config(cfg), task.scene())
    stream: List[Dict[str, Tuple[np.ndarray, float]]] = []
    result = run_episode(offline, task, seed, on_tick=lambda k, commands: stream.append(
        {side: (c.q_rad.copy(), c.gripper_m) for side, c in commands.items()}))
    assert result.success, result.outcome.reason

    with twin_stack(ros, cfg, task, seed) as stack:
        node = stack.supervisor
        names = node.supervisor.joint_names
        targets = np.zeros((len(stream), len(names)))
        for k, commands in enumerate(stream):
            for side, (q, gripper) in commands.items():
                targets[k, node.supervisor.arm_slice(side)] = [*q, gripper]
        answer = _trigger(ros, "/twin/reset")  # the first reset: the start-up's seed again
        assert answer.success and answer.message.startswith(f"seed={seed}: box at ("), answer
        pub = ros.publisher(JointTrajectory, "/ate/action_chunk")
        ros.wait_for_subscribers(pub)
        engage(ros)
        # A policy's chunks: every 0.1 s the next 0.6 s of the stream, stamped with the stream's
        # time at or just before now, so that they follow the clock however late they go out.
        horizon, period_ns = 60, round(CONTROL_PERIOD_S * 1e9)
        t0 = node.get_clock().now().nanoseconds
        end = t0 + len(targets) * period_ns
        deadline = time.monotonic() + len(targets) * CONTROL_PERIOD_S + 20.0
        outcome = None
        while time.monotonic() < deadline:
            now = node.get_clock().now().nanoseconds
            k0 = min((now - t0) // period_ns, len(targets) - 1)
            rows = targets[np.minimum(np.arange(k0, k0 + horizon), len(targets) - 1)]
            pub.publish(chunk_to_trajectory(make_chunk(
                names, t0 + k0 * period_ns, np.arange(horizon) * period_ns, rows, names)))
            if now > end:
                # The stream ends holding the box up; the check decides from the scene alone.
                outcome = _trigger(ros, "/twin/check")
                if outcome.success:
                    break
            time.sleep(0.1)
    assert outcome is not None and outcome.success, outcome
    assert "held by both grippers" in outcome.message


def test_the_twin_host_process_gets_the_task_and_seed_from_the_graph(cfg):
    (default,) = sim_hardware(cfg, "robot.yaml", twin=True)
    assert "--task" not in default.argv() and default.argv()[-2:] == ["--seed", "0"]
    (spec,) = sim_hardware(cfg, "robot.yaml", twin=True, task="lift_box", seed=3)
    args = parse_args(spec.argv())
    assert (args.task, args.seed, args.config) == ("lift_box", 3, "robot.yaml")
    # The idealised emulators know no tasks.
    assert all(isinstance(hw, EmulatorSpec)
               for hw in sim_hardware(cfg, "robot.yaml", twin=False, task="lift_box"))
