"""One RealMan arm through RealMan's SDK: state in, joint targets and gripper commands out.

Connection handling is the point of this class. The link is

- ``ready``: connected, and state pushes arrive;
- ``stale``: connected, but no push for longer than the state timeout (50 ms). Streaming stops
  (``stream`` refuses), the silence is reported, and the next push makes the link ``ready``
  again. A loaded robot PC delays pushes for tens of milliseconds (the SDK's thread waits for
  the CPU and for Python), so a short silence must stop commands but not cost a reconnect;
- ``lost``: the SDK reports the TCP link broken, or the controller stayed silent for the link
  timeout (1 s). A worker reconnects with backoff, and the link is ``ready`` only once a push
  newer than the reconnect has arrived.

Whoever commands the arm resumes from freshly measured state after any of these.

Threads: the SDK's UDP thread calls ``_on_push`` (conversion + hand-over only); one worker
(``realman-<name>``) connects, reconnects, polls and commands the gripper; one watchdog
(``realman-<name>-watchdog``) turns a silent controller into ``stale`` within the state
timeout and into ``lost`` after the link timeout. ``stream`` is called by the commanding
thread and never blocks on the network (``movej_canfd`` expects no reply). ``move_home``
blocks its caller for the whole move.

The SDK matches replies to requests by name out of one queue per connection, and two
request/reply calls in flight on one handle disturb each other (a blocking ``movej`` that
polls state while ``set_arm_stop`` waits for its answer returned "send failed", and the
process's SDK could then no longer connect). So every request/reply call of an arm is
serialised by ``_request_lock``, and no call blocks for longer than one reply: the home move
is a non-blocking ``movej`` whose end is read from the realtime state.

The SDK also runs one request/reply call at a time for every arm of the process
(``realman_sdk``): a call waits for any other arm's call in flight, up to that call's reply
timeout. Hence no call may take longer than its reply (see ``GRIPPER_ACK``), and on the robot
each arm runs in a process of its own, so that an unresponsive controller cannot delay the
other arm's stop.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from Robotic_Arm.rm_robot_interface import rm_realtime_push_config_t, rm_udp_custom_config_t

from ate_core.robot import kinematics
from ate_core.robot.config import ArmConfig
from ate_core.robot.layout import matrix_to_rpy
from ate_core.robot.models import GRIPPER_MAX_OPENING_M, arm_model
from ate_core.runtime.arm_command import JointLimits
from ate_ros.drivers.realman_sdk import (
    PushSample, SdkArm, gripper_opening_m, gripper_wire, local_address_towards, sdk, wire_degrees,
)


#: How long a stale state is re-checked before the controller counts as silent.
STALE_GRACE_S = 0.010

#: Non-blocking gripper calls return on the controller's acknowledgement with timeout 1.
#: With timeout 0 ("return once sent", say the SDK's docs) the SDK waits out its whole reply
#: timeout (500 ms), and every request of every arm in the process, an e-stop too, waits with it.
GRIPPER_ACK = 1

#: arm_current_status values as the SDK reports them (rm_udp_arm_current_status_e).
STATUS_MOVE_L = 1
STATUS_MOVE_J = 2
STATUS_STOP = 9
STATUS_SLOW_STOP = 10
STATUS_CURRENT_DRAG = 12
#: A Cartesian move has arrived when the flange is this close to its target (the wire carries
#: angles in 0.001 rad).
POSE_TOLERANCE_M = 1e-3
POSE_TOLERANCE_RAD = 5e-3


class Link(str, Enum):
    CONNECTING = "connecting"
    READY = "ready"
    STALE = "stale"
    LOST = "lost"
    CLOSED = "closed"


@dataclass(frozen=True)
class ArmState:
    positions_rad: Tuple[float, ...]
    velocities_rad_s: Tuple[float, ...]
    gripper_opening_m: Optional[float]
    errors: Tuple[int, ...]
    status_code: int
    received_mono_ns: int


@dataclass
class DriverStats:
    pushes: int = 0
    push_parse_errors: int = 0
    commands_sent: int = 0
    commands_refused: int = 0
    reconnects: int = 0
    stale_periods: int = 0
    reply_timeouts: int = 0
    gripper_commands: int = 0
    last_fault: str = ""
    faults: Dict[str, int] = field(default_factory=dict)


class RealManArm:
    def __init__(self, name: str, cfg: ArmConfig, *,
                 on_state: Optional[Callable[[ArmState], None]] = None,
                 on_link: Optional[Callable[[Link, str], None]] = None,
                 state_timeout_s: float = 0.05,
                 link_timeout_s: float = 1.0,
                 backoff_s: Tuple[float, float] = (0.1, 2.0),
                 gripper_poll_s: float = 0.1,
                 gripper_max_opening_m: float = GRIPPER_MAX_OPENING_M,
                 reply_timeout_ms: int = 500) -> None:
        self.name = name
        self.cfg = cfg
        self.model = arm_model(cfg.model)
        self._on_state = on_state
        self._on_link = on_link
        if not 0 < state_timeout_s < link_timeout_s:
            raise ValueError(f"state timeout {state_timeout_s} s must be positive and shorter "
                             f"than the link timeout {link_timeout_s} s")
        self._state_timeout_ns = int(state_timeout_s * 1e9)
        self._link_timeout_ns = int(link_timeout_s * 1e9)
        self._backoff_s = backoff_s
        self._gripper_poll_s = gripper_poll_s
        self._gripper_max_m = gripper_max_opening_m
        self._reply_timeout_ms = reply_timeout_ms
        self.stats = DriverStats()
        self.limits = JointLimits(self.model.lower_rad, self.model.upper_rad,
                                  self.model.max_velocity_rad_s)
        self._lock = threading.Lock()
        #: One request/reply exchange at a time per handle (see the module docstring).
        self._request_lock = threading.Lock()
        #: Handle lifetime vs. movej_canfd, which needs no reply and must not wait on a request.
        self._handle_lock = threading.Lock()
        self._arm: Optional[SdkArm] = None
        self._link = Link.CONNECTING
        self._link_since_ns = time.monotonic_ns()
        self._state: Optional[ArmState] = None
        self._gripper_m: Optional[float] = None
        self._gripper_target: Optional[float] = None
        self._gripper_sent: Optional[int] = None
        self._busy = ""
        self._stop_pending = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"realman-{name}", daemon=True),
            threading.Thread(target=self._watch, name=f"realman-{name}-watchdog", daemon=True),
        ]

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "RealManArm":
        sdk().subscribe(self.cfg.ip, self.model.dof, self._on_push)
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        """Stop threads and disconnect; the arm keeps whatever it was doing (hold or stop)."""
        if self._link is Link.CLOSED:
            return
        self._set_link(Link.CLOSED, "driver closed")
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t.is_alive():
                t.join(5.0)
        sdk().unsubscribe(self.cfg.ip)
        self._drop_handle()

    def __enter__(self) -> "RealManArm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- state -------------------------------------------------------------------------------

    @property
    def link(self) -> Link:
        return self._link

    @property
    def state(self) -> Optional[ArmState]:
        return self._state

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._link is not Link.READY:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _on_push(self, push: PushSample) -> None:
        now = time.monotonic_ns()
        self.stats.pushes += 1
        if push.parse_error:
            # The SDK could not parse the packet: the joints may be garbage; do not use them.
            self.stats.push_parse_errors += 1
            return
        state = ArmState(push.positions_rad, push.velocities_rad_s, self._gripper_m,
                         push.errors, push.status_code, now)
        previous, self._state = self._state, state
        if self._link is Link.STALE:
            silent_ms = (now - previous.received_mono_ns) / 1e6 if previous else float("nan")
            self._set_link(Link.READY, f"state pushes resumed after {silent_ms:.0f} ms",
                           only_from=(Link.STALE,))
        if self._on_state is not None:
            self._on_state(state)

    def _set_link(self, link: Link, reason: str,
                  only_from: Tuple[Link, ...] = (Link.CONNECTING, Link.READY, Link.STALE,
                                                 Link.LOST)) -> None:
        """Change the link, unless it is already ``link`` or not in ``only_from`` (checked
        under the lock: the watchdog, the worker and the SDK's thread all change it)."""
        with self._lock:
            if self._link is link or self._link not in only_from:
                return
            self._link = link
            self._link_since_ns = time.monotonic_ns()
            if link in (Link.LOST, Link.STALE):
                self.stats.last_fault = reason
                key = reason.split(":")[0]
                self.stats.faults[key] = self.stats.faults.get(key, 0) + 1
            if link is Link.STALE:
                self.stats.stale_periods += 1
        self._wake.set()
        if self._on_link is not None:
            self._on_link(link, reason)

    def _fault(self, reason: str) -> None:
        """The link is broken: reconnect."""
        self._set_link(Link.LOST, reason, only_from=(Link.READY, Link.STALE))

    def _silent(self, reason: str) -> None:
        """No fresh state: stop commanding until it comes back."""
        self._set_link(Link.STALE, reason, only_from=(Link.READY,))

    # ---- commands ----------------------------------------------------------------------------

    def stream(self, q_rad: Sequence[float]) -> bool:
        """Send one pass-through joint target (``movej_canfd``); False if it was not sent."""
        arm = self._arm
        if self._link is not Link.READY or arm is None or self._busy:
            self.stats.commands_refused += 1
            return False
        state = self._state
        if state is None or time.monotonic_ns() - state.received_mono_ns > self._state_timeout_ns:
            # Do not command an arm whose state we no longer see (the watchdog reports it).
            self.stats.commands_refused += 1
            self._silent("state timeout: no state push while streaming")
            return False
        with self._handle_lock:
            if self._arm is not arm:
                self.stats.commands_refused += 1
                return False
            rc = arm.rm_movej_canfd(wire_degrees(q_rad), self.cfg.follow)
        if rc != 0:
            self.stats.commands_refused += 1
            self._fault(f"send failed: movej_canfd returned {rc}")
            return False
        self.stats.commands_sent += 1
        return True

    def set_gripper(self, opening_m: float) -> None:
        """Ask for a finger opening; the worker sends it (only when it changes)."""
        self._gripper_target = min(self._gripper_max_m, max(0.0, float(opening_m)))
        self._wake.set()

    def gripper_open(self) -> int:
        return self._call("gripper release",
                          lambda a: a.rm_set_gripper_release(500, False, GRIPPER_ACK))

    def gripper_close(self) -> int:
        return self._call("gripper pick",
                          lambda a: a.rm_set_gripper_pick(500, 200, False, GRIPPER_ACK))

    def stop_motion(self) -> int:
        """Immediate stop (``set_arm_stop``): the controller drops its target and halts.

        Sent whenever a connection exists, even while the link counts as lost or not yet
        ready: a link declared lost after a stall of this process may still reach the
        controller, and an e-stop must never be skipped because of what we last concluded.
        """
        rc = self._call("stop", lambda a: a.rm_set_arm_stop(), require_ready=False)
        if rc != 0:
            # No connection right now: the stop goes out first thing after the reconnect.
            self._stop_pending = True
        return rc

    def slow_stop(self) -> int:
        return self._call("slow stop", lambda a: a.rm_set_arm_slow_stop(), require_ready=False)

    def move_home(self, q_rad: Sequence[float], speed_percent: int = 20,
                  timeout_s: float = 60.0, tolerance_rad: float = 1e-4) -> int:
        """Planned joint move to ``q_rad``; blocks the caller until the arm is there.

        Returns 0 at the target, -6 if the move was stopped, -4 on timeout, or the SDK's
        code if the move was not accepted. Streaming is refused while it runs.
        """
        if self._link is not Link.READY:
            return -1
        with self._lock:
            if self._busy:
                return -1
            self._busy = "homing"
        try:
            # A leftover error (e.g. a refused target) makes the controller refuse the move.
            self._call("clear errors", lambda a: a.rm_clear_system_err())
            started = time.monotonic_ns()
            rc = self._call("movej", lambda a: a.rm_movej(wire_degrees(q_rad), speed_percent,
                                                           0, 0, 0))
            if rc != 0:
                return rc
            return self._wait_for_move(started, q_rad, timeout_s, tolerance_rad)
        finally:
            self._busy = ""

    def move_to_pose(self, flange_pose: np.ndarray, *, linear: bool = False,
                     speed_percent: int = 20, timeout_s: float = 60.0) -> int:
        """Planned move of the flange to ``flange_pose`` (4x4, in the arm's base frame: the
        controller's work frame ``World`` with its tool frame ``Arm_Tip``), planned by the
        controller: ``movej_p`` (joint space) or, ``linear``, ``movel`` (a straight line).
        Blocks the caller until the flange is there; returns 0, the SDK's code when the
        controller refuses (1: out of reach, or a line it cannot follow), -6 if stopped, -4 on
        timeout. Streaming is refused while it runs."""
        pose = [*(float(v) for v in flange_pose[:3, 3]), *matrix_to_rpy(flange_pose[:3, :3])]
        model = arm_model(self.cfg.model)

        def reached(state: ArmState) -> bool:
            at = kinematics.flange_pose(model, np.asarray(state.positions_rad))
            turn = at[:3, :3].T @ flange_pose[:3, :3]
            angle = math.acos(max(-1.0, min(1.0, (float(np.trace(turn)) - 1.0) / 2.0)))
            return (float(np.linalg.norm(at[:3, 3] - flange_pose[:3, 3])) <= POSE_TOLERANCE_M
                    and angle <= POSE_TOLERANCE_RAD)

        what = "movel" if linear else "movej_p"
        return self._planned(what, lambda a: (a.rm_movel if linear else a.rm_movej_p)(
            pose, speed_percent, 0, 0, 0), reached,
            (STATUS_MOVE_L,) if linear else (STATUS_MOVE_J,), timeout_s)

    def set_drag_teach(self, on: bool, record: bool = False) -> int:
        """Drag teaching on (the arm goes where a hand pushes it; ``record``: the controller
        records the motion) or off. Streaming is refused while it is on: the arm is the
        hand's. Returns the SDK's code."""
        if on:
            with self._lock:
                if self._busy:
                    return -1
                self._busy = "drag teaching"
            rc = self._call("start drag teach", lambda a: a.rm_start_drag_teach(int(record)))
            if rc != 0:
                self._busy = ""
            return rc
        rc = self._call("stop drag teach", lambda a: a.rm_stop_drag_teach(), require_ready=False)
        if rc == 0 and self._busy == "drag teaching":
            self._busy = ""
        return rc

    @property
    def busy(self) -> str:
        """What keeps streaming off: "homing", "moving to a pose", "drag teaching", or ""."""
        return self._busy

    def _planned(self, what: str, send: Callable[[SdkArm], int],
                 reached: Callable[[ArmState], bool], moving_codes: Tuple[int, ...],
                 timeout_s: float) -> int:
        if self._link is not Link.READY:
            return -1
        with self._lock:
            if self._busy:
                return -1
            self._busy = "moving to a pose"
        try:
            self._call("clear errors", lambda a: a.rm_clear_system_err())
            started = time.monotonic_ns()
            rc = self._call(what, send)
            if rc != 0:
                return rc
            return self._wait_for(started, reached, moving_codes, timeout_s)
        finally:
            self._busy = ""

    def _wait_for_move(self, started_ns: int, q_rad: Sequence[float], timeout_s: float,
                       tolerance_rad: float) -> int:
        return self._wait_for(
            started_ns, lambda state: max(abs(a - b) for a, b in zip(state.positions_rad, q_rad))
            <= tolerance_rad, (STATUS_MOVE_J,), timeout_s)

    def _wait_for(self, started_ns: int, reached: Callable[[ArmState], bool],
                  moving_codes: Tuple[int, ...], timeout_s: float) -> int:
        # The status still says "stop" (or "idle") for a push or two after the move is sent,
        # so a stop only ends the wait once the move has been seen running.
        start_deadline = time.monotonic() + 1.0
        deadline = time.monotonic() + timeout_s
        moving = False
        while time.monotonic() < deadline:
            if self._link not in (Link.READY, Link.STALE):
                return -1
            state = self._state
            if state is not None and state.received_mono_ns > started_ns:
                moving = moving or state.status_code in moving_codes
                if state.status_code not in moving_codes and reached(state):
                    return 0
                if moving and state.status_code in (STATUS_STOP, STATUS_SLOW_STOP):
                    return -6  # the SDK's "stopped externally"
                if not moving and time.monotonic() > start_deadline:
                    return 1  # the controller did not start the move
            time.sleep(0.005)
        return -4

    def _call(self, what: str, fn: Callable[[SdkArm], int], require_ready: bool = True) -> int:
        with self._request_lock:
            arm = self._arm
            if arm is None or (require_ready and self._link is not Link.READY):
                return -1
            rc = fn(arm)
        if rc == -1:
            self._fault(f"send failed: {what} returned -1")
        elif rc == -2:
            self.stats.reply_timeouts += 1
        return rc

    # ---- worker: connect, reconnect, gripper -------------------------------------------------

    def _work(self) -> None:
        backoff = self._backoff_s[0]
        next_poll = 0.0
        while not self._stop.is_set():
            if self._link in (Link.CONNECTING, Link.LOST):
                if self._connect():
                    backoff = self._backoff_s[0]
                    continue
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_s[1])
                continue
            self._send_gripper_target()
            now = time.monotonic()
            if now >= next_poll and not self._busy:
                self._poll_gripper()
                next_poll = now + self._gripper_poll_s
            self._wake.wait(max(0.0, min(self._gripper_poll_s, next_poll - time.monotonic())))
            self._wake.clear()

    def _connect(self) -> bool:
        self._drop_handle()
        if self._link is Link.LOST:
            self.stats.reconnects += 1
        arm = sdk().new_arm()
        arm.rm_set_timeout(self._reply_timeout_ms)
        handle = arm.rm_create_robot_arm(self.cfg.ip, self.cfg.tcp_port, level=3)
        if handle.id == -1:
            arm.rm_delete_robot_arm()
            return False
        if arm.arm_dof != self.model.dof:
            arm.rm_delete_robot_arm()
            self._set_link(Link.LOST, f"model mismatch: controller at {self.cfg.ip} has "
                                      f"{arm.arm_dof} joints, config says {self.cfg.model}")
            return False
        if self._stop_pending and arm.rm_set_arm_stop() == 0:
            self._stop_pending = False
        limits = self._read_limits(arm)
        push = rm_realtime_push_config_t(
            cycle=self.cfg.push_cycle, enable=True, port=self.cfg.udp_port, force_coordinate=-1,
            ip=local_address_towards(self.cfg.ip),
            custom_config=rm_udp_custom_config_t(joint_speed=1, arm_current_status=1))
        if arm.rm_set_realtime_push(push) != 0 or limits is None:
            arm.rm_delete_robot_arm()
            return False
        self.limits = limits
        self._arm = arm
        self._gripper_sent = None
        connected = time.monotonic_ns()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not self._stop.is_set():
            state = self._state
            if state is not None and state.received_mono_ns > connected:
                self._poll_gripper()
                self._set_link(Link.READY, f"connected to {self.cfg.ip}:{self.cfg.tcp_port}",
                               only_from=(Link.CONNECTING, Link.LOST))
                return True
            time.sleep(0.002)
        self._arm = None
        arm.rm_delete_robot_arm()
        return False

    def _read_limits(self, arm: SdkArm) -> Optional[JointLimits]:
        """The controller's own limits (degrees, deg/s) take precedence over the model table."""
        readings = [arm.rm_get_joint_min_pos(), arm.rm_get_joint_max_pos(),
                    arm.rm_get_joint_max_speed()]
        if any(rc != 0 for rc, _ in readings):
            return None
        dof = self.model.dof
        lo, hi, vmax = ([math.radians(v) for v in values[:dof]] for _, values in readings)
        return JointLimits(tuple(lo), tuple(hi), tuple(vmax))

    def _send_gripper_target(self) -> None:
        target = self._gripper_target
        if target is None:
            return
        wire = gripper_wire(target, self._gripper_max_m)
        if wire == self._gripper_sent:
            return
        if self._call("gripper",
                      lambda a: a.rm_set_gripper_position(wire, False, GRIPPER_ACK)) == 0:
            self._gripper_sent = wire
            self.stats.gripper_commands += 1

    def _poll_gripper(self) -> None:
        with self._request_lock:
            arm = self._arm
            if arm is None:
                return
            rc, info = arm.rm_get_gripper_state()
        if rc == 0:
            self._gripper_m = gripper_opening_m(int(info["actpos"]), self._gripper_max_m)
            state = self._state
            if state is not None:
                self._state = replace(state, gripper_opening_m=self._gripper_m)
        elif rc == -1:
            self._fault("send failed: get_gripper_state returned -1")
        elif rc == -2:
            self.stats.reply_timeouts += 1

    def _drop_handle(self) -> None:
        with self._request_lock, self._handle_lock:
            arm, self._arm = self._arm, None
            if arm is not None:
                arm.rm_delete_robot_arm()

    # ---- watchdog ----------------------------------------------------------------------------

    def _state_age_ns(self) -> int:
        state = self._state
        return time.monotonic_ns() - (state.received_mono_ns if state else self._link_since_ns)

    def _watch(self) -> None:
        period = min(0.005, self._state_timeout_ns / 1e9 / 4)
        while not self._stop.wait(period):
            link = self._link
            if link is Link.STALE and self._state_age_ns() > self._link_timeout_ns:
                self._fault(f"link timeout: no state push for {self._state_age_ns() / 1e6:.0f} ms")
                continue
            if link is not Link.READY or self._state_age_ns() <= self._state_timeout_ns:
                continue
            # After a pause of the whole process (a garbage collection, CPU load) this thread
            # may run before the SDK thread has delivered the pushes that queued up meanwhile:
            # give them one grace period before calling the controller silent.
            time.sleep(STALE_GRACE_S)
            age = self._state_age_ns()
            if age > self._state_timeout_ns:
                self._silent(f"state timeout: no state push for {age / 1e6:.0f} ms")
