"""Cartesian paths of a tool and their joint-space execution: what a RealMan controller plans for
``movel`` (a straight line), ``movec`` (an arc through a via point) and ``moves`` (a spline through
points), and the timing of any joint path under speed and acceleration limits.

A path is a sequence of poses sampled at most ``step_m`` apart along the tool's track and
``step_rad`` apart in rotation, the rotation slerped from the start's to the end's along the
track; :meth:`ate_core.robot.ik.ArmIK.follow` turns it into joint configurations, and
:class:`TimedJointPath` runs those at the speed the limits allow, on a trapezoidal profile of
the path parameter that starts and ends at rest (the shape of a RealMan ``movej``: all joints
start and stop together).

Poses are 4x4 homogeneous transforms; RealMan's ``[x, y, z, rx, ry, rz]`` (metres, fixed-axis
X-Y-Z angles, ``R = Rz(rz) Ry(ry) Rx(rx)``) converts with :func:`pose_from_xyz_rpy` and
:func:`xyz_rpy_from_pose`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ate_core.robot.ik import rotation_from_vector, rotation_vector
from ate_core.robot.layout import matrix_to_rpy, rpy_to_matrix

__all__ = [
    "PathError",
    "Waypoints",
    "pose_from_xyz_rpy",
    "xyz_rpy_from_pose",
    "line",
    "arc",
    "spline",
    "Trapezoid",
    "TimedJointPath",
]


class PathError(ValueError):
    """A path that cannot be drawn: coincident or collinear arc points, too few points, a pose
    that is not finite."""


def pose_from_xyz_rpy(values: Sequence[float]) -> np.ndarray:
    """``[x, y, z, rx, ry, rz]`` (m, rad; RealMan's fixed-axis X-Y-Z angles) -> 4x4."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        raise PathError(f"a pose is 6 finite numbers [x, y, z, rx, ry, rz], got {list(np.ravel(v))}")
    pose = np.eye(4)
    pose[:3, :3] = rpy_to_matrix(v[3:])
    pose[:3, 3] = v[:3]
    return pose


def xyz_rpy_from_pose(pose: np.ndarray) -> Tuple[float, ...]:
    """4x4 -> ``(x, y, z, rx, ry, rz)``, the inverse of :func:`pose_from_xyz_rpy`."""
    p = np.asarray(pose, dtype=np.float64)
    return (*(float(x) for x in p[:3, 3]), *matrix_to_rpy(p[:3, :3]))


@dataclass(frozen=True)
class Waypoints:
    """Poses along a path ``[N, 4, 4]`` (N >= 2, the first is the start), with the length of
    the tool's track and the total rotation."""

    poses: np.ndarray
    length_m: float
    rotation_rad: float


def _sampled(points: np.ndarray, start: np.ndarray, end: np.ndarray, step_m: float,
             step_rad: float) -> Waypoints:
    """A dense polyline of positions ``[M, 3]`` (first = start's, last = end's position)
    resampled uniformly in length, the rotation slerped from ``start`` to ``end`` in proportion
    to the length travelled."""
    for name, value in (("step_m", step_m), ("step_rad", step_rad)):
        if not (math.isfinite(value) and value > 0):
            raise PathError(f"{name}: {value!r} must be a finite number > 0")
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(along[-1])
    delta_r = rotation_vector(start[:3, :3].T @ end[:3, :3])
    angle = float(np.linalg.norm(delta_r))
    count = max(1, math.ceil(length / step_m), math.ceil(angle / step_rad))
    s = np.linspace(0.0, 1.0, count + 1)
    if length > 0:
        positions = np.stack([np.interp(s * length, along, points[:, i]) for i in range(3)], axis=1)
    else:
        positions = np.repeat(points[:1], count + 1, axis=0)
    poses = np.repeat(np.eye(4)[None], count + 1, axis=0)
    for k, sk in enumerate(s):
        poses[k, :3, :3] = start[:3, :3] @ rotation_from_vector(sk * delta_r)
    poses[:, :3, 3] = positions
    poses[0], poses[-1] = start, end
    return Waypoints(poses, length, angle)


def line(start: np.ndarray, end: np.ndarray, *, step_m: float = 0.005,
         step_rad: float = 0.02) -> Waypoints:
    """A straight line (``movel``)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    return _sampled(np.stack([start[:3, 3], end[:3, 3]]), start, end, step_m, step_rad)


def arc(start: np.ndarray, via: np.ndarray, end: np.ndarray, *, loops: int = 0,
        step_m: float = 0.005, step_rad: float = 0.02) -> Waypoints:
    """The circle through the three positions (``movec``), from ``start`` through ``via`` to
    ``end``, after ``loops`` full turns from the start; the rotation goes from the start's to
    the end's (the via pose's rotation is not used, as on the controller)."""
    if not (isinstance(loops, (int, np.integer)) and loops >= 0):
        raise PathError(f"loops: {loops!r} must be an int >= 0")
    p0, p1, p2 = (np.asarray(p, float)[:3, 3] for p in (start, via, end))
    a, b = p1 - p0, p2 - p0
    normal = np.cross(a, b)
    area2 = float(np.linalg.norm(normal))
    chords = (float(np.linalg.norm(a)), float(np.linalg.norm(b)), float(np.linalg.norm(p2 - p1)))
    # Within a milliradian of a line the circle is kilometres wide: no arc to draw.
    if min(chords) < 1e-6 or area2 < 1e-3 * chords[0] * chords[1]:
        raise PathError("the arc's start, via and end points are coincident or on one line")
    n = normal / area2
    # Circumcentre of the triangle (p0, p1, p2).
    center = p0 + (np.dot(a, a) * np.cross(b, normal) + np.dot(b, b) * np.cross(normal, a)) \
        / (2.0 * area2 * area2)
    radius = float(np.linalg.norm(p0 - center))
    u = (p0 - center) / radius
    v = np.cross(n, u)

    def angle_of(p: np.ndarray) -> float:
        d = p - center
        return math.atan2(float(np.dot(d, v)), float(np.dot(d, u))) % (2.0 * math.pi)

    total = angle_of(p2) + 2.0 * math.pi * int(loops)
    dense = max(64, math.ceil(total * radius / (step_m / 8.0)))
    theta = np.linspace(0.0, total, dense + 1)
    points = center + radius * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)
    points[-1] = p2
    return _sampled(points, np.asarray(start, float), np.asarray(end, float), step_m, step_rad)


def spline(poses: Sequence[np.ndarray], *, step_m: float = 0.005,
           step_rad: float = 0.02) -> Waypoints:
    """A centripetal Catmull-Rom spline through the positions of ``poses`` (``moves``; the first
    is the start), the rotation slerped from the first to the last. With fewer than three
    poses after the start the controller moves in straight lines: so does this."""
    poses = [np.asarray(p, float) for p in poses]
    if len(poses) < 2:
        raise PathError("a spline needs the start and at least one point")
    points = np.stack([p[:3, 3] for p in poses])
    if len(poses) < 4:
        track = points
    else:
        ends = (2 * points[0] - points[1], 2 * points[-1] - points[-2])
        ext = np.concatenate([[ends[0]], points, [ends[1]]])
        pieces = []
        for i in range(1, len(ext) - 2):
            pieces.append(_catmull_rom(ext[i - 1], ext[i], ext[i + 1], ext[i + 2], step_m / 8.0))
        track = np.concatenate([pieces[0]] + [p[1:] for p in pieces])
    return _sampled(track, poses[0], poses[-1], step_m, step_rad)


def _catmull_rom(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray,
                 resolution_m: float) -> np.ndarray:
    """The centripetal (alpha 0.5) Catmull-Rom segment from ``p1`` to ``p2``, densely sampled."""
    def knot(t: float, a: np.ndarray, b: np.ndarray) -> float:
        return t + max(float(np.linalg.norm(b - a)), 1e-9) ** 0.5

    t0 = 0.0
    t1 = knot(t0, p0, p1)
    t2 = knot(t1, p1, p2)
    t3 = knot(t2, p2, p3)
    count = max(8, math.ceil(float(np.linalg.norm(p2 - p1)) / resolution_m))
    t = np.linspace(t1, t2, count + 1)[:, None]
    a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
    a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
    a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
    b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
    b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
    out = (t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2
    out[0], out[-1] = p1, p2
    return out


# ------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Trapezoid:
    """A rest-to-rest profile of a path parameter s from 0 to 1 with speed at most ``speed``
    and acceleration at most ``accel`` (per second, per second squared); a triangle when the
    path is too short to reach the speed."""

    speed: float
    accel: float

    def __post_init__(self) -> None:
        if not (self.speed > 0 and self.accel > 0):
            raise ValueError(f"Trapezoid: speed {self.speed} and accel {self.accel} must be > 0")

    @property
    def ramp_s(self) -> float:
        """Time to reach the top speed (that of the triangle when it is one)."""
        if self.speed * self.speed / self.accel >= 1.0:
            return math.sqrt(1.0 / self.accel)
        return self.speed / self.accel

    @property
    def top_speed(self) -> float:
        return min(self.speed, self.accel * self.ramp_s)

    @property
    def duration_s(self) -> float:
        if self.speed * self.speed / self.accel >= 1.0:
            return 2.0 * self.ramp_s
        return 1.0 / self.speed + self.ramp_s

    def s_at(self, t: float) -> float:
        total, ramp, top = self.duration_s, self.ramp_s, self.top_speed
        if t >= total:
            return 1.0
        t = max(t, 0.0)
        if t < ramp:
            return 0.5 * self.accel * t * t
        if t < total - ramp:
            return 0.5 * top * ramp + top * (t - ramp)
        return 1.0 - 0.5 * self.accel * (total - t) ** 2


class TimedJointPath:
    """Joint configurations ``q [N, dof]`` (N >= 2, equally spaced in the path parameter) run
    rest to rest on one :class:`Trapezoid`: the fastest profile whose joint speeds stay within
    ``max_velocity`` and whose accelerations, along the path, within ``max_acceleration``
    (the curvature's share of a joint's acceleration is not bounded: small at the controller's
    waypoint spacing), and, given ``length_m`` / ``rotation_rad`` of a Cartesian path, the tool
    within ``tcp_speed`` (m/s, rad/s) and ``tcp_accel`` (m/s^2, rad/s^2). A path that does
    not move takes no time."""

    def __init__(self, q: np.ndarray, max_velocity: np.ndarray, max_acceleration: np.ndarray, *,
                 length_m: float = 0.0, rotation_rad: float = 0.0,
                 tcp_speed: Optional[Tuple[float, float]] = None,
                 tcp_accel: Optional[Tuple[float, float]] = None) -> None:
        q = np.array(q, dtype=np.float64)
        if q.ndim != 2 or q.shape[0] < 2:
            raise ValueError(f"TimedJointPath: expected [N >= 2, dof] joint configurations, got {q.shape}")
        self.q = q
        self.start = q[0].copy()
        self.goal = q[-1].copy()
        rate = np.max(np.abs(np.diff(q, axis=0)), axis=0) * (q.shape[0] - 1)  # max |dq/ds| per joint
        moving = rate > 1e-12
        speed, accel = math.inf, math.inf
        if moving.any():
            speed = float(np.min(np.asarray(max_velocity, float)[moving] / rate[moving]))
            accel = float(np.min(np.asarray(max_acceleration, float)[moving] / rate[moving]))
        v_tcp = tcp_speed if tcp_speed is not None else (None, None)
        a_tcp = tcp_accel if tcp_accel is not None else (None, None)
        for extent, limit_v, limit_a in ((length_m, v_tcp[0], a_tcp[0]),
                                         (rotation_rad, v_tcp[1], a_tcp[1])):
            if extent > 1e-12:
                if limit_v is not None:
                    speed = min(speed, limit_v / extent)
                if limit_a is not None:
                    accel = min(accel, limit_a / extent)
        self.profile: Optional[Trapezoid] = None
        if math.isfinite(speed) and math.isfinite(accel):
            self.profile = Trapezoid(speed, accel)
        self.duration = self.profile.duration_s if self.profile is not None else 0.0

    def position_at(self, t: float) -> np.ndarray:
        if self.profile is None or t >= self.duration:
            return self.goal.copy()
        x = self.profile.s_at(t) * (self.q.shape[0] - 1)
        k = min(int(x), self.q.shape[0] - 2)
        frac = x - k
        return self.q[k] + frac * (self.q[k + 1] - self.q[k])
