"""Pure motion model of one RealMan arm controller and its gripper, for the emulator.

The emulator owns the sockets and the clock; this module only integrates. Every method takes
the time it needs (`dt`, `now`) as an argument, so the same model runs under the emulator's
5 ms tick, in unit tests and under hypothesis with arbitrary step sizes.

One tracker moves the joints in every mode: each step it follows a reference position under
the arm model's per-joint velocity and acceleration limits and never runs past a joint limit.
What differs between modes is only how the reference is produced:

- pass-through (`movej_canfd`, low follow): the reference is interpolated from the previous
  target to the new one over the measured stream period, so a 100 Hz stream is followed
  smoothly one period behind (RealMan's 3.7.3+ "online planner" for low follow);
- pass-through, high follow: the reference jumps to each target (the controller hands targets
  straight to the joints); the tracker still enforces the limits;
- planned `movej`: a synchronised trapezoid in joint space at `v` percent of the speed limit;
  planned Cartesian motions (`realman_cartesian`) run joint paths on the same kind of profile,
  segments back to back (`run_paths`);
- hold: the reference stays where the arm is.

`set_arm_stop` zeroes the velocity at once (that is what the controller's quick stop does);
`set_arm_slow_stop` decelerates every joint to rest together, along the current direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, List, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot.cartesian_path import TimedJointPath
from ate_core.robot.models import GRIPPER_MAX_OPENING_M, ArmModel

#: System error "target angle over limit" (RealMan errorList 0x1002), raised when a target
#: lies outside the joint range; it stays in `err` until `clear_system_err`.
ERR_TARGET_OVER_LIMIT = 0x1002
#: The planned motions' `arm_current_status` and their `get_arm_current_trajectory` type.
PLANNED_TYPES = {"move_J": "movej", "move_L": "movel", "move_C": "movec", "move_S": "moves"}

#: `device` field of the controller's `current_trajectory_state` completion event.
ARM_DEVICE = 0
GRIPPER_DEVICE = 1

#: A pass-through target arriving later than this after the previous one starts a new stream:
#: the old period estimate no longer says anything about the sender's rate.
STREAM_RESTART_GAP_S = 0.1
#: After the last pass-through target, the arm reports `idle` again once it rests this long.
THROUGH_IDLE_AFTER_S = 0.2
#: A planned move counts as arrived (completion event sent) inside these tolerances.
ARRIVAL_TOLERANCE_RAD = 1e-5
ARRIVAL_SPEED_RAD_S = 1e-3
#: Planned moves use slightly less than the acceleration limit so that the tracker's
#: corrections (rounding, a move started while the arm still moves) stay within the limit.
PLAN_ACCELERATION_FRACTION = 0.9

#: Gripper wire range and speed: RealMan's 1..1000 position spans 0..70 mm of opening;
#: `speed` 1..1000 is dimensionless. The emulator maps speed 1000 to a full stroke in 0.5 s.
GRIPPER_WIRE_MIN = 1
GRIPPER_WIRE_MAX = 1000
GRIPPER_DEFAULT_SPEED = 500
GRIPPER_WIRE_PER_S_PER_SPEED = 2.0


class ArmStatus:
    """The `arm_current_status` strings of the UDP push (udpConfig.md) this model produces."""

    IDLE = "idle"
    MOVE_J = "move_J"
    MOVE_L = "move_L"
    MOVE_C = "move_C"
    MOVE_S = "move_S"
    MOVE_THROUGH_JOINT = "move_through_joint"
    STOP = "stop"
    SLOW_STOP = "slow_stop"
    DRAG = "current_drag"


class GripperMode:
    """`get_gripper_state.mode` values (RealMan json/endTool.md)."""

    OPEN_IDLE = 1
    CLOSED_IDLE = 2
    STOPPED_IDLE = 3
    CLOSING = 4
    OPENING = 5
    FORCE_STOPPED = 6


@dataclass(frozen=True)
class Arrival:
    """A planned motion reached its goal: the controller's `current_trajectory_state` event.

    `tag` is whatever the caller passed with the command (the emulator passes the connection
    that asked, because the event goes back on that connection).
    """

    device: int
    tag: Hashable


def _stopping_speed(distance: np.ndarray, accel: np.ndarray, dt: float) -> np.ndarray:
    """Highest speed from which a discrete arm (speed changes by at most accel*dt per step,
    then moves speed*dt) still stops within `distance`, and never passes it in one step.

    Moving at m*accel*dt covers accel*dt^2*m(m+1)/2 before rest; solving for m gives the
    bound. The continuous sqrt(2*a*d) would overshoot by up to a step at 5 ms.
    """
    d = np.maximum(distance, 0.0)
    adt = accel * dt
    m = np.sqrt(0.25 + 2.0 * d / (accel * dt * dt)) - 0.5
    return np.minimum(adt * m, d / dt)


def speed_fraction(speed_percent: float) -> float:
    """A command's `v` (percent) as the fraction of the limits a planned move runs at."""
    return min(max(float(speed_percent), 1.0), 100.0) / 100.0


def _mdh_flange_transform(model: ArmModel, q_rad: np.ndarray) -> np.ndarray:
    """Base-to-flange transform of the modified DH chain, T_i = RotX(alpha) Tx(a) RotZ(q+off) Tz(d).

    Kept private and minimal on purpose: the emulator needs a flange pose for its push and
    `current_arm_state`; the project's kinematics live in `ate_core.robot`.
    """
    t = np.eye(4)
    for joint, q in zip(model.mdh, q_rad):
        ca, sa = math.cos(joint.alpha_rad), math.sin(joint.alpha_rad)
        ct, st = math.cos(q + joint.offset_rad), math.sin(q + joint.offset_rad)
        link = np.array([
            [ct, -st, 0.0, joint.a_m],
            [st * ca, ct * ca, -sa, -sa * joint.d_m],
            [st * sa, ct * sa, ca, ca * joint.d_m],
            [0.0, 0.0, 0.0, 1.0],
        ])
        t = t @ link
    return t


def _euler_xyz(r: np.ndarray) -> Tuple[float, float, float]:
    """RealMan's (rx, ry, rz): fixed-axis X-Y-Z angles, R = Rz(rz) Ry(ry) Rx(rx)."""
    ry = math.atan2(-r[2, 0], math.hypot(r[0, 0], r[1, 0]))
    rx = math.atan2(r[2, 1], r[2, 2])
    rz = math.atan2(r[1, 0], r[0, 0])
    return rx, ry, rz


def _quaternion_wxyz(r: np.ndarray) -> Tuple[float, float, float, float]:
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0.0:
        s = 2.0 * math.sqrt(trace + 1.0)
        w, x, y, z = 0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        w, x, y, z = (r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        w, x, y, z = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        w, x, y, z = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s
    if w < 0.0:
        w, x, y, z = -w, -x, -y, -z
    return float(w), float(x), float(y), float(z)


@dataclass(frozen=True)
class FlangePose:
    """Flange pose in the base frame, in the forms the controller reports."""

    position_m: Tuple[float, float, float]
    euler_rad: Tuple[float, float, float]
    quaternion_wxyz: Tuple[float, float, float, float]


def flange_pose(model: ArmModel, q_rad: np.ndarray) -> FlangePose:
    """The flange pose at joint angles `q_rad`, as the controller reports it."""
    return reported_pose(_mdh_flange_transform(model, np.asarray(q_rad, dtype=float)))


def reported_pose(t: np.ndarray) -> FlangePose:
    """A 4x4 pose in the forms the controller reports."""
    p = t[:3, 3]
    return FlangePose((float(p[0]), float(p[1]), float(p[2])), _euler_xyz(t[:3, :3]),
                      _quaternion_wxyz(t[:3, :3]))


class ArmMotion:
    """Joint motion of one arm under its controller's limits (not thread-safe; the emulator
    serialises access)."""

    def __init__(self, model: ArmModel, initial_joints_rad: Optional[Sequence[float]] = None) -> None:
        self.model = model
        n = model.dof
        self._lower = np.asarray(model.lower_rad, dtype=float)
        self._upper = np.asarray(model.upper_rad, dtype=float)
        self._vmax = np.asarray(model.max_velocity_rad_s, dtype=float)
        self._amax = np.asarray(model.max_acceleration_rad_s2, dtype=float)
        q0 = np.zeros(n) if initial_joints_rad is None else np.asarray(initial_joints_rad, float)
        if q0.shape != (n,):
            raise ValueError(f"{model.name}: initial joints need {n} values, got {q0.size}")
        if not self.within_limits(q0):
            raise ValueError(f"{model.name}: initial joints {np.degrees(q0).round(3).tolist()} deg "
                             f"lie outside the joint limits")
        self._q = q0.copy()
        self._v = np.zeros(n)
        self._ref = q0.copy()
        self._status = ArmStatus.IDLE
        self._errors: List[int] = []
        self._powered = True
        # pass-through stream
        self._seg_from = q0.copy()
        self._seg_to = q0.copy()
        self._seg_duration_s = 0.0
        self._seg_elapsed_s = 0.0
        self._last_stream_now: Optional[float] = None
        self._stream_period_s: Optional[float] = None
        self._since_stream_s = 0.0
        # planned move: segments run back to back (trajectory_connect), the arrival after the last
        self._move: Optional[TimedJointPath] = None
        self._queue: List[Tuple[TimedJointPath, str]] = []
        self._move_elapsed_s = 0.0
        self._move_tag: Hashable = None
        # slow stop: per-joint deceleration that brings all joints to rest together
        self._slow_decel = np.zeros(n)
        # drag teaching: where the hand pulls the arm, and the joints recorded every step
        self._hand: Optional[np.ndarray] = None
        self._recording: Optional[List[np.ndarray]] = None
        self.recorded: List[np.ndarray] = []

    # ---- state -------------------------------------------------------------------------
    @property
    def joints_rad(self) -> np.ndarray:
        return self._q.copy()

    @property
    def velocities_rad_s(self) -> np.ndarray:
        return self._v.copy()

    @property
    def status(self) -> str:
        return self._status

    @property
    def errors(self) -> Tuple[int, ...]:
        return tuple(self._errors)

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def planned_move_active(self) -> bool:
        """True while a planned move runs: the controller then reports its trajectory type."""
        return self._move is not None

    @property
    def planned_type(self) -> str:
        """`get_arm_current_trajectory`'s type: movej, movel, movec, moves or none."""
        return PLANNED_TYPES.get(self._status, "none") if self._move is not None else "none"

    @property
    def vmax_rad_s(self) -> np.ndarray:
        return self._vmax.copy()

    @property
    def plan_acceleration_rad_s2(self) -> np.ndarray:
        """What a planned move accelerates at, at most."""
        return self._amax * PLAN_ACCELERATION_FRACTION

    def within_limits(self, q_rad: np.ndarray) -> bool:
        eps = 1e-9
        return bool(np.all(np.isfinite(q_rad)) and np.all(q_rad >= self._lower - eps)
                    and np.all(q_rad <= self._upper + eps))

    def flange_pose(self) -> FlangePose:
        return flange_pose(self.model, self._q)

    # ---- errors and power ----------------------------------------------------------------
    def raise_error(self, code: int) -> None:
        """Latch a system error code; like the controller, each code is listed once."""
        if code and code not in self._errors:
            self._errors.append(int(code))

    def clear_errors(self) -> None:
        self._errors.clear()

    def set_powered(self, powered: bool) -> None:
        """Power off stops the arm where it is; nothing moves until power is back."""
        if not powered:
            self.stop()
        self._powered = bool(powered)

    # ---- commands --------------------------------------------------------------------------
    def _checked_target(self, target_rad: Sequence[float]) -> Optional[np.ndarray]:
        target = np.asarray(target_rad, dtype=float)
        if target.shape != (self.model.dof,):
            return None
        if not self.within_limits(target):
            # The controller refuses the target, keeps doing what it did, and latches 0x1002.
            self.raise_error(ERR_TARGET_OVER_LIMIT)
            return None
        return target

    def stream(self, target_rad: Sequence[float], now: float, follow: bool = False) -> bool:
        """Accept one pass-through (`movej_canfd`) target received at `now` (seconds, any
        monotonic origin). Returns False when the target is refused."""
        if not self._powered or self._status == ArmStatus.DRAG:
            return False
        target = self._checked_target(target_rad)
        if target is None:
            return False
        gap = None if self._last_stream_now is None else now - self._last_stream_now
        self._last_stream_now = now
        if gap is None or gap > STREAM_RESTART_GAP_S or gap <= 0.0:
            self._stream_period_s = None
        else:
            # Smoothed, because targets arrive with the sender's and the network's jitter.
            self._stream_period_s = gap if self._stream_period_s is None else \
                0.7 * self._stream_period_s + 0.3 * gap
        if follow or self._stream_period_s is None:
            duration = 0.0
        else:
            duration = min(max(self._stream_period_s, 0.001), STREAM_RESTART_GAP_S)
        if self._status != ArmStatus.MOVE_THROUGH_JOINT:
            # Taking over from rest, a planned move or a stop: start from where the arm is.
            self._move = None
            self._queue = []
            self._ref = self._q.copy()
        self._seg_from = self._ref.copy()
        self._seg_to = target
        self._seg_duration_s = duration
        self._seg_elapsed_s = 0.0
        self._since_stream_s = 0.0
        self._status = ArmStatus.MOVE_THROUGH_JOINT
        return True

    def move_joints(self, target_rad: Sequence[float], speed_percent: float,
                    tag: Hashable = None) -> bool:
        """Plan a blocking-style `movej` at `speed_percent` of each joint's speed limit.
        A new plan replaces a running one; the replaced move never reports arrival."""
        if not self._powered or self._status == ArmStatus.DRAG:
            return False
        target = self._checked_target(target_rad)
        if target is None:
            return False
        fraction = speed_fraction(speed_percent)
        return self.run_paths([(TimedJointPath(np.stack([self._q, target]), self._vmax * fraction,
                                               self.plan_acceleration_rad_s2), ArmStatus.MOVE_J)],
                              tag)

    def run_paths(self, segments: Sequence[Tuple[TimedJointPath, str]], tag: Hashable = None) -> bool:
        """Run planned segments back to back from where the arm is (each one's first point is
        the one before's last; the first's is the arm's joints), each reporting its status
        (`ArmStatus.MOVE_J`/`MOVE_L`/`MOVE_C`/`MOVE_S`); one arrival after the last. Replaces a
        running plan, which then never reports arrival."""
        if not self._powered or not segments or self._status == ArmStatus.DRAG:
            return False
        for path, status in segments:
            if status not in PLANNED_TYPES or not self.within_limits(path.q.min(axis=0)) \
                    or not self.within_limits(path.q.max(axis=0)):
                return False
        self._move, self._status = segments[0]
        self._queue = list(segments[1:])
        self._move_elapsed_s = 0.0
        self._move_tag = tag
        self._ref = self._q.copy()
        return True

    def stop(self) -> None:
        """Quick stop: velocity zero now, planned move and pass-through target dropped."""
        self._v[:] = 0.0
        self._ref = self._q.copy()
        self._move = None
        self._queue = []
        self._last_stream_now = None
        self._stream_period_s = None
        self._status = ArmStatus.STOP

    def slow_stop(self) -> None:
        """Decelerate all joints to rest together (same direction, limits respected)."""
        self._move = None
        self._queue = []
        self._last_stream_now = None
        self._stream_period_s = None
        speed = np.abs(self._v)
        t_stop = float(np.max(speed / self._amax)) if np.any(speed > 0) else 0.0
        self._slow_decel = speed / t_stop if t_stop > 0 else np.zeros_like(speed)
        self._status = ArmStatus.SLOW_STOP

    def place(self, q_rad: Sequence[float]) -> None:
        """Put the arm at `q_rad`, at rest, holding there: no planned move, no pass-through
        target or interpolation pending, status idle (the next `movej_canfd` starts a new
        stream from here). A real controller has no such command; a simulator whose scene was
        reset has the arm somewhere else than the controller last put it, and the controller
        must hold it there, not pull it back. Latched errors and power stay as they were."""
        q = np.asarray(q_rad, dtype=float)
        if q.shape != (self.model.dof,) or not self.within_limits(q):
            raise ValueError(f"{self.model.name}: cannot place the arm at "
                             f"{np.degrees(q).round(3).tolist()} deg (expected {self.model.dof} "
                             f"angles within the joint limits)")
        self._q = q.copy()
        self._v = np.zeros_like(q)
        self._ref = q.copy()
        self._seg_from = q.copy()
        self._seg_to = q.copy()
        self._seg_duration_s = 0.0
        self._seg_elapsed_s = 0.0
        self._last_stream_now = None
        self._stream_period_s = None
        self._since_stream_s = 0.0
        self._move = None
        self._queue = []
        self._move_elapsed_s = 0.0
        self._move_tag = None
        self._slow_decel = np.zeros_like(q)
        self._status = ArmStatus.IDLE

    # ---- drag teaching --------------------------------------------------------------------------
    @property
    def dragging(self) -> bool:
        return self._status == ArmStatus.DRAG

    def start_drag(self, record: bool) -> bool:
        """Drag teaching (`start_drag_teach`): the joints go where a hand pushes them
        (`hand_guide`), planned moves and pass-through are dropped and refused until
        `stop_drag`. With `record`, the joints are recorded every step (`recorded`)."""
        if not self._powered:
            return False
        self.stop()
        self._hand = self._q.copy()
        self._recording = [self._q.copy()] if record else None
        self._status = ArmStatus.DRAG
        return True

    def stop_drag(self) -> bool:
        """End drag teaching: the arm holds where the hand left it; what was recorded is kept
        in `recorded` (until the next recording starts)."""
        if self._status != ArmStatus.DRAG:
            return False
        if self._recording is not None:
            self.recorded = self._recording
        self._recording = None
        self._hand = None
        self.stop()
        self._status = ArmStatus.IDLE
        return True

    def hand_guide(self, q_rad: Sequence[float]) -> bool:
        """A hand pushes the arm toward `q_rad` (only while drag teaching; the joints follow
        under their speed and acceleration limits and never past a joint limit, as the
        controller's drag mode holds them)."""
        target = np.asarray(q_rad, dtype=float)
        if self._status != ArmStatus.DRAG or target.shape != (self.model.dof,) \
                or not np.all(np.isfinite(target)):
            return False
        self._hand = np.clip(target, self._lower, self._upper)
        return True

    # ---- integration -------------------------------------------------------------------------
    def step(self, dt: float) -> List[Arrival]:
        """Advance the arm by `dt` seconds; returns the arrivals that happened in this step."""
        if dt <= 0.0:
            return []
        arrivals: List[Arrival] = []
        if self._status == ArmStatus.DRAG:
            assert self._hand is not None
            self._ref = self._q.copy()
            self._track(self._hand, dt)
            if self._recording is not None:
                self._recording.append(self._q.copy())
            return arrivals
        if self._status == ArmStatus.SLOW_STOP:
            self._step_slow_stop(dt)
            return arrivals
        if self._status == ArmStatus.STOP:
            return arrivals
        if self._status in PLANNED_TYPES and self._move is not None:
            self._move_elapsed_s += dt
            while self._queue and self._move_elapsed_s >= self._move.duration:
                self._move_elapsed_s -= self._move.duration
                self._move, self._status = self._queue.pop(0)
            ref_next = self._move.position_at(self._move_elapsed_s)
        elif self._status == ArmStatus.MOVE_THROUGH_JOINT:
            self._seg_elapsed_s += dt
            self._since_stream_s += dt
            if self._seg_duration_s <= 0.0 or self._seg_elapsed_s >= self._seg_duration_s:
                ref_next = self._seg_to.copy()
            else:
                frac = self._seg_elapsed_s / self._seg_duration_s
                ref_next = self._seg_from + frac * (self._seg_to - self._seg_from)
        else:
            ref_next = self._ref
        self._track(ref_next, dt)

        if self._status in PLANNED_TYPES and self._move is not None:
            if (not self._queue and self._move_elapsed_s >= self._move.duration
                    and np.max(np.abs(self._move.goal - self._q)) <= ARRIVAL_TOLERANCE_RAD
                    and np.max(np.abs(self._v)) <= ARRIVAL_SPEED_RAD_S):
                arrivals.append(Arrival(ARM_DEVICE, self._move_tag))
                self._q = self._move.goal.copy()
                self._v[:] = 0.0
                self._ref = self._q.copy()
                self._move = None
                self._status = ArmStatus.IDLE
        elif self._status == ArmStatus.MOVE_THROUGH_JOINT:
            if (self._since_stream_s >= THROUGH_IDLE_AFTER_S
                    and np.max(np.abs(self._v)) <= ARRIVAL_SPEED_RAD_S
                    and np.max(np.abs(self._seg_to - self._q)) <= ARRIVAL_TOLERANCE_RAD):
                self._status = ArmStatus.IDLE
                self._last_stream_now = None
                self._stream_period_s = None
        return arrivals

    def _track(self, ref_next: np.ndarray, dt: float) -> None:
        """Move toward the reference under the velocity, acceleration and position limits.

        With a feasible reference the step is dead-beat (the arm lands on it); a large error is
        closed as fast as the limits allow without overshooting.
        """
        ref_speed = (ref_next - self._ref) / dt
        error = self._ref - self._q
        correction = np.sign(error) * _stopping_speed(np.abs(error), self._amax, dt)
        v_des = np.clip(ref_speed + correction, -self._vmax, self._vmax)
        v_des = np.clip(v_des, -_stopping_speed(self._q - self._lower, self._amax, dt),
                        _stopping_speed(self._upper - self._q, self._amax, dt))
        dv = np.clip(v_des - self._v, -self._amax * dt, self._amax * dt)
        self._v = self._v + dv
        self._q = np.clip(self._q + self._v * dt, self._lower, self._upper)
        self._ref = np.array(ref_next, dtype=float)

    def _step_slow_stop(self, dt: float) -> None:
        speed = np.abs(self._v)
        new_speed = np.maximum(speed - self._slow_decel * dt, 0.0)
        self._v = np.sign(self._v) * new_speed
        self._q = np.clip(self._q + self._v * dt, self._lower, self._upper)
        self._ref = self._q.copy()
        if not np.any(new_speed > 0.0):
            self._status = ArmStatus.IDLE


class GripperMotion:
    """RealMan two-finger gripper as the arm controller drives it (wire units 1..1000)."""

    def __init__(self, position: float = GRIPPER_WIRE_MAX) -> None:
        self._position = float(min(max(position, GRIPPER_WIRE_MIN), GRIPPER_WIRE_MAX))
        self._target = self._position
        self._rate = 0.0
        self._tag: Hashable = None
        self._moving = False
        self._mode = self._idle_mode()

    @property
    def position(self) -> float:
        """Opening in wire units (1 closed .. 1000 open)."""
        return self._position

    @property
    def opening_m(self) -> float:
        return wire_to_opening_m(self._position)

    @property
    def mode(self) -> int:
        return self._mode

    @property
    def moving(self) -> bool:
        return self._moving

    def _idle_mode(self) -> int:
        if self._position <= GRIPPER_WIRE_MIN:
            return GripperMode.CLOSED_IDLE
        if self._position >= GRIPPER_WIRE_MAX:
            return GripperMode.OPEN_IDLE
        return GripperMode.STOPPED_IDLE

    def move_to(self, position: float, speed: float = GRIPPER_DEFAULT_SPEED,
                tag: Hashable = None) -> bool:
        """Start moving to `position` (wire 1..1000) at `speed` (wire 1..1000). A new command
        replaces a running one, which then never reports arrival. False: out of range."""
        if not (GRIPPER_WIRE_MIN <= position <= GRIPPER_WIRE_MAX) or not (1 <= speed <= 1000):
            return False
        self._target = float(position)
        self._rate = float(speed) * GRIPPER_WIRE_PER_S_PER_SPEED
        self._tag = tag
        self._moving = True
        if self._target < self._position:
            self._mode = GripperMode.CLOSING
        elif self._target > self._position:
            self._mode = GripperMode.OPENING
        return True

    def close(self, speed: float, tag: Hashable = None) -> bool:
        """`set_gripper_pick`: close until the fingers meet (no object is simulated)."""
        return self.move_to(GRIPPER_WIRE_MIN, speed, tag)

    def open(self, speed: float, tag: Hashable = None) -> bool:
        """`set_gripper_release`: open fully."""
        return self.move_to(GRIPPER_WIRE_MAX, speed, tag)

    def place(self, position: float) -> None:
        """Put the fingers at `position` (wire units, clamped to 1..1000), at rest: a running
        move is dropped without an arrival (see `ArmMotion.place` for why a simulator does
        this)."""
        self._position = float(min(max(position, GRIPPER_WIRE_MIN), GRIPPER_WIRE_MAX))
        self._target = self._position
        self._rate = 0.0
        self._tag = None
        self._moving = False
        self._mode = self._idle_mode()

    def step(self, dt: float) -> List[Arrival]:
        if not self._moving or dt <= 0.0:
            return []
        delta = self._target - self._position
        travel = self._rate * dt
        if abs(delta) <= travel:
            self._position = self._target
            self._moving = False
            self._mode = self._idle_mode()
            return [Arrival(GRIPPER_DEVICE, self._tag)]
        self._position += math.copysign(travel, delta)
        return []


def wire_to_opening_m(position: float) -> float:
    """RealMan gripper wire position (1..1000) to finger opening in metres (0..0.070)."""
    return (float(position) - GRIPPER_WIRE_MIN) / (GRIPPER_WIRE_MAX - GRIPPER_WIRE_MIN) \
        * GRIPPER_MAX_OPENING_M


def opening_m_to_wire(opening_m: float) -> float:
    """Finger opening in metres to RealMan's gripper wire position (clamped to 1..1000)."""
    frac = min(max(float(opening_m) / GRIPPER_MAX_OPENING_M, 0.0), 1.0)
    return GRIPPER_WIRE_MIN + frac * (GRIPPER_WIRE_MAX - GRIPPER_WIRE_MIN)
