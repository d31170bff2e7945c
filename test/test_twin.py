"""The simulated twin's physics model (``ate_core.twin``).

One source of truth: the MuJoCo model is read from the robot's own URDF, so its joints, limits,
link frames and TCP are the ones :mod:`ate_core.robot` computes. On top: servos that follow a
100 Hz target stream, a gripper that holds a cube against gravity, cameras that see the scene,
and resets that are a function of their seed. Physics is deterministic, so none of these
depends on the speed of the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ate_core.config import ConfigError, from_dict
from ate_core.robot.config import load_config
from ate_core.robot.models import GRIPPER_MAX_OPENING_M, GRIPPER_MAX_SPEED_M_S, RM65_B, RM75_B
from ate_core.robot.urdf import bimanual_urdf, parse_urdf
from ate_core.twin.config import CameraMountConfig, TableConfig, TwinConfig
from ate_core.twin.gl import TwinRenderError
from ate_core.twin.model import (RM65_B_HOME_RAD, TwinModelError, TwinRobot, build_model,
                                 rm65_variant)
from ate_core.twin.twin import Twin

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "bimanual.yaml"

#: A scene with nothing an arm could touch: the table far below, no objects.
OPEN_SPACE = TwinConfig(table=TableConfig(top_z_m=-0.6), objects={})


@pytest.fixture(scope="module")
def rm75() -> TwinRobot:
    return TwinRobot.from_config(load_config(CONFIG))


@pytest.fixture(scope="module")
def rm65(rm75: TwinRobot) -> TwinRobot:
    return rm65_variant(rm75)


@pytest.fixture(params=["RM75-B", "RM65-B"])
def robot(request, rm75: TwinRobot, rm65: TwinRobot) -> TwinRobot:
    return rm75 if request.param == "RM75-B" else rm65


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


# --------------------------------------------------------------------------- one source of truth


def test_both_variants_compile_with_every_arm_joint_and_gripper_actuated(rm75, rm65):
    for robot, model in ((rm75, RM75_B), (rm65, RM65_B)):
        twin = Twin(robot)
        assert twin.arm_prefixes == ("left", "right")
        assert all(arm.model is model for arm in robot.layout)
        assert twin.model.nu == 2 * (model.dof + 1)
        assert set(twin.camera_names) == {"head", "left_wrist", "right_wrist"}
        assert set(twin.object_names) == {"cube", "box"}


def test_every_movable_urdf_joint_is_a_mujoco_joint_but_the_gripper_opening_a_tendon(robot):
    urdf = parse_urdf(bimanual_urdf(robot.layout, robot.robot_name))
    model = Twin(robot).model
    movable = {j.name for j in urdf.joints.values() if j.movable}
    joints = {model.joint(i).name for i in range(model.njnt)}
    openings = {arm.gripper_joint for arm in robot.layout}
    assert movable - openings <= joints
    assert {model.tendon(i).name for i in range(model.ntendon)} == openings


def test_tcp_and_link_frames_equal_the_robot_forward_kinematics(robot):
    twin = Twin(robot)
    rng = np.random.default_rng(7)
    for arm in robot.layout:
        lower, upper = np.array(arm.model.lower_rad), np.array(arm.model.upper_rad)
        for q in rng.uniform(lower, upper, size=(50, arm.model.dof)):
            twin.set_joint_positions(arm.prefix, q)
            expected = arm.tcp_pose(q)
            got = twin.tcp_pose(arm.prefix)
            assert np.linalg.norm(got[:3, 3] - expected[:3, 3]) < 1e-3
            assert rotation_angle(got, expected) < 1e-3
            links = arm.link_poses(q)
            for i, name in enumerate(arm.link_names):
                assert np.linalg.norm(twin.data.body(name).xpos - links[i, :3, 3]) < 1e-6


def test_joint_limits_are_the_arm_models(robot):
    twin = Twin(robot)
    for arm in robot.layout:
        lower, upper = twin.joint_limits_rad(arm.prefix)
        np.testing.assert_array_equal(lower, arm.model.lower_rad)
        np.testing.assert_array_equal(upper, arm.model.upper_rad)
        np.testing.assert_array_equal(
            twin.model.actuator(arm.gripper_joint).actrange, [0.0, GRIPPER_MAX_OPENING_M])


def test_rm65_home_puts_the_tcp_where_the_configured_rm75_home_does(rm75, rm65):
    for arm75, arm65 in zip(rm75.layout, rm65.layout):
        np.testing.assert_allclose(arm65.tcp_pose(np.array(RM65_B_HOME_RAD)),
                                   arm75.tcp_pose(np.array(rm75.home_rad[arm75.prefix])),
                                   atol=1e-12)


# --------------------------------------------------------------------------- servos and gripper


def test_servos_track_a_100hz_target_stream_and_settle_on_its_last_target(robot):
    """Every joint sways 0.3 rad at 0.5 Hz (0.94 rad/s at the peak), phases staggered.

    Measured: at most 5.2 mrad behind the target in force on either model; 10 mrad is the
    bound. Held, the last target is reached to 1 mrad within 0.3 s.
    """
    twin = Twin(robot, OPEN_SPACE)
    home = {p: twin.home_rad(p) for p in twin.arm_prefixes}

    def target(prefix: str, t: float) -> np.ndarray:
        phase = 0.7 * np.arange(home[prefix].size)
        ramp_in = (1 - np.exp(-t / 0.3)) ** 2
        return home[prefix] + 0.3 * ramp_in * np.sin(np.pi * t + phase)

    worst = 0.0
    for k in range(300):
        for prefix in twin.arm_prefixes:
            twin.set_joint_targets(prefix, target(prefix, k * 0.01))
        assert twin.step(0.01) == 5
        if k >= 50:
            worst = max(worst, *(np.abs(twin.joint_positions(p) - target(p, k * 0.01)).max()
                                 for p in twin.arm_prefixes))
    assert worst < 0.010
    for _ in range(30):
        twin.step(0.01)
    for prefix in twin.arm_prefixes:
        np.testing.assert_allclose(twin.joint_positions(prefix), target(prefix, 2.99), atol=1e-3)
        np.testing.assert_allclose(twin.joint_velocities(prefix), 0.0, atol=0.02)


def test_targets_beyond_the_joint_limits_are_clamped_to_them(rm75):
    twin = Twin(rm75, OPEN_SPACE)
    _, upper = twin.joint_limits_rad("left")
    twin.set_joint_targets("left", np.full(7, 10.0))
    np.testing.assert_array_equal(twin.joint_targets("left"), upper)
    with pytest.raises(ValueError, match="7 finite joint angles"):
        twin.set_joint_targets("left", np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        twin.set_joint_targets("left", [0, 0, 0, np.nan, 0, 0, 0])


def test_gripper_closes_and_opens_fully_no_faster_than_rated(rm75):
    twin = Twin(rm75, OPEN_SPACE)
    openings = []
    for target in (0.0, GRIPPER_MAX_OPENING_M):
        twin.set_gripper_target("left", target)
        for _ in range(150):
            twin.step(0.01)
            openings.append(twin.gripper_opening("left"))
        assert abs(twin.gripper_opening("left") - target) < 1e-3
    speed = np.abs(np.diff(openings)) / 0.01
    assert GRIPPER_MAX_SPEED_M_S * 0.95 <= speed.max() <= GRIPPER_MAX_SPEED_M_S * 1.05
    assert twin.gripper_opening("right") == pytest.approx(GRIPPER_MAX_OPENING_M)
    twin.set_gripper_target("left", 1.0)
    assert twin.gripper_target("left") == GRIPPER_MAX_OPENING_M


# Joint moves that lift the TCP about 12 cm with the tool still pointing down: RM75-B bends
# joints 2, 4, 6; RM65-B mirrors them on 2, 3, 5.
LIFT = {"RM75-B": (0, -0.3, 0, -0.2, 0, 0.5, 0), "RM65-B": (0, 0.3, 0.2, 0, -0.5, 0)}


def test_gripper_closed_on_the_cube_lifts_it_10cm_without_dropping_it(robot):
    twin = Twin(robot)
    prefix = "right"
    arm = robot.layout.arm(prefix)
    home = twin.home_rad(prefix)
    lift = np.array(LIFT[arm.model.name])
    assert arm.tcp_pose(home + lift)[2, 3] - arm.tcp_pose(home)[2, 3] > 0.11
    cube = twin.model.geom("cube").size[0] * 2

    twin.set_object_pose("cube", twin.tcp_pose(prefix))  # between the fingers, tool-aligned
    twin.set_gripper_opening(prefix, cube)
    twin.set_gripper_target(prefix, 0.0)
    start_z = twin.object_pose("cube")[2, 3]
    offsets = []

    def follow(steps: int, q_at=None) -> None:
        for k in range(steps):
            if q_at is not None:
                twin.set_joint_targets(prefix, q_at((k + 1) / steps))
            twin.step(0.01)
            tcp = twin.tcp_pose(prefix)
            offsets.append(tcp[:3, :3].T @ (twin.object_pose("cube")[:3, 3] - tcp[:3, 3]))

    follow(30)  # squeeze
    follow(100, lambda s: home + (3 * s * s - 2 * s ** 3) * lift)
    follow(100)  # hold up there for a second
    assert twin.object_pose("cube")[2, 3] - start_z > 0.10
    drift = np.linalg.norm(np.array(offsets) - offsets[0], axis=1)
    assert drift.max() < 0.005
    assert cube - 0.005 < twin.gripper_opening(prefix) <= cube


# --------------------------------------------------------------------------- scene and time


def test_reset_places_objects_as_a_function_of_the_seed(rm75):
    twin = Twin(rm75)

    def placement(seed: int) -> np.ndarray:
        twin.reset(seed)
        return np.concatenate([twin.object_pose(n).ravel() for n in twin.object_names]
                              + [twin.target_position()])

    first = placement(3)
    twin.step(0.5)
    np.testing.assert_array_equal(placement(3), first)
    assert twin.time_s == 0.0
    assert not np.allclose(placement(4), first)


def test_reset_leaves_arms_home_grippers_open_and_objects_at_rest_on_the_table(rm75):
    twin = Twin(rm75)
    twin.reset(11)
    before = {n: twin.object_pose(n) for n in twin.object_names}
    twin.step(0.5)
    top = TwinConfig().table.top_z_m
    for name, pose in before.items():
        np.testing.assert_allclose(twin.object_pose(name), pose, atol=1e-3)
        assert pose[2, 3] == pytest.approx(top + twin.model.geom(name).size[2])
    for prefix in twin.arm_prefixes:
        np.testing.assert_allclose(twin.joint_positions(prefix), twin.home_rad(prefix),
                                   atol=1e-3)
        assert twin.gripper_opening(prefix) == pytest.approx(GRIPPER_MAX_OPENING_M, abs=1e-4)


def test_step_takes_whole_timesteps_and_carries_the_remainder(rm75):
    twin = Twin(rm75, OPEN_SPACE)
    taken = sum(twin.step(0.003) for _ in range(10))
    assert taken == 15
    assert twin.time_s == pytest.approx(0.030, abs=1e-9)
    with pytest.raises(ValueError):
        twin.step(-0.01)


# --------------------------------------------------------------------------- cameras


def test_every_camera_renders_its_own_nonblank_view(rm75):
    with Twin(rm75) as twin:
        left_tcp = twin.tcp_pose("left")
        under_left = np.eye(4)
        under_left[:3, 3] = (left_tcp[0, 3], left_tcp[1, 3], 0.02)
        twin.set_object_pose("cube", under_left)  # on the table under the left gripper only
        frames = {}
        for camera in twin.camera_names:
            for width, height in ((96, 96), (640, 480)):
                frame = twin.render(camera, width, height)
                assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
                assert frame.std() > 10, f"{camera}: a blank frame"
            frames[camera] = frame.astype(np.int16)
        names = sorted(frames)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                differing = (np.abs(frames[a] - frames[b]).max(axis=2) > 30).mean()
                assert differing > 0.01, f"{a} and {b} look alike"
        with pytest.raises(KeyError, match="no camera"):
            twin.render("tail", 96, 96)
        with pytest.raises(TwinRenderError, match="offscreen buffer"):
            twin.render("head", 4096, 4096)


RENDER_ONCE = textwrap.dedent(f"""
    import os
    from ate_core.robot.config import load_config
    from ate_core.twin.gl import TwinRenderError
    from ate_core.twin.model import TwinRobot
    from ate_core.twin.twin import Twin
    twin = Twin(TwinRobot.from_config(load_config({str(CONFIG)!r})))
    twin.step(0.01)
    try:
        twin.render("head", 32, 32)
        print("RENDERED", os.environ["MUJOCO_GL"])
    except TwinRenderError as e:
        print("REFUSED", e)
""")


def render_once(**env: str) -> str:
    """What a fresh process says when it renders one frame with ``env`` (None: unset)."""
    environ = {k: v for k, v in os.environ.items() if k not in env}
    environ.update({k: v for k, v in env.items() if v is not None})
    out = subprocess.run([sys.executable, "-c", RENDER_ONCE], env=environ, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_rendering_disabled_by_mujoco_gl_is_a_twin_render_error_naming_it():
    assert render_once(MUJOCO_GL="disable").startswith("REFUSED MUJOCO_GL=disable")


def test_when_egl_fails_the_twin_falls_back_to_osmesa_or_names_both_failures():
    said = render_once(MUJOCO_GL=None, PYOPENGL_PLATFORM=None, MUJOCO_EGL_DEVICE_ID="99")
    assert said == "RENDERED osmesa" or ("REFUSED" in said and "egl: " in said
                                         and "osmesa: " in said), said


# --------------------------------------------------------------------------- configuration


def test_a_camera_on_a_link_the_urdf_lacks_is_refused_by_name(rm75):
    cameras = dict(TwinConfig().cameras, head=CameraMountConfig(link="left_elbow"))
    with pytest.raises(TwinModelError, match="'head'.*'left_elbow'"):
        build_model(rm75, TwinConfig(cameras=cameras))


def test_a_home_pose_of_the_wrong_length_is_refused(rm75):
    with pytest.raises(TwinModelError, match="6 angles for the 7 joints"):
        rm75.with_arm_model(RM75_B, RM65_B_HOME_RAD)


def test_twin_config_from_yaml_data_is_checked():
    cfg = from_dict(TwinConfig, {"table": {"top_z_m": 0.1},
                                 "objects": {"ball": {"size_m": [0.03, 0.03, 0.03],
                                                      "mass_kg": 0.02,
                                                      "region_min_xy_m": [0.3, 0.0],
                                                      "region_max_xy_m": [0.4, 0.1]}}})
    assert set(cfg.objects) == {"ball"} and cfg.table.top_z_m == 0.1
    with pytest.raises(ConfigError, match="objects.ball.region_max_xy_m"):
        from_dict(TwinConfig, {"objects": {"ball": {"size_m": [0.03, 0.03, 0.03],
                                                    "mass_kg": 0.02,
                                                    "region_min_xy_m": [0.3, 0.0],
                                                    "region_max_xy_m": [0.2, 0.1]}}})
    with pytest.raises(ConfigError, match="cameras.head.up"):
        from_dict(TwinConfig, {"cameras": {"head": {"xyz_m": [0, 0, 1], "look_at_m": [0, 0, 0],
                                                    "up": [0, 0, 1]}}})
