"""The twin's scene as data: the table, the free objects, the target marker, the camera mounts.

The robot itself (arms, mounts, TCPs, home poses, camera resolution and field of view) comes
from the robot's config (:class:`ate_core.robot.config.BimanualConfig`); this schema adds only
what the real robot's config has no reason to know. Frames are the robot's ``base_link`` (x
forward, y left, z up); the default table's top is level with the arm mounts, its near edge just
clear of the base plate the URDF draws, and the arms' home poses hold their TCPs 7.5 cm above
the cube's centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, Tuple

from ate_core.config import Problem, checked, in_range, positive

__all__ = ["TableConfig", "ObjectConfig", "TargetConfig", "CameraMountConfig", "TwinConfig"]

Vec2 = Tuple[float, float]
Vec3 = Tuple[float, float, float]
Rgba = Tuple[float, float, float, float]


def _region_problems(lo: Vec2, hi: Vec2) -> Iterator[Problem]:
    for axis, a, b in zip("xy", lo, hi):
        if a > b:
            yield ("region_max_xy_m", f"{axis}: max {b} is below min {a}")


@dataclass(frozen=True)
class TableConfig:
    centre_xy_m: Vec2 = checked((0.47, 0.0), doc="centre of the table top in base_link x, y, m")
    size_xy_m: Vec2 = checked((0.6, 1.2), check=in_range(0.05, 10.0),
                              doc="table top extent along x, y, m")
    top_z_m: float = checked(0.0, check=in_range(-2.0, 2.0), doc="height of the table top, m")
    thickness_m: float = checked(0.04, check=in_range(0.005, 0.5), doc="table top thickness, m")
    friction: float = checked(0.8, check=in_range(0.0, 5.0), doc="sliding friction coefficient")


@dataclass(frozen=True)
class ObjectConfig:
    """A free box resting on the table; reset places its centre uniformly in a region."""

    size_m: Vec3 = checked(check=in_range(0.005, 2.0), doc="full extent along x, y, z, m")
    mass_kg: float = checked(check=positive, doc="mass, kg")
    region_min_xy_m: Vec2 = checked(doc="reset: lowest x, y of the centre in base_link, m")
    region_max_xy_m: Vec2 = checked(doc="reset: highest x, y of the centre in base_link, m")
    max_yaw_rad: float = checked(0.0, check=in_range(0.0, math.pi),
                                 doc="reset: yaw drawn uniformly from [-max, max], rad")
    rgba: Rgba = checked((0.8, 0.2, 0.2, 1.0), check=in_range(0.0, 1.0), doc="colour")
    friction: float = checked(1.0, check=in_range(0.0, 5.0), doc="sliding friction coefficient")

    def problems(self) -> Iterator[Problem]:
        yield from _region_problems(self.region_min_xy_m, self.region_max_xy_m)


@dataclass(frozen=True)
class TargetConfig:
    """A flat marker on the table (no contact) that tasks place things on or push things to."""

    radius_m: float = checked(0.03, check=in_range(0.005, 0.5), doc="marker radius, m")
    rgba: Rgba = checked((0.2, 0.75, 0.3, 0.6), check=in_range(0.0, 1.0), doc="colour")
    region_min_xy_m: Vec2 = checked((0.30, -0.25), doc="reset: lowest x, y of its centre, m")
    region_max_xy_m: Vec2 = checked((0.50, 0.25), doc="reset: highest x, y of its centre, m")

    def problems(self) -> Iterator[Problem]:
        yield from _region_problems(self.region_min_xy_m, self.region_max_xy_m)


@dataclass(frozen=True)
class CameraMountConfig:
    """Where a camera sits and what it looks at, in the frame of ``link``.

    The camera's image up is ``up`` projected onto the image plane, so ``up`` must not point
    along the line of sight.
    """

    link: str = checked("", doc="URDF link the camera is fixed to (\"\": the world, base_link)")
    xyz_m: Vec3 = checked((0.0, 0.0, 0.0), doc="camera position in the link's frame, m")
    look_at_m: Vec3 = checked((1.0, 0.0, 0.0), doc="point on the optical axis, link frame, m")
    up: Vec3 = checked((0.0, 0.0, 1.0), doc="direction that is up in the image, link frame")

    def problems(self) -> Iterator[Problem]:
        sight = [b - a for a, b in zip(self.xyz_m, self.look_at_m)]
        norm = math.sqrt(sum(v * v for v in sight))
        if norm < 1e-6:
            yield ("look_at_m", "coincides with xyz_m")
            return
        up_norm = math.sqrt(sum(v * v for v in self.up))
        cross = (sight[1] * self.up[2] - sight[2] * self.up[1],
                 sight[2] * self.up[0] - sight[0] * self.up[2],
                 sight[0] * self.up[1] - sight[1] * self.up[0])
        if up_norm < 1e-9 or math.sqrt(sum(v * v for v in cross)) < 1e-3 * norm * up_norm:
            yield ("up", "points along the line of sight")


def _default_objects() -> Dict[str, ObjectConfig]:
    return {
        # A 4 cm cube: fits the 70 mm gripper with room either side.
        "cube": ObjectConfig((0.04, 0.04, 0.04), 0.05, (0.30, -0.20), (0.45, 0.20),
                             max_yaw_rad=math.pi / 4, rgba=(0.85, 0.15, 0.15, 1.0)),
        # Long along y so that each arm can grasp one end across its 5 cm width.
        "box": ObjectConfig((0.05, 0.36, 0.05), 0.2, (0.50, -0.03), (0.58, 0.03),
                            max_yaw_rad=0.15, rgba=(0.15, 0.35, 0.85, 1.0)),
    }


def _default_cameras() -> Dict[str, CameraMountConfig]:
    # Head: above and behind the arm mounts, over the gap between the arms. Wrists: on the
    # gripper's side, 7.5 cm off the tool axis, looking past the fingertips (TCP at 12 cm).
    wrist = dict(xyz_m=(0.075, 0.0, 0.03), look_at_m=(0.0, 0.0, 0.25), up=(1.0, 0.0, 0.0))
    return {
        "head": CameraMountConfig("", (-0.10, 0.0, 1.0), (0.50, 0.0, 0.0), (0.0, 0.0, 1.0)),
        "left_wrist": CameraMountConfig("left_flange", **wrist),
        "right_wrist": CameraMountConfig("right_flange", **wrist),
    }


@dataclass(frozen=True)
class TwinConfig:
    """The simulated scene around the robot and the physics step."""

    timestep_s: float = checked(0.002, check=in_range(0.0002, 0.01),
                                doc="physics step, s (a control period should be a multiple)")
    table: TableConfig = TableConfig()
    objects: Dict[str, ObjectConfig] = field(default_factory=_default_objects)
    target: TargetConfig = TargetConfig()
    cameras: Dict[str, CameraMountConfig] = field(default_factory=_default_cameras)
