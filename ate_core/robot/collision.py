"""Capsule model of the two arms: how close their links come to each other.

Every link is a capsule around the segment between consecutive MDH frame origins (plus the
arm's mount origin below joint 1 and the TCP after the flange), all with one radius. That is
coarse, but cheap enough for every control tick and for batches of candidate configurations,
and conservative as long as the radius covers each link's cross-section: capsules that stay
apart keep the links inside them apart. A tool beyond the flange is covered only as far as the
TCP offset reaches along it.

For RM75-B several frame origins coincide for every joint angle (rows with a = 0 and d = 0:
frames 1/2, 3/4, 5/6). Those points are dropped from the chain once, from the MDH table, so the
number of segments of an arm never depends on its configuration and batches keep one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Tuple

import numpy as np

from ate_core.robot.layout import ArmPlacement, BimanualLayout
from ate_core.robot.models import ArmModel

__all__ = ["segment_distance", "LinkChain", "arm_points", "arm_segments", "capsule_clearance_m",
           "capsule_clearance_below_m", "CapsuleModel"]

# Squared length (m^2) below which a segment is a point. Only lengths whose square underflows:
# every longer segment is exact through the general formula, whose divisions stay finite.
_DEGENERATE_M2 = 1e-300
# sin^2 of the angle below which two segments count as parallel (about 1e-5 rad).
_PARALLEL_SIN2 = 1e-10


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", u, v)


def segment_distance(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray,
                     q1: np.ndarray) -> np.ndarray:
    """Closest distance between segments p0-p1 and q0-q1, ``[..., 3]`` each (broadcast) -> ``[...]``.

    Ericson, Real-Time Collision Detection, 5.1.9, without branches; zero-length segments
    reduce to point-segment (or point-point) distances. Two (nearly) parallel segments have no
    single closest pair: their distance is the least of the four end-to-segment distances (the
    distance is convex in the two parameters, so its minimum off the interior critical point
    lies on an edge), which is exact for any tilt and the same in either order of the segments.
    """
    p0, p1, q0, q1 = (np.asarray(x, dtype=np.float64) for x in (p0, p1, q0, q1))
    d1 = p1 - p0
    d2 = q1 - q0
    r = p0 - q0
    a = _dot(d1, d1)
    e = _dot(d2, d2)
    b = _dot(d1, d2)
    c = _dot(d1, r)
    f = _dot(d2, r)
    p_point = a <= _DEGENERATE_M2
    q_point = e <= _DEGENERATE_M2
    degenerate = p_point.any() or q_point.any()
    if degenerate:
        a = np.where(p_point, 1.0, a)
        e = np.where(q_point, 1.0, e)
    denom = a * e - b * b
    parallel = denom <= _PARALLEL_SIN2 * a * e
    s = np.where(parallel, 0.0, np.clip((b * f - c * e) / np.where(parallel, 1.0, denom),
                                        0.0, 1.0))
    t = (b * s + f) / e
    s = np.where(t < 0.0, np.clip(-c / a, 0.0, 1.0),
                 np.where(t > 1.0, np.clip((b - c) / a, 0.0, 1.0), s))
    t = np.clip(t, 0.0, 1.0)
    if degenerate:
        # A point against a segment: project it; two points: their distance.
        s = np.where(p_point, 0.0, np.where(q_point, np.clip(-c / a, 0.0, 1.0), s))
        t = np.where(q_point, 0.0, np.where(p_point, np.clip(f / e, 0.0, 1.0), t))
    gap = r + s[..., None] * d1 - t[..., None] * d2
    distance = np.sqrt(_dot(gap, gap))
    if np.any(parallel):  # only those pairs: at home every vertical link pair is parallel
        shape = distance.shape
        which = np.broadcast_to(parallel, shape)
        p0, p1, q0, q1, d1, d2 = (np.broadcast_to(x, shape + (3,))[which]
                                  for x in (p0, p1, q0, q1, d1, d2))
        a, e = (np.broadcast_to(x, shape)[which] for x in (a, e))
        distance = np.array(distance)
        distance[which] = np.minimum(
            np.minimum(_point_segment(p0, q0, d2, e), _point_segment(p1, q0, d2, e)),
            np.minimum(_point_segment(q0, p0, d1, a), _point_segment(q1, p0, d1, a)))
        distance = distance[()]
    return distance


def _point_segment(x: np.ndarray, start: np.ndarray, direction: np.ndarray,
                   length2: np.ndarray) -> np.ndarray:
    """Distance from x to the segment start + u direction, u in [0, 1] (length2 > 0 given)."""
    u = np.clip(_dot(x - start, direction) / length2, 0.0, 1.0)
    gap = x - start - u[..., None] * direction
    return np.sqrt(_dot(gap, gap))


class LinkChain:
    """The capsule axis of one arm model: mount origin, the distinct MDH frame origins, the TCP.

    Several arms of the same model and tool (``mounts`` ``[n, 4, 4]``) are evaluated in one
    pass, and the constants are prepared once, so the safety filter can run it every tick and
    on batches of candidates. Forward kinematics here keeps only what the points need: in MDH
    the origin of frame i sits at a constant offset ``(a, -sin(alpha) d, cos(alpha) d)`` in
    frame i-1, whatever q_i is, so each joint costs one rotation product and one offset.
    """

    def __init__(self, model: ArmModel, mounts: np.ndarray, tool: np.ndarray) -> None:
        self.model = model
        mounts = np.asarray(mounts, dtype=np.float64)
        self._base_rotation = mounts[..., :3, :3]
        self._base_origin = mounts[..., :3, 3]
        self._tool_offset = np.asarray(tool, dtype=np.float64)[:3, 3].copy()
        alpha = np.array([j.alpha_rad for j in model.mdh])
        # cos(+-pi/2) is 6e-17, not 0: snapped as in ate_core.robot.kinematics.
        self._ca = np.where(np.abs(np.cos(alpha)) < 1e-15, 0.0, np.cos(alpha))
        self._sa = np.where(np.abs(np.sin(alpha)) < 1e-15, 0.0, np.sin(alpha))
        a = np.array([j.a_m for j in model.mdh])
        d = np.array([j.d_m for j in model.mdh])
        self._offset = np.array([j.offset_rad for j in model.mdh])
        self._origin_step = np.stack([a, -self._sa * d, self._ca * d], axis=-1)  # [dof, 3]
        # Point i (mount, frames 1..dof, TCP) coincides with point i-1 for every q when the
        # transform between them has no translation: MDH a_{i-1} = d_i = 0, or a zero TCP offset.
        self._keep_frame = [bool(np.any(step != 0.0)) for step in self._origin_step]
        self._keep_tcp = bool(np.any(self._tool_offset != 0.0))
        self.num_points = 1 + sum(self._keep_frame) + int(self._keep_tcp)

    @classmethod
    def of_arm(cls, arm: ArmPlacement) -> "LinkChain":
        return cls(arm.model, arm.mount.matrix(), arm.tcp.matrix())

    def points(self, q_rad: np.ndarray) -> np.ndarray:
        """World positions of the chain's points, ``[..., dof] -> [..., P, 3]``; the last is the TCP.

        With ``n`` mounts, ``q_rad`` is ``[..., n, dof]`` and the result ``[..., n, P, 3]``.
        """
        q = np.asarray(q_rad, dtype=np.float64)
        dof = self.model.dof
        if q.ndim == 0 or q.shape[-1] != dof:
            raise ValueError(f"{self.model.name}: expected joint angles of shape [..., {dof}], "
                             f"got {q.shape}")
        theta = q + self._offset
        ct, st = np.cos(theta), np.sin(theta)
        # Rx(alpha_{i-1}) Rz(theta_i) for every joint at once.
        joint = np.empty(q.shape + (3, 3))
        joint[..., 0, 0] = ct
        joint[..., 0, 1] = -st
        joint[..., 0, 2] = 0.0
        joint[..., 1, 0] = self._ca * st
        joint[..., 1, 1] = self._ca * ct
        joint[..., 1, 2] = -self._sa
        joint[..., 2, 0] = self._sa * st
        joint[..., 2, 1] = self._sa * ct
        joint[..., 2, 2] = self._ca
        rotation = np.broadcast_to(self._base_rotation, q.shape[:-1] + (3, 3))
        origin = np.broadcast_to(self._base_origin, q.shape[:-1] + (3,))
        points = [origin]
        for i in range(dof):
            if self._keep_frame[i]:
                origin = origin + rotation @ self._origin_step[i]
                points.append(origin)
            if i < dof - 1 or self._keep_tcp:
                rotation = rotation @ joint[..., i, :, :]
        if self._keep_tcp:
            points.append(origin + rotation @ self._tool_offset)
        return np.stack(points, axis=-2)


def arm_points(arm: ArmPlacement, q_rad: np.ndarray) -> np.ndarray:
    """World positions of an arm's distinct chain points, ``[..., dof] -> [..., P, 3]`` (TCP last)."""
    return LinkChain.of_arm(arm).points(q_rad)


def arm_segments(arm: ArmPlacement, q_rad: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of an arm's link segments in the world frame, ``[..., K, 3]`` each.

    K is fixed per arm model (zero-length links are never part of it), so ``q_rad`` may be one
    configuration ``[dof]`` or a batch ``[B, dof]``.
    """
    points = arm_points(arm, q_rad)
    return points[..., :-1, :], points[..., 1:, :]


def capsule_clearance_m(points_a: np.ndarray, points_b: np.ndarray,
                        radius_m: float) -> np.ndarray:
    """Least surface distance between two capsule chains, ``[..., Pa, 3]``, ``[..., Pb, 3]`` -> ``[...]``."""
    starts_a, ends_a = points_a[..., :-1, None, :], points_a[..., 1:, None, :]
    starts_b, ends_b = points_b[..., None, :-1, :], points_b[..., None, 1:, :]
    distances = segment_distance(starts_a, ends_a, starts_b, ends_b)
    return distances.min(axis=(-2, -1)) - 2.0 * radius_m


def capsule_clearance_below_m(points_a: np.ndarray, points_b: np.ndarray, radius_m: float,
                              threshold_m: float) -> np.ndarray:
    """:func:`capsule_clearance_m` where it is below ``threshold_m``; elsewhere some value
    between ``threshold_m`` and it. Every comparison with a limit at or below the threshold
    therefore comes out as with the exact clearance, for a fraction of the work: two segments
    are at least as far apart as their midpoints less their half-lengths, and only the pairs
    that bound cannot put beyond the threshold are measured (at home, none of them)."""
    starts_a, ends_a = points_a[..., :-1, None, :], points_a[..., 1:, None, :]
    starts_b, ends_b = points_b[..., None, :-1, :], points_b[..., None, 1:, :]
    mid_a, mid_b = 0.5 * (starts_a + ends_a), 0.5 * (starts_b + ends_b)
    half_a = 0.5 * np.sqrt(_dot(ends_a - starts_a, ends_a - starts_a))
    half_b = 0.5 * np.sqrt(_dot(ends_b - starts_b, ends_b - starts_b))
    gap = mid_a - mid_b
    distances = np.sqrt(_dot(gap, gap)) - half_a - half_b  # a lower bound per pair
    near = distances - 2.0 * radius_m < threshold_m
    if near.any():
        shape = distances.shape + (3,)
        distances[near] = segment_distance(*(np.broadcast_to(x, shape)[near]
                                             for x in (starts_a, ends_a, starts_b, ends_b)))
    return distances.min(axis=(-2, -1)) - 2.0 * radius_m


@dataclass(frozen=True)
class CapsuleModel:
    """Every link of both arms as a capsule of ``radius_m`` around its segment."""

    radius_m: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.radius_m) and self.radius_m >= 0.0):
            raise ValueError(f"CapsuleModel.radius_m: {self.radius_m} must be finite and >= 0")

    def clearances_m(self, layout: BimanualLayout,
                     q_by_prefix: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`clearance_m` for batches: joint angles ``[..., dof]`` per arm -> ``[...]``."""
        if len(layout.arms) < 2:
            raise ValueError(f"CapsuleModel: needs two arms, the layout has {list(layout.prefixes)}")
        first, second = layout.arms[:2]
        missing = [arm.prefix for arm in (first, second) if arm.prefix not in q_by_prefix]
        if missing:
            raise KeyError(f"CapsuleModel: no joint angles for arms {missing}")
        return capsule_clearance_m(arm_points(first, q_by_prefix[first.prefix]),
                                   arm_points(second, q_by_prefix[second.prefix]),
                                   self.radius_m)

    def clearance_m(self, layout: BimanualLayout, q_by_prefix: Mapping[str, np.ndarray]) -> float:
        """Least distance between the capsule surfaces of the layout's first two arms (m).

        Negative when they interpenetrate (by that much). One configuration per arm; given
        batches, the least over the batch.
        """
        return float(np.min(self.clearances_m(layout, q_by_prefix)))
