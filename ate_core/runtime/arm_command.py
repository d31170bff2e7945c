"""Checks on a position command before it may reach an arm controller.

The supervisor already keeps commands smooth and inside limits; this is the arm node's own
last line: a malformed or dangerous command is rejected whole with a reason, never clipped
and forwarded, and never partly applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class JointLimits:
    """Position limits (rad) and velocity limits (rad/s) per joint, in the arm's joint order."""

    lower_rad: Tuple[float, ...]
    upper_rad: Tuple[float, ...]
    max_velocity_rad_s: Tuple[float, ...]


class CommandRejected(ValueError):
    """Why a command was not forwarded (the message is what the node logs and counts)."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(message)


@dataclass(frozen=True)
class ArmCommand:
    positions_rad: Tuple[float, ...]
    gripper_opening_m: Optional[float] = None


class CommandChecker:
    """Maps a named command onto the arm's joint order and rejects anything unsafe.

    ``max_step_s`` bounds how far a command may be from the reference (the last accepted
    command, or the measured position after a (re)connect) as that many seconds of motion at
    the joint's velocity limit: a stream with a gap, or a stale target after a reconnect,
    fails here instead of making the controller jump.
    """

    def __init__(self, joint_names: Sequence[str], gripper_joint: str, limits: JointLimits,
                 max_step_s: float = 0.1, gripper_max_opening_m: float = 0.070) -> None:
        self.joint_names = tuple(joint_names)
        self.gripper_joint = gripper_joint
        self.limits = limits
        self.max_step_s = max_step_s
        self.gripper_max_opening_m = gripper_max_opening_m
        if not (len(limits.lower_rad) == len(limits.upper_rad) == len(limits.max_velocity_rad_s)
                == len(self.joint_names)):
            raise ValueError("limits and joint names disagree in length")

    def check(self, names: Sequence[str], positions: Sequence[float],
              reference_rad: Optional[Sequence[float]]) -> ArmCommand:
        if len(names) != len(positions):
            raise CommandRejected("length", f"{len(names)} joint names but {len(positions)} positions")
        if len(set(names)) != len(names):
            raise CommandRejected("names", "duplicate joint names")
        index: Dict[str, int] = {n: i for i, n in enumerate(names)}
        unknown = [n for n in names if n not in self.joint_names and n != self.gripper_joint]
        if unknown:
            raise CommandRejected("names", f"unknown joints {unknown}")
        missing = [n for n in self.joint_names if n not in index]
        if missing:
            raise CommandRejected("length", f"missing joints {missing} (a command names all "
                                            f"{len(self.joint_names)} arm joints)")
        q = tuple(float(positions[index[n]]) for n in self.joint_names)
        bad = [n for n, v in zip(self.joint_names, q) if not math.isfinite(v)]
        gripper = None
        if self.gripper_joint in index:
            gripper = float(positions[index[self.gripper_joint]])
            if not math.isfinite(gripper):
                bad.append(self.gripper_joint)
        if bad:
            raise CommandRejected("non_finite", f"non-finite value for {bad}")
        lim = self.limits
        for name, v, lo, hi in zip(self.joint_names, q, lim.lower_rad, lim.upper_rad):
            if not lo <= v <= hi:
                raise CommandRejected("limit", f"{name} = {v:.4f} rad is outside [{lo:.4f}, {hi:.4f}]")
        if gripper is not None and not 0.0 <= gripper <= self.gripper_max_opening_m:
            raise CommandRejected("limit", f"{self.gripper_joint} = {gripper:.4f} m is outside "
                                           f"[0, {self.gripper_max_opening_m}]")
        if reference_rad is not None:
            for name, v, r, vmax in zip(self.joint_names, q, reference_rad, lim.max_velocity_rad_s):
                if abs(v - r) > vmax * self.max_step_s:
                    raise CommandRejected(
                        "jump", f"{name} would move {abs(v - r):.4f} rad in one command "
                                f"(at most {vmax * self.max_step_s:.4f}: {self.max_step_s} s at "
                                f"its velocity limit)")
        return ArmCommand(q, gripper)
