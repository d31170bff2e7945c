"""Where the arms stand: mount poses, per-arm joint names, and world-frame forward kinematics.

The world frame of the stack is the URDF's ``base_link`` (REP-103: x forward, y left, z up), so
the left arm is mounted at +y. Each arm's own base frame ``{prefix}_base_link`` is MDH frame 0 of
that arm. Joint names follow DESIGN.md: RealMan's ``joint1..N`` with the arm's prefix
(``left_joint3``), and one gripper joint per arm (``left_gripper``, finger opening in metres).

This module builds no config; ``ate_core.robot.config`` turns YAML into these objects.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot import kinematics
from ate_core.robot.models import RM75_B, ArmModel

if TYPE_CHECKING:
    import torch

__all__ = [
    "rpy_to_matrix",
    "matrix_to_rpy",
    "MountPose",
    "ArmPlacement",
    "BimanualLayout",
    "default_bimanual_layout",
]

_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*$")


def rpy_to_matrix(rpy_rad: Sequence[float]) -> np.ndarray:
    """URDF fixed-axis roll-pitch-yaw: R = Rz(yaw) Ry(pitch) Rx(roll), 3x3."""
    roll, pitch, yaw = (float(v) for v in rpy_rad)
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def matrix_to_rpy(rotation: np.ndarray) -> Tuple[float, float, float]:
    """Inverse of :func:`rpy_to_matrix`, pitch in [-pi/2, pi/2].

    At pitch = +-pi/2 only yaw -+ roll is defined; yaw is then 0. That case is not exotic here:
    RM65-B's joint 2 (alpha 90 deg, offset 90 deg) lands exactly on it. Roll and pitch are
    solved after removing the yaw found, so the three angles reproduce ``rotation`` to rounding
    error even next to the singularity, where yaw alone is ill-conditioned.
    """
    r = np.asarray(rotation, dtype=np.float64)[:3, :3]
    yaw = math.atan2(r[1, 0], r[0, 0]) if math.hypot(r[0, 0], r[1, 0]) > 1e-12 else 0.0
    c, s = math.cos(yaw), math.sin(yaw)
    m0 = c * r[0] + s * r[1]  # rows of Rz(-yaw) R = Ry(pitch) Rx(roll)
    m1 = -s * r[0] + c * r[1]
    return math.atan2(-m1[2], m1[1]), math.atan2(-r[2, 0], m0[0]), yaw


@dataclass(frozen=True)
class MountPose:
    """A rigid transform given as URDF ``<origin xyz rpy>``: translation, then fixed-axis RPY."""

    xyz_m: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    rpy_rad: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("xyz_m", "rpy_rad"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"MountPose.{name}: expected 3 finite numbers, got {values}")
            object.__setattr__(self, name, values)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous transform (parent <- child)."""
        out = np.eye(4)
        out[:3, :3] = rpy_to_matrix(self.rpy_rad)
        out[:3, 3] = self.xyz_m
        return out

    @classmethod
    def from_matrix(cls, transform: np.ndarray) -> "MountPose":
        """From a 4x4 transform, e.g. a hand-eye or base calibration result."""
        t = np.asarray(transform, dtype=np.float64)
        return cls(tuple(t[:3, 3]), matrix_to_rpy(t[:3, :3]))


@dataclass(frozen=True)
class ArmPlacement:
    """One arm of the robot: its name prefix, its model, where it is mounted, its tool.

    ``tcp`` is the flange -> tool centre point transform (identity: TCP = flange).
    ``joint_names`` / ``gripper_joint_name`` override the ``{prefix}_jointN`` / ``{prefix}_gripper``
    defaults when the robot's config names its joints differently.
    """

    prefix: str
    model: ArmModel
    mount: MountPose = field(default_factory=MountPose)
    tcp: MountPose = field(default_factory=MountPose)
    joint_name_overrides: Tuple[str, ...] = ()
    gripper_joint_name: str = ""

    def __post_init__(self) -> None:
        if self.joint_name_overrides and len(self.joint_name_overrides) != self.model.dof:
            raise ValueError(f"arm {self.prefix!r}: {len(self.joint_name_overrides)} joint names "
                             f"for the {self.model.dof} joints of {self.model.name}")
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"arm prefix {self.prefix!r}: expected a name like 'left' "
                             f"(letters/digits, words joined by single '_')")

    # --- names (the URDF, the drivers and the chunks all use these) ---

    @property
    def joint_names(self) -> Tuple[str, ...]:
        if self.joint_name_overrides:
            return tuple(self.joint_name_overrides)
        return tuple(f"{self.prefix}_joint{i}" for i in range(1, self.model.dof + 1))

    @property
    def gripper_joint(self) -> str:
        return self.gripper_joint_name or f"{self.prefix}_gripper"

    @property
    def base_link(self) -> str:
        return f"{self.prefix}_base_link"

    @property
    def link_names(self) -> Tuple[str, ...]:
        """Links carrying MDH frames 1..dof (``{prefix}_link{i}``)."""
        return tuple(f"{self.prefix}_link{i}" for i in range(1, self.model.dof + 1))

    @property
    def flange_link(self) -> str:
        return f"{self.prefix}_flange"

    @property
    def tcp_link(self) -> str:
        return f"{self.prefix}_tcp"

    # --- world-frame kinematics (world = the layout's base_link) ---

    def link_poses(self, q_rad: np.ndarray) -> np.ndarray:
        """World poses of this arm's MDH frames 1..dof, ``[..., dof] -> [..., dof, 4, 4]``."""
        return kinematics.link_poses(self.model, q_rad, base=self.mount.matrix())

    def flange_pose(self, q_rad: np.ndarray) -> np.ndarray:
        """World pose of the flange, ``[..., dof] -> [..., 4, 4]``."""
        return kinematics.flange_pose(self.model, q_rad, base=self.mount.matrix())

    def tcp_pose(self, q_rad: np.ndarray) -> np.ndarray:
        """World pose of the TCP, ``[..., dof] -> [..., 4, 4]``."""
        return kinematics.flange_pose(self.model, q_rad, base=self.mount.matrix(),
                                      tool=self.tcp.matrix())

    def link_poses_torch(self, q_rad: "torch.Tensor") -> "torch.Tensor":
        return kinematics.link_poses_torch(self.model, q_rad, base=self.mount.matrix())

    def flange_pose_torch(self, q_rad: "torch.Tensor") -> "torch.Tensor":
        return kinematics.flange_pose_torch(self.model, q_rad, base=self.mount.matrix())

    def tcp_pose_torch(self, q_rad: "torch.Tensor") -> "torch.Tensor":
        return kinematics.flange_pose_torch(self.model, q_rad, base=self.mount.matrix(),
                                            tool=self.tcp.matrix())


@dataclass(frozen=True)
class BimanualLayout:
    """The arms of the robot, all mounted on one ``base_link`` (the stack's world frame)."""

    arms: Tuple[ArmPlacement, ...]
    base_link: str = "base_link"

    def __post_init__(self) -> None:
        arms = tuple(self.arms)
        object.__setattr__(self, "arms", arms)
        if not arms:
            raise ValueError("BimanualLayout: no arms")
        prefixes = [arm.prefix for arm in arms]
        duplicates = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if duplicates:
            raise ValueError(f"BimanualLayout: arm prefixes used twice: {duplicates}")

    def __iter__(self) -> Iterator[ArmPlacement]:
        return iter(self.arms)

    @property
    def prefixes(self) -> Tuple[str, ...]:
        return tuple(arm.prefix for arm in self.arms)

    def arm(self, prefix: str) -> ArmPlacement:
        for arm in self.arms:
            if arm.prefix == prefix:
                return arm
        raise KeyError(f"no arm with prefix {prefix!r}; arms: {list(self.prefixes)}")

    @property
    def joint_names(self) -> Tuple[str, ...]:
        """Every commanded joint: per arm its joints then its gripper (16 for two RM75-B)."""
        return tuple(name for arm in self.arms for name in (*arm.joint_names, arm.gripper_joint))

    def flange_poses(self, q_by_prefix: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """World flange pose of each arm given its joint angles, keyed by prefix."""
        return {p: self.arm(p).flange_pose(q) for p, q in q_by_prefix.items()}

    def link_poses(self, q_by_prefix: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """World MDH link frames of each arm given its joint angles, keyed by prefix."""
        return {p: self.arm(p).link_poses(q) for p, q in q_by_prefix.items()}


def default_bimanual_layout(model: ArmModel = RM75_B, half_spacing_m: float = 0.3,
                            tcp: Optional[MountPose] = None) -> BimanualLayout:
    """Two upright arms at y = +-half_spacing_m, z = 0 on the base (tests and fallback only;
    the robot's layout comes from config/bimanual.yaml)."""
    tcp = tcp or MountPose()
    return BimanualLayout((
        ArmPlacement("left", model, MountPose((0.0, half_spacing_m, 0.0)), tcp),
        ArmPlacement("right", model, MountPose((0.0, -half_spacing_m, 0.0)), tcp),
    ))
