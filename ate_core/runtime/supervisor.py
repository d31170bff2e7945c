"""The supervisor's decisions, one control tick at a time: who commands the arms, and with what.

Pure state machine over time (``now_ns`` in, commands out), so the ROS node, the offline replay
and the property tests all run the same code. It composes the chunk executor (what the policy
wants now), the safety filter (what is allowed now) and the watchdogs (what has gone silent).

Modes::

    idle --engage--> engaged --disengage--> disengaging --at rest--> idle
      ^                 |  lost controller -> idle (arms stopped)
      |                 v
      +--rearm-- estopped <--estop-- (any mode)

- *idle*: no commands at all; the arms keep whatever the controllers last did.
- *engaged*: the command source's target for now, ramped in from the measured state over
  ``ramp_s``. The source is the policy (the executor's target) or, engaged for teleop, the
  leader arms (their newest samples, :meth:`on_leader`); the filter and the e-stop are the
  same for both. A leader sample further than ``leader.max_jump_rad`` from that leader's
  previous one is a jump: the followers hold for ``leader.jump_hold_s`` and then ramp to the
  leader again, so a glitch or a dropped stretch of the stream never becomes a lunge.
  The ramp is a smoothstep blend, so it starts and ends at zero velocity; every target goes
  through the safety filter. A hold fault (stale joint state, chunk, camera or leader)
  switches the target to the previous command,
  which the filter's acceleration cap turns into a deceleration to rest; when the fault clears,
  the ramp restarts from the last command, so resuming never jumps either. After a stale joint
  state it ramps from the *measured* state instead: the arm's driver stopped forwarding
  commands while it heard nothing, so the arm stands short of our last command, and it accepts
  commands only near where the arm is. The commands still start from the last one: the filter
  takes them back to the ramp within its caps.
- *disengaging*: the same deceleration to rest; once every joint is at rest, idle.
- *estopped*: latched. Every tick commands the position measured when the e-stop came, and the
  controllers are told to stop. This deliberately bypasses the filter's rate caps: the arm is
  physically at the measured position, so holding it is the smallest possible motion. Only
  :meth:`rearm` leaves it, to idle; motion needs a new engage, from the measured state, ramped.
- A lost controller stops both arms and drops to idle: the surviving arm must not carry on alone.
- An arm taken over by its controller (drag teaching, a planned move: :meth:`on_arm_busy`) cannot
  be engaged; one taken over while engaged drops to idle and the other arms are stopped, the
  taken-over one is left to whoever has it (a stop would end the hand's drag teaching).

Commands and their stamps: a tick's command is stamped with the tick's time (strictly after the
previous command's stamp), and the filter's caps hold between consecutive commands by those
stamps, however late a tick ran, through holds, stale periods, resumes, engage and disengage.
Commands stop in idle; an engage from idle (or after a re-arm) starts a new series at the
measured state, at rest, which is where the controller holds the arm. The e-stop's hold of the
measured position is the one command that bypasses the caps (see *estopped*).

Chunks: one stamped more than ``executor.max_future_s`` ahead of ``now`` is rejected
(``future``): a policy PC whose clock runs ahead, or one bad stamp, would otherwise make every
later chunk look old (``order``) until that time. Rejected chunks change nothing.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot.config import SupervisorConfig
from ate_core.robot.layout import BimanualLayout
from ate_core.runtime.chunk import ActionChunk, ChunkRejected
from ate_core.runtime.executor import ChunkExecutor
from ate_core.runtime.safety import Intervention, SafetyFilter
from ate_core.runtime.watchdog import HOLD, POLICY, STOP, TELEOP, Fault, Watchdogs

__all__ = ["Mode", "Supervisor", "TickOutput", "Answer", "POLICY", "TELEOP"]

#: A joint whose commanded speed is below this is at rest (rad/s, or m/s for a gripper).
REST_SPEED = 1e-6


class Mode(str, enum.Enum):
    IDLE = "idle"
    ENGAGED = "engaged"
    DISENGAGING = "disengaging"
    ESTOPPED = "estopped"


@dataclass(frozen=True)
class Answer:
    """The outcome of a service request (engage, e-stop, re-arm), as the service returns it."""

    success: bool
    message: str


@dataclass(frozen=True)
class TickOutput:
    """One tick's decision. ``now_ns`` is the tick's time and the stamp of its command
    (strictly after the previous command's). ``positions`` is None when nothing is commanded
    (idle), else the command for every joint of the layout (``joint_names`` order);
    ``stop_arms`` lists arms whose controllers must be told to stop now (sent once, on the
    transition)."""

    now_ns: int
    mode: Mode
    positions: Optional[np.ndarray]
    velocities: Optional[np.ndarray]
    holding: bool
    faults: Tuple[Fault, ...]
    interventions: Tuple[Intervention, ...]
    stop_arms: Tuple[str, ...] = ()


def smoothstep(x: float) -> float:
    """0 -> 1 with zero slope at both ends (a ramp that starts and ends at rest)."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


class Supervisor:
    def __init__(self, layout: BimanualLayout, config: SupervisorConfig,
                 gripper_max_opening_m: float, cameras: Sequence[str] = ()) -> None:
        self.layout = layout
        self.config = config
        self.period_s = 1.0 / config.rate_hz
        self.joint_names: Tuple[str, ...] = layout.joint_names
        self.arms: Tuple[str, ...] = layout.prefixes
        self._arm_index: Dict[str, np.ndarray] = {
            arm.prefix: np.array([self.joint_names.index(n)
                                  for n in (*arm.joint_names, arm.gripper_joint)])
            for arm in layout}
        self.executor = ChunkExecutor(config.executor, self.joint_names)
        self.safety = SafetyFilter(layout, config.safety, self.period_s, gripper_max_opening_m)
        self.watchdogs = Watchdogs(config.watchdog, self.arms, cameras, config.leader)
        self.mode = Mode.IDLE
        #: Who commands while engaged: POLICY (the chunks) or TELEOP (the leaders).
        self.source = POLICY
        self.reason = "not engaged"
        #: Interventions and faults so far, keyed by (rule, arm or source).
        self.counts: Counter = Counter()
        self._measured: Dict[str, np.ndarray] = {}
        self._leader: Dict[str, np.ndarray] = {}
        self._previous: Optional[np.ndarray] = None
        self._velocity: Optional[np.ndarray] = None
        self._ramp_from: Optional[np.ndarray] = None
        self._ramp_start_ns = 0
        self._estop_hold: Optional[np.ndarray] = None
        self._active_faults: Tuple[Fault, ...] = ()
        self._pending_stop: Tuple[str, ...] = ()
        self._resync = False
        self._last_stamp_ns: Optional[int] = None  # the previous command's stamp
        self._new_series = True
        #: Arrival time minus stamp of the newest chunk offered (negative: from the future).
        self.last_chunk_age_ns: Optional[int] = None
        self._busy: Dict[str, str] = {}

    # ---- inputs ---------------------------------------------------------------------------------

    def arm_slice(self, arm: str) -> np.ndarray:
        """Indices of ``arm``'s joints and gripper in :attr:`joint_names`."""
        return self._arm_index[arm]

    def on_joint_state(self, arm: str, positions: Sequence[float], now_ns: int) -> None:
        """The measured joints + gripper of ``arm`` (its own order: joint1..N, gripper)."""
        values = np.asarray(positions, dtype=np.float64)
        if values.shape != (len(self._arm_index[arm]),) or not np.isfinite(values).all():
            self.counts[("bad_joint_state", arm)] += 1
            return  # a malformed state is not a fresh state: the watchdog keeps timing
        self._measured[arm] = values
        self.watchdogs.joint_state(arm, now_ns)

    def on_arm_busy(self, arm: str, what: str) -> None:
        """What has ``arm`` now instead of the stream ("drag teaching", "homing", ...; ""
        when nothing has: the arm takes commands)."""
        if arm not in self._arm_index:
            raise ValueError(f"Supervisor.on_arm_busy: unknown arm {arm!r} (arms: {self.arms})")
        self._busy[arm] = str(what)

    def busy_arms(self) -> Dict[str, str]:
        """The arms that something else has, with what."""
        return {arm: what for arm, what in self._busy.items() if what}

    def on_leader(self, arm: str, positions: Sequence[float], now_ns: int) -> None:
        """A leader sample for ``arm``: the follower's joints + gripper, in its order.

        Kept whether or not teleop is engaged (engaging needs a fresh one). A malformed sample
        is counted (``bad_leader``) and ignored, so the leader's watchdog keeps timing; one that
        moves a joint further than ``leader.max_jump_rad`` from the previous sample starts a
        ``leader_jump`` hold (the gripper, bounded by its range, is not judged)."""
        values = np.asarray(positions, dtype=np.float64)
        if values.shape != (len(self._arm_index[arm]),) or not np.isfinite(values).all():
            self.counts[("bad_leader", arm)] += 1
            return
        before = self._leader.get(arm)
        jumped = before is not None and bool(
            np.max(np.abs(values[:-1] - before[:-1])) > self.config.leader.max_jump_rad)
        self._leader[arm] = values
        self.watchdogs.leader(arm, now_ns, jumped)

    def leader(self) -> Optional[np.ndarray]:
        """The newest leader sample of every joint, or None while a leader arm has none."""
        return self._whole(self._leader)

    def on_camera(self, name: str, now_ns: int) -> None:
        self.watchdogs.camera(name, now_ns)

    def on_chunk(self, chunk: ActionChunk, now_ns: int) -> Optional[str]:
        """Hand a validated chunk to the executor; the rejection reason (counted), or None."""
        self.last_chunk_age_ns = int(now_ns) - chunk.stamp_ns
        try:
            late = self.executor.add(chunk, now_ns)
        except ChunkRejected as e:
            self.counts[(f"chunk_{e.rule}", "policy")] += 1
            return f"{e.rule}: {e}"
        self.watchdogs.chunk(now_ns)
        if late:
            self.counts[("late_points", "policy")] += late
        return None

    def reject_chunk(self, rule: str) -> None:
        """Count a chunk that failed validation before reaching :meth:`on_chunk`."""
        self.counts[(f"chunk_{rule}", "policy")] += 1

    def measured(self) -> Optional[np.ndarray]:
        """The measured state of every joint, or None while an arm has never reported."""
        return self._whole(self._measured)

    def _whole(self, per_arm: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
        """Per-arm vectors as one whole-robot vector; None while an arm has none."""
        if set(per_arm) != set(self.arms):
            return None
        out = np.empty(len(self.joint_names))
        for arm, values in per_arm.items():
            out[self._arm_index[arm]] = values
        return out

    # ---- requests -------------------------------------------------------------------------------

    def engage(self, now_ns: int, source: str = POLICY) -> Answer:
        """Hand the arms to ``source``: POLICY (the chunks) or TELEOP (the leader arms, which
        must all be streaming, without a jump, before the followers ramp to them)."""
        if source not in (POLICY, TELEOP):
            raise ValueError(f"Supervisor.engage: source {source!r} is not {POLICY!r} or {TELEOP!r}")
        if self.mode is Mode.ESTOPPED:
            return Answer(False, "e-stop is latched: call rearm first")
        if self.mode is Mode.ENGAGED:
            if source != self.source:
                return Answer(False, f"engaged with {self.source}: disengage before engaging "
                                     f"{source}")
            return Answer(True, f"already engaged ({source})")
        busy = self.busy_arms()
        if busy:
            return Answer(False, f"cannot engage {source}: " + "; ".join(
                f"the {arm} arm is {what}" for arm, what in sorted(busy.items())))
        faults = [f for f in self.watchdogs.check(now_ns) if f.rule in ("stale_joint_state",
                                                                       "lost_controller")]
        if source == TELEOP:
            faults += self.watchdogs.leader_faults(now_ns)
        measured = self.measured()
        if faults or measured is None:
            why = "; ".join(str(f) for f in faults) or "no joint state yet"
            return Answer(False, f"cannot engage {source}: {why}")
        start = measured if self.mode is Mode.IDLE else self._previous
        self._start_ramp(start, now_ns, reset_velocity=self.mode is Mode.IDLE)
        self._resync = False
        self.mode = Mode.ENGAGED
        self.source = source
        self.reason = f"engaged ({source})"
        self.watchdogs.engaged(now_ns, source)
        what = "the measured state" if source == POLICY else "the measured state to the leaders"
        return Answer(True, f"engaged ({source}): ramping in from {what}")

    def disengage(self, now_ns: int) -> Answer:
        if self.mode is Mode.ENGAGED:
            self.mode = Mode.DISENGAGING
            self.reason = "disengaging: decelerating to rest"
            self.watchdogs.engaged(None)
            return Answer(True, "disengaging: decelerating to rest")
        return Answer(True, f"not engaged ({self.mode.value})")

    def estop(self, now_ns: int) -> Answer:
        """Latch the e-stop: hold what is measured now (else the last command) on every arm."""
        hold: Optional[np.ndarray] = np.empty(len(self.joint_names))
        for arm in self.arms:  # an arm that never reported holds its last command
            idx = self._arm_index[arm]
            if arm in self._measured:
                hold[idx] = self._measured[arm]
            elif self._previous is not None:
                hold[idx] = self._previous[idx]
            else:
                hold = None  # nothing known to hold: the controllers' stop does it alone
                break
        already = self.mode is Mode.ESTOPPED
        if not already:
            self._estop_hold = hold
            self.counts[("estop", "all")] += 1
        self.mode = Mode.ESTOPPED
        self.reason = "e-stop latched"
        self.executor.clear()
        self.watchdogs.engaged(None)
        self._pending_stop = self.arms
        return Answer(True, "e-stop latched" + (" (already)" if already else "")
                      + ": holding the measured position; call rearm to release")

    def rearm(self, now_ns: int) -> Answer:
        if self.mode is not Mode.ESTOPPED:
            return Answer(False, f"not e-stopped ({self.mode.value})")
        self.mode = Mode.IDLE
        self.reason = "re-armed: engage to move"
        self._estop_hold = None
        self._previous = self._velocity = None
        self.executor.clear()
        return Answer(True, "re-armed: nothing moves until engage")

    # ---- the tick -------------------------------------------------------------------------------

    def _start_ramp(self, start: np.ndarray, now_ns: int, reset_velocity: bool) -> None:
        self._ramp_from = np.array(start, dtype=np.float64)
        self._ramp_start_ns = now_ns
        if reset_velocity or self._previous is None:
            # A new series of commands, from the arm at rest: its first step is timed by at
            # most the nominal period, never by the stamp of a command from before idle time.
            self._previous = self._ramp_from.copy()
            self._velocity = np.zeros_like(self._ramp_from)
            self._new_series = True

    def _drop_to_idle(self, now_ns: int, faults: Tuple[Fault, ...], reason: str,
                      stop: Tuple[str, ...]) -> TickOutput:
        """Let go of the arms at once (no deceleration: see the callers), telling ``stop`` to."""
        self.mode = Mode.IDLE
        self.reason = reason
        self.executor.clear()
        self.watchdogs.engaged(None)
        self._previous = self._velocity = None
        return TickOutput(now_ns, self.mode, None, None, True, faults, (), stop)

    def tick(self, now_ns: int) -> TickOutput:
        faults = self.watchdogs.check(now_ns)
        for fault in faults:  # count onsets, not ticks; a source never heard yet is starting up
            if fault.age_s != float("inf") and all(
                    (f.rule, f.source) != (fault.rule, fault.source) for f in self._active_faults):
                self.counts[(fault.rule, fault.source)] += 1
        self._active_faults = faults
        stop, self._pending_stop = self._pending_stop, ()

        # The command's stamp: this tick, strictly after the previous command (a clock that
        # steps back gives tiny steps until it has caught up, never a step without its time).
        stamp_ns = int(now_ns) if self._last_stamp_ns is None \
            else max(int(now_ns), self._last_stamp_ns + 1)

        if self.mode is Mode.ESTOPPED:
            hold = self._estop_hold
            if hold is not None:
                self._last_stamp_ns = stamp_ns
            return TickOutput(stamp_ns, self.mode, None if hold is None else hold.copy(),
                              None if hold is None else np.zeros_like(hold), True, faults, (), stop)

        if self.mode in (Mode.ENGAGED, Mode.DISENGAGING) and any(f.reaction == STOP for f in faults):
            lost = sorted({f.source for f in faults if f.reaction == STOP})
            return self._drop_to_idle(
                now_ns, faults, f"controller lost ({', '.join(lost)}): arms stopped, engage again",
                self.arms)

        busy = self.busy_arms() if self.mode in (Mode.ENGAGED, Mode.DISENGAGING) else {}
        if busy:
            for arm in busy:
                self.counts[("taken_over", arm)] += 1
            return self._drop_to_idle(
                now_ns, faults, "taken over (" + "; ".join(
                    f"{arm}: {what}" for arm, what in sorted(busy.items()))
                + "): the other arms stopped, engage again",
                tuple(a for a in self.arms if a not in busy))

        if self.mode is Mode.IDLE or self._previous is None:
            return TickOutput(now_ns, self.mode, None, None, False, faults, (), stop)

        holds = self.mode is Mode.DISENGAGING or any(f.reaction == HOLD for f in faults)
        if any(f.rule == "stale_joint_state" for f in faults):
            self._resync = True
        if holds:
            target = None
        elif self.source == TELEOP:
            target = self.leader()
        else:
            target = self.executor.target_at(now_ns)
        if target is None:
            target = self._previous
            if self.mode is Mode.ENGAGED:
                holds = True
        else:
            if self._resync:
                # The arm went unheard: its driver stopped forwarding our commands, so the arm
                # stands short of the last one, and accepts commands again only near where it
                # is. Ramp from the measured state, as an engage does; the filter's state stays,
                # so the commands return to it within the caps instead of jumping there.
                self._resync = False
                self._start_ramp(self.measured(), now_ns, reset_velocity=False)
            elif self._ramp_from is None:  # resuming after a hold: ramp from where we are
                self._start_ramp(self._previous, now_ns, reset_velocity=False)
            w = smoothstep((now_ns - self._ramp_start_ns) * 1e-9 / self.config.ramp_s) \
                if self.config.ramp_s > 0 else 1.0
            target = self._ramp_from + w * (target - self._ramp_from)
        if holds:
            self._ramp_from = None
        dt_s = None if self._last_stamp_ns is None else (stamp_ns - self._last_stamp_ns) * 1e-9
        if self._new_series and dt_s is not None:
            dt_s = min(dt_s, self.period_s)
        if self.source == TELEOP and not holds:
            # A leader stream may step (a fast hand, a dropped stretch): approach its target
            # so that the arm can stop there, instead of arriving at speed and overshooting.
            target = self.safety.approach(target, self._previous, dt_s)
        result = self.safety.clamp(target, self._previous, self._velocity, dt_s)
        self._last_stamp_ns, self._new_series = stamp_ns, False
        for item in result.interventions:
            self.counts[(item.rule, item.arm)] += 1
        self._previous, self._velocity = result.positions, result.velocities
        if self.mode is Mode.DISENGAGING and np.all(np.abs(result.velocities) < REST_SPEED):
            self.mode = Mode.IDLE
            self.reason = "disengaged"
            self._previous = self._velocity = None
        return TickOutput(stamp_ns, self.mode, result.positions.copy(), result.velocities.copy(),
                          holds, faults, result.interventions, stop)

    def split(self, positions: np.ndarray) -> Mapping[str, np.ndarray]:
        """A whole-robot vector as per-arm vectors (joints then gripper)."""
        return {arm: positions[idx] for arm, idx in self._arm_index.items()}
