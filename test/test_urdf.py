"""The generated URDF: it parses, names and limits match the models, and its chain equals MDH."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.robot.layout import (ArmPlacement, BimanualLayout, MountPose,
                                   default_bimanual_layout)
from ate_core.robot.models import GRIPPER_MAX_OPENING_M, RM65_B, RM75_B, ArmModel
from ate_core.robot import urdf_cli
from ate_core.robot.config import load_config
from ate_core.robot.urdf import (UrdfError, bimanual_urdf, parse_urdf, urdf_chain_fk,
                                 write_bimanual_urdf)

CHECKED_IN = Path(__file__).resolve().parents[1] / "urdf" / "ate_bimanual.urdf"
MODELS = (RM75_B, RM65_B)


def random_q(model: ArmModel, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(model.lower_rad, model.upper_rad, size=(n, model.dof))


def assert_same_poses(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual[..., :3, 3], expected[..., :3, 3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(actual[..., :3, :3], expected[..., :3, :3], rtol=0, atol=1e-9)


def assert_urdf_agrees_with_mdh(layout: BimanualLayout, rng: np.random.Generator,
                                n: int) -> None:
    """Every link frame, the flange and the TCP of every arm, at n random joint vectors."""
    joints = parse_urdf(bimanual_urdf(layout)).joints
    for arm in layout.arms:
        q = random_q(arm.model, rng, n)
        values = dict(zip(arm.joint_names, q.T))
        frames = arm.link_poses(q)
        for i, link in enumerate(arm.link_names):
            assert_same_poses(urdf_chain_fk(joints, layout.base_link, link, values),
                              frames[:, i])
        assert_same_poses(urdf_chain_fk(joints, layout.base_link, arm.flange_link, values),
                          arm.flange_pose(q))
        assert_same_poses(urdf_chain_fk(joints, layout.base_link, arm.tcp_link, values),
                          arm.tcp_pose(q))


# ------------------------------------------------------------------------------ agreement


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_urdf_chain_equals_mdh_for_the_default_layout(model):
    assert_urdf_agrees_with_mdh(default_bimanual_layout(model), np.random.default_rng(10), 500)


def test_urdf_chain_equals_mdh_at_the_joint_limits():
    for model in MODELS:
        layout = default_bimanual_layout(model)
        joints = parse_urdf(bimanual_urdf(layout)).joints
        arm = layout.arm("left")
        corners = np.array([model.lower_rad, model.upper_rad, np.zeros(model.dof)])
        values = dict(zip(arm.joint_names, corners.T))
        assert_same_poses(urdf_chain_fk(joints, "base_link", arm.flange_link, values),
                          arm.flange_pose(corners))


angles = st.floats(-math.pi, math.pi)
poses = st.builds(MountPose, st.tuples(*[st.floats(-1, 1)] * 3), st.tuples(angles, angles, angles))
gimbal_poses = st.builds(MountPose, st.tuples(*[st.floats(-1, 1)] * 3),
                         st.tuples(angles, st.sampled_from([math.pi / 2, -math.pi / 2]), angles))


@settings(max_examples=60, deadline=None)
@given(left_model=st.sampled_from(MODELS), right_model=st.sampled_from(MODELS),
       left_mount=st.one_of(poses, gimbal_poses), right_mount=poses, tcp=poses,
       seed=st.integers(0, 2**32 - 1))
def test_urdf_chain_equals_mdh_for_any_mount_and_tool(left_model, right_model, left_mount,
                                                      right_mount, tcp, seed):
    layout = BimanualLayout((ArmPlacement("left", left_model, left_mount, tcp),
                             ArmPlacement("right", right_model, right_mount)))
    assert_urdf_agrees_with_mdh(layout, np.random.default_rng(seed), 20)


# ------------------------------------------------------------------------------ contents


def test_joints_are_named_as_design_md_says():
    robot = parse_urdf(bimanual_urdf(default_bimanual_layout()))
    movable = [j.name for j in robot.joints.values() if j.movable and j.mimic is None]
    assert movable == [*(f"left_joint{i}" for i in range(1, 8)), "left_gripper",
                       *(f"right_joint{i}" for i in range(1, 8)), "right_gripper"]
    assert movable == list(default_bimanual_layout().joint_names)
    assert robot.name == "ate_bimanual"
    assert robot.root == "base_link"
    for prefix in ("left", "right"):
        assert robot.joints[f"{prefix}_mount"].parent == "base_link"
        assert robot.joints[f"{prefix}_mount"].child == f"{prefix}_base_link"
        assert {f"{prefix}_flange", f"{prefix}_tcp", f"{prefix}_link7"} <= set(robot.links)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_joint_limits_equal_the_model(model):
    layout = default_bimanual_layout(model)
    joints = parse_urdf(bimanual_urdf(layout)).joints
    for arm in layout.arms:
        for i, name in enumerate(arm.joint_names):
            joint = joints[name]
            assert joint.type == "revolute"
            assert joint.axis == (0.0, 0.0, 1.0)
            # Exact: the file carries round-trip float text.
            assert (joint.lower, joint.upper) == (model.lower_rad[i], model.upper_rad[i])
            assert joint.velocity == model.max_velocity_rad_s[i]
            assert joint.effort == model.effort_nm[i]


def test_gripper_opens_0_to_70_mm_and_fingers_mirror_it():
    layout = default_bimanual_layout()
    joints = parse_urdf(bimanual_urdf(layout)).joints
    for prefix in ("left", "right"):
        gripper = joints[f"{prefix}_gripper"]
        assert gripper.type == "prismatic"
        assert (gripper.lower, gripper.upper) == (0.0, GRIPPER_MAX_OPENING_M) == (0.0, 0.070)
        fingers = [joints[f"{prefix}_gripper_finger{n}_joint"] for n in (1, 2)]
        assert all(f.mimic.joint == f"{prefix}_gripper" for f in fingers)
        assert sorted(f.mimic.multiplier for f in fingers) == [-0.5, 0.5]
        assert all(f.mimic.offset == 0.0 for f in fingers)

        opening = np.linspace(0.0, GRIPPER_MAX_OPENING_M, 8)
        tips = [urdf_chain_fk(joints, f"{prefix}_gripper_base", f"{prefix}_gripper_finger{n}",
                              {f"{prefix}_gripper": opening}) for n in (1, 2)]
        gap = tips[0][:, :3, 3] - tips[1][:, :3, 3]
        np.testing.assert_allclose(gap, np.outer(opening, [0, 1, 0]), atol=1e-15)
        middle = (tips[0][:, :3, 3] + tips[1][:, :3, 3]) / 2
        np.testing.assert_allclose(middle, np.broadcast_to(middle[0], middle.shape), atol=1e-15)


def test_checked_in_urdf_is_what_the_shipped_config_generates():
    # Regenerate with: ate_urdf --config config/bimanual.yaml -o urdf/ate_bimanual.urdf
    config = CHECKED_IN.parents[1] / "config" / "bimanual.yaml"
    assert urdf_cli.main(["--config", str(config), "--check", str(CHECKED_IN)]) == 0
    cfg = load_config(config)
    robot = parse_urdf(CHECKED_IN.read_text(encoding="utf-8"))
    for side, arm in cfg.arms.items():
        assert all(robot.joints[n].type == "revolute" for n in arm.joint_names), side
        assert robot.joints[arm.gripper_joint].type == "prismatic", side


def test_urdf_check_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "old.urdf"
    stale.write_text(bimanual_urdf(default_bimanual_layout(RM65_B)), encoding="utf-8")
    config = CHECKED_IN.parents[1] / "config" / "bimanual.yaml"
    assert urdf_cli.main(["--config", str(config), "--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_generation_is_deterministic_and_written_where_asked(tmp_path):
    layout = default_bimanual_layout(RM65_B)
    path = write_bimanual_urdf(layout, tmp_path / "sub" / "robot.urdf", robot_name="r65")
    assert path.read_text(encoding="utf-8") == bimanual_urdf(layout, "r65")
    assert parse_urdf(path.read_text(encoding="utf-8")).name == "r65"


# ------------------------------------------------------------------------------ the reader


def _robot(*joints: str, links=("a", "b", "c")) -> str:
    return ("<robot name='t'>" + "".join(f"<link name='{n}'/>" for n in links)
            + "".join(joints) + "</robot>")


J_AB = "<joint name='j1' type='revolute'><parent link='a'/><child link='b'/></joint>"
J_BC = "<joint name='j2' type='fixed'><parent link='b'/><child link='c'/></joint>"


def test_reader_refuses_inconsistent_urdfs():
    cases = {
        "used twice": _robot(J_AB, J_AB.replace("'b'", "'c'")),
        "link name 'a' used twice": _robot(J_AB, links=("a", "a", "b")),
        "no link named 'x'": _robot(J_AB.replace("'b'", "'x'")),
        "child of both": _robot(J_AB, J_BC.replace("'b'/><child", "'a'/><child")
                                .replace("'c'", "'b'")),
        "unknown type": _robot(J_AB.replace("revolute", "hinge")),
        "mimics unknown": _robot(J_AB.replace("</joint>", "<mimic joint='zz'/></joint>")),
        "origin xyz": _robot(J_AB.replace("</joint>", "<origin xyz='1 2'/></joint>")),
        "exactly one root": _robot(J_AB),
        "not well-formed": "<robot><link></robot>",
    }
    for message, xml in cases.items():
        with pytest.raises(UrdfError, match=message):
            parse_urdf(xml)


def test_reader_defaults_follow_the_urdf_spec():
    joint = parse_urdf(_robot(J_AB, J_BC)).joints["j1"]
    assert joint.axis == (1.0, 0.0, 0.0)
    assert joint.origin_xyz == joint.origin_rpy == (0.0, 0.0, 0.0)
    assert joint.lower is None and joint.mimic is None


def test_chain_fk_needs_every_moving_joint_and_a_real_chain():
    joints = parse_urdf(_robot(J_AB, J_BC)).joints
    with pytest.raises(UrdfError, match="j1"):
        urdf_chain_fk(joints, "a", "c", {})
    with pytest.raises(UrdfError, match="not below"):
        urdf_chain_fk(joints, "c", "a", {"j1": 0.0})
    # Revolute about the default x axis.
    pose = urdf_chain_fk(joints.values(), "a", "c", {"j1": math.pi / 2})
    np.testing.assert_allclose(pose[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
    np.testing.assert_array_equal(urdf_chain_fk(joints, "b", "b", {}), np.eye(4))
