"""The robot layout described by the typed config (the one place config meets kinematics)."""

from __future__ import annotations

from ate_core.robot.config import ArmConfig, BimanualConfig
from ate_core.robot.layout import ArmPlacement, BimanualLayout, MountPose
from ate_core.robot.models import arm_model


def placement_from_config(side: str, arm: ArmConfig) -> ArmPlacement:
    """One arm of the layout from its config section alone (an arm's driver knows no other)."""
    return ArmPlacement(side, arm_model(arm.model), MountPose(arm.mount.xyz_m, arm.mount.rpy_rad),
                        MountPose(arm.tcp.xyz_m, arm.tcp.rpy_rad),
                        joint_name_overrides=arm.joint_names, gripper_joint_name=arm.gripper_joint)


def layout_from_config(cfg: BimanualConfig) -> BimanualLayout:
    return BimanualLayout(tuple(placement_from_config(side, arm) for side, arm in cfg.arms.items()))
