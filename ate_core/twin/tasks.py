"""Tasks on the twin: what the policy is told, where the objects start, and when it succeeded.

A task is data: its instruction (the policy's task text), the arms it uses, the regions its
objects and its target are drawn from at reset, and the thresholds of its success check. Resets
are a function of the seed (one ``np.random.Generator`` per reset, drawn in a fixed order), so
an episode can be replayed from its seed alone. The regions lie where the arms that do the task
reach their objects with the gripper pointing down (checked by the tests through the IK of both
embodiments).

The success checks read only the physics: object poses, the target marker, the finger gap and
MuJoCo's contacts between the gripper pads, the objects and the table. They never read what an
expert or a policy believes it did, so a policy and a scripted expert are judged alike: a cube
counts as held when both pads of a gripper touch it, as released when nothing of that arm does,
as placed when it rests on the table with its centre over the marker.

Single-arm tasks use the right arm: the source embodiment of the cross-embodiment benchmark
(``rm65_single``) records the right arm of the RM65-B pair.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np

from ate_core.config import checked, in_range, positive
from ate_core.twin.config import TwinConfig
from ate_core.twin.twin import Twin

__all__ = ["TaskError", "Outcome", "Region", "Task", "CubeToTarget", "PickPlace", "Push", "Handover", "LiftBox",
           "TASKS", "get_task", "table_top_m", "object_size_m", "resting_height_m", "touching",
           "held_by", "arm_touches"]

Vec2 = Tuple[float, float]

#: Draws of a placement with constraints between its parts (cube away from the target) before
#: the task's regions are judged unable to satisfy them.
_PLACEMENT_TRIES = 1000
#: An object whose centre is this close to its resting height lies on the table.
_RESTING_TOLERANCE_M = 0.005


class TaskError(ValueError):
    """A task cannot run on this twin (an object it needs is missing, or one it does not know is
    present), or its regions cannot give a placement; the message says which."""


@dataclass(frozen=True)
class Outcome:
    """A success check's verdict and, in words, what held or what did not."""

    success: bool
    reason: str


@dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle of ``base_link`` x, y in which a centre is drawn uniformly."""

    min_xy_m: Vec2
    max_xy_m: Vec2

    def __post_init__(self) -> None:
        for axis, lo, hi in zip("xy", self.min_xy_m, self.max_xy_m):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise TaskError(f"Region: {axis} range [{lo}, {hi}] is empty or not finite")

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.min_xy_m, self.max_xy_m)

    def contains(self, xy: np.ndarray, tolerance_m: float = 1e-9) -> bool:
        return bool(np.all(np.asarray(xy) >= np.asarray(self.min_xy_m) - tolerance_m)
                    and np.all(np.asarray(xy) <= np.asarray(self.max_xy_m) + tolerance_m))

    def corners(self) -> Tuple[np.ndarray, ...]:
        (x0, y0), (x1, y1) = self.min_xy_m, self.max_xy_m
        return tuple(np.array(c) for c in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)))


# --------------------------------------------------------------------------- geometry of the state


def object_size_m(twin: Twin, name: str) -> np.ndarray:
    """Full extent of a box object along its own x, y, z, m."""
    return twin.model.geom(name).size[:3] * 2.0


def resting_height_m(twin: Twin, name: str) -> float:
    """Height of an object's centre when it stands upright on the table."""
    return table_top_m(twin) + float(object_size_m(twin, name)[2]) / 2.0


def table_top_m(twin: Twin) -> float:
    """Height of the table top in base_link, m."""
    model = twin.model
    table = model.geom("table")
    return float(model.geom_pos[table.id][2] + model.geom_size[table.id][2])


def _contact_pairs(twin: Twin) -> np.ndarray:
    """Geom id pairs of the contacts now, ``[n, 2]`` (after bringing the state up to date)."""
    twin.forward()
    data = twin.data
    return data.contact.geom[:data.ncon]


def touching(twin: Twin, geoms_a: Tuple[int, ...], geoms_b: Tuple[int, ...]) -> bool:
    """Whether any geom of ``geoms_a`` is in contact with any of ``geoms_b`` now."""
    pairs = _contact_pairs(twin)
    a, b = np.isin(pairs, geoms_a), np.isin(pairs, geoms_b)
    return bool(np.any((a[:, 0] & b[:, 1]) | (a[:, 1] & b[:, 0])))


def _geom(twin: Twin, name: str) -> Tuple[int, ...]:
    return (int(twin.model.geom(name).id),)


def _arm_geoms(twin: Twin, prefix: str) -> Tuple[int, ...]:
    model = twin.model
    return tuple(g for g in range(model.ngeom)
                 if model.body(int(model.geom_bodyid[g])).name.startswith(f"{prefix}_"))


def held_by(twin: Twin, name: str, prefix: str) -> bool:
    """Both pads of the arm's gripper touch the object: it is squeezed between the fingers."""
    return all(touching(twin, _geom(twin, f"{prefix}_gripper_pad{n}"), _geom(twin, name))
               for n in (1, 2))


def arm_touches(twin: Twin, name: str, prefix: str) -> bool:
    """Any part of the arm (links, gripper, fingers, pads) touches the object."""
    return touching(twin, _arm_geoms(twin, prefix), _geom(twin, name))


def _on_table(twin: Twin, name: str) -> bool:
    return touching(twin, _geom(twin, "table"), _geom(twin, name))


def _pose(xy: np.ndarray, z: float, yaw: float) -> np.ndarray:
    out = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    out[:2, :2] = [[c, -s], [s, c]]
    out[:3, 3] = (xy[0], xy[1], z)
    return out


# --------------------------------------------------------------------------- tasks


class Task(ABC):
    """What every task has; the subclasses are frozen dataclasses whose fields are its ranges and
    thresholds. ``reset`` takes a twin built from :meth:`scene`."""

    name: str
    instruction: str
    arms: Tuple[str, ...]
    objects: Tuple[str, ...]
    uses_target: bool
    time_limit_s: float

    @property
    def single_arm(self) -> bool:
        return len(self.arms) == 1

    def scene(self, base: TwinConfig = TwinConfig()) -> TwinConfig:
        """``base`` with only this task's objects: another object on the table would be in the
        way of a draw it knows nothing about."""
        missing = [n for n in self.objects if n not in base.objects]
        if missing:
            raise TaskError(f"task {self.name}: the twin config has no objects {missing} "
                            f"(it has {sorted(base.objects)})")
        return replace(base, objects={n: base.objects[n] for n in self.objects})

    def reset(self, twin: Twin, seed: int) -> None:
        """Arms home and grippers open (the twin's reset), then this task's objects and target
        drawn from ``seed``."""
        missing = [p for p in self.arms if p not in twin.arm_prefixes]
        extra = sorted(set(twin.object_names) - set(self.objects))
        absent = sorted(set(self.objects) - set(twin.object_names))
        if missing or extra or absent:
            raise TaskError(f"task {self.name}: the twin has arms {list(twin.arm_prefixes)} and "
                            f"objects {list(twin.object_names)}; the task needs arms "
                            f"{list(self.arms)} and exactly the objects {list(self.objects)} "
                            f"(build the twin from task.scene())")
        twin.reset(seed)
        rng = np.random.default_rng(seed)
        top = table_top_m(twin)
        poses, target_xy = self.draw(rng)
        for name, (xy, yaw) in poses.items():
            twin.set_object_pose(name, _pose(xy, resting_height_m(twin, name), yaw))
        if target_xy is None:
            # Hidden inside the table top: a marker the task does not use must not look like one.
            centre = twin.model.geom_pos[twin.model.geom("table").id]
            twin.set_target_position((centre[0], centre[1], centre[2]))
        else:
            twin.set_target_position((target_xy[0], target_xy[1], top))
        twin.forward()

    def describe(self, twin: Twin) -> str:
        """Where this task's objects (and its target) are now, in words:
        ``cube at (0.312, -0.254, 0.790) m, yaw 12 deg; target at (0.290, -0.361) m``."""
        parts = []
        for name in self.objects:
            pose = twin.object_pose(name)
            x, y, z = pose[:3, 3]
            yaw = math.degrees(math.atan2(pose[1, 0], pose[0, 0]))
            parts.append(f"{name} at ({x:.3f}, {y:.3f}, {z:.3f}) m, yaw {yaw:.0f} deg")
        if self.uses_target:
            target = twin.target_position()
            parts.append(f"target at ({target[0]:.3f}, {target[1]:.3f}) m")
        return "; ".join(parts)

    @property
    def env_state_names(self) -> Tuple[str, ...]:
        """The columns of :meth:`env_state`: per object its centre and yaw (as cosine and sine),
        then the target's x, y where the task has one."""
        names = [f"{o}.{c}" for o in self.objects for c in ("x", "y", "z", "cos_yaw", "sin_yaw")]
        if self.uses_target:
            names += ["target.x", "target.y"]
        return tuple(names)

    def env_state(self, twin: Twin) -> np.ndarray:
        """The scene's low-dimensional state now (world frame, m), as :attr:`env_state_names`
        says: what a policy of low-dimensional observations reads instead of cameras (LeRobot's
        ``observation.environment_state``). Only a simulation knows it."""
        out = []
        for name in self.objects:
            pose = twin.object_pose(name)
            yaw = math.atan2(pose[1, 0], pose[0, 0])
            out += [*pose[:3, 3], math.cos(yaw), math.sin(yaw)]
        if self.uses_target:
            out += list(twin.target_position()[:2])
        return np.asarray(out, dtype=np.float32)

    @abstractmethod
    def draw(self, rng: np.random.Generator) -> Tuple[Dict[str, Tuple[np.ndarray, float]],
                                                       Optional[np.ndarray]]:
        """({object: (centre x, y, yaw)}, target x, y or None), from ``rng`` only."""

    @abstractmethod
    def check(self, twin: Twin) -> Outcome:
        """Whether the twin's state now is a success, and why (see the module docstring)."""

    def success(self, twin: Twin) -> bool:
        return self.check(twin).success


def _draw_apart(rng: np.random.Generator, first: Region, second: Region, min_m: float,
                max_m: float, what: str) -> Tuple[np.ndarray, np.ndarray]:
    for _ in range(_PLACEMENT_TRIES):
        a, b = first.draw(rng), second.draw(rng)
        if min_m <= float(np.linalg.norm(a - b)) <= max_m:
            return a, b
    raise TaskError(f"{what}: no draw {min_m}..{max_m} m apart in {_PLACEMENT_TRIES} tries; "
                    f"widen the regions")


def _placed_on_target(twin: Twin, name: str) -> Tuple[bool, str]:
    pose = twin.object_pose(name)
    target = twin.target_position()
    radius = float(twin.model.geom("target").size[0])
    off = float(np.linalg.norm(pose[:2, 3] - target[:2]))
    if off > radius:
        return False, f"{name} centre {off * 100:.1f} cm from the target (radius " \
                      f"{radius * 100:.1f} cm)"
    if abs(pose[2, 3] - resting_height_m(twin, name)) > _RESTING_TOLERANCE_M \
            or not _on_table(twin, name):
        return False, f"{name} is over the target but not resting on the table " \
                      f"(centre at z = {pose[2, 3]:.3f} m)"
    return True, f"{name} on the target ({off * 100:.1f} cm from its centre)"


@dataclass(frozen=True)
class CubeToTarget(Task):
    """One arm brings the cube onto the target: what pick-and-place and push share (the arm, the
    regions the cube and the target are drawn from, the cube's yaw, the draw itself)."""

    arm: str = checked("right", doc="the arm that does it")
    cube_min_xy_m: Vec2 = checked((0.22, -0.42), doc="reset: lowest x, y of the cube's centre")
    cube_max_xy_m: Vec2 = checked((0.38, -0.18), doc="reset: highest x, y of the cube's centre")
    cube_max_yaw_rad: float = checked(math.pi / 4, check=in_range(0.0, math.pi),
                                      doc="reset: cube yaw drawn from [-max, max]")
    target_min_xy_m: Vec2 = checked((0.22, -0.42), doc="reset: lowest x, y of the target")
    target_max_xy_m: Vec2 = checked((0.38, -0.18), doc="reset: highest x, y of the target")
    time_limit_s: float = checked(25.0, check=positive, doc="episode time limit, s")

    objects = ("cube",)
    uses_target = True

    @property
    def arms(self) -> Tuple[str, ...]:  # type: ignore[override]
        return (self.arm,)

    @abstractmethod
    def distance_range_m(self) -> Tuple[float, float]:
        """(least, most) distance of the cube's and the target's centres at reset."""

    def draw(self, rng: np.random.Generator):
        least, most = self.distance_range_m()
        cube, target = _draw_apart(rng, Region(self.cube_min_xy_m, self.cube_max_xy_m),
                                   Region(self.target_min_xy_m, self.target_max_xy_m),
                                   least, most, self.name)
        yaw = rng.uniform(-self.cube_max_yaw_rad, self.cube_max_yaw_rad)
        return {"cube": (cube, yaw)}, target


@dataclass(frozen=True)
class PickPlace(CubeToTarget):
    name: str = checked("pick_place", doc="task name")
    instruction: str = checked("pick up the red cube and place it on the green target",
                               doc="the policy's task text")
    min_separation_m: float = checked(0.10, check=positive,
                                      doc="reset: least distance of cube and target centres")

    def distance_range_m(self) -> Tuple[float, float]:
        return self.min_separation_m, math.inf

    def check(self, twin: Twin) -> Outcome:
        placed, why = _placed_on_target(twin, "cube")
        if not placed:
            return Outcome(False, why)
        if arm_touches(twin, "cube", self.arm):
            return Outcome(False, f"{why}, but the {self.arm} arm still touches it")
        return Outcome(True, f"{why}, released")


@dataclass(frozen=True)
class Push(CubeToTarget):
    name: str = checked("push", doc="task name")
    instruction: str = checked("push the red cube onto the green target with the gripper closed",
                               doc="the policy's task text")
    cube_min_xy_m: Vec2 = checked((0.25, -0.38), doc="reset: lowest x, y of the cube's centre")
    cube_max_xy_m: Vec2 = checked((0.35, -0.22), doc="reset: highest x, y of the cube's centre")
    min_distance_m: float = checked(0.08, check=positive,
                                    doc="reset: least distance the cube is to be pushed")
    max_distance_m: float = checked(0.14, check=positive,
                                    doc="reset: most distance the cube is to be pushed")
    closed_max_m: float = checked(0.01, check=positive,
                                  doc="success: the finger gap is at most this (closed)")

    def distance_range_m(self) -> Tuple[float, float]:
        return self.min_distance_m, self.max_distance_m

    def check(self, twin: Twin) -> Outcome:
        placed, why = _placed_on_target(twin, "cube")
        if not placed:
            return Outcome(False, why)
        gap = twin.gripper_opening(self.arm)
        if gap > self.closed_max_m:
            return Outcome(False, f"{why}, but the {self.arm} gripper is open "
                                  f"({gap * 1000:.0f} mm)")
        return Outcome(True, f"{why}, gripper closed")


@dataclass(frozen=True)
class Handover(Task):
    name: str = checked("handover", doc="task name")
    instruction: str = checked("pick up the red cube with the right gripper and hand it to the "
                               "left gripper", doc="the policy's task text")
    giver: str = checked("right", doc="the arm that picks the cube up")
    receiver: str = checked("left", doc="the arm that ends holding it")
    cube_min_xy_m: Vec2 = checked((0.24, -0.40), doc="reset: lowest x, y of the cube's centre")
    cube_max_xy_m: Vec2 = checked((0.38, -0.16), doc="reset: highest x, y of the cube's centre")
    cube_max_yaw_rad: float = checked(math.pi / 4, check=in_range(0.0, math.pi),
                                      doc="reset: cube yaw drawn from [-max, max]")
    min_clearance_m: float = checked(0.03, check=positive,
                                     doc="success: the cube's lowest point is at least this "
                                         "far above the table top")
    time_limit_s: float = checked(30.0, check=positive, doc="episode time limit, s")

    objects = ("cube",)
    uses_target = False

    @property
    def arms(self) -> Tuple[str, ...]:  # type: ignore[override]
        return (self.giver, self.receiver)

    def draw(self, rng: np.random.Generator):
        cube = Region(self.cube_min_xy_m, self.cube_max_xy_m).draw(rng)
        yaw = rng.uniform(-self.cube_max_yaw_rad, self.cube_max_yaw_rad)
        return {"cube": (cube, yaw)}, None

    def check(self, twin: Twin) -> Outcome:
        if not held_by(twin, "cube", self.receiver):
            return Outcome(False, f"the {self.receiver} gripper does not hold the cube")
        if arm_touches(twin, "cube", self.giver):
            return Outcome(False, f"the {self.giver} arm still touches the cube")
        lowest = _lowest_point_m(twin, "cube") - table_top_m(twin)
        if lowest < self.min_clearance_m or _on_table(twin, "cube"):
            return Outcome(False, f"the cube is {lowest * 100:.1f} cm above the table "
                                  f"(at least {self.min_clearance_m * 100:.0f} cm)")
        return Outcome(True, f"the {self.receiver} gripper holds the cube "
                             f"{lowest * 100:.1f} cm above the table, the {self.giver} let go")


def _lowest_point_m(twin: Twin, name: str) -> float:
    pose = twin.object_pose(name)
    half = object_size_m(twin, name) / 2.0
    return float(pose[2, 3] - np.abs(pose[2, :3]) @ half)


@dataclass(frozen=True)
class LiftBox(Task):
    name: str = checked("lift_box", doc="task name")
    instruction: str = checked("grasp both ends of the blue box and lift it level",
                               doc="the policy's task text")
    box_min_xy_m: Vec2 = checked((0.28, -0.03), doc="reset: lowest x, y of the box's centre")
    box_max_xy_m: Vec2 = checked((0.36, 0.03), doc="reset: highest x, y of the box's centre")
    box_max_yaw_rad: float = checked(0.15, check=in_range(0.0, math.pi / 4),
                                     doc="reset: box yaw drawn from [-max, max]")
    min_lift_m: float = checked(0.08, check=positive,
                                doc="success: the box's centre is at least this far above its "
                                    "resting height")
    max_tilt_rad: float = checked(0.15, check=positive,
                                  doc="success: the box's up axis is within this of vertical")
    time_limit_s: float = checked(25.0, check=positive, doc="episode time limit, s")

    arms = ("left", "right")
    objects = ("box",)
    uses_target = False

    def draw(self, rng: np.random.Generator):
        box = Region(self.box_min_xy_m, self.box_max_xy_m).draw(rng)
        yaw = rng.uniform(-self.box_max_yaw_rad, self.box_max_yaw_rad)
        return {"box": (box, yaw)}, None

    def check(self, twin: Twin) -> Outcome:
        loose = [p for p in self.arms if not held_by(twin, "box", p)]
        if loose:
            return Outcome(False, f"the box is not held by the {' and '.join(loose)} gripper")
        pose = twin.object_pose("box")
        lift = float(pose[2, 3]) - resting_height_m(twin, "box")
        if lift < self.min_lift_m:
            return Outcome(False, f"the box is lifted {lift * 100:.1f} cm (at least "
                                  f"{self.min_lift_m * 100:.0f} cm)")
        tilt = math.acos(min(1.0, max(-1.0, float(pose[2, 2]))))
        if tilt > self.max_tilt_rad:
            return Outcome(False, f"the box is tilted {math.degrees(tilt):.1f} deg (at most "
                                  f"{math.degrees(self.max_tilt_rad):.1f})")
        return Outcome(True, f"the box is held by both grippers {lift * 100:.1f} cm up, tilted "
                             f"{math.degrees(tilt):.1f} deg")


#: The tasks by name, with their default ranges and thresholds.
TASKS: Dict[str, Task] = {t.name: t for t in (PickPlace(), Push(), Handover(), LiftBox())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"no task {name!r}; tasks: {sorted(TASKS)}") from None
