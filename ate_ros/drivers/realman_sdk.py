"""Process-wide access to RealMan's SDK (``Robotic_Arm``, ctypes over ``libapi_c.so``).

The SDK has process-level state that every arm shares, so it lives here once:

- ``rm_init`` must run exactly once per process (the first ``RoboticArm(mode)``); later arms
  are ``RoboticArm()``. ``rm_destroy`` is terminal (no arm can connect afterwards), so it is
  never called.
- There is one realtime-state callback per process; it sees the pushes of every arm and is
  dispatched here by the sender's IP (``arm_port`` in the callback is unreliable after a
  reconnect).
- The SDK never releases a UDP push port and listens on at most five per process, so each arm
  keeps one fixed push port for the life of the process, reconnects included.
- The SDK treats an interrupted system call as a failure: a signal that lands on a thread inside
  ``connect``/``recv`` (SIGCHLD from any child process once Python, or torch's DataLoader, has
  a handler for it; SIGINT; a timer) ends in "socket connect err!" or a lost link. Every SDK call
  therefore runs with asynchronous signals blocked in the calling thread (:class:`SdkArm`);
  the threads the SDK starts inherit that mask and never see a signal. Python runs its handlers
  in the main thread between bytecodes anyway, so a deferred signal only waits for the call.
- One SDK thread receives the replies of every arm: it builds an fd set of the arms' sockets
  and ``select``s on it, and it *exits for good* when ``select`` fails with anything but
  EINTR. A controller that drops leaves its socket at end-of-file, which that thread then polls
  every millisecond; closing the socket (``rm_delete_robot_arm``) races with the next
  ``select``, and a lost race (EBADF) ends every reply of every arm in the process: each later
  call returns -2 until the process restarts (seen after 9 to 28 reconnects to a killed
  emulator). :class:`SdkArm` therefore remembers its connection's descriptor and, before
  deleting the handle, atomically points that descriptor at a socket that never becomes
  readable (``dup2``), so the thread is parked in ``select`` when the SDK closes it.
- The SDK runs one request/reply call at a time for all arms of the process: a call waits for
  any other arm's call in flight, connects included (a controller that does not answer the
  TCP connect holds every other arm's calls for the SDK's 3 s connect timeout; hence one arm
  per process on the robot). While one call waits for another *inside* the SDK, its UDP
  thread stops delivering state pushes, of every arm, until the first call ends (up to its
  reply timeout: both arms went stale when one controller was slow to answer). :class:`SdkArm`
  therefore queues request/reply calls on a process-wide lock of its own, so at most one is
  inside the SDK; the calls that expect no reply (``*_canfd``, ``*_follow``) go straight
  through.
- The SDK's UDP thread runs until the process ends and calls the realtime callback for every
  push. After Python has begun to shut down, a call into Python crashes the process (SIGSEGV
  in ``PyGILState_Ensure``: seen in 1 of 6 Ctrl-C stops of an arm node while its controller
  kept pushing, more under load). At interpreter exit the callback is therefore replaced by a
  C function that does nothing (:meth:`_Sdk.silence`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import math
import os
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

from Robotic_Arm.rm_robot_interface import (
    RoboticArm, rm_realtime_arm_state_callback_ptr, rm_thread_mode_e,
)

#: RealMan wire unit of joint angles: 0.001 degree.
WIRE_DEG_RESOLUTION = 0.001


@dataclass(frozen=True)
class PushSample:
    """One realtime state push, already in SI units."""

    positions_rad: Tuple[float, ...]
    velocities_rad_s: Tuple[float, ...]
    errors: Tuple[int, ...]
    status_code: int
    parse_error: int


PushHandler = Callable[[PushSample], None]

#: Signals that report a fault of the thread itself stay deliverable; all others wait.
_SYNCHRONOUS = {signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE,
                signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGSYS}
_DEFERRED = frozenset(signal.valid_signals()) - _SYNCHRONOUS


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Block asynchronous signals in this thread for the duration (threads started inside
    inherit the mask); pending ones are delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


#: Calls that send and expect no reply: they never wait on another call.
_SEND_ONLY = frozenset({"rm_movej_canfd", "rm_movep_canfd", "rm_movej_follow", "rm_movep_follow"})

#: At most one request/reply call inside the SDK per process (see the module docstring).
_REQUEST = threading.Lock()


@contextlib.contextmanager
def _sdk_call(name: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        if name not in _SEND_ONLY:
            stack.enter_context(_REQUEST)
        stack.enter_context(signals_deferred())
        yield


class SdkArm:
    """A ``RoboticArm`` whose every method runs inside :func:`signals_deferred` and, unless
    it expects no reply, alone in the SDK; its connection is parked before the SDK closes it
    (see the module docstring)."""

    __slots__ = ("_arm", "_connection")

    def __init__(self, arm: RoboticArm) -> None:
        self._arm = arm
        #: (descriptor, socket inode) of the TCP connection to the controller, once connected.
        self._connection: Optional[Tuple[int, int]] = None

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._arm, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with _sdk_call(name):
                return value(*args, **kwargs)
        return call

    @property
    def connection_fd(self) -> Optional[int]:
        """The descriptor of the connection to the controller (None before connecting, or
        where it could not be told apart)."""
        return self._connection[0] if self._connection is not None else None

    def rm_create_robot_arm(self, ip: str, port: int, level: int = 3) -> Any:
        before = _socket_inodes()
        with _sdk_call("rm_create_robot_arm"):
            handle = self._arm.rm_create_robot_arm(ip, port, level=level)
        self._connection = _connection_to(ip, port, before) if handle.id != -1 else None
        return handle

    def rm_delete_robot_arm(self) -> int:
        connection, self._connection = self._connection, None
        if connection is not None:
            _park(*connection)
        with _sdk_call("rm_delete_robot_arm"):
            return self._arm.rm_delete_robot_arm()


#: Long enough for the SDK's receive thread to finish a pass over a readable socket and enter
#: ``select`` again with the parked one (it sleeps 1 ms after reading end-of-file).
_PARK_SETTLE_S = 0.005


def _socket_inodes() -> Dict[int, int]:
    """This process's socket descriptors and their inodes (none where /proc is missing)."""
    found: Dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            st = os.fstat(int(name))
        except (OSError, ValueError):
            continue  # closed meanwhile, or the listing's own descriptor
        if stat.S_ISSOCK(st.st_mode):
            found[int(name)] = st.st_ino
    return found


def _connection_to(ip: str, port: int, before: Dict[int, int]) -> Optional[Tuple[int, int]]:
    """The one socket opened since ``before`` that is connected to ``ip:port``, if exactly one."""
    matches = []
    for fd, inode in _socket_inodes().items():
        if before.get(fd) == inode:
            continue
        try:
            probe = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it leaves fd alone
        except OSError:
            continue
        with probe:
            try:
                if probe.type == socket.SOCK_STREAM and probe.getpeername() == (ip, port):
                    matches.append((fd, inode))
            except OSError:
                pass
    return matches[0] if len(matches) == 1 else None


def _park(fd: int, inode: int) -> None:
    """Point ``fd`` at a socket that never becomes readable, if it is still our connection."""
    try:
        if os.fstat(fd).st_ino != inode:
            return  # not the SDK's socket any more: leave it alone
    except OSError:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:  # unbound: never readable
        os.dup2(quiet.fileno(), fd, inheritable=False)
    time.sleep(_PARK_SETTLE_S)


class _Sdk:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialised = False
        self._handlers: Dict[str, Tuple[int, PushHandler]] = {}
        self._callback = rm_realtime_arm_state_callback_ptr(self._on_push)
        self._callback_owner: Optional[RoboticArm] = None
        self._noop: Any = None

    def new_arm(self) -> SdkArm:
        with self._lock, _sdk_call("rm_init"):
            if self._initialised:
                return SdkArm(RoboticArm())
            arm = RoboticArm(rm_thread_mode_e.RM_TRIPLE_MODE_E)  # rm_init: starts the SDK's threads
            arm.rm_realtime_arm_state_call_back(self._callback)
            self._initialised = True
            self._callback_owner = arm
            atexit.register(self.silence)  # runs before Python stops accepting calls
            return SdkArm(arm)

    def silence(self) -> None:
        """Point the SDK's realtime callback at a C function that ignores its argument, so that
        pushes arriving while Python shuts down never call into it. ``sched_yield`` takes no
        argument; a C caller cleans up its own arguments, so the push it is handed is harmless."""
        owner = self._callback_owner
        if owner is None:
            return
        self._handlers.clear()
        noop = ctypes.cast(ctypes.CDLL(None).sched_yield, rm_realtime_arm_state_callback_ptr)
        with signals_deferred():  # a local registration: no reply, so no request lock to wait for
            owner.rm_realtime_arm_state_call_back(noop)
        self._noop = noop  # the SDK keeps the pointer: keep the object alive

    def subscribe(self, arm_ip: str, dof: int, handler: PushHandler) -> None:
        with self._lock:
            if arm_ip in self._handlers:
                raise RuntimeError(f"another driver already receives the state of {arm_ip}")
            self._handlers[arm_ip] = (dof, handler)

    def unsubscribe(self, arm_ip: str) -> None:
        with self._lock:
            self._handlers.pop(arm_ip, None)

    def _on_push(self, state) -> None:
        # Runs on the SDK's UDP thread at the push rate (100 Hz per arm by default): convert and hand over.
        entry = self._handlers.get(state.arm_ip.decode(errors="replace"))
        if entry is None:
            return
        dof, handler = entry
        js = state.joint_status
        n_err = min(int(state.err.err_len), len(state.err.err))
        handler(PushSample(
            positions_rad=tuple(math.radians(js.joint_position[i]) for i in range(dof)),
            velocities_rad_s=tuple(math.radians(js.joint_speed[i]) for i in range(dof)),
            errors=tuple(int(state.err.err[i]) for i in range(n_err) if state.err.err[i]),
            status_code=int(state.arm_current_status),
            parse_error=int(state.errCode),
        ))


_SDK = _Sdk()


def sdk() -> _Sdk:
    return _SDK


def wire_degrees(q_rad: Sequence[float]) -> list:
    """Joint targets in degrees that the SDK turns into the nearest 0.001 degree.

    The SDK passes degrees as float32 and truncates toward zero (0.7 deg went out as 699), so
    each value is placed in the middle of its 0.001-degree bucket: truncation then yields the
    rounded value, with margin for float32 error up to 360 degrees.
    """
    out = []
    for q in q_rad:
        n = round(math.degrees(q) / WIRE_DEG_RESOLUTION)
        out.append((n + math.copysign(0.5, n)) * WIRE_DEG_RESOLUTION if n else 0.0)
    return out


def local_address_towards(ip: str) -> str:
    """The robot PC's own address on the route to the controller: where pushes must go."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, 9))  # no packet is sent; this only selects the route
        return s.getsockname()[0]


def gripper_wire(opening_m: float, max_opening_m: float) -> int:
    """RealMan gripper position 1..1000 spans 0..max opening."""
    return int(min(1000, max(1, round(opening_m / max_opening_m * 1000))))


def gripper_opening_m(wire: int, max_opening_m: float) -> float:
    return min(1000, max(0, wire)) / 1000.0 * max_opening_m


#: Controller system error codes (rm_docs errorList), for diagnostics.
SYSTEM_ERRORS = {
    0x1001: "joint communication", 0x1002: "target angle over limit",
    0x1003: "singular / unreachable", 0x1004: "realtime kernel communication",
    0x1005: "joint bus", 0x1006: "planning kernel", 0x1007: "joint overspeed",
    0x1008: "end board disconnected", 0x1009: "speed limit", 0x100A: "acceleration limit",
    0x100B: "brake not released", 0x100C: "overspeed while dragging", 0x100D: "collision",
    0x100E: "no such work frame", 0x100F: "no such tool frame", 0x1010: "joint disabled",
    0x1011: "arc planning", 0x1012: "self-collision", 0x1013: "electronic fence",
    0x1014: "soft limit", 0x2001: "gripper", 0x2002: "dexterous hand",
    0x2003: "6-axis force sensor", 0x2004: "1-axis force sensor", 0x2005: "output current",
    0x5003: "controller over-temperature", 0x5005: "over-current", 0x5006: "under-current",
    0x5007: "over-voltage", 0x5008: "under-voltage", 0x5009: "realtime communication",
}


def describe_error(code: int) -> str:
    return f"0x{code:04X} {SYSTEM_ERRORS.get(code, 'unknown error')}"


