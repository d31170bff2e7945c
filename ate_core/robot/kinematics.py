"""Forward kinematics of a RealMan arm from its modified (Craig) DH table.

RealMan publishes MDH rows (alpha_{i-1}, a_{i-1}, d_i, offset_i), so each joint contributes

    T_{i-1,i}(q_i) = RotX(alpha_{i-1}) Tx(a_{i-1}) RotZ(q_i + offset_i) Tz(d_i)

and frame i sits on joint i's axis (z_i). Frame 0 is the arm's base (its mounting flange on the
robot), frame ``dof`` is the tool flange: RealMan's last d (144 mm on RM75-B / RM65-B) runs to the
flange face, so no extra flange transform exists.

Two twins with the same signatures: numpy (any batch shape, for the supervisor, the URDF and the
tests) and torch (differentiable, dtype- and device-preserving, for the policy and guidance).
Both are pure functions of an :class:`~ate_core.robot.models.ArmModel` and joint angles.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from ate_core.robot.models import ArmModel

if TYPE_CHECKING:  # torch is imported lazily: URDF generation and the supervisor need numpy only.
    import torch

__all__ = [
    "mdh_joint_transforms",
    "link_poses",
    "flange_pose",
    "mdh_joint_transforms_torch",
    "link_poses_torch",
    "flange_pose_torch",
]


def _check_dof(model: ArmModel, shape: Tuple[int, ...]) -> None:
    if len(shape) == 0 or shape[-1] != model.dof:
        raise ValueError(f"{model.name}: expected joint angles of shape [..., {model.dof}], "
                         f"got {tuple(shape)}")


def _mdh_columns(model: ArmModel) -> Tuple[np.ndarray, ...]:
    """(cos alpha, sin alpha, a, d, offset) per joint, float64."""
    alpha = np.array([j.alpha_rad for j in model.mdh], dtype=np.float64)
    a = np.array([j.a_m for j in model.mdh], dtype=np.float64)
    d = np.array([j.d_m for j in model.mdh], dtype=np.float64)
    offset = np.array([j.offset_rad for j in model.mdh], dtype=np.float64)
    # cos(+-pi/2) is 6e-17, not 0; snapping keeps the upright RM75-B pose exactly upright.
    ca = np.where(np.abs(np.cos(alpha)) < 1e-15, 0.0, np.cos(alpha))
    sa = np.where(np.abs(np.sin(alpha)) < 1e-15, 0.0, np.sin(alpha))
    return ca, sa, a, d, offset


# ----------------------------------------------------------------------------------- numpy


def mdh_joint_transforms(model: ArmModel, q_rad: np.ndarray) -> np.ndarray:
    """Per-joint transforms T_{i-1,i}(q_i), ``[..., dof] -> [..., dof, 4, 4]``."""
    q = np.asarray(q_rad)
    if not np.issubdtype(q.dtype, np.floating):
        q = q.astype(np.float64)
    _check_dof(model, q.shape)
    ca, sa, a, d, offset = (c.astype(q.dtype) for c in _mdh_columns(model))
    theta = q + offset
    ct, st = np.cos(theta), np.sin(theta)
    out = np.zeros(q.shape + (4, 4), dtype=q.dtype)
    out[..., 0, 0] = ct
    out[..., 0, 1] = -st
    out[..., 0, 3] = a
    out[..., 1, 0] = st * ca
    out[..., 1, 1] = ct * ca
    out[..., 1, 2] = -sa
    out[..., 1, 3] = -sa * d
    out[..., 2, 0] = st * sa
    out[..., 2, 1] = ct * sa
    out[..., 2, 2] = ca
    out[..., 2, 3] = ca * d
    out[..., 3, 3] = 1.0
    return out


def link_poses(model: ArmModel, q_rad: np.ndarray,
               base: Optional[np.ndarray] = None) -> np.ndarray:
    """Poses of frames 1..dof, ``[..., dof] -> [..., dof, 4, 4]``.

    In the arm's base frame, or in the frame ``base`` is given in when ``base`` (4x4, or
    broadcastable ``[..., 4, 4]``) is the arm base's pose. Consecutive frame origins bound the
    arm's links, which is what capsule collision checks between the two arms need.
    """
    joints = mdh_joint_transforms(model, q_rad)
    pose = None if base is None else np.asarray(base, dtype=joints.dtype)
    frames = []
    for i in range(model.dof):
        pose = joints[..., i, :, :] if pose is None else pose @ joints[..., i, :, :]
        frames.append(pose)
    return np.stack(np.broadcast_arrays(*frames), axis=-3)


def flange_pose(model: ArmModel, q_rad: np.ndarray, base: Optional[np.ndarray] = None,
                tool: Optional[np.ndarray] = None) -> np.ndarray:
    """Flange pose, or TCP pose given ``tool`` (flange -> TCP), ``[..., dof] -> [..., 4, 4]``."""
    joints = mdh_joint_transforms(model, q_rad)
    pose = joints[..., 0, :, :]
    if base is not None:
        pose = np.asarray(base, dtype=joints.dtype) @ pose
    for i in range(1, model.dof):
        pose = pose @ joints[..., i, :, :]
    if tool is not None:
        pose = pose @ np.asarray(tool, dtype=joints.dtype)
    return pose


# ----------------------------------------------------------------------------------- torch


@functools.lru_cache(maxsize=64)
def _mdh_columns_torch(model: ArmModel, dtype: "torch.dtype",
                       device: "torch.device") -> Tuple["torch.Tensor", ...]:
    """The MDH constants on the caller's device, built once (no host->GPU copy per call)."""
    import torch

    return tuple(torch.as_tensor(c, dtype=dtype, device=device) for c in _mdh_columns(model))


def _as_tensor_like(x, like: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def mdh_joint_transforms_torch(model: ArmModel, q_rad: "torch.Tensor") -> "torch.Tensor":
    """Torch twin of :func:`mdh_joint_transforms`; differentiable in ``q_rad``."""
    import torch

    if not torch.is_floating_point(q_rad):
        raise TypeError(f"{model.name}: joint angles must be a floating tensor, got {q_rad.dtype}")
    _check_dof(model, tuple(q_rad.shape))
    ca, sa, a, d, offset = _mdh_columns_torch(model, q_rad.dtype, q_rad.device)
    theta = q_rad + offset
    ct, st = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(ct)
    one = torch.ones_like(ct)
    ca, sa, a, d = (c.expand_as(ct) for c in (ca, sa, a, d))
    rows = (
        (ct, -st, zero, a),
        (st * ca, ct * ca, -sa, -sa * d),
        (st * sa, ct * sa, ca, ca * d),
        (zero, zero, zero, one),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def link_poses_torch(model: ArmModel, q_rad: "torch.Tensor",
                     base: Optional["torch.Tensor"] = None) -> "torch.Tensor":
    """Torch twin of :func:`link_poses`, ``[..., dof] -> [..., dof, 4, 4]``."""
    import torch

    joints = mdh_joint_transforms_torch(model, q_rad)
    pose = None if base is None else _as_tensor_like(base, q_rad)
    frames = []
    for i in range(model.dof):
        pose = joints[..., i, :, :] if pose is None else pose @ joints[..., i, :, :]
        frames.append(pose)
    return torch.stack(torch.broadcast_tensors(*frames), dim=-3)


def flange_pose_torch(model: ArmModel, q_rad: "torch.Tensor",
                      base: Optional["torch.Tensor"] = None,
                      tool: Optional["torch.Tensor"] = None) -> "torch.Tensor":
    """Torch twin of :func:`flange_pose`, ``[..., dof] -> [..., 4, 4]``."""
    joints = mdh_joint_transforms_torch(model, q_rad)
    pose = joints[..., 0, :, :]
    if base is not None:
        pose = _as_tensor_like(base, q_rad) @ pose
    for i in range(1, model.dof):
        pose = pose @ joints[..., i, :, :]
    if tool is not None:
        pose = pose @ _as_tensor_like(tool, q_rad)
    return pose
