"""MDH forward kinematics (numpy and torch) and the dual-arm layout."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.robot.kinematics import (flange_pose, flange_pose_torch, link_poses,
                                       link_poses_torch, mdh_joint_transforms)
from ate_core.robot.layout import (ArmPlacement, BimanualLayout, MountPose,
                                   default_bimanual_layout, matrix_to_rpy, rpy_to_matrix)
from ate_core.robot.models import RM65_B, RM75_B, ArmModel

MODELS = (RM75_B, RM65_B)


def random_q(model: ArmModel, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(model.lower_rad, model.upper_rad, size=(n, model.dof))


def rot_x(a: float) -> np.ndarray:
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def rot_y(a: float) -> np.ndarray:
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def rot_z(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


# ------------------------------------------------------------------------------ known poses


def test_rm75_at_zero_stands_upright_with_flange_at_0_8505():
    pose = flange_pose(RM75_B, np.zeros(7))
    np.testing.assert_allclose(pose[:3, 3], [0, 0, 0.2405 + 0.256 + 0.210 + 0.144], atol=1e-12)
    np.testing.assert_allclose(pose[:3, :3], np.eye(3), atol=1e-12)


def test_rm75_shoulder_at_90_deg_lays_the_arm_along_x():
    # J2's axis is +y at zero; +90 deg swings everything above the shoulder (z = 0.2405)
    # down onto +x: flange at (0.256 + 0.210 + 0.144, 0, 0.2405), pointing along +x.
    q = np.zeros(7)
    q[1] = math.pi / 2
    pose = flange_pose(RM75_B, q)
    np.testing.assert_allclose(pose[:3, 3], [0.61, 0, 0.2405], atol=1e-12)
    np.testing.assert_allclose(pose[:3, :3], rot_y(math.pi / 2), atol=1e-12)


def test_rm75_base_joint_turns_the_whole_arm_about_z():
    rng = np.random.default_rng(1)
    q = random_q(RM75_B, rng, 1)[0]
    turned = q.copy()
    turned[0] += 0.7
    expected = np.eye(4)
    expected[:3, :3] = rot_z(0.7)
    np.testing.assert_allclose(flange_pose(RM75_B, turned), expected @ flange_pose(RM75_B, q),
                               atol=1e-12)


def test_rm75_elbow_bend_hand_checked():
    # Shoulder straight, elbow J4 = -90 deg: J4's axis at zero is +y (like J2), so the forearm
    # (0.210 + 0.144 above the elbow at z = 0.4965) swings onto -x.
    q = np.zeros(7)
    q[3] = -math.pi / 2
    pose = flange_pose(RM75_B, q)
    np.testing.assert_allclose(pose[:3, 3], [-0.354, 0, 0.4965], atol=1e-12)
    np.testing.assert_allclose(pose[:3, :3], rot_y(-math.pi / 2), atol=1e-12)


def test_rm65_at_zero_stands_upright_through_its_offsets():
    # J2's and J3's 90-degree offsets turn the a = 0.256 upper arm upright.
    pose = flange_pose(RM65_B, np.zeros(6))
    np.testing.assert_allclose(pose[:3, 3], [0, 0, 0.8505], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 2], [0, 0, 1], atol=1e-12)


def test_link_frames_sit_on_the_joint_axes_and_end_at_the_flange():
    frames = link_poses(RM75_B, np.zeros(7))
    np.testing.assert_allclose(frames[:, 2, 3], [0.2405, 0.2405, 0.4965, 0.4965, 0.7065,
                                                 0.7065, 0.8505], atol=1e-12)
    rng = np.random.default_rng(2)
    for model in MODELS:
        q = random_q(model, rng, 20)
        np.testing.assert_array_equal(link_poses(model, q)[..., -1, :, :], flange_pose(model, q))


# ------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("batch", [(), (1,), (5,), (3, 4), (2, 1, 3)])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_any_batch_shape_maps_to_poses(model, batch):
    q = np.random.default_rng(3).uniform(-1, 1, batch + (model.dof,))
    assert mdh_joint_transforms(model, q).shape == batch + (model.dof, 4, 4)
    assert link_poses(model, q).shape == batch + (model.dof, 4, 4)
    assert flange_pose(model, q).shape == batch + (4, 4)
    flat = flange_pose(model, q.reshape(-1, model.dof))
    np.testing.assert_array_equal(flange_pose(model, q).reshape(-1, 4, 4), flat)


def test_wrong_joint_count_names_the_model():
    with pytest.raises(ValueError, match="RM75-B.*7"):
        flange_pose(RM75_B, np.zeros(6))
    with pytest.raises(ValueError, match="RM65-B"):
        link_poses_torch(RM65_B, torch.zeros(2, 7))


@settings(max_examples=50, deadline=None)
@given(model=st.sampled_from(MODELS), seed=st.integers(0, 2**32 - 1))
def test_poses_are_rigid_transforms(model, seed):
    frames = link_poses(model, random_q(model, np.random.default_rng(seed), 8))
    rotation = frames[..., :3, :3]
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, -1, -2),
                               np.broadcast_to(np.eye(3), rotation.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
    np.testing.assert_array_equal(frames[..., 3, :],
                                  np.broadcast_to([0, 0, 0, 1], frames.shape[:-1]))


def test_tool_and_base_compose_on_either_side():
    rng = np.random.default_rng(4)
    q = random_q(RM75_B, rng, 10)
    base = MountPose((0.1, -0.2, 0.3), (0.4, -0.5, 0.6)).matrix()
    tool = MountPose((0.0, 0.0, 0.15), (0.0, 0.0, math.pi / 4)).matrix()
    np.testing.assert_allclose(flange_pose(RM75_B, q, base=base, tool=tool),
                               base @ flange_pose(RM75_B, q) @ tool, atol=1e-12)
    np.testing.assert_allclose(link_poses(RM75_B, q, base=base),
                               base @ link_poses(RM75_B, q), atol=1e-12)


def test_float32_stays_float32_in_numpy():
    assert flange_pose(RM75_B, np.zeros(7, dtype=np.float32)).dtype == np.float32
    assert flange_pose(RM75_B, [0, 0, 0, 0, 0, 0, 0]).dtype == np.float64


# ------------------------------------------------------------------------------ torch twin


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_torch_equals_numpy(model, device):
    q = random_q(model, np.random.default_rng(5), 64).reshape(4, 16, model.dof)
    base = MountPose((0.0, 0.3, 0.1), (0.2, 0.0, -0.3)).matrix()
    tool = MountPose((0.0, 0.0, 0.12)).matrix()
    qt = torch.as_tensor(q, device=device)
    np.testing.assert_allclose(flange_pose_torch(model, qt, base, tool).cpu().numpy(),
                               flange_pose(model, q, base, tool), atol=1e-12)
    np.testing.assert_allclose(link_poses_torch(model, qt, torch.as_tensor(base)).cpu().numpy(),
                               link_poses(model, q, base), atol=1e-12)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_keeps_dtype_and_device(dtype, device):
    q = torch.zeros(3, 7, dtype=dtype, device=device)
    for out in (flange_pose_torch(RM75_B, q, tool=np.eye(4)), link_poses_torch(RM75_B, q)):
        assert out.dtype == dtype and out.device.type == device
    assert flange_pose_torch(RM75_B, q).shape == (3, 4, 4)
    assert link_poses_torch(RM75_B, q).shape == (3, 7, 4, 4)
    with pytest.raises(TypeError):
        flange_pose_torch(RM75_B, torch.zeros(7, dtype=torch.long))


def test_torch_float32_is_close_to_float64():
    q = torch.as_tensor(random_q(RM75_B, np.random.default_rng(6), 100))
    np.testing.assert_allclose(flange_pose_torch(RM75_B, q.float()).double().numpy(),
                               flange_pose_torch(RM75_B, q).numpy(), atol=2e-6)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_torch_gradients_are_finite_and_correct(model):
    q = torch.as_tensor(random_q(model, np.random.default_rng(7), 3), dtype=torch.float64)
    q = torch.cat([q, torch.zeros(1, model.dof, dtype=torch.float64)])  # the straight singularity
    q.requires_grad_(True)
    flange_pose_torch(model, q)[..., :3, 3].sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert torch.autograd.gradcheck(lambda x: link_poses_torch(model, x), (q.detach()[:2]
                                                                          .requires_grad_(True),))


# ------------------------------------------------------------------------------ layout


def test_mount_rpy_is_urdf_fixed_axis_rz_ry_rx():
    roll, pitch, yaw = 0.3, -0.4, 1.1
    np.testing.assert_allclose(rpy_to_matrix((roll, 0, 0)), rot_x(roll), atol=1e-15)
    np.testing.assert_allclose(rpy_to_matrix((0, pitch, 0)), rot_y(pitch), atol=1e-15)
    np.testing.assert_allclose(rpy_to_matrix((0, 0, yaw)), rot_z(yaw), atol=1e-15)
    np.testing.assert_allclose(rpy_to_matrix((roll, pitch, yaw)),
                               rot_z(yaw) @ rot_y(pitch) @ rot_x(roll), atol=1e-15)
    pose = MountPose((1.0, 2.0, 3.0), (roll, pitch, yaw)).matrix()
    np.testing.assert_allclose(pose[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(pose[3], [0, 0, 0, 1])


@settings(max_examples=200, deadline=None)
@given(roll=st.floats(-math.pi, math.pi), yaw=st.floats(-math.pi, math.pi),
       pitch=st.one_of(st.floats(-math.pi / 2, math.pi / 2),
                       st.sampled_from([math.pi / 2, -math.pi / 2,
                                        math.pi / 2 - 1e-9, -math.pi / 2 + 1e-7])))
def test_matrix_to_rpy_reproduces_the_rotation_even_at_gimbal_lock(roll, pitch, yaw):
    rotation = rpy_to_matrix((roll, pitch, yaw))
    np.testing.assert_allclose(rpy_to_matrix(matrix_to_rpy(rotation)), rotation, atol=1e-12)


def test_mount_pose_round_trips_through_a_matrix():
    pose = MountPose((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    again = MountPose.from_matrix(pose.matrix())
    np.testing.assert_allclose(again.xyz_m, pose.xyz_m, atol=1e-15)
    np.testing.assert_allclose(again.rpy_rad, pose.rpy_rad, atol=1e-12)
    with pytest.raises(ValueError, match="rpy_rad"):
        MountPose((0, 0, 0), (0, float("nan"), 0))


def test_default_layout_names_joints_as_design_md_says():
    layout = default_bimanual_layout()
    left, right = layout.arm("left"), layout.arm("right")
    assert left.joint_names == tuple(f"left_joint{i}" for i in range(1, 8))
    assert right.gripper_joint == "right_gripper"
    assert layout.joint_names == (*left.joint_names, "left_gripper",
                                  *right.joint_names, "right_gripper")
    assert len(layout.joint_names) == 16


def test_left_arm_is_mounted_at_plus_y():
    # REP-103: x forward, y left, z up in base_link.
    poses = default_bimanual_layout().flange_poses({"left": np.zeros(7), "right": np.zeros(7)})
    np.testing.assert_allclose(poses["left"][:3, 3], [0, 0.3, 0.8505], atol=1e-12)
    np.testing.assert_allclose(poses["right"][:3, 3], [0, -0.3, 0.8505], atol=1e-12)


def test_world_kinematics_is_mount_then_arm_then_tcp():
    rng = np.random.default_rng(8)
    arm = ArmPlacement("left", RM65_B, MountPose((0.1, 0.25, 0.4), (math.pi / 2, 0.3, -0.2)),
                       tcp=MountPose((0, 0, 0.16), (0, 0, 0.5)))
    q = random_q(RM65_B, rng, 16)
    mount, tcp = arm.mount.matrix(), arm.tcp.matrix()
    np.testing.assert_allclose(arm.flange_pose(q), mount @ flange_pose(RM65_B, q), atol=1e-12)
    np.testing.assert_allclose(arm.tcp_pose(q), mount @ flange_pose(RM65_B, q) @ tcp,
                               atol=1e-12)
    np.testing.assert_allclose(arm.link_poses(q), mount @ link_poses(RM65_B, q), atol=1e-12)
    qt = torch.as_tensor(q)
    np.testing.assert_allclose(arm.tcp_pose_torch(qt).numpy(), arm.tcp_pose(q), atol=1e-12)
    np.testing.assert_allclose(arm.flange_pose_torch(qt).numpy(), arm.flange_pose(q), atol=1e-12)
    np.testing.assert_allclose(arm.link_poses_torch(qt).numpy(), arm.link_poses(q), atol=1e-12)


def test_layout_refuses_duplicate_or_malformed_prefixes():
    arm = ArmPlacement("left", RM75_B)
    with pytest.raises(ValueError, match="left"):
        BimanualLayout((arm, arm))
    with pytest.raises(ValueError, match="no arms"):
        BimanualLayout(())
    for bad in ("", "left_", "_left", "left arm", "1arm", "a__b"):
        with pytest.raises(ValueError, match="prefix"):
            ArmPlacement(bad, RM75_B)
    with pytest.raises(KeyError, match="middle"):
        default_bimanual_layout().arm("middle")
