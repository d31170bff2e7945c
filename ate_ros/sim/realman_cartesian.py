"""The emulated controller's Cartesian side: work and tool frames, and the planning of `movej_p`,
`movel`, `movec` and `moves` (with `trajectory_connect`) into joint paths for `ArmMotion`.

Semantics, from RealMan's JSON protocol (rm_docs `json/motionConfig.md`, `json/coordinate.md`)
and the SDK's requests (`Robotic_Arm` 1.1.6, logged against this emulator):

- Poses on the wire are `[x, y, z, rx, ry, rz]`, position in 0.001 mm, fixed-axis X-Y-Z angles
  in 0.001 rad, and describe the **current tool frame in the current work frame**; the
  reported pose (`current_arm_state`, the push's `waypoint`) is the same. At power-on both are
  identities: work frame `World` (the arm's base), tool frame `Arm_Tip` (the flange).
- `movej_p`: a joint-space move (as `movej`) to the joints that put the tool at the pose,
  solved from the current joints. `movel`: a straight line, the rotation slerped. `movec`: the
  arc through the current position, `pose_via` and `pose_to`, after `loop` full turns. `moves`:
  a spline through the current position and the points sent with `trajectory_connect: 1`
  up to one with 0 (fewer than three points: straight lines, as RealMan documents).
- `trajectory_connect: 1` queues a motion; the next one with 0 plans the queue and runs it
  back to back, from where each segment ends (blending radii `r` are not emulated).
- `v` is the percentage of the joint speed limits and of the tool's top speed
  (:data:`TCP_SPEED_MAX`); every segment starts and ends at rest.
- A pose the arm cannot reach, a line or arc the tool cannot follow (a waypoint without a
  solution, or a joint that would jump), collinear arc points: the motion is refused
  (`receive_state: false`), nothing moves and the queue is dropped. The controller's exact
  answer here is not documented; no error is latched, so the next motion runs.
- Frames: up to :data:`MAX_FRAMES` of each kind; names of 1-10 characters; the initial frames
  cannot be changed or deleted, nor can the current one be deleted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot import kinematics
from ate_core.robot.cartesian_path import (PathError, TimedJointPath, Waypoints, arc, line,
                                           pose_from_xyz_rpy, spline, xyz_rpy_from_pose)
from ate_core.robot.ik import ArmIK, IKSettings
from ate_core.robot.models import ArmModel
from ate_ros.sim.arm_motion import ArmMotion, ArmStatus, FlangePose, reported_pose, speed_fraction

#: The tool's top speed at `v` = 100: linear (m/s, RealMan's published TCP line speed of the
#: RM65, <= 1.8 m/s) and angular (rad/s, assumed: the wrist joints' 225 deg/s, rounded down).
TCP_SPEED_MAX = (1.8, math.pi)
#: Frames of each kind the controller stores (json/coordinate.md: "only 10 tool frames").
MAX_FRAMES = 10
BASE_WORK_FRAME = "World"
BASE_TOOL_FRAME = "Arm_Tip"
#: Waypoint spacing of Cartesian paths, and the joint jump that means a branch flip.
STEP_M = 0.005
STEP_RAD = 0.02
MAX_JOINT_STEP_RAD = 0.2
#: movej_p prefers solutions this fraction of every joint's range inside the limits.
MOVEJ_P_LIMIT_MARGIN = 0.1
MOVEJ_P_RANDOM_STARTS = 8

Json = Dict[str, object]


class Refused(Exception):
    """A motion or frame request the controller turns down; the message says why (logged)."""


def wire_pose(values: Sequence[object]) -> np.ndarray:
    """`[x, y, z (0.001 mm), rx, ry, rz (0.001 rad)]` -> 4x4."""
    if not isinstance(values, (list, tuple)) or len(values) != 6:
        raise Refused(f"a pose is 6 integers, got {values!r}")
    v = [float(x) for x in values]
    return pose_from_xyz_rpy([v[0] * 1e-6, v[1] * 1e-6, v[2] * 1e-6,
                              v[3] * 1e-3, v[4] * 1e-3, v[5] * 1e-3])


def to_wire_pose(pose: np.ndarray) -> List[int]:
    x = xyz_rpy_from_pose(pose)
    return [int(round(v * 1e6)) for v in x[:3]] + [int(round(a * 1e3)) for a in x[3:]]


@dataclass(frozen=True)
class ToolFrame:
    pose: np.ndarray          # tool in the flange frame
    payload_g: int = 0
    center_of_mass: Tuple[int, int, int] = (0, 0, 0)  # 0.001 mm, as on the wire


@dataclass(frozen=True)
class Queued:
    """One motion command waiting for the `trajectory_connect: 0` that plans it."""

    command: str
    request: Json


@dataclass(frozen=True)
class PlanRequest:
    """A queue to plan, with the joints and frames it starts from."""

    queue: Tuple[Queued, ...]
    q: np.ndarray
    work: np.ndarray
    tool: np.ndarray


class _Planner:
    """Joint paths of one :class:`PlanRequest`, segment by segment from its end joints."""

    def __init__(self, model: ArmModel, motion: ArmMotion, req: PlanRequest) -> None:
        self.model = model
        self.motion = motion
        self.req = req
        self.work_pose = req.work
        self.tool_pose = req.tool
        # Restarts only for movej_p (a target far from the current branch); paths follow the
        # current branch by construction.
        self._ik_settings = IKSettings(position_tolerance_m=1e-5, rotation_tolerance_rad=1e-5)

    def tcp_in_work(self, q_rad: np.ndarray) -> np.ndarray:
        flange = kinematics.flange_pose(self.model, np.asarray(q_rad, float))
        return np.linalg.inv(self.work_pose) @ flange @ self.tool_pose

    def segments(self) -> List[Tuple[TimedJointPath, str]]:
        queue = self.req.queue
        q = self.req.q
        segments: List[Tuple[TimedJointPath, str]] = []
        i = 0
        while i < len(queue):
            item = queue[i]
            fraction = speed_fraction(float(item.request.get("v", 20)))
            if item.command == "moves":
                points = [item]
                while i + 1 < len(queue) and queue[i + 1].command == "moves":
                    i += 1
                    points.append(queue[i])
                path = spline([self.tcp_in_work(q)] + [wire_pose(p.request["pose"]) for p in points],
                              step_m=STEP_M, step_rad=STEP_RAD)
                segment = self._along(q, path, fraction, ArmStatus.MOVE_S)
            elif item.command == "movel":
                path = line(self.tcp_in_work(q), wire_pose(item.request["pose"]), step_m=STEP_M,
                            step_rad=STEP_RAD)
                segment = self._along(q, path, fraction, ArmStatus.MOVE_L)
            elif item.command == "movec":
                poses = item.request["pose"]
                if not isinstance(poses, dict):
                    raise Refused("movec needs 'pose': {'pose_via': [...], 'pose_to': [...]}")
                loops = int(item.request.get("loop", 0) or 0)
                path = arc(self.tcp_in_work(q), wire_pose(poses["pose_via"]),
                           wire_pose(poses["pose_to"]), loops=loops, step_m=STEP_M,
                           step_rad=STEP_RAD)
                segment = self._along(q, path, fraction, ArmStatus.MOVE_C)
            elif item.command == "movej_p":
                goal = self._solve(wire_pose(item.request["pose"]), q)
                segment = self._joint_move(q, goal, fraction)
            elif item.command == "movej":
                goal = np.radians(np.asarray(item.request["joint"][: self.model.dof], float) / 1000.0)
                if goal.shape != (self.model.dof,) or not self.motion.within_limits(goal):
                    raise Refused("the joint target lies outside the limits")
                segment = self._joint_move(q, goal, fraction)
            else:
                raise Refused(f"{item.command} cannot be planned")
            segments.append(segment)
            q = segment[0].goal
            i += 1
        return segments

    def _target_in_base(self, pose_in_work: np.ndarray) -> np.ndarray:
        return self.work_pose @ pose_in_work

    def _ik(self, restarts: int) -> ArmIK:
        return ArmIK(self.model, tool=self.tool_pose,
                     settings=dataclasses.replace(self._ik_settings, restarts=restarts))

    def _solve(self, pose_in_work: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The joints for `movej_p`: of the solutions from the current joints, from the zero
        posture and from seeded random ones, the one closest to the current joints among those
        at least :data:`MOVEJ_P_LIMIT_MARGIN` of every joint's range inside its limits (or,
        if none is, the one furthest inside): a solution on a joint limit leaves the tool
        no room for the next `movel`."""
        target = self._target_in_base(pose_in_work)
        ik = self._ik(restarts=0)
        lower, upper = np.asarray(self.model.lower_rad), np.asarray(self.model.upper_rad)

        def margin(q_rad: np.ndarray) -> float:
            return float(np.min(np.minimum(q_rad - lower, upper - q_rad) / (upper - lower)))

        rng = np.random.default_rng(0)
        starts = [q, np.clip(np.zeros(self.model.dof), lower, upper)]
        starts += list(rng.uniform(lower, upper, (MOVEJ_P_RANDOM_STARTS, self.model.dof)))
        found, best = [], None
        for k, start in enumerate(starts):
            result = ik.solve(target, start, rest=start)
            if best is None or (result.position_error_m, result.rotation_error_rad) < \
                    (best.position_error_m, best.rotation_error_rad):
                best = result
            if result.converged:
                found.append(result.q_rad)
                if k == 0 and margin(result.q_rad) >= MOVEJ_P_LIMIT_MARGIN:
                    return result.q_rad
        if not found:
            raise Refused(f"the pose is out of reach (closest: {best.position_error_m * 1e3:.1f} mm, "
                          f"{math.degrees(best.rotation_error_rad):.2f} deg off)")
        clear = [x for x in found if margin(x) >= MOVEJ_P_LIMIT_MARGIN]
        if not clear:
            return max(found, key=margin)
        return min(clear, key=lambda x: float(np.linalg.norm(x - q)))

    def _joint_move(self, q: np.ndarray, goal: np.ndarray, fraction: float
                    ) -> Tuple[TimedJointPath, str]:
        return (TimedJointPath(np.stack([q, goal]), self.motion.vmax_rad_s * fraction,
                               self.motion.plan_acceleration_rad_s2), ArmStatus.MOVE_J)

    def _along(self, q: np.ndarray, path: Waypoints, fraction: float, status: str
               ) -> Tuple[TimedJointPath, str]:
        poses = np.stack([self._target_in_base(p) for p in path.poses])
        joints = self._ik(restarts=0).follow(q, poses, max_joint_step_rad=MAX_JOINT_STEP_RAD)
        if not joints.converged:
            raise Refused(f"the tool cannot follow the path: {joints.reason}")
        q_path = np.concatenate([q[None], joints.q_rad[1:]])  # starts exactly where the arm is
        timed = TimedJointPath(q_path, self.motion.vmax_rad_s * fraction,
                               self.motion.plan_acceleration_rad_s2, length_m=path.length_m,
                               rotation_rad=path.rotation_rad,
                               tcp_speed=(TCP_SPEED_MAX[0] * fraction, TCP_SPEED_MAX[1] * fraction))
        return timed, status


class CartesianController:
    """Frames and Cartesian planning of one emulated controller (not thread-safe; the protocol
    is called under the server's lock)."""

    def __init__(self, model: ArmModel, motion: ArmMotion) -> None:
        self.model = model
        self.motion = motion
        self.work: Dict[str, np.ndarray] = {BASE_WORK_FRAME: np.eye(4)}
        self.tools: Dict[str, ToolFrame] = {BASE_TOOL_FRAME: ToolFrame(np.eye(4))}
        self.current_work = BASE_WORK_FRAME
        self.current_tool = BASE_TOOL_FRAME
        self._queue: List[Queued] = []

    # ---- poses ---------------------------------------------------------------------------
    @property
    def work_pose(self) -> np.ndarray:
        return self.work[self.current_work]

    @property
    def tool_pose(self) -> np.ndarray:
        return self.tools[self.current_tool].pose

    def tcp_in_work(self, q_rad: np.ndarray) -> np.ndarray:
        """The current tool's pose in the current work frame at joints `q_rad`."""
        flange = kinematics.flange_pose(self.model, np.asarray(q_rad, float))
        return np.linalg.inv(self.work_pose) @ flange @ self.tool_pose

    def reported_pose(self, q_rad: np.ndarray) -> FlangePose:
        """What `current_arm_state` and the push report: the tool in the work frame."""
        return reported_pose(self.tcp_in_work(q_rad))

    # ---- motion ----------------------------------------------------------------------------
    # Planning solves IK along the whole path (up to a few hundred ms for a long arc), so it is
    # split in three: `request` and `start` run under the emulator's lock, `plan` between them
    # without it, on a snapshot, so the 5 ms clock and the push never wait for it.

    def request(self, name: str, request: Json) -> Optional[PlanRequest]:
        """Queue a motion command (movej, movej_p, movel, movec, moves). With
        `trajectory_connect` 1 it waits (None); with 0 the queue is handed out to plan."""
        self._queue.append(Queued(name, request))
        if int(request.get("trajectory_connect", 0) or 0) == 1:
            return None
        queue, self._queue = tuple(self._queue), []
        return PlanRequest(queue, self.motion.joints_rad, self.work_pose.copy(),
                           self.tool_pose.copy())

    def plan(self, req: PlanRequest) -> List[Tuple[TimedJointPath, str]]:
        """The joint paths of a queue, from the snapshot's joints; :class:`Refused` says why
        not. Touches no state."""
        try:
            return _Planner(self.model, self.motion, req).segments()
        except PathError as e:
            raise Refused(str(e)) from None

    def start(self, segments: Sequence[Tuple[TimedJointPath, str]], tag: object) -> bool:
        return self.motion.run_paths(segments, tag)

    def command(self, name: str, request: Json, tag: object) -> bool:
        """:meth:`request`, :meth:`plan` and :meth:`start` at once: the `receive_state`."""
        req = self.request(name, request)
        return True if req is None else self.start(self.plan(req), tag)

    def drop_queue(self) -> None:
        self._queue = []

    @property
    def queued(self) -> int:
        """Motions waiting for a `trajectory_connect: 0`."""
        return len(self._queue)

    # ---- frames ------------------------------------------------------------------------------
    def set_tool(self, name: object, request: Json, *, create: bool) -> None:
        name = self._name(name)
        if create and name in self.tools:
            raise Refused(f"tool frame {name!r} exists")
        if not create and name not in self.tools:
            raise Refused(f"no tool frame {name!r}")
        if name == BASE_TOOL_FRAME:
            raise Refused(f"{BASE_TOOL_FRAME} cannot be changed")
        if create and len(self.tools) >= MAX_FRAMES:
            raise Refused(f"{MAX_FRAMES} tool frames are stored already")
        com = request.get("position", [0, 0, 0])
        if not isinstance(com, list) or len(com) != 3:
            raise Refused(f"position (centre of mass) is 3 integers, got {com!r}")
        payload = int(request.get("payload", 0))
        if not 0 <= payload <= 5000:
            raise Refused(f"payload {payload} g is outside 0..5000 g")
        self.tools[name] = ToolFrame(wire_pose(request["tool_pose"]), payload,
                                     tuple(int(c) for c in com))  # type: ignore[arg-type]

    def set_work(self, name: object, pose: object, *, create: bool) -> None:
        name = self._name(name)
        if create and name in self.work:
            raise Refused(f"work frame {name!r} exists")
        if not create and name not in self.work:
            raise Refused(f"no work frame {name!r}")
        if name == BASE_WORK_FRAME:
            raise Refused(f"{BASE_WORK_FRAME} cannot be changed")
        if create and len(self.work) >= MAX_FRAMES:
            raise Refused(f"{MAX_FRAMES} work frames are stored already")
        self.work[name] = wire_pose(pose)  # type: ignore[arg-type]

    def change(self, kind: str, name: object) -> None:
        frames = self.tools if kind == "tool" else self.work
        if name not in frames:
            raise Refused(f"no {kind} frame {name!r}")
        self.drop_queue()
        if kind == "tool":
            self.current_tool = str(name)
        else:
            self.current_work = str(name)

    def delete(self, kind: str, name: object) -> None:
        frames: Dict[str, object] = self.tools if kind == "tool" else self.work  # type: ignore[assignment]
        base, current = ((BASE_TOOL_FRAME, self.current_tool) if kind == "tool"
                         else (BASE_WORK_FRAME, self.current_work))
        if name not in frames:
            raise Refused(f"no {kind} frame {name!r}")
        if name in (base, current):
            raise Refused(f"{kind} frame {name!r} is {'the initial' if name == base else 'in use'}")
        del frames[name]  # type: ignore[arg-type]

    @staticmethod
    def _name(name: object) -> str:
        if not isinstance(name, str) or not 1 <= len(name) <= 10:
            raise Refused(f"a frame name has 1-10 characters, got {name!r}")
        return name

    def tool_reply(self, state: str, name: str) -> Json:
        tool = self.tools[name]
        return {"state": state, "tool_name": name, "pose": to_wire_pose(tool.pose),
                "payload": tool.payload_g, "position": list(tool.center_of_mass)}

    def work_reply(self, state: str, name: str) -> Json:
        return {"state": state, "frame_name": name, "pose": to_wire_pose(self.work[name])}
