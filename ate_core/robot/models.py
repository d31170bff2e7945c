"""Kinematic and limit data of the RealMan arms the stack drives.

Values come from RealMan's own documentation (ontology parameter pages for the MDH table and
joint ranges, the controller's `get_joint_max_speed` / `get_joint_max_acc` defaults for speed
and acceleration). The controller reports its limits at connect time; the driver prefers those
and these tables are the fallback and the source of the URDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

_DEG = math.pi / 180.0

#: RealMan gripper: wire position 1..1000 spans a finger opening of 0..70 mm.
GRIPPER_MAX_OPENING_M = 0.070
#: Gripper force 1..1000 spans at most 1.5 kg (rm_ros_interfaces Gripperpick.msg).
GRIPPER_MAX_FORCE_N = 1.5 * 9.80665
#: Not documented by RealMan; an estimate (full stroke in about 0.7 s) that only fills the URDF's
#: required velocity attribute. The driver commands the gripper by position and speed 1..1000.
GRIPPER_MAX_SPEED_M_S = 0.1
#: The controller's base period: its UDP state push is configured in multiples of 5 ms
#: (``rm_set_realtime_push`` ``cycle``), so the fastest push is 200 Hz.
PUSH_CYCLE_UNIT_S = 0.005


def push_period_s(cycle: int) -> float:
    """The time between two state pushes of a controller set to push every ``cycle`` units."""
    return PUSH_CYCLE_UNIT_S * int(cycle)


@dataclass(frozen=True)
class MDHJoint:
    """One row of a modified (Craig) DH table: T = RotX(alpha) Tx(a) RotZ(q + offset) Tz(d)."""

    alpha_rad: float
    a_m: float
    d_m: float
    offset_rad: float = 0.0


@dataclass(frozen=True)
class ArmModel:
    """A RealMan arm type: kinematics and the limits its controller enforces."""

    name: str
    mdh: Tuple[MDHJoint, ...]
    lower_rad: Tuple[float, ...]
    upper_rad: Tuple[float, ...]
    max_velocity_rad_s: Tuple[float, ...]
    max_acceleration_rad_s2: Tuple[float, ...]
    effort_nm: Tuple[float, ...]

    @property
    def dof(self) -> int:
        return len(self.mdh)

    def __post_init__(self) -> None:
        n = len(self.mdh)
        for field_name in ("lower_rad", "upper_rad", "max_velocity_rad_s",
                           "max_acceleration_rad_s2", "effort_nm"):
            if len(getattr(self, field_name)) != n:
                raise ValueError(f"{self.name}: {field_name} has {len(getattr(self, field_name))} "
                                 f"values for {n} joints")


def _deg(*values: float) -> Tuple[float, ...]:
    return tuple(v * _DEG for v in values)


# RM75-B: rm_docs RM75OntologyParameters (alpha_{i-1}, d_i; all a = 0, offsets 0).
RM75_B = ArmModel(
    name="RM75-B",
    mdh=(
        MDHJoint(0.0, 0.0, 0.2405),
        MDHJoint(-90 * _DEG, 0.0, 0.0),
        MDHJoint(90 * _DEG, 0.0, 0.256),
        MDHJoint(-90 * _DEG, 0.0, 0.0),
        MDHJoint(90 * _DEG, 0.0, 0.210),
        MDHJoint(-90 * _DEG, 0.0, 0.0),
        MDHJoint(90 * _DEG, 0.0, 0.144),
    ),
    lower_rad=_deg(-178, -130, -178, -135, -178, -128, -360),
    upper_rad=_deg(178, 130, 178, 135, 178, 128, 360),
    # 30 RPM = 180 deg/s on J1-J2, 37.5 RPM = 225 deg/s on J3-J7 (RealMan URDF: 3.14 / 3.92).
    max_velocity_rad_s=_deg(180, 180, 225, 225, 225, 225, 225),
    # Controller ceiling "not above 500 RPM/s" = 3000 deg/s^2.
    max_acceleration_rad_s2=_deg(*[3000] * 7),
    effort_nm=(60.0, 60.0, 30.0, 30.0, 10.0, 10.0, 10.0),
)

# RM65-B: rm_docs RM65OntologyParameters (alpha_{i-1}, a_{i-1}, d_i, offset).
RM65_B = ArmModel(
    name="RM65-B",
    mdh=(
        MDHJoint(0.0, 0.0, 0.2405, 0.0),
        MDHJoint(90 * _DEG, 0.0, 0.0, 90 * _DEG),
        MDHJoint(0.0, 0.256, 0.0, 90 * _DEG),
        MDHJoint(90 * _DEG, 0.0, 0.210, 0.0),
        MDHJoint(-90 * _DEG, 0.0, 0.0, 0.0),
        MDHJoint(90 * _DEG, 0.0, 0.144, 0.0),
    ),
    lower_rad=_deg(-178, -130, -135, -178, -128, -360),
    upper_rad=_deg(178, 130, 135, 178, 128, 360),
    max_velocity_rad_s=_deg(180, 180, 225, 225, 225, 225),
    max_acceleration_rad_s2=_deg(*[3000] * 6),
    effort_nm=(60.0, 60.0, 30.0, 10.0, 10.0, 10.0),
)

ARM_MODELS: Dict[str, ArmModel] = {m.name: m for m in (RM75_B, RM65_B)}


def arm_model(name: str) -> ArmModel:
    """Look up an arm type by RealMan's product name (e.g. ``RM75-B``)."""
    try:
        return ARM_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown arm model {name!r}; known: {sorted(ARM_MODELS)}") from None
