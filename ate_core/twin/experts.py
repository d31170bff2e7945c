"""Scripted experts: each task done by inverse kinematics and gripper sequences, streamed at 100 Hz.

An expert reads the twin's state where a person scripting the robot would look (object poses
at the start of a motion, the cube's place in the gripper before putting it down) and writes
what the stack's supervisor writes: per control tick (10 ms, ``supervisor.rate_hz``) one joint
target vector and one gripper opening per arm. The same stream can therefore be recorded as a
demonstration, replayed through the safety filter, or sent through the ROS stack.

Motions are minimum-jerk in time along a path: straight TCP lines solved waypoint by waypoint
(:meth:`ate_core.robot.ik.ArmIK.straight_line`) near objects, where a joint-space blend could
sweep the fingers through the cube, and between two IK solutions through free space when a
straight line does not solve. Every segment starts and ends at rest and is timed so that each
joint stays under half the safety filter's default velocity and acceleration caps and the
gripper under its speed cap: the supervisor passes these streams unchanged (the tests replay
them through :class:`ate_core.runtime.safety.SafetyFilter`). The hand-over is the exception:
two grippers on one 4 cm cube come closer than the filter's capsule model of the arms allows
(``min_arm_distance_m`` between capsules of ``link_radius_m``), so it breaks ``arm_distance``
and no other rule. The twin does not collide robot parts with each other; the hand-over script
keeps the two grippers' bodies apart by itself.

Grasps are found by trying every symmetric way of holding an object (a cube's four faces, a
box's two sides) through the IK and taking the one closest to the arm's current joints, which
is what makes one script serve RM75-B (7 joints, the null space pulled to home) and RM65-B (6).

    python -m ate_core.twin.experts --seeds 50        # the success table of every expert
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ate_core.config import checked, in_range, positive
from ate_core.robot.config import load_config
from ate_core.robot.ik import ArmIK, IKSettings
from ate_core.robot.models import GRIPPER_MAX_OPENING_M
from ate_core.twin.model import TwinRobot, rm65_variant
from ate_core.twin.tasks import (TASKS, Handover, LiftBox, Outcome, PickPlace, Push, Task,
                                 TaskError, get_task, object_size_m, table_top_m)
from ate_core.twin.twin import Twin

__all__ = ["CONTROL_PERIOD_S", "ArmCommand", "Commands", "ExpertError", "ExpertSettings",
           "Motion", "EpisodeResult", "expert_commands", "apply_commands", "run_episode",
           "main"]

#: The supervisor's control period (``supervisor.rate_hz`` = 100).
CONTROL_PERIOD_S = 0.01

#: Tool pointing down (z = -Z of base_link), fingers closing along base_link's y: the arms'
#: home orientation, to within RM75-B's 2.4 degree tilt.
_TOOL_DOWN = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
# The giver grasps this far above the cube's centre, so that its palm stays clear of the
# receiver's upper finger.
_HANDOVER_GRASP_ABOVE_CENTRE_M = 0.005
# Peak of the minimum-jerk profile's speed and acceleration, per unit distance and duration.
_MIN_JERK_PEAK_SPEED = 1.875
_MIN_JERK_PEAK_ACCELERATION = 10.0 / math.sqrt(3.0)


class ExpertError(RuntimeError):
    """An expert cannot plan a motion (a pose the IK does not reach); names the arm and pose."""


@dataclass(frozen=True)
class ArmCommand:
    """One arm's command for one tick: joint targets (rad) and gripper opening (m)."""

    q_rad: np.ndarray
    gripper_m: float


Commands = Mapping[str, ArmCommand]


@dataclass(frozen=True)
class ExpertSettings:
    """How fast and how the experts move; the defaults stay well inside the safety filter's
    default caps (``supervisor.safety``, named in each field's description)."""

    velocity_fraction: float = checked(0.25, check=in_range(0.01, 1.0),
                                       doc="peak joint speed, fraction of the rated speed "
                                           "(supervisor.safety.velocity_scale: 0.5)")
    acceleration_fraction: float = checked(0.1, check=in_range(0.01, 1.0),
                                           doc="peak joint acceleration, fraction of the rated "
                                               "one (acceleration_scale: 0.2)")
    gripper_speed_m_s: float = checked(0.08, check=positive,
                                       doc="gripper target speed (gripper_velocity_m_s: 0.1)")
    travel_speed_m_s: float = checked(0.15, check=positive,
                                      doc="peak TCP speed through free space")
    approach_speed_m_s: float = checked(0.08, check=positive,
                                        doc="peak TCP speed near objects: descend, lift, place")
    push_speed_m_s: float = checked(0.05, check=positive, doc="peak TCP speed while pushing")
    approach_height_m: float = checked(0.08, check=positive,
                                       doc="TCP height above a grasp or place pose before it")
    lift_height_m: float = checked(0.10, check=positive, doc="lift after a grasp, m")
    grip_settle_s: float = checked(0.3, check=in_range(0.0, 5.0),
                                   doc="wait after a gripper command is reached")
    settle_s: float = checked(0.5, check=in_range(0.0, 5.0),
                              doc="hold at the end, before the success check")
    line_step_m: float = checked(0.005, check=positive, doc="waypoint spacing of TCP lines")
    joint_margin_rad: float = checked(0.08, check=in_range(0.0, 0.5),
                                      doc="IK solutions stay this far inside the joint limits "
                                          "(supervisor.safety.joint_margin_rad: 0.05)")
    place_clearance_m: float = checked(0.004, check=in_range(0.0, 0.05),
                                       doc="an object is let go this far above the table")
    push_height_m: float = checked(0.015, check=in_range(0.0, 0.1),
                                   doc="TCP height above the table while pushing (the "
                                       "fingertips 1 cm lower)")
    push_run_up_m: float = checked(0.02, check=in_range(0.005, 0.1),
                                   doc="a stroke starts with the fingers this far from the cube")
    push_tolerance_m: float = checked(0.01, check=positive,
                                      doc="another stroke while the cube is further from the "
                                          "target's centre than this")
    max_push_strokes: int = checked(4, check=in_range(1, 20), doc="pushes per episode at most")
    handover_point_m: Tuple[float, float, float] = checked(
        (0.32, -0.06, 0.14), doc="where the giver holds the cube's centre for the receiver")
    handover_opening_m: float = checked(0.055, check=in_range(0.045, GRIPPER_MAX_OPENING_M),
                                        doc="the receiver's opening on approach: clears the "
                                            "cube, not the giver's fingers")
    box_grasp_inset_m: float = checked(0.04, check=positive,
                                       doc="grasp this far in from each end of the box")


# --------------------------------------------------------------------------- poses


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pose(rotation: np.ndarray, position: Sequence[float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = position
    return out


def _raised(pose: np.ndarray, dz_m: float) -> np.ndarray:
    out = pose.copy()
    out[2, 3] += dz_m
    return out


def _tool_down(yaw: float) -> np.ndarray:
    """Tool pointing down, turned by ``yaw`` about the vertical from the home orientation: the
    fingers close along ``(-sin yaw, cos yaw, 0)``."""
    return _rot_z(yaw) @ _TOOL_DOWN


def _yaw_of(direction: np.ndarray) -> float:
    return math.atan2(float(direction[1]), float(direction[0]))


# --------------------------------------------------------------------------- motion


def _min_jerk(tau: float) -> float:
    return tau ** 3 * (10.0 - 15.0 * tau + 6.0 * tau * tau)


def _along(path: np.ndarray, s: float) -> np.ndarray:
    """The point at fraction ``s`` of a polyline of waypoints (by waypoint index)."""
    x = s * (len(path) - 1)
    i = min(int(x), len(path) - 2)
    return path[i] + (x - i) * (path[i + 1] - path[i])


class Motion:
    """The command stream of every arm of a twin, written by an expert's script.

    It starts from the targets the twin holds and keeps the last command of every arm: an arm a
    segment does not move holds still. Each method yields one :data:`Commands` per tick.
    """

    def __init__(self, twin: Twin, settings: ExpertSettings = ExpertSettings()) -> None:
        self.twin = twin
        self.settings = settings
        self.q: Dict[str, np.ndarray] = {p: twin.joint_targets(p) for p in twin.arm_prefixes}
        self.gripper: Dict[str, float] = {p: twin.gripper_target(p) for p in twin.arm_prefixes}
        ik_settings = IKSettings(joint_margin_rad=settings.joint_margin_rad)
        layout = twin.robot.layout
        self._ik = {p: ArmIK.for_placement(layout.arm(p), settings=ik_settings)
                    for p in twin.arm_prefixes}
        self._home = {p: twin.home_rad(p) for p in twin.arm_prefixes}
        models = {p: layout.arm(p).model for p in twin.arm_prefixes}
        self._max_velocity = {p: settings.velocity_fraction * np.array(m.max_velocity_rad_s)
                              for p, m in models.items()}
        self._max_acceleration = {p: settings.acceleration_fraction
                                  * np.array(m.max_acceleration_rad_s2)
                                  for p, m in models.items()}

    def commands(self) -> Dict[str, ArmCommand]:
        return {p: ArmCommand(self.q[p].copy(), self.gripper[p]) for p in self.q}

    def tcp(self, prefix: str) -> np.ndarray:
        """The TCP pose the arm's current command puts it at (forward kinematics)."""
        return self._ik[prefix].pose(self.q[prefix])

    # --- planning ---

    def solve(self, prefix: str, pose: np.ndarray) -> np.ndarray:
        result = self._ik[prefix].solve(pose, self.q[prefix], rest=self._home[prefix])
        if not result.converged:
            raise ExpertError(f"arm {prefix!r}: no IK solution for the TCP at "
                              f"{np.round(pose[:3, 3], 3).tolist()} (residual "
                              f"{result.position_error_m * 1000:.1f} mm, "
                              f"{result.rotation_error_rad:.3f} rad)")
        return result.q_rad

    def nearest(self, prefix: str, poses: Sequence[np.ndarray]) -> int:
        """Index of the pose whose IK solution is closest to the arm's command (largest joint
        change), among those that solve."""
        best, best_change = -1, math.inf
        for i, pose in enumerate(poses):
            try:
                q = self.solve(prefix, pose)
            except ExpertError:
                continue
            change = float(np.max(np.abs(q - self.q[prefix])))
            if change < best_change:
                best, best_change = i, change
        if best < 0:
            raise ExpertError(f"arm {prefix!r}: none of {len(poses)} poses around "
                              f"{np.round(poses[0][:3, 3], 3).tolist()} solves")
        return best

    def line_path(self, prefix: str, pose: np.ndarray) -> np.ndarray:
        """Joint waypoints moving the TCP on a straight line from the current command to
        ``pose`` (rotation slerped), ``[K, dof]``."""
        line = self._ik[prefix].straight_line(self.q[prefix], pose,
                                              step_m=self.settings.line_step_m,
                                              rest=self._home[prefix])
        if not line.converged:
            raise ExpertError(f"arm {prefix!r}: no straight line to "
                              f"{np.round(pose[:3, 3], 3).tolist()}: {line.reason}")
        return line.q_rad

    def free_path(self, prefix: str, pose: np.ndarray) -> np.ndarray:
        """A straight TCP line if it solves, else a joint-space blend to the IK solution."""
        try:
            return self.line_path(prefix, pose)
        except ExpertError:
            return np.stack([self.q[prefix], self.solve(prefix, pose)])

    def _duration_s(self, paths: Mapping[str, np.ndarray], tcp_speed_m_s: float) -> float:
        duration = 0.0
        for p, path in paths.items():
            if len(path) < 2:
                continue
            rate = np.max(np.abs(np.diff(path, axis=0)), axis=0) * (len(path) - 1)  # |dq/ds|
            duration = max(duration,
                           _MIN_JERK_PEAK_SPEED * float(np.max(rate / self._max_velocity[p])),
                           math.sqrt(_MIN_JERK_PEAK_ACCELERATION
                                     * float(np.max(rate / self._max_acceleration[p]))))
            tcp = self._ik[p].pose(path)[:, :3, 3]
            length = float(np.sum(np.linalg.norm(np.diff(tcp, axis=0), axis=1)))
            duration = max(duration, _MIN_JERK_PEAK_SPEED * length / tcp_speed_m_s)
        return duration

    # --- segments ---

    def follow(self, paths: Mapping[str, np.ndarray], tcp_speed_m_s: float,
               grippers: Optional[Mapping[str, float]] = None) -> Iterator[Commands]:
        """Move every arm in ``paths`` along its path, all in the same time, minimum-jerk, and
        move each gripper in ``grippers`` to its opening at the gripper speed meanwhile."""
        grippers = dict(grippers or {})
        start_grip = {p: self.gripper[p] for p in grippers}
        speed = self.settings.gripper_speed_m_s
        duration = max([self._duration_s(paths, tcp_speed_m_s)]
                       + [abs(g - start_grip[p]) / speed for p, g in grippers.items()])
        ticks = max(1, math.ceil(duration / CONTROL_PERIOD_S - 1e-9))
        for k in range(1, ticks + 1):
            s = _min_jerk(k / ticks)
            for p, path in paths.items():
                self.q[p] = _along(path, s)
            for p, goal in grippers.items():
                step = min(k * CONTROL_PERIOD_S * speed, abs(goal - start_grip[p]))
                self.gripper[p] = start_grip[p] + math.copysign(step, goal - start_grip[p])
            yield self.commands()

    def line(self, poses: Mapping[str, np.ndarray], tcp_speed_m_s: float) -> Iterator[Commands]:
        return self.follow({p: self.line_path(p, pose) for p, pose in poses.items()},
                           tcp_speed_m_s)

    def move(self, poses: Mapping[str, np.ndarray],
             grippers: Optional[Mapping[str, float]] = None) -> Iterator[Commands]:
        return self.follow({p: self.free_path(p, pose) for p, pose in poses.items()},
                           self.settings.travel_speed_m_s, grippers)

    def grip(self, openings: Mapping[str, float]) -> Iterator[Commands]:
        """Move grippers to their openings (0: squeeze whatever is between the fingers), then
        let the fingers settle."""
        yield from self.follow({}, 1.0, openings)
        yield from self.hold(self.settings.grip_settle_s)

    def hold(self, seconds: float) -> Iterator[Commands]:
        for _ in range(round(seconds / CONTROL_PERIOD_S)):
            yield self.commands()


# --------------------------------------------------------------------------- the scripts


def _pick(m: Motion, arm: str, name: str, grasp_dz_m: float = 0.0) -> Iterator[Commands]:
    """Grasp an upright object from above across two opposite faces, and lift it."""
    s = m.settings
    pose = m.twin.object_pose(name)
    centre = pose[:3, 3] + (0.0, 0.0, grasp_dz_m)
    face_yaw = _yaw_of(pose[:3, 0])
    grasps = [_pose(_tool_down(face_yaw + k * math.pi / 2 - math.pi / 2), centre)
              for k in range(4)]
    grasp = grasps[m.nearest(arm, [_raised(g, s.approach_height_m) for g in grasps])]
    yield from m.move({arm: _raised(grasp, s.approach_height_m)})
    yield from m.line({arm: grasp}, s.approach_speed_m_s)
    yield from m.grip({arm: 0.0})
    yield from m.line({arm: _raised(grasp, s.lift_height_m)}, s.approach_speed_m_s)


def _in_tcp(m: Motion, arm: str, name: str) -> np.ndarray:
    """Where the held object's centre is in the TCP frame now (measured, not planned)."""
    tcp = m.twin.tcp_pose(arm)
    return tcp[:3, :3].T @ (m.twin.object_pose(name)[:3, 3] - tcp[:3, 3])


def pick_place(task: PickPlace, m: Motion) -> Iterator[Commands]:
    s, arm = m.settings, task.arm
    yield from _pick(m, arm, "cube")
    offset = _in_tcp(m, arm, "cube")
    rotation = m.tcp(arm)[:3, :3]
    half = float(object_size_m(m.twin, "cube")[2]) / 2.0
    goal = m.twin.target_position() + (0.0, 0.0, half + s.place_clearance_m)
    place = _pose(rotation, goal - rotation @ offset)
    yield from m.move({arm: _raised(place, s.approach_height_m)})
    yield from m.line({arm: place}, s.approach_speed_m_s)
    yield from m.grip({arm: GRIPPER_MAX_OPENING_M})
    yield from m.line({arm: _raised(place, s.approach_height_m)}, s.approach_speed_m_s)
    yield from m.hold(s.settle_s)


def push(task: Push, m: Motion) -> Iterator[Commands]:
    """Strokes along the line from the cube to the target, the closed fingers' 2 cm wide side
    leading, each one ending where the cube would be centred on the target; the next stroke
    starts from where the cube really went."""
    s, arm, twin = m.settings, task.arm, m.twin
    yield from m.grip({arm: 0.0})
    z = table_top_m(twin) + s.push_height_m
    finger_half_m = float(twin.model.geom(f"{arm}_gripper_pad1").size[0])  # along tool x
    cube_half = object_size_m(twin, "cube")[:2] / 2.0
    for stroke in range(s.max_push_strokes):
        cube = twin.object_pose("cube")
        target = twin.target_position()
        to_go = target[:2] - cube[:2, 3]
        distance = float(np.linalg.norm(to_go))
        if stroke > 0 and distance <= s.push_tolerance_m:
            break
        u = to_go / distance
        reach = float(np.abs(cube[:2, :2].T @ u) @ cube_half) + finger_half_m
        start = cube[:2, 3] - u * (reach + s.push_run_up_m)
        end = target[:2] - u * reach
        yaws = [_yaw_of(u) + k * math.pi for k in (0, 1)]  # tool x along -u or +u
        begin = [_pose(_tool_down(yaw), (*start, z)) for yaw in yaws]
        rotation = begin[m.nearest(arm, [_raised(b, s.approach_height_m) for b in begin])][:3, :3]
        yield from m.move({arm: _pose(rotation, (*start, z + s.approach_height_m))})
        yield from m.line({arm: _pose(rotation, (*start, z))}, s.approach_speed_m_s)
        yield from m.line({arm: _pose(rotation, (*end, z))}, s.push_speed_m_s)
        yield from m.line({arm: _pose(rotation, (*end, z + s.approach_height_m))},
                          s.approach_speed_m_s)
    yield from m.hold(s.settle_s)


def handover(task: Handover, m: Motion) -> Iterator[Commands]:
    """The giver holds the cube up with its fingers across the cube's x faces; the receiver
    comes in level from its own side with its fingers across the top and bottom faces (the
    giver's fingers and palm leave those free), closes, and the giver lets go and leaves."""
    s, twin = m.settings, m.twin
    giver, receiver = task.giver, task.receiver
    yield from _pick(m, giver, "cube", grasp_dz_m=_HANDOVER_GRASP_ABOVE_CENTRE_M)
    offset = _in_tcp(m, giver, "cube")
    point = np.array(s.handover_point_m)
    holds = [_tool_down(yaw) for yaw in (-math.pi / 2, math.pi / 2)]  # fingers along x
    carry = [_pose(r, point - r @ offset) for r in holds]
    yield from m.move({giver: carry[m.nearest(giver, carry)]})
    yield from m.hold(s.grip_settle_s)

    cube = twin.object_pose("cube")[:3, 3]
    side = math.copysign(1.0, twin.robot.layout.arm(receiver).mount.xyz_m[1] - cube[1])
    toward = np.array([0.0, -side, 0.0])  # the receiver's tool axis, pointing at the giver
    takes = []
    for up in (np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])):
        takes.append(_pose(np.column_stack([np.cross(up, toward), up, toward]), cube))
    take = takes[m.nearest(receiver, takes)]
    before = take.copy()
    before[:3, 3] -= toward * s.approach_height_m
    yield from m.move({receiver: before}, {receiver: s.handover_opening_m})
    yield from m.line({receiver: take}, s.approach_speed_m_s)
    yield from m.grip({receiver: 0.0})
    yield from m.grip({giver: GRIPPER_MAX_OPENING_M})
    # Back towards its own side and up: straight up from the hand-over point leaves its reach.
    away = m.tcp(giver)
    away[:3, 3] += s.approach_height_m * (toward + (0.0, 0.0, 0.5))
    yield from m.line({giver: away}, s.approach_speed_m_s)
    yield from m.hold(s.settle_s)


def lift_box(task: LiftBox, m: Motion) -> Iterator[Commands]:
    """Each arm grasps the end of the box on its own side across the box's width, both descend,
    close and lift together on lines of the same length and duration, so the box stays level."""
    s, twin = m.settings, m.twin
    box = twin.object_pose("box")
    along, across = box[:3, 1], box[:3, 0]
    reach = float(object_size_m(twin, "box")[1]) / 2.0 - s.box_grasp_inset_m
    grasps = {}
    for arm in task.arms:
        side = math.copysign(1.0, (twin.robot.layout.arm(arm).mount.xyz_m[1] - box[1, 3])
                             * along[1])
        centre = box[:3, 3] + side * reach * along
        options = [_pose(_tool_down(_yaw_of(across) - math.pi / 2 + k * math.pi), centre)
                   for k in (0, 1)]
        grasps[arm] = options[m.nearest(arm, [_raised(o, s.approach_height_m)
                                              for o in options])]
    yield from m.move({a: _raised(g, s.approach_height_m) for a, g in grasps.items()})
    yield from m.line(grasps, s.approach_speed_m_s)
    yield from m.grip({a: 0.0 for a in grasps})
    yield from m.line({a: _raised(g, s.lift_height_m) for a, g in grasps.items()},
                      s.approach_speed_m_s)
    yield from m.hold(s.settle_s)


_SCRIPTS: Dict[type, Callable[..., Iterator[Commands]]] = {
    PickPlace: pick_place, Push: push, Handover: handover, LiftBox: lift_box}


# --------------------------------------------------------------------------- episodes


def expert_commands(task: Task, twin: Twin,
                    settings: ExpertSettings = ExpertSettings()) -> Iterator[Commands]:
    """The expert's command stream, one item per control tick, for the scene the twin holds
    now (reset it with ``task.reset`` first). It plans as it goes: iterate it in step with the
    twin. Raises :class:`ExpertError` from the iteration when a motion does not plan."""
    script = _SCRIPTS.get(type(task))
    if script is None:
        raise TaskError(f"no expert for task type {type(task).__name__}")
    return script(task, Motion(twin, settings))


def apply_commands(twin: Twin, commands: Commands) -> None:
    for prefix, command in commands.items():
        twin.set_joint_targets(prefix, command.q_rad)
        twin.set_gripper_target(prefix, command.gripper_m)


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    seed: int
    outcome: Outcome
    ticks: int  # control ticks commanded

    @property
    def success(self) -> bool:
        return self.outcome.success

    @property
    def duration_s(self) -> float:
        return self.ticks * CONTROL_PERIOD_S


def run_episode(twin: Twin, task: Task, seed: int,
                settings: ExpertSettings = ExpertSettings(),
                on_tick: Optional[Callable[[int, Commands], None]] = None) -> EpisodeResult:
    """Reset the twin to ``seed``, run the expert within the task's time limit, check success.

    ``on_tick(k, commands)`` sees tick k's commands after they were set and before the physics
    advances over the tick: the state the twin shows then is the one they were computed from.
    """
    task.reset(twin, seed)
    limit = round(task.time_limit_s / CONTROL_PERIOD_S)
    ticks = 0
    try:
        for commands in expert_commands(task, twin, settings):
            if ticks >= limit:
                return EpisodeResult(task.name, seed, Outcome(
                    False, f"time limit of {task.time_limit_s:.0f} s reached"), ticks)
            apply_commands(twin, commands)
            if on_tick is not None:
                on_tick(ticks, commands)
            twin.step(CONTROL_PERIOD_S)
            ticks += 1
    except ExpertError as e:
        return EpisodeResult(task.name, seed, Outcome(False, f"the expert gave up: {e}"), ticks)
    return EpisodeResult(task.name, seed, task.check(twin), ticks)


# --------------------------------------------------------------------------- the table


@dataclass
class _Row:
    task: str
    embodiment: str
    results: List[EpisodeResult] = field(default_factory=list)
    wall_s: float = 0.0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ate_core.twin.experts",
        description="Run every scripted expert over seeds 0..N-1 on both arm models and print "
                    "its success rate.")
    parser.add_argument("--seeds", type=int, default=50, help="episodes per task and model")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--models", default="RM75-B,RM65-B", help="RM75-B and/or RM65-B")
    parser.add_argument("--config", default="config/bimanual.yaml", help="robot config YAML")
    args = parser.parse_args(argv)
    robot = TwinRobot.from_config(load_config(args.config))
    robots = {"RM75-B": robot, "RM65-B": rm65_variant(robot)}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in robots]
    if unknown:
        parser.error(f"--models: {unknown} are not among {list(robots)}")
    try:
        tasks = [get_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    except TaskError as e:
        parser.error(f"--tasks: {e}")
    rows: List[_Row] = []
    for task in tasks:
        name = task.name
        for model in models:
            twin = Twin(robots[model], task.scene())
            row = _Row(name, model)
            start = time.monotonic()
            for seed in range(args.seeds):
                result = run_episode(twin, task, seed)
                row.results.append(result)
                if not result.success:
                    print(f"  {name} {model} seed {seed}: {result.outcome.reason}",
                          file=sys.stderr, flush=True)
            row.wall_s = time.monotonic() - start
            rows.append(row)
            print(f"{name:10s} {model:6s} {sum(r.success for r in row.results)}/{args.seeds}",
                  file=sys.stderr, flush=True)
    print(f"# python -m ate_core.twin.experts --seeds {args.seeds}  ({time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {os.cpu_count()} cores, run on one)")
    print("| task | arms | success | episode length (s, mean) | wall time per episode (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        n = len(row.results)
        ok = sum(r.success for r in row.results)
        mean = sum(r.duration_s for r in row.results) / max(n, 1)
        print(f"| {row.task} | {row.embodiment} | {ok}/{n} ({100.0 * ok / max(n, 1):.0f} %) | "
              f"{mean:.1f} | {row.wall_s / max(n, 1):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
