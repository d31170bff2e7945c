"""The supervisor's safety filter: every per-tick joint target becomes a command that is safe.

A pure function of (target, previous command, previous velocity, time since the previous
command): no clock, no ROS, no state between calls, so the supervisor, the offline replay and the
property tests run the same code. The caps hold between consecutive commands by the time between
their stamps, not by the nominal control period: a tick that runs late may move further, and the
one that follows it, on schedule and so closer to it, moves less.
It never raises for a bad *target* (that is the policy's output, the control path holds
instead); it raises ``ValueError`` only for a bad *previous* state, which is a caller bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ate_core.robot.config import SafetyConfig
from ate_core.robot.collision import LinkChain, capsule_clearance_below_m
from ate_core.robot.layout import BimanualLayout

__all__ = ["RULES", "Intervention", "FilterResult", "SafetyFilter"]

RULES = ("non_finite", "joint_limit", "gripper_range", "velocity", "acceleration",
         "workspace", "arm_distance")
_RULE = {rule: i for i, rule in enumerate(RULES)}

# Slack for re-checking the filter's own output (batched and single forward kinematics may
# differ in the last bits); far below anything physical.
_ROUNDING_M = 1e-9
_ROUNDING_RAD = 1e-9
# A target past a limit by less than this is clipped but not reported: float32 chunks put a
# limit such as the gripper's 0.07 m a few 1e-9 beyond it (an idle gripper held open would
# count an intervention every tick). Far below any resolution of the arms.
_REPORT_SLACK = 1e-6


@dataclass(frozen=True)
class Intervention:
    """A rule that changed (or would change) an arm's command."""

    rule: str  # one of RULES
    arm: str   # arm prefix, "left" / "right"


@dataclass(frozen=True)
class FilterResult:
    positions: np.ndarray  # float64 [J] in layout.joint_names order: the command
    velocities: np.ndarray  # float64 [J]: (positions - previous) / dt
    interventions: Tuple[Intervention, ...]  # each (rule, arm) at most once per call


class SafetyFilter:
    """Joint limits, velocity and acceleration caps, TCP workspace boxes and inter-arm clearance.

    Joint order is ``layout.joint_names``: per arm its joints, then its gripper (opening in m).
    ``lower``/``upper`` are the arm model's limits moved inwards by ``joint_margin_rad`` (the
    grippers: 0 .. ``gripper_max_opening_m``); ``max_velocity``/``max_acceleration`` are the
    rated values scaled by ``velocity_scale``/``acceleration_scale`` (the grippers:
    ``gripper_velocity_m_s``, no acceleration cap: RealMan's gripper takes position and speed
    only, its controller ramps on its own).
    """

    #: Fractions tried per round of the workspace / clearance search, and rounds: 31 points
    #: twice resolve a step to 1/1024 (the resolution of 10 bisections) in two batched
    #: forward-kinematics calls, and check the path, not only the end point.
    search_points = 31
    search_rounds = 2

    def __init__(self, layout: BimanualLayout, config: SafetyConfig, period_s: float,
                 gripper_max_opening_m: float) -> None:
        if not (np.isfinite(period_s) and period_s > 0.0):
            raise ValueError(f"SafetyFilter: period_s {period_s} must be a finite time > 0")
        if not (np.isfinite(gripper_max_opening_m) and gripper_max_opening_m > 0.0):
            raise ValueError(f"SafetyFilter: gripper_max_opening_m {gripper_max_opening_m} "
                             f"must be > 0")
        missing = [p for p in layout.prefixes if p not in config.workspace]
        if missing:
            raise ValueError(f"SafetyFilter: no workspace box for arms {missing} "
                             f"(supervisor.safety.workspace has {sorted(config.workspace)})")
        self.layout = layout
        self.config = config
        self.period_s = float(period_s)
        self.joint_names: Tuple[str, ...] = layout.joint_names
        self.prefixes: Tuple[str, ...] = layout.prefixes

        lower: List[float] = []
        upper: List[float] = []
        velocity: List[float] = []
        acceleration: List[float] = []
        gripper: List[bool] = []
        self._arm_joints: List[np.ndarray] = []  # indices of each arm's joints (no gripper)
        self._arm_span: List[slice] = []  # each arm's joints and gripper
        start = 0
        for arm in layout.arms:
            m = arm.model
            lower += [lo + config.joint_margin_rad for lo in m.lower_rad] + [0.0]
            upper += [hi - config.joint_margin_rad for hi in m.upper_rad] + [gripper_max_opening_m]
            velocity += [v * config.velocity_scale for v in m.max_velocity_rad_s]
            velocity.append(config.gripper_velocity_m_s)
            acceleration += [a * config.acceleration_scale for a in m.max_acceleration_rad_s2]
            acceleration.append(np.inf)
            gripper += [False] * m.dof + [True]
            self._arm_joints.append(np.arange(start, start + m.dof))
            self._arm_span.append(slice(start, start + m.dof + 1))
            start += m.dof + 1
        self.lower = np.array(lower)
        self.upper = np.array(upper)
        if np.any(self.lower > self.upper):
            bad = [n for n, lo, hi in zip(self.joint_names, lower, upper) if lo > hi]
            raise ValueError(f"SafetyFilter: joint_margin_rad {config.joint_margin_rad} leaves "
                             f"no range for {bad}")
        self.max_velocity = np.array(velocity)
        self.max_acceleration = np.array(acceleration)
        self._gripper = np.array(gripper)
        self._arm_starts = np.array([s.start for s in self._arm_span])
        self._joint_arm = np.repeat(np.arange(len(layout.arms)),
                                    [s.stop - s.start for s in self._arm_span])
        self._has_acc = np.isfinite(self.max_acceleration)
        acc = np.where(self._has_acc, self.max_acceleration, 1.0)
        self._acc = acc
        self._two_acc = 2.0 * acc

        # Arms of one model and tool share one forward-kinematics pass.
        by_kind: Dict[Tuple[object, object], List[int]] = {}
        for i, arm in enumerate(layout.arms):
            by_kind.setdefault((arm.model, arm.tcp), []).append(i)
        self._groups = [
            (LinkChain(layout.arms[ids[0]].model,
                       np.stack([layout.arms[i].mount.matrix() for i in ids]),
                       layout.arms[ids[0]].tcp.matrix()),
             ids, np.stack([self._arm_joints[i] for i in ids]))
            for ids in by_kind.values()]
        self._arm_joint_mask = np.zeros((len(layout.arms), len(self.joint_names)), dtype=bool)
        for i, idx in enumerate(self._arm_joints):
            self._arm_joint_mask[i, idx] = True
        boxes = [config.workspace[p] for p in self.prefixes]
        self._box_min = np.array([b.min_m for b in boxes])
        self._box_max = np.array([b.max_m for b in boxes])
        self._radius = float(config.link_radius_m)
        self._min_distance = float(config.min_arm_distance_m)
        self._pair = len(layout.arms) >= 2  # clearance between the first two arms
        self._grid = (np.arange(1, self.search_points + 1) / (self.search_points + 1))[:, None]

    # ------------------------------------------------------------------ public

    def clamp(self, target: np.ndarray, previous: np.ndarray,
              previous_velocity: np.ndarray, dt_s: Optional[float] = None) -> FilterResult:
        """The safe command for this tick, and which rules changed it.

        ``previous`` is the last command (the measured state when the supervisor starts),
        ``previous_velocity`` the last command's velocity (zeros at start), ``dt_s`` the time
        from the previous command's stamp to this one's (default: the nominal period). Every
        rate below is per ``dt_s``. The rules run in this order, and the order is the point:

        1. ``non_finite``: an arm whose target has a NaN/inf anywhere is given its previous
           command as target. Part of a corrupt prediction is not trusted; the later rules
           still apply, so a moving arm brakes within the acceleration cap instead of freezing.
        2. ``joint_limit`` / ``gripper_range``: the target is clipped into [lower, upper]
           (widened to include ``previous`` when the arm already stands outside, so it may
           come back but never goes further out, and never jumps in).
        3. ``velocity`` / ``acceleration``: the step is capped at ``max_velocity * dt`` and
           its velocity change at ``max_acceleration * dt``. The velocity towards a limit
           is also capped so that the joint can still stop at the limit while decelerating at
           ``max_acceleration`` (discrete braking distance ``v dt + v^2 / 2a``, which holds
           whatever the later ticks' ``dt``; counted as ``joint_limit``). Velocity and limits
           are hard and win when the acceleration cap cannot be met with them (only possible
           for an inconsistent ``previous_velocity``).
        4. ``workspace``: each arm's TCP must stay in its box, and 5. ``arm_distance``: the
           capsule clearance between the arms must stay >= ``min_arm_distance_m``. These are
           checked last, on the candidate that already respects the joint-space rules. A
           candidate that breaks them moves its arm (both arms for the clearance) only part
           of the step from ``previous``: up to the last fraction before the first one on the
           way that breaks the rule (searched at 1/32, then 1/1024 of the step), possibly
           none. Shortening a step keeps limits and the velocity cap (the command
           stays between two points that respect them) but may decelerate harder than the
           acceleration cap: a forced stop before a wall or the other arm is the safer
           failure. The grippers carry no geometry and keep their own step.

           If ``previous`` already breaks 4 or 5 (the robot started there), a candidate is
           accepted when it does not make it worse (TCP no further outside the box, clearance
           not smaller): the robot can always be moved back, never trapped.
        """
        target, prev, prev_v = self._inputs(target, previous, previous_velocity)
        dt = self.period_s if dt_s is None else float(dt_s)
        if not (np.isfinite(dt) and dt > 0.0):
            raise ValueError(f"SafetyFilter.clamp: dt_s {dt_s} must be a finite time > 0")
        acc_step = np.where(self._has_acc, self._acc * dt, np.inf)
        hits = np.zeros((len(RULES), len(self.prefixes)), dtype=bool)

        # 1. non-finite targets: that arm holds its previous command as target.
        finite = np.isfinite(target)
        if not finite.all():
            bad_arms = self._per_arm(~finite)
            for i in np.flatnonzero(bad_arms):
                span = self._arm_span[i]
                target[span] = prev[span]
            hits[_RULE["non_finite"]] = bad_arms

        # 2. position limits, widened to where the arm already is.
        lo = np.minimum(self.lower, prev)
        hi = np.maximum(self.upper, prev)
        q = np.clip(target, lo, hi)
        clipped = np.abs(q - target) > _REPORT_SLACK
        hits[_RULE["joint_limit"]] |= self._per_arm(clipped & ~self._gripper)
        hits[_RULE["gripper_range"]] |= self._per_arm(clipped & self._gripper)

        # 3. velocity, braking distance to the limits, acceleration.
        v_want = (q - prev) / dt
        v_max = self.max_velocity
        v = np.clip(v_want, -v_max, v_max)
        hits[_RULE["velocity"]] |= self._per_arm(v != v_want)
        brake_up = self._braking_velocity(hi - prev, acc_step)
        brake_down = self._braking_velocity(prev - lo, acc_step)
        v_braked = np.clip(v, -brake_down, brake_up)
        hits[_RULE["joint_limit"]] |= self._per_arm(v_braked != v)
        hard_lo = np.maximum(-v_max, -brake_down)  # <= 0 <= hard_hi: holding is always allowed
        hard_hi = np.minimum(v_max, brake_up)
        soft_lo = prev_v - acc_step
        soft_hi = prev_v + acc_step
        v_final = np.clip(v_braked, np.clip(soft_lo, hard_lo, hard_hi),
                          np.clip(soft_hi, hard_lo, hard_hi))
        hits[_RULE["acceleration"]] |= self._per_arm(v_final != v_braked)
        # Where the acceleration cap had to give way, name the hard rule that won.
        given_up_hi = soft_lo > hard_hi
        given_up_lo = soft_hi < hard_lo
        if given_up_hi.any() or given_up_lo.any():
            by_limit = (given_up_hi & (brake_up < v_max)) | (given_up_lo & (brake_down < v_max))
            hits[_RULE["joint_limit"]] |= self._per_arm(by_limit)
            hits[_RULE["velocity"]] |= self._per_arm((given_up_hi | given_up_lo) & ~by_limit)
        # Untouched joints keep the target bit for bit (no (q - p) / dt * dt + p rounding).
        q = np.where(v_final == v_want, q, np.clip(prev + v_final * dt, lo, hi))

        # 4, 5. Cartesian rules, on the candidate that respects the joint-space ones.
        q = self._cartesian(q, prev, hits)

        interventions = tuple(Intervention(RULES[r], self.prefixes[a])
                              for r, a in zip(*np.nonzero(hits)))
        return FilterResult(q, (q - prev) / dt, interventions)

    def approach(self, target: np.ndarray, previous: np.ndarray,
                 dt_s: Optional[float] = None) -> np.ndarray:
        """This tick's point on the way from ``previous`` to ``target`` from which the joint can
        still stop at ``target`` within the acceleration cap (the braking rule of the limits,
        with the target as the limit). :meth:`clamp` only caps a step target, and a joint that
        reaches it at speed overshoots; a target stream that may step (a teleop leader) goes
        through this first, and is then reached without overshoot. Non-finite targets stay
        non-finite, for :meth:`clamp` to count."""
        dt = self.period_s if dt_s is None else float(dt_s)
        target = np.asarray(target, dtype=np.float64)
        previous = np.asarray(previous, dtype=np.float64)
        distance = target - previous
        speed = self._braking_velocity(np.abs(distance), np.where(self._has_acc, self._acc * dt,
                                                                  np.inf))
        with np.errstate(invalid="ignore"):
            step = np.where(np.abs(distance) <= speed * dt, distance,
                            np.sign(distance) * speed * dt)
        return previous + step

    def violations(self, positions: np.ndarray) -> Tuple[Intervention, ...]:
        """The static rules a configuration breaks (non_finite, joint_limit, gripper_range,
        workspace, arm_distance), e.g. to check a starting state. An arm with a non-finite
        value is reported as ``non_finite`` only."""
        q = self._vector(positions, "positions")
        hits = np.zeros((len(RULES), len(self.prefixes)), dtype=bool)
        finite_arms = ~self._per_arm(~np.isfinite(q))
        hits[_RULE["non_finite"]] = ~finite_arms
        with np.errstate(invalid="ignore"):
            outside = (q < self.lower - _ROUNDING_RAD) | (q > self.upper + _ROUNDING_RAD)
        hits[_RULE["joint_limit"]] = self._per_arm(outside & ~self._gripper) & finite_arms
        hits[_RULE["gripper_range"]] = self._per_arm(outside & self._gripper) & finite_arms
        out, clearance = self._measure(np.where(np.isfinite(q), q, 0.0)[None])
        hits[_RULE["workspace"]] = (out[0] > _ROUNDING_M) & finite_arms
        if (self._pair and finite_arms[:2].all()
                and clearance[0] < self._min_distance - _ROUNDING_M):
            hits[_RULE["arm_distance"], :2] = True
        return tuple(Intervention(RULES[r], self.prefixes[a]) for r, a in zip(*np.nonzero(hits)))

    # ------------------------------------------------------------------ joint space

    def _vector(self, values: np.ndarray, name: str) -> np.ndarray:
        out = np.array(values, dtype=np.float64)  # a copy: callers keep theirs
        if out.shape != (len(self.joint_names),):
            raise ValueError(f"SafetyFilter: {name} has shape {out.shape}, expected "
                             f"{len(self.joint_names)} ({', '.join(self.joint_names)})")
        return out

    def _inputs(self, target: np.ndarray, previous: np.ndarray,
                previous_velocity: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        target = self._vector(target, "target")
        prev = self._vector(previous, "previous")
        prev_v = self._vector(previous_velocity, "previous_velocity")
        for name, values in (("previous", prev), ("previous_velocity", prev_v)):
            bad = ~np.isfinite(values)
            if bad.any():
                joints = [n for n, b in zip(self.joint_names, bad) if b]
                raise ValueError(f"SafetyFilter.clamp: {name} is not finite for {joints}")
        return target, prev, prev_v

    def _per_arm(self, mask: np.ndarray) -> np.ndarray:
        """Any per arm, ``[J] bool -> [arms] bool``."""
        return np.logical_or.reduceat(mask, self._arm_starts)

    def _braking_velocity(self, distance: np.ndarray, acc_step: np.ndarray) -> np.ndarray:
        """Largest velocity towards a limit ``distance`` away that can still stop there.

        After this tick the joint is ``v dt`` closer, and braking at ``a`` per tick then covers
        at most ``v^2 / 2a``; ``v dt + v^2 / 2a <= D`` solved for v, written without the
        cancellation of ``-a dt + sqrt((a dt)^2 + 2 a D)``. A state that satisfies it keeps a
        successor that does at ``v - a dt'`` for any next period ``dt'`` (the left side drops
        by ``a dt'^2 / 2``), so braking never needs more than ``a``, however the ticks fall.
        """
        d = np.maximum(distance, 0.0)
        a_dt = np.where(self._has_acc, acc_step, 1.0)
        v = self._two_acc * d / (a_dt + np.sqrt(a_dt * a_dt + self._two_acc * d))
        return np.where(self._has_acc, v, np.inf)

    # ------------------------------------------------------------------ Cartesian space

    def _measure(self, q: np.ndarray,
                 with_clearance: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """Box excess per arm ``[B, arms]`` (m, 0 inside) and clearance ``[B]`` of ``[B, J]``."""
        points: List[np.ndarray] = [np.empty(0)] * len(self.prefixes)
        for chain, ids, joints in self._groups:
            group = chain.points(q[:, joints])  # [B, arms in group, P, 3]
            for k, i in enumerate(ids):
                points[i] = group[:, k]
        tcp = np.stack([p[:, -1] for p in points], axis=1)
        gap = np.maximum(np.maximum(self._box_min - tcp, 0.0), tcp - self._box_max)
        out = np.sqrt(np.einsum("...i,...i->...", gap, gap))
        if self._pair and with_clearance:
            # Exact below min_arm_distance_m, where every rule compares it; above, a bound
            # that is above it too (the same decisions, for much less work away from it).
            clearance = capsule_clearance_below_m(points[0], points[1], self._radius,
                                                  self._min_distance)
        else:
            clearance = np.full(q.shape[0], np.inf)
        return out, clearance

    def _largest_fractions(self, feasible: Callable[[np.ndarray], np.ndarray],
                           active: np.ndarray) -> np.ndarray:
        """Per column, the largest fraction in [0, 1] before the first one ``feasible`` rejects.

        ``feasible`` maps fractions ``[N, C]`` to ``[N, C]`` bool, column by column; 0 is known
        feasible (the previous command) and 1 not (the candidate). Each round evaluates a batch
        of fractions between the last good and the first bad one; inactive columns stay at 1.
        """
        columns = np.arange(active.size)
        good = np.zeros(active.size)
        bad = np.ones(active.size)
        for _ in range(self.search_rounds):
            fractions = np.where(active, good + (bad - good) * self._grid, 1.0)
            rejected = ~feasible(fractions)
            first = np.argmax(rejected, axis=0)
            hit = rejected[first, columns]
            before = np.where(first > 0, fractions[first - 1, columns], good)
            good, bad = (np.where(hit, before, fractions[-1]),
                         np.where(hit, fractions[first, columns], bad))
        return np.where(active, good, 1.0)

    def _cartesian(self, q: np.ndarray, prev: np.ndarray, hits: np.ndarray) -> np.ndarray:
        out, clearance = self._measure(np.stack([q, prev]))
        if not out[0].any() and clearance[0] >= self._min_distance:
            return q  # the common case: one forward-kinematics pass

        # Limits relaxed to where the robot already is, so it is never trapped outside.
        out_limit = out[1]
        clearance_limit = min(self._min_distance, float(clearance[1]))
        step = q - prev
        candidate_clearance = clearance[0]

        # 4. workspace: shorten the step of each arm whose TCP would leave its box; one batch
        # searches every such arm at once (an arm's box depends on its own joints only).
        leaving = out[0] > out_limit
        if leaving.any():
            moving = self._arm_joint_mask[leaving].any(axis=0)

            def inside(fractions: np.ndarray) -> np.ndarray:
                per_joint = fractions[:, self._joint_arm]
                batch = np.where(moving, prev + per_joint * step, q)
                return self._measure(batch, with_clearance=False)[0] <= out_limit

            per_joint = self._largest_fractions(inside, leaving)[self._joint_arm]
            q = np.where(moving, prev + per_joint * step, q)
            hits[_RULE["workspace"]] |= leaving
            step = q - prev
            candidate_clearance = self._measure(q[None])[1][0]

        # 5. clearance between the first two arms: shorten both steps together, keeping 4.
        if self._pair and candidate_clearance < clearance_limit:
            moving = self._arm_joint_mask[:2].any(axis=0)

            def apart(fractions: np.ndarray) -> np.ndarray:
                batch = np.where(moving, prev + fractions * step, q)
                batch_out, batch_clearance = self._measure(batch)
                return ((batch_clearance >= clearance_limit)
                        & np.all(batch_out <= out_limit, axis=-1))[:, None]

            fraction = self._largest_fractions(apart, np.ones(1, dtype=bool))[0]
            q = np.where(moving, prev + fraction * step, q)
            hits[_RULE["arm_distance"], :2] = True
        return q
