"""Inverse kinematics of one RealMan arm: damped least squares on the MDH chain.

The twin's scripted experts (pick, push, hand-over) and the emulator's Cartesian commands
(``movej_p``, ``movel``) need joint angles for a TCP pose, for RM75-B (7 joints, redundant) and
RM65-B (6 joints) alike. RealMan publishes no closed form for the 7-joint arm, and an iterative
solver on the same MDH table as the forward kinematics serves both models and any tool offset.

Each iteration solves ``J dq = e`` for the geometric Jacobian ``J`` of the solved frame and its
pose error ``e`` (position, and rotation as a rotation vector), weighted, by least squares with
a damping that grows only as the smallest singular value of ``J`` falls below a threshold
(Nakamura & Hanafusa 1986; Chiaverini 1997) and never beyond the error itself: away from
singularities, and close to any reachable target, the step is Gauss-Newton's and converges in a
handful of iterations; near a singularity the step stays bounded. Joints are clamped
into their limits less a margin at every step, a joint resting on a limit that the step pushes
further is taken out of that step, and the step that is left over in the Jacobian's null space
(the 7th joint, or any joint a relaxed orientation frees) pulls the arm toward a rest posture.
An unreachable target is not an error: the result says it did not converge, with the residual of
the best configuration found, after seeded restarts from random configurations (a local
solver cannot leave the start's branch). Only malformed input raises (:class:`IKInputError`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ate_core.config import checked, in_range, one_of, positive
from ate_core.robot import kinematics
from ate_core.robot.layout import ArmPlacement
from ate_core.robot.models import ArmModel

__all__ = [
    "IKInputError",
    "IKSettings",
    "IKResult",
    "LineResult",
    "ArmIK",
    "solve",
    "geometric_jacobian",
    "rotation_vector",
    "rotation_from_vector",
]

#: How far past a joint limit a start or rest posture may lie and still be taken (clamped in):
#: a controller reports angles a hair past its limits, while a value further out is a wrong
#: unit or a wrong arm, and solving from it would hide that.
LIMIT_SLACK_RAD = 0.01
#: |R^T R - I| above this: the rotation block of a pose is not a rotation.
_ORTHONORMAL_TOL = 1e-6


class IKInputError(ValueError):
    """A malformed IK request: a wrong shape, a non-finite value, a pose that is not a rigid
    transform, joint angles far outside the arm's limits, or a bad setting."""


_TASK_ROWS = {"full": 6, "z_axis": 5, "none": 3}
_ORIENTATIONS = tuple(_TASK_ROWS)


@dataclass(frozen=True)
class IKSettings:
    """How the solver weighs, damps, steps and stops.

    The weights set what one unit of error is worth: with ``rotation_weight`` 0.2, a rotation
    error of 1 rad weighs as much as 20 cm of position error. They only shape the path (and the
    compromise an unreachable target ends in); convergence is judged by the two tolerances.
    """

    orientation: str = checked("full", check=one_of(*_ORIENTATIONS),
                               doc="full: match the whole rotation; z_axis: match the tool z axis "
                                   "only (free rotation about it, as a parallel gripper's approach "
                                   "allows); none: position only")
    position_weight: float = checked(1.0, check=positive, doc="weight of the position error, per m")
    rotation_weight: float = checked(0.2, check=positive,
                                     doc="weight of the rotation error, per rad")
    position_tolerance_m: float = checked(1e-4, check=positive,
                                          doc="converged when the position error is at most this")
    rotation_tolerance_rad: float = checked(1e-4, check=positive,
                                            doc="and the rotation error at most this")
    max_iterations: int = checked(200, check=in_range(1, 100_000), doc="iterations per solve")
    stall_iterations: int = checked(25, check=in_range(1, 100_000),
                                    doc="give up after this many iterations without a 0.1 % "
                                        "improvement (an unreachable target)")
    max_step_rad: float = checked(0.4, check=positive,
                                  doc="largest change of any joint in one iteration, rad")
    joint_margin_rad: float = checked(0.01, check=in_range(0.0, 0.5),
                                      doc="solutions stay this far inside every joint limit, rad")
    damping: float = checked(0.05, check=positive,
                             doc="damping at a singularity, in weighted error units (m)")
    singular_threshold: float = checked(0.05, check=positive,
                                        doc="damping starts as the smallest singular value of the "
                                            "weighted Jacobian falls below this (m/rad)")
    restarts: int = checked(20, check=in_range(0, 10_000),
                            doc="further tries from random configurations when the start's "
                                "solve fails (a 6-joint arm's other branches)")
    seed: int = checked(0, check=in_range(0, 2**32 - 1),
                        doc="seed of the restarts' configurations: a solve is repeatable")
    null_space_gain: float = checked(0.1, check=in_range(0.0, 1.0),
                                     doc="fraction of the way to the rest posture moved per "
                                         "iteration, within the task's null space")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"float": (int, float), "int": (int,), "str": (str,)}[f.type]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise IKInputError(f"IKSettings.{f.name}: expected {f.type}, got {value!r}")
            check = f.metadata["check"]
            message = check(value) if check is not None else None
            if message:
                raise IKInputError(f"IKSettings.{f.name}: {message}")


@dataclass(frozen=True)
class IKResult:
    """The outcome of one solve. ``q_rad`` is the best configuration found (within the limits
    less the margin) and the errors are its residuals, whether or not it converged; the
    rotation error is the angle between the tool z axes when only the axis is matched, and 0
    in position-only mode. ``iterations`` counts those of every attempt (the start's, then the
    restarts')."""

    q_rad: np.ndarray
    converged: bool
    position_error_m: float
    rotation_error_rad: float
    iterations: int
    attempts: int = 1


@dataclass(frozen=True)
class LineResult:
    """Joint configurations along a straight TCP line, ``q_rad[k]`` at waypoint k (waypoint 0 is
    the start pose). When a waypoint fails, ``q_rad`` holds the waypoints before it,
    ``failed_waypoint`` its index and ``reason`` why."""

    q_rad: np.ndarray
    converged: bool
    failed_waypoint: Optional[int]
    waypoints: int
    reason: str = ""


# ------------------------------------------------------------------------------ rotations


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis times angle (angle in [0, pi]) of a 3x3 rotation: the log map of SO(3)."""
    r = rotation
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    cos = min(1.0, max(-1.0, 0.5 * (r[0, 0] + r[1, 1] + r[2, 2] - 1.0)))
    angle = math.acos(cos)
    if angle < 1e-6:
        return 0.5 * w
    if angle < math.pi - 1e-3:
        return (angle / (2.0 * math.sin(angle))) * w
    # Near pi, w vanishes with sin(angle); the symmetric part of R less cos(angle) I is exactly
    # (1 - cos(angle)) a a^T, whose dominant column is a, and w's remaining sign picks a or -a.
    b = 0.5 * (r + r.T) - cos * np.eye(3)
    k = int(np.argmax(np.diag(b)))
    axis = b[:, k] / np.linalg.norm(b[:, k])
    if axis @ w < 0.0:
        axis = -axis
    return angle * axis


def rotation_from_vector(rotvec: np.ndarray) -> np.ndarray:
    """The rotation of a rotation vector (Rodrigues): the exp map of SO(3), 3x3."""
    v = np.asarray(rotvec, dtype=np.float64)
    angle = math.sqrt(float(v @ v))
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if angle < 1e-8:
        return np.eye(3) + k + 0.5 * (k @ k)
    return (np.eye(3) + (math.sin(angle) / angle) * k
            + ((1.0 - math.cos(angle)) / (angle * angle)) * (k @ k))


# ------------------------------------------------------------------------------ Jacobian


def geometric_jacobian(model: ArmModel, q_rad: np.ndarray, base: Optional[np.ndarray] = None,
                       tool: Optional[np.ndarray] = None) -> np.ndarray:
    """Geometric Jacobian of the flange, or of the TCP given ``tool``, ``[..., 6, dof]``.

    Rows are the linear velocity of the frame's origin, then the angular velocity, both in the
    arm's base frame (or in ``base``'s frame, as :func:`kinematics.link_poses`). Every MDH joint
    turns about the z axis of its own frame, through that frame's origin, so column i is
    ``[z_i x (p - o_i); z_i]``.
    """
    frames = kinematics.link_poses(model, q_rad, base=base)
    return _jacobian(frames, _solved_pose(frames, tool))


def _solved_pose(frames: np.ndarray, tool: Optional[np.ndarray]) -> np.ndarray:
    flange = frames[..., -1, :, :]
    return flange if tool is None else flange @ np.asarray(tool, dtype=flange.dtype)


def _jacobian(frames: np.ndarray, pose: np.ndarray) -> np.ndarray:
    z = frames[..., :3, 2]
    r = pose[..., None, :3, 3] - frames[..., :3, 3]
    out = np.empty(frames.shape[:-3] + (6, frames.shape[-3]), dtype=frames.dtype)
    # The cross products written out: np.cross costs three times as much on 7 joints.
    out[..., 0, :] = z[..., 1] * r[..., 2] - z[..., 2] * r[..., 1]
    out[..., 1, :] = z[..., 2] * r[..., 0] - z[..., 0] * r[..., 2]
    out[..., 2, :] = z[..., 0] * r[..., 1] - z[..., 1] * r[..., 0]
    out[..., 3:, :] = np.swapaxes(z, -1, -2)
    return out


# ------------------------------------------------------------------------------ input checks


def _rigid_transform(name: str, value: object) -> np.ndarray:
    try:
        t = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise IKInputError(f"{name}: expected a 4x4 transform, "
                           f"got {type(value).__name__}") from None
    if t.shape != (4, 4):
        raise IKInputError(f"{name}: expected a 4x4 transform, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise IKInputError(f"{name}: contains non-finite values")
    if np.any(t[3] != (0.0, 0.0, 0.0, 1.0)):
        raise IKInputError(f"{name}: bottom row is {t[3].tolist()}, not [0, 0, 0, 1]")
    r = t[:3, :3]
    deviation = float(np.max(np.abs(r.T @ r - np.eye(3))))
    if deviation > _ORTHONORMAL_TOL or np.linalg.det(r) < 0.0:
        raise IKInputError(f"{name}: rotation block is not a rotation "
                           f"(|R^T R - I| = {deviation:.2e}, det = {np.linalg.det(r):.4f})")
    return t


def _inverse(t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out


# ------------------------------------------------------------------------------ solver


class ArmIK:
    """Damped least-squares IK of one arm, for the flange or a tool frame, with targets given
    in the arm's base frame or, through ``base`` (the arm base's pose), in that frame's parent.

    Stateless between calls and cheap to build; :meth:`for_placement` builds the one that takes
    targets in ``base_link`` for an arm of the layout. Measured on one core of the CI's machine
    kind: 0.11-0.17 ms an iteration; a random reachable pose from home takes a median of 14
    iterations (2.3 ms) on RM75-B and 12 (1.6 ms) on RM65-B; an unreachable one about 0.2 s,
    all restarts spent (``restarts=0`` answers in about 10 ms where the start's branch is known
    to be the right one).
    """

    def __init__(self, model: ArmModel, *, base: Optional[np.ndarray] = None,
                 tool: Optional[np.ndarray] = None, settings: Optional[IKSettings] = None) -> None:
        self.model = model
        self.settings = settings if settings is not None else IKSettings()
        if not isinstance(self.settings, IKSettings):
            raise IKInputError(f"settings: expected IKSettings, got {type(self.settings).__name__}")
        self.base = None if base is None else _rigid_transform("base", base)
        self.tool = None if tool is None else _rigid_transform("tool", tool)
        self._base_inverse = None if self.base is None else _inverse(self.base)
        margin = self.settings.joint_margin_rad
        lower = np.array(model.lower_rad, dtype=np.float64)
        upper = np.array(model.upper_rad, dtype=np.float64)
        if np.any(upper - lower <= 2.0 * margin):
            raise IKInputError(f"{model.name}: joint_margin_rad {margin} leaves no range "
                               f"for some joint")
        self.lower_rad, self.upper_rad = lower + margin, upper - margin

    @classmethod
    def for_placement(cls, placement: ArmPlacement, *, frame: str = "tcp",
                      settings: Optional[IKSettings] = None) -> "ArmIK":
        """IK of ``placement``'s TCP (``frame="tcp"``) or flange, targets in ``base_link``."""
        if frame not in ("tcp", "flange"):
            raise IKInputError(f"frame: {frame!r} is not one of ['tcp', 'flange']")
        tool = placement.tcp.matrix() if frame == "tcp" else None
        return cls(placement.model, base=placement.mount.matrix(), tool=tool, settings=settings)

    # --- kinematics in the targets' frame ---

    def pose(self, q_rad: np.ndarray) -> np.ndarray:
        """Pose of the solved frame in the targets' frame, ``[..., dof] -> [..., 4, 4]``."""
        return kinematics.flange_pose(self.model, q_rad, base=self.base, tool=self.tool)

    def jacobian(self, q_rad: np.ndarray) -> np.ndarray:
        """Geometric Jacobian of the solved frame in the targets' frame, ``[..., 6, dof]``."""
        return geometric_jacobian(self.model, q_rad, base=self.base, tool=self.tool)

    # --- solving ---

    def solve(self, target: np.ndarray, q_start: np.ndarray,
              rest: Optional[np.ndarray] = None) -> IKResult:
        """Joint angles that put the solved frame at ``target`` (4x4, targets' frame), iterated
        from ``q_start``; redundant motion pulls toward ``rest`` (default: ``q_start``).

        A local solver follows the start's branch: RM65-B reaches some poses only with the
        elbow or the wrist flipped, and joint limits can wall a path off. When the start's solve
        fails, up to ``settings.restarts`` tries from seeded random configurations follow.
        """
        goal = self._to_arm_base(_rigid_transform("target", target))
        q0 = self._joints("q_start", q_start)
        rest_q = q0 if rest is None else self._joints("rest", rest)
        result = self._solve(goal, q0, rest_q)
        iterations, attempt = result.iterations, 0
        if not result.converged and self.settings.restarts:
            rng = np.random.default_rng(self.settings.seed)
            while not result.converged and attempt < self.settings.restarts:
                attempt += 1
                candidate = self._solve(goal, rng.uniform(self.lower_rad, self.upper_rad), rest_q)
                iterations += candidate.iterations
                if candidate.converged or self._cost(candidate) < self._cost(result):
                    result = candidate
        return dataclasses.replace(result, iterations=iterations, attempts=attempt + 1)

    def straight_line(self, q_start: np.ndarray, target: np.ndarray, *,
                      start: Optional[np.ndarray] = None, step_m: float = 0.005,
                      step_rad: float = 0.02, max_joint_step_rad: float = 0.2,
                      rest: Optional[np.ndarray] = None) -> LineResult:
        """Joint configurations moving the solved frame on a straight line from ``start``
        (default: its pose at ``q_start``) to ``target``, the rotation slerped alongside.

        Waypoints lie at most ``step_m`` and ``step_rad`` apart; each is solved from the one
        before. It fails at the first waypoint that does not converge or that needs a joint to
        move more than ``max_joint_step_rad`` from the one before: such a jump (a wrist flipping
        to another branch) would sweep the TCP far off the line between the two waypoints.
        """
        for name, value in (("step_m", step_m), ("step_rad", step_rad),
                            ("max_joint_step_rad", max_joint_step_rad)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise IKInputError(f"{name}: {value!r} must be a finite number > 0")
        q0 = self._joints("q_start", q_start)
        rest_q = q0 if rest is None else self._joints("rest", rest)
        end = self._to_arm_base(_rigid_transform("target", target))
        if start is None:
            begin = kinematics.flange_pose(self.model, q0, tool=self.tool)
        else:
            begin = self._to_arm_base(_rigid_transform("start", start))
        delta_p = end[:3, 3] - begin[:3, 3]
        delta_r = rotation_vector(begin[:3, :3].T @ end[:3, :3])
        count = max(1, math.ceil(float(np.linalg.norm(delta_p)) / step_m),
                    math.ceil(float(np.linalg.norm(delta_r)) / step_rad))
        waypoints = np.repeat(np.eye(4)[None], count + 1, axis=0)
        for k in range(count + 1):
            s = k / count
            waypoints[k, :3, :3] = begin[:3, :3] @ rotation_from_vector(s * delta_r)
            waypoints[k, :3, 3] = begin[:3, 3] + s * delta_p
        return self._follow(waypoints, q0, rest_q, max_joint_step_rad)

    def follow(self, q_start: np.ndarray, waypoints: np.ndarray, *,
               max_joint_step_rad: float = 0.2, rest: Optional[np.ndarray] = None) -> LineResult:
        """Joint configurations through ``waypoints`` ``[N, 4, 4]`` (targets' frame; a path of
        :mod:`ate_core.robot.cartesian_path`), each solved from the one before, the first from
        ``q_start``. It fails as :meth:`straight_line` does: at the first waypoint that does not
        converge or that needs a joint to jump more than ``max_joint_step_rad``."""
        if not (isinstance(max_joint_step_rad, (int, float)) and math.isfinite(max_joint_step_rad)
                and max_joint_step_rad > 0):
            raise IKInputError(f"max_joint_step_rad: {max_joint_step_rad!r} must be a finite number > 0")
        q0 = self._joints("q_start", q_start)
        rest_q = q0 if rest is None else self._joints("rest", rest)
        poses = np.asarray(waypoints, dtype=np.float64)
        if poses.ndim != 3 or poses.shape[1:] != (4, 4) or poses.shape[0] < 1:
            raise IKInputError(f"waypoints: expected [N, 4, 4] poses, got shape {poses.shape}")
        goals = np.stack([self._to_arm_base(_rigid_transform(f"waypoints[{k}]", p))
                          for k, p in enumerate(poses)])
        return self._follow(goals, q0, rest_q, max_joint_step_rad)

    def _follow(self, goals: np.ndarray, q0: np.ndarray, rest: np.ndarray,
                max_joint_step_rad: float) -> LineResult:
        """:meth:`follow` with ``goals`` already in the arm's base frame."""
        count = goals.shape[0] - 1
        path = []
        q = q0
        for k, waypoint in enumerate(goals):
            result = self._solve(waypoint, q, rest)
            if not result.converged:
                return LineResult(np.array(path).reshape(-1, self.model.dof), False, k, count + 1,
                                  f"waypoint {k} of {count}: did not converge (position error "
                                  f"{result.position_error_m * 1e3:.2f} mm, rotation error "
                                  f"{result.rotation_error_rad:.4f} rad)")
            jump = float(np.max(np.abs(result.q_rad - q)))
            if k > 0 and jump > max_joint_step_rad:
                bridged = self._bridge(goals[k - 1], waypoint, q, rest, max_joint_step_rad)
                if bridged is None:
                    return LineResult(np.array(path).reshape(-1, self.model.dof), False, k,
                                      count + 1, f"waypoint {k} of {count}: a joint jumps "
                                      f"{jump:.3f} rad (> {max_joint_step_rad} rad) from the "
                                      f"waypoint before, at any finer step")
                result = bridged
            path.append(result.q_rad)
            q = result.q_rad
        return LineResult(np.array(path), True, None, count + 1)

    def _bridge(self, before: np.ndarray, goal: np.ndarray, q: np.ndarray, rest: np.ndarray,
                max_joint_step_rad: float) -> Optional[IKResult]:
        """A large joint change between two close waypoints is either fast motion near a
        singularity (it shrinks with the step) or a jump to another branch (it does not).
        Tell them apart by solving finer steps between the two poses (4, then 32): the
        solution at ``goal`` reached through steps that each move the joints less than a
        quarter of ``max_joint_step_rad``, or None."""
        delta_p = goal[:3, 3] - before[:3, 3]
        delta_r = rotation_vector(before[:3, :3].T @ goal[:3, :3])
        for n in (4, 32):
            q_k, worst, result = q, 0.0, None
            for i in range(1, n + 1):
                pose = np.eye(4)
                pose[:3, :3] = before[:3, :3] @ rotation_from_vector(i / n * delta_r)
                pose[:3, 3] = before[:3, 3] + i / n * delta_p
                result = self._solve(pose, q_k, rest)
                if not result.converged:
                    return None
                worst = max(worst, float(np.max(np.abs(result.q_rad - q_k))))
                q_k = result.q_rad
            if worst <= 0.25 * max_joint_step_rad:
                return result
        return None

    def _to_arm_base(self, pose: np.ndarray) -> np.ndarray:
        return pose if self._base_inverse is None else self._base_inverse @ pose

    def _joints(self, name: str, value: object) -> np.ndarray:
        dof = self.model.dof
        try:
            q = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise IKInputError(f"{name}: expected {dof} joint angles, "
                               f"got {type(value).__name__}") from None
        if q.shape != (dof,):
            raise IKInputError(f"{name}: expected {dof} joint angles of {self.model.name}, "
                               f"got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise IKInputError(f"{name}: contains non-finite values {q.tolist()}")
        lower = np.array(self.model.lower_rad) - LIMIT_SLACK_RAD
        upper = np.array(self.model.upper_rad) + LIMIT_SLACK_RAD
        outside = np.flatnonzero((q < lower) | (q > upper))
        if outside.size:
            i = int(outside[0])
            raise IKInputError(f"{name}[{i}]: {q[i]:.4f} rad is outside the joint limits "
                               f"[{self.model.lower_rad[i]:.4f}, {self.model.upper_rad[i]:.4f}] "
                               f"of {self.model.name}")
        return np.clip(q, self.lower_rad, self.upper_rad)

    def _cost(self, result: IKResult) -> float:
        return math.hypot(self.settings.position_weight * result.position_error_m,
                          self.settings.rotation_weight * result.rotation_error_rad)

    def _solve(self, goal: np.ndarray, q0: np.ndarray, rest: np.ndarray) -> IKResult:
        """The iteration, everything in the arm's base frame, inputs already checked."""
        s = self.settings
        q = q0.copy()
        best = (math.inf, q, math.inf, math.inf)
        best_for_stall = math.inf
        since_progress = 0
        for iteration in range(s.max_iterations + 1):
            frames = kinematics.link_poses(self.model, q)
            pose = _solved_pose(frames, self.tool)
            rows, error, position_error, rotation_error = self._task(
                goal, pose, _jacobian(frames, pose))
            if (position_error <= s.position_tolerance_m
                    and rotation_error <= s.rotation_tolerance_rad):
                return IKResult(q, True, position_error, rotation_error, iteration)
            cost = math.sqrt(float(error @ error))
            if cost < best[0]:
                best = (cost, q, position_error, rotation_error)
            if cost < best_for_stall * (1.0 - 1e-3):
                best_for_stall, since_progress = cost, 0
            else:
                since_progress += 1
            if iteration == s.max_iterations or since_progress >= s.stall_iterations:
                break
            q = np.clip(q + self._step(rows, error, cost, q, rest), self.lower_rad, self.upper_rad)
        _, q_best, position_error, rotation_error = best
        return IKResult(q_best, False, position_error, rotation_error, iteration)

    def _task(self, goal: np.ndarray, pose: np.ndarray,
              jac: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float, float]:
        """(weighted task Jacobian rows, weighted error, position error, rotation error)."""
        s = self.settings
        rows = np.empty((_TASK_ROWS[s.orientation], jac.shape[1]))
        error = np.empty(rows.shape[0])
        e_position = goal[:3, 3] - pose[:3, 3]
        position_error = math.sqrt(float(e_position @ e_position))
        rows[:3] = s.position_weight * jac[:3]
        error[:3] = s.position_weight * e_position
        rotation_error = 0.0
        if s.orientation == "full":
            e_rotation = rotation_vector(goal[:3, :3] @ pose[:3, :3].T)
            rotation_error = math.sqrt(float(e_rotation @ e_rotation))
            rows[3:] = s.rotation_weight * jac[3:]
            error[3:] = s.rotation_weight * e_rotation
        elif s.orientation == "z_axis":
            # Only the two angular rates that tilt the tool z axis count; a task of 5 rows keeps
            # the free spin out of the singular values the damping watches.
            z_now, z_goal = pose[:3, 2], goal[:3, 2]
            axis = np.cross(z_now, z_goal)
            sin = math.sqrt(float(axis @ axis))
            rotation_error = math.atan2(sin, float(z_now @ z_goal))
            e_rotation = (rotation_error / sin) * axis if sin > 1e-12 else (
                rotation_error * pose[:3, 0])
            tilt = pose[:3, :2].T
            rows[3:] = s.rotation_weight * (tilt @ jac[3:])
            error[3:] = s.rotation_weight * (tilt @ e_rotation)
        return rows, error, position_error, rotation_error

    def _step(self, rows: np.ndarray, error: np.ndarray, cost: float, q: np.ndarray,
              rest: np.ndarray) -> np.ndarray:
        """One damped least-squares step, joints on a limit that it pushes outward held.

        The damping never exceeds the error itself, so that a target on a singular
        configuration (RM75-B's straight elbow, RM65-B's straight wrist) is still reached
        quadratically: with a fixed damping, 3 % of random targets solved from home stalled a
        tenth of a millimetre short.
        """
        s = self.settings
        damping = min(s.damping, cost)
        dq = self._damped_step(rows, error, damping, q, rest)
        at_limit = (((q <= self.lower_rad) & (dq < 0.0)) | ((q >= self.upper_rad) & (dq > 0.0)))
        if np.any(at_limit) and not np.all(at_limit):
            free = ~at_limit
            dq = np.zeros(q.size)
            dq[free] = self._damped_step(rows[:, free], error, damping, q[free], rest[free])
        largest = float(np.max(np.abs(dq)))
        if largest > s.max_step_rad:
            dq *= s.max_step_rad / largest
        return dq

    def _damped_step(self, rows: np.ndarray, error: np.ndarray, damping: float, q: np.ndarray,
                     rest: np.ndarray) -> np.ndarray:
        s = self.settings
        u, sigma, vt = np.linalg.svd(rows, full_matrices=True)
        k = sigma.size
        smallest = float(sigma[-1])
        damping2 = 0.0
        if smallest < s.singular_threshold:
            damping2 = (1.0 - (smallest / s.singular_threshold) ** 2) * damping ** 2
        gains = sigma / (sigma * sigma + damping2)
        step = vt[:k].T @ (gains * (u[:, :k].T @ error))
        if vt.shape[0] > k and s.null_space_gain > 0.0:
            null = vt[k:]
            step += s.null_space_gain * (null.T @ (null @ (rest - q)))
        return step


def solve(placement: ArmPlacement, target_in_base_link: np.ndarray, q_start: np.ndarray, *,
          frame: str = "tcp", settings: Optional[IKSettings] = None,
          rest: Optional[np.ndarray] = None) -> IKResult:
    """Joint angles of ``placement``'s arm putting its TCP (or flange) at a ``base_link`` pose."""
    return ArmIK.for_placement(placement, frame=frame, settings=settings).solve(
        target_in_base_link, q_start, rest)
