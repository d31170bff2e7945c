"""Emulator of one RealMan 3rd-generation arm controller: JSON over TCP plus the UDP push.

It answers what RealMan's Python SDK (`Robotic_Arm` 1.1.6) sends, with the reply names, keys
and units the SDK parses (see the project's realman_protocol reference, section 1), so the
driver runs the same code path against it as against the robot. Motion comes from the pure
model in `arm_motion`; this module adds the sockets, the 5 ms clock, the command log and
fault injection.

Choices where the real controller's behaviour is not documented:
- unknown commands are logged (a warning the first time per name) and answered
  `{"command": <name>, "set_state": false, "emulator_unsupported": true}`, what a controller
  that does not know the command plausibly says. SDK calls whose reply carries the request's
  name then fail at once (-3, e.g. `rm_set_arm_pause`) instead of looking like a network
  fault; calls that expect another name (e.g. `rm_get_joint_en_state`) still time out (-2);
- Cartesian motion (`movel`, `movej_p`, `movec`, `moves`) is refused with
  `receive_state: false` (no inverse kinematics here); `movep_canfd`/`movep_follow` are logged
  and ignored (they have no reply to refuse with);
- a refused `movej` target also answers `receive_state: false` and latches 0x1002;
- completion events go to the connection that sent the command; a quick stop sends none, so a
  blocking `rm_movej` interrupted by `set_arm_stop` ends in the SDK's -6 "stopped externally";
- while "unresponsive" the controller is hung: commands are logged but neither executed nor
  answered, and no completion events are sent (the UDP push goes on unless paused too);
- the push goes out whenever it is enabled, with or without a TCP client (a configured target
  IP is enough for the real controller), and includes `joint_speed` and `arm_current_status`
  until `set_realtime_push` turns those custom items off.

Fault injection from another process: start with `--control-port` and send text lines (one
JSON reply line each) to that TCP port: `ping`, `drop`, `refuse on|off`, `push on|off`,
`push_delay <ms>`, `error <code>` (decimal or 0x..), `clear_errors`, `unresponsive on|off`,
`state`, `commands [name]`, `clear_commands`.
"""

from __future__ import annotations

import argparse
import codecs
import ipaddress
import json
import logging
import math
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ate_core.robot.models import ArmModel, arm_model
from ate_ros.realtime import raise_to_fifo
from ate_ros.signals import setting
from ate_ros.sim.arm_motion import (
    GRIPPER_DEFAULT_SPEED,
    ArmMotion,
    Arrival,
    GripperMotion,
)

_LOG = logging.getLogger(__name__)

DEFAULT_IP = "127.0.0.1"
DEFAULT_TCP_PORT = 8080
DEFAULT_PUSH_PORT = 8089
#: The controller's base period: physics steps every 5 ms, the push every `cycle` steps.
BASE_PERIOD_S = 0.005
#: If the tick thread falls this many periods behind (a stalled process), it skips ahead
#: instead of bursting stale packets.
MAX_CATCH_UP_TICKS = 20
#: Socket timeouts that bound how long a thread takes to notice `stop()`.
_POLL_S = 0.1
#: A client that sends this much text without completing a JSON object is talking nonsense.
_MAX_PENDING_CHARS = 1 << 20

Json = Dict[str, Any]

#: Pass-through commands: 3rd-gen controllers never answer them and the SDK awaits nothing,
#: so not even a malformed one gets a refusal.
_NO_REPLY = frozenset({"movej_canfd", "movej_follow", "movep_canfd", "movep_follow",
                       "movev_canfd"})


# ---- units on the wire ------------------------------------------------------------------------
def _milli_deg(rad: Sequence[float]) -> List[int]:
    """rad -> RealMan's 0.001 degree integers."""
    return [int(round(math.degrees(float(x)) * 1000.0)) for x in rad]


def _rad_from_milli_deg(values: Sequence[Any]) -> np.ndarray:
    return np.radians(np.asarray([float(v) for v in values], dtype=float) / 1000.0)


def _milli_rpm(rad_per_s: Sequence[float]) -> List[int]:
    """rad/s (or rad/s^2) -> 0.001 RPM (RPM/s), the unit of get_joint_max_speed/acc."""
    return [int(round(math.degrees(float(x)) / 6.0 * 1000.0)) for x in rad_per_s]


# ---- stream framing -----------------------------------------------------------------------------
class JsonObjectStream:
    """Cuts a TCP byte stream into JSON objects.

    The SDK ends each request with "\\r\\n" but sends `movec` pretty-printed over several
    lines, so objects are delimited by balanced braces (outside strings), not by newlines.
    `feed` returns parsed objects, and for text that is not a JSON object a `str` describing
    what was skipped.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""

    def feed(self, data: bytes) -> List[Union[Json, str]]:
        self._buf += self._utf8.decode(data)
        out: List[Union[Json, str]] = []
        while True:
            start = self._buf.find("{")
            if start < 0:
                junk = self._buf.strip()
                if junk:
                    out.append(f"skipped non-JSON text {junk[:80]!r}")
                self._buf = ""
                return out
            junk = self._buf[:start].strip()
            if junk:
                out.append(f"skipped non-JSON text {junk[:80]!r}")
            end = self._object_end(start)
            if end < 0:
                self._buf = self._buf[start:]
                if len(self._buf) > _MAX_PENDING_CHARS:
                    out.append(f"dropped {len(self._buf)} chars without a complete JSON object")
                    self._buf = ""
                return out
            text = self._buf[start:end]
            self._buf = self._buf[end:]
            try:
                obj = json.loads(text)
            except ValueError as exc:
                out.append(f"malformed JSON ({exc}): {text[:80]!r}")
                continue
            out.append(obj)

    def _object_end(self, start: int) -> int:
        depth = 0
        in_string = False
        escaped = False
        buf = self._buf
        for i in range(start, len(buf)):
            c = buf[i]
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return i + 1
        return -1


# ---- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceivedCommand:
    """One command as it arrived: what tests in this or another process assert on."""

    name: str
    payload: Json
    mono_s: float
    wall_s: float
    connection: int
    handled: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass
class PushConfig:
    """The controller's realtime push settings (`get_realtime_push` / `set_realtime_push`).

    `joint_speed` and `arm_current_status` are on by default so a driver gets the arm status
    without configuring custom items.
    """

    port: int
    ip: str = DEFAULT_IP
    cycle: int = 1
    enable: bool = True
    force_coordinate: int = 0
    custom: Dict[str, bool] = field(default_factory=lambda: {
        "joint_speed": True, "lift_state": False, "expand_state": False,
        "arm_current_status": True, "aloha_state": False})


class _Connection:
    def __init__(self, conn_id: int, sock: socket.socket, peer: Tuple[str, int]) -> None:
        self.id = conn_id
        self.sock = sock
        self.peer = peer
        self.send_lock = threading.Lock()
        self.closed = False

    def send(self, obj: Json) -> bool:
        data = (json.dumps(obj, separators=(",", ":")) + "\r\n").encode()
        with self.send_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError as exc:
                _LOG.info("connection %d: send failed: %s", self.id, exc)
                return False

    def close(self) -> None:
        with self.send_lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _completion_event(device: int) -> Json:
    return {"state": "current_trajectory_state", "trajectory_state": True, "device": device,
            "trajectory_connect": 0}


# ---- the emulator -----------------------------------------------------------------------------------
class RealManEmulator:
    """One emulated RealMan controller on (ip, tcp_port), pushing state to (push ip, push port).

    Ports may be 0 (OS-chosen); after `start()` the bound ones are in `tcp_port`,
    `push_source_port` and `control_port`. `push_port` is where the push goes; the SDK binds
    that port itself after reading `get_realtime_push`, so it has to be a real port number,
    and one the SDK process can still add (it listens on at most five per process).
    `log_path` is appended to, one JSON line per received command.
    """

    def __init__(self, model: Union[str, ArmModel] = "RM75-B", ip: str = DEFAULT_IP,
                 tcp_port: int = DEFAULT_TCP_PORT, push_port: int = DEFAULT_PUSH_PORT,
                 push_ip: str = DEFAULT_IP, cycle: int = 1, log_path: Optional[str] = None,
                 initial_joints_deg: Optional[Sequence[float]] = None,
                 control_port: Optional[int] = None,
                 max_logged_commands: int = 200_000) -> None:
        self.model = arm_model(model) if isinstance(model, str) else model
        if cycle < 1:
            raise ValueError(f"cycle must be >= 1 (units of 5 ms), got {cycle}")
        if not 0 < push_port < 65536:
            raise ValueError(f"push_port must be 1..65535, got {push_port}")
        q0 = None if initial_joints_deg is None else np.radians(np.asarray(initial_joints_deg, float))
        self.ip = ip
        self.tcp_port = tcp_port
        self.control_port = control_port
        self.push_source_port: Optional[int] = None
        self._log_path = log_path
        self._lock = threading.RLock()
        self._motion = ArmMotion(self.model, q0)
        self._gripper = GripperMotion()
        self._push = PushConfig(port=push_port, ip=push_ip, cycle=cycle)
        # faults
        self._push_paused = False
        self._push_delay_s = 0.0
        self._unresponsive = False
        self._refuse_connections = False
        # command log
        self._log_lock = threading.Lock()
        self._commands: Deque[ReceivedCommand] = deque(maxlen=max_logged_commands)
        self._log_file = None
        # sockets and threads
        self._stop = threading.Event()
        self._started = False
        self._listener: Optional[socket.socket] = None
        self._udp: Optional[socket.socket] = None
        self._control: Optional[socket.socket] = None
        self._connections: Dict[int, _Connection] = {}
        self._conn_lock = threading.Lock()
        self._next_conn_id = 1
        self._threads: List[threading.Thread] = []
        self._pending_packets: Deque[Tuple[float, bytes, Tuple[str, int]]] = deque()
        self.packets_sent = 0
        self._warned: Set[str] = set()
        self._handlers: Dict[str, Callable[[Json, _Connection, float], Optional[Json]]] = {
            "get_arm_software_info": self._h_software_info,
            "get_arm_current_trajectory": self._h_current_trajectory,
            "get_realtime_push": self._h_get_realtime_push,
            "set_realtime_push": self._h_set_realtime_push,
            "get_current_work_frame": lambda p, c, t: {
                "state": "current_work_frame", "frame_name": "World", "pose": [0] * 6},
            "get_current_tool_frame": lambda p, c, t: {
                "state": "current_tool_frame", "tool_name": "Arm_Tip", "pose": [0] * 6,
                "payload": 0, "position": [0, 0, 0]},
            "get_install_pose": lambda p, c, t: {"state": "install_pose", "pose": [0, 0, 0]},
            "get_joint_min_pos": lambda p, c, t: {
                "state": "joint_min_pos", "min_pos": _milli_deg(self.model.lower_rad)},
            "get_joint_max_pos": lambda p, c, t: {
                "state": "joint_max_pos", "max_pos": _milli_deg(self.model.upper_rad)},
            "get_joint_max_speed": lambda p, c, t: {
                "state": "joint_max_speed", "joint_speed": _milli_rpm(self.model.max_velocity_rad_s)},
            "get_joint_max_acc": lambda p, c, t: {
                "state": "joint_max_acc", "joint_acc": _milli_rpm(self.model.max_acceleration_rad_s2)},
            "get_DH_data": self._h_dh_data,
            "get_current_arm_state": self._h_current_arm_state,
            "get_joint_degree": self._h_joint_degree,
            "get_arm_all_state": self._h_all_state,
            "movej": self._h_movej,
            "movej_canfd": self._h_movej_canfd,
            "movej_follow": self._h_movej_canfd,
            "movep_canfd": self._h_ignored_cartesian,
            "movep_follow": self._h_ignored_cartesian,
            "movel": self._h_refused_cartesian,
            "movej_p": self._h_refused_cartesian,
            "movec": self._h_refused_cartesian,
            "moves": self._h_refused_cartesian,
            "set_arm_stop": self._h_stop,
            "set_arm_slow_stop": self._h_slow_stop,
            "set_arm_delete_trajectory": self._h_delete_trajectory,
            "set_gripper_position": self._h_gripper,
            "set_gripper_pick": self._h_gripper,
            "set_gripper_pick_on": self._h_gripper,
            "set_gripper_release": self._h_gripper,
            "get_gripper_state": self._h_gripper_state,
            "clear_system_err": self._h_clear_system_err,
            # No joint faults are emulated, so clearing one always succeeds.
            "set_joint_clear_err": lambda p, c, t: {
                "command": "set_joint_clear_err", "joint_clear_err": True},
            "set_arm_power": self._h_set_power,
            "get_arm_power_state": lambda p, c, t: {
                "state": "arm_power_state", "power_state": int(self._motion.powered)},
        }

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "RealManEmulator":
        if self._started:
            raise RuntimeError("emulator already started")
        self._started = True
        try:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((self.ip, self.tcp_port))
            self._listener.listen(8)
            self._listener.settimeout(_POLL_S)
            self.tcp_port = self._listener.getsockname()[1]
            # Bound to our own IP: the SDK takes the datagram's source address as `arm_ip`.
            self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._udp.bind((self.ip, 0))
            self.push_source_port = self._udp.getsockname()[1]
            if self.control_port is not None:
                self._control = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._control.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._control.bind((self.ip, self.control_port))
                self._control.listen(4)
                self._control.setblocking(False)
                self.control_port = self._control.getsockname()[1]
            if self._log_path:
                self._log_file = open(self._log_path, "a", encoding="utf-8")
        except BaseException:
            self._close_sockets()
            raise
        self._spawn(self._accept_loop, "accept")
        self._spawn(self._tick_loop, "tick")
        if self._control is not None:
            self._spawn(self._control_loop, "control")
        _LOG.info("%s emulator on %s:%d, push -> %s:%d every %d ms", self.model.name, self.ip,
                  self.tcp_port, self._push.ip, self._push.port, self._push.cycle * 5)
        return self

    def stop(self) -> None:
        """Stop every thread, close every socket and the log file. Idempotent."""
        self._stop.set()
        current = threading.current_thread()
        while True:
            # Repeat: the accept thread may hand over one last connection while we close.
            with self._conn_lock:
                conns = list(self._connections.values())
                self._connections.clear()
                alive = [t for t in self._threads if t.is_alive() and t is not current]
            for conn in conns:
                conn.close()
            if not alive and not conns:
                break
            for thread in alive:
                thread.join()
        with self._conn_lock:
            self._threads.clear()
        self._close_sockets()
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> "RealManEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _close_sockets(self) -> None:
        for sock in (self._listener, self._udp, self._control):
            if sock is not None:
                sock.close()

    def _thread_name(self, role: str) -> str:
        return f"realman-emu-{self.ip}:{self.tcp_port}-{role}"

    def _spawn(self, target: Callable[..., None], role: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=self._thread_name(role),
                                  daemon=True)
        with self._conn_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    # ---- observation ---------------------------------------------------------------------------------
    def joints_deg(self) -> List[float]:
        with self._lock:
            return np.degrees(self._motion.joints_rad).tolist()

    def gripper_position(self) -> float:
        """Gripper opening in wire units (1 closed .. 1000 open)."""
        with self._lock:
            return self._gripper.position

    @property
    def arm_status(self) -> str:
        with self._lock:
            return self._motion.status

    @property
    def errors(self) -> Tuple[int, ...]:
        with self._lock:
            return self._motion.errors

    @property
    def push_config(self) -> PushConfig:
        with self._lock:
            return PushConfig(port=self._push.port, ip=self._push.ip, cycle=self._push.cycle,
                              enable=self._push.enable,
                              force_coordinate=self._push.force_coordinate,
                              custom=dict(self._push.custom))

    @property
    def push_port(self) -> int:
        """Where the push currently goes (the SDK listens there)."""
        with self._lock:
            return self._push.port

    def connection_count(self) -> int:
        with self._conn_lock:
            return len(self._connections)

    def commands(self, name: Optional[str] = None) -> List[ReceivedCommand]:
        """Commands received so far (oldest first), optionally only those called `name`."""
        with self._log_lock:
            return [c for c in self._commands if name is None or c.name == name]

    def clear_commands(self) -> None:
        with self._log_lock:
            self._commands.clear()

    def state_summary(self) -> Json:
        with self._lock:
            return {
                "model": self.model.name, "joints_deg": np.degrees(self._motion.joints_rad).tolist(),
                "status": self._motion.status, "errors": list(self._motion.errors),
                "gripper": self._gripper.position, "powered": self._motion.powered,
                "push": asdict(self._push), "push_paused": self._push_paused,
                "push_delay_ms": self._push_delay_s * 1000.0, "unresponsive": self._unresponsive,
                "refuse_connections": self._refuse_connections,
                "connections": self.connection_count(), "packets_sent": self.packets_sent,
            }

    # ---- fault injection -------------------------------------------------------------------------
    def drop_connections(self) -> int:
        """Close every client connection (the listener stays up, so clients may reconnect)."""
        with self._conn_lock:
            conns = list(self._connections.values())
            self._connections.clear()
        for conn in conns:
            conn.close()
        _LOG.warning("fault: dropped %d connection(s)", len(conns))
        return len(conns)

    def set_refuse_connections(self, refuse: bool) -> None:
        """While set, new connections are accepted and closed at once."""
        self._refuse_connections = bool(refuse)

    def pause_push(self) -> None:
        with self._lock:
            self._push_paused = True

    def resume_push(self) -> None:
        with self._lock:
            self._push_paused = False

    def set_push_delay_ms(self, delay_ms: float) -> None:
        """Send each push packet this late (its content is still from its own tick)."""
        if delay_ms < 0:
            raise ValueError(f"push delay must be >= 0 ms, got {delay_ms}")
        with self._lock:
            self._push_delay_s = delay_ms / 1000.0

    def raise_error(self, code: int) -> None:
        """Latch a system error code; it shows in `err` until `clear_system_err`."""
        with self._lock:
            self._motion.raise_error(int(code))

    def clear_errors(self) -> None:
        with self._lock:
            self._motion.clear_errors()

    def set_unresponsive(self, unresponsive: bool) -> None:
        """Keep connections open but execute and answer nothing (a hung controller)."""
        with self._lock:
            self._unresponsive = bool(unresponsive)

    # ---- TCP ---------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if not self._stop.is_set():
                    _LOG.exception("accept failed")
                return
            if self._refuse_connections:
                _LOG.warning("fault: refusing connection from %s:%d", *peer)
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(_POLL_S)
            with self._conn_lock:
                conn = _Connection(self._next_conn_id, sock, peer)
                self._next_conn_id += 1
                self._connections[conn.id] = conn
            if self._stop.is_set():
                conn.close()
                return
            _LOG.info("connection %d from %s:%d", conn.id, *peer)
            self._spawn(self._serve, f"conn{conn.id}", conn)

    def _serve(self, conn: _Connection) -> None:
        stream = JsonObjectStream()
        try:
            while not self._stop.is_set() and not conn.closed:
                try:
                    data = conn.sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                now = time.monotonic()
                wall = time.time()
                for item in stream.feed(data):
                    if isinstance(item, str):
                        _LOG.warning("connection %d: %s", conn.id, item)
                        continue
                    self._handle(item, conn, now, wall)
        finally:
            with self._conn_lock:
                if self._connections.get(conn.id) is conn:
                    del self._connections[conn.id]
            conn.close()
            _LOG.info("connection %d closed", conn.id)

    def _handle(self, msg: Json, conn: _Connection, now: float, wall: float) -> None:
        name = msg.get("command")
        if not isinstance(name, str):
            _LOG.warning("connection %d: object without a command name: %.120s", conn.id, msg)
            return
        with self._lock:
            unresponsive = self._unresponsive
        self._record(ReceivedCommand(name, msg, now, wall, conn.id, not unresponsive))
        if unresponsive:
            return
        handler = self._handlers.get(name)
        try:
            if handler is None:
                self._warn_once(name, "unsupported command %r: %.200s", name, msg)
                reply = {"command": name, "set_state": False, "emulator_unsupported": True}
            else:
                reply = handler(msg, conn, now)
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed request to a known command: the controller refuses it.
            _LOG.warning("bad %r request (%s): %.200s", name, exc, msg)
            reply = {"command": name, "set_state": False}
        except Exception:  # an emulator bug must not take the connection down
            _LOG.exception("handling %r failed: %.200s", name, msg)
            reply = {"command": name, "set_state": False}
        if reply is not None and name not in _NO_REPLY:
            conn.send(reply)

    def _warn_once(self, key: str, fmt: str, *args: Any) -> None:
        """Warn the first time per command name: a 100 Hz stream must not flood the log."""
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        _LOG.log(level, fmt, *args)

    def _record(self, cmd: ReceivedCommand) -> None:
        with self._log_lock:
            self._commands.append(cmd)
            if self._log_file is not None:
                self._log_file.write(cmd.to_json() + "\n")
                self._log_file.flush()

    # ---- command handlers (called with the request, the connection, the receive time) ----------------
    def _h_software_info(self, p: Json, c: _Connection, now: float) -> Json:
        # Product_version is what the SDK maps to the arm model (RM75-B / RM65-B verified).
        build = {"build_time": "2024/01/01 00:00:00", "version": "V1.5.0"}
        return {"command": "arm_software_info", "Product_version": self.model.name,
                "algorithm_info": {"version": "1.4.3"}, "ctrl_info": dict(build),
                "dynamic_info": {"model_version": "1"}, "plan_info": dict(build)}

    def _h_current_trajectory(self, p: Json, c: _Connection, now: float) -> Json:
        # Blocking rm_movej polls this; "none" while it waits makes it return -6.
        with self._lock:
            kind = "movej" if self._motion.planned_move_active else "none"
            joints = _milli_deg(self._motion.joints_rad)
        return {"state": "arm_current_trajectory", "type": kind, "data": joints}

    def _h_get_realtime_push(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            cfg = self._push
            return {"command": "get_realtime_push", "cycle": cfg.cycle, "enable": cfg.enable,
                    "port": cfg.port, "ip": cfg.ip, "force_coordinate": cfg.force_coordinate,
                    "custom": dict(cfg.custom)}

    def _h_set_realtime_push(self, p: Json, c: _Connection, now: float) -> Json:
        ok = True
        cycle = p.get("cycle")
        port = p.get("port")
        ip = p.get("ip")
        if cycle is not None and not (isinstance(cycle, int) and 1 <= cycle <= 100):
            ok = False
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            ok = False
        if ip is not None:
            try:
                ipaddress.IPv4Address(str(ip))
            except ValueError:
                ok = False
        if ok:
            with self._lock:
                cfg = self._push
                if cycle is not None:
                    cfg.cycle = cycle
                if port is not None:
                    cfg.port = port
                if ip is not None:
                    cfg.ip = str(ip)
                if "enable" in p:
                    cfg.enable = bool(p["enable"])
                if isinstance(p.get("force_coordinate"), int):
                    cfg.force_coordinate = p["force_coordinate"]
                custom = p.get("custom")
                if isinstance(custom, dict):
                    for key, value in custom.items():
                        # The SDK sends -1 for "leave as is".
                        if isinstance(value, (bool, int)) and value != -1:
                            cfg.custom[key] = bool(value)
            _LOG.info("realtime push now %s", self.push_config)
        return {"command": "set_realtime_push", "state": ok}

    def _h_dh_data(self, p: Json, c: _Connection, now: float) -> Json:
        # Rows are [alpha 0.001 deg, a 0.001 mm, d 0.001 mm, offset 0.001 deg].
        reply: Json = {"command": "get_DH_data"}
        for i, j in enumerate(self.model.mdh):
            reply[f"joint_{i + 1}"] = [int(round(math.degrees(j.alpha_rad) * 1000)),
                                       int(round(j.a_m * 1e6)), int(round(j.d_m * 1e6)),
                                       int(round(math.degrees(j.offset_rad) * 1000))]
        return reply

    def _wire_pose(self) -> List[int]:
        pose = self._motion.flange_pose()
        return ([int(round(x * 1e6)) for x in pose.position_m]
                + [int(round(a * 1000)) for a in pose.euler_rad])

    def _wire_errors(self) -> List[int]:
        # The SDK rejects anything but an array here; no error is [0].
        return list(self._motion.errors) or [0]

    def _h_current_arm_state(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            return {"state": "current_arm_state", "arm_state": {
                "joint": _milli_deg(self._motion.joints_rad), "pose": self._wire_pose(),
                "err": self._wire_errors()}}

    def _h_joint_degree(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            return {"state": "joint_degree", "joint": _milli_deg(self._motion.joints_rad)}

    def _joint_telemetry(self) -> Dict[str, List[int]]:
        """Plausible constant joint electrics: 0.001 mA, 0.001 degC, 0.001 V."""
        n = self.model.dof
        return {"current": [0] * n, "temperature": [30000] * n, "voltage": [48000] * n}

    def _h_all_state(self, p: Json, c: _Connection, now: float) -> Json:
        n = self.model.dof
        tel = self._joint_telemetry()
        with self._lock:
            powered = int(self._motion.powered)
            err = self._wire_errors()
        return {"state": "arm_all_state", "all_state": {
            "temperature": tel["temperature"], "current": tel["current"],
            "voltage": tel["voltage"], "err_flag": [0] * n, "en_flag": [powered] * n, "err": err}}

    def _joints_from(self, p: Json) -> np.ndarray:
        values = p["joint"]
        if not isinstance(values, list) or len(values) < self.model.dof:
            raise ValueError(f"'joint' needs {self.model.dof} values")
        return _rad_from_milli_deg(values[: self.model.dof])

    def _h_movej(self, p: Json, c: _Connection, now: float) -> Json:
        target = self._joints_from(p)
        with self._lock:
            ok = self._motion.move_joints(target, float(p.get("v", 20)), tag=c.id)
        return {"command": "movej", "receive_state": ok}

    def _h_movej_canfd(self, p: Json, c: _Connection, now: float) -> None:
        # 3rd-gen controllers never answer pass-through; failures only show in the push.
        target = self._joints_from(p)
        follow = bool(p.get("follow", False)) or p["command"] == "movej_follow"
        with self._lock:
            self._motion.stream(target, now, follow)
        return None

    def _h_ignored_cartesian(self, p: Json, c: _Connection, now: float) -> None:
        self._warn_once(p["command"], "%s ignored: the emulator has no inverse kinematics",
                        p["command"])
        return None

    def _h_refused_cartesian(self, p: Json, c: _Connection, now: float) -> Json:
        self._warn_once(p["command"], "%s refused: the emulator has no inverse kinematics",
                        p["command"])
        return {"command": p["command"], "receive_state": False}

    def _h_stop(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            self._motion.stop()
        return {"command": "set_arm_stop", "arm_stop": True}

    def _h_slow_stop(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            self._motion.slow_stop()
        return {"command": "set_arm_slow_stop", "arm_slow_stop": True}

    def _h_delete_trajectory(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            self._motion.slow_stop()
        return {"command": "set_arm_delete_trajectory", "arm_delete_trajectory": True}

    def _h_gripper(self, p: Json, c: _Connection, now: float) -> Json:
        name = p["command"]
        # Only a blocking call gets the arrival event (the SDK says so in the request).
        tag = c.id if p.get("block") else None
        with self._lock:
            if name == "set_gripper_position":
                ok = self._gripper.move_to(float(p["position"]), GRIPPER_DEFAULT_SPEED, tag)
            elif name == "set_gripper_release":
                ok = self._gripper.open(float(p.get("speed", GRIPPER_DEFAULT_SPEED)), tag)
            else:
                ok = self._gripper.close(float(p.get("speed", GRIPPER_DEFAULT_SPEED)), tag)
        return {"command": "set_gripper", "state": ok}

    def _h_gripper_state(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            return {"command": "get_gripper_state", "enable": 1, "status": 1, "error": 0,
                    "mode": self._gripper.mode, "current_force": 0, "temperature": 30,
                    "actpos": int(round(self._gripper.position))}

    def _h_clear_system_err(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            self._motion.clear_errors()
        return {"command": "clear_system_err", "clear_state": True}

    def _h_set_power(self, p: Json, c: _Connection, now: float) -> Json:
        with self._lock:
            self._motion.set_powered(bool(p["arm_power"]))
        return {"command": "set_arm_power", "arm_power": True}

    # ---- physics + UDP push -------------------------------------------------------------------------
    def _push_packet(self) -> Json:
        """The realtime push message; call with the lock held."""
        n = self.model.dof
        cfg = self._push
        pose = self._motion.flange_pose()
        tel = self._joint_telemetry()
        joint_status: Json = {
            "joint_current": tel["current"],
            "joint_en_flag": [int(self._motion.powered)] * n,
            "joint_err_code": [0] * n,
            "joint_position": _milli_deg(self._motion.joints_rad),
            "joint_temperature": tel["temperature"],
            "joint_voltage": tel["voltage"],
        }
        if cfg.custom.get("joint_speed", False):
            # The SDK divides by 100; its struct documents 0.01 deg/s.
            joint_status["joint_speed"] = [int(round(math.degrees(v) * 100))
                                           for v in self._motion.velocities_rad_s]
        packet: Json = {
            "state": "realtime_arm_joint_state",
            "err": self._wire_errors(),
            "joint_status": joint_status,
            "waypoint": {
                "position": [int(round(x * 1e6)) for x in pose.position_m],
                "euler": [int(round(a * 1000)) for a in pose.euler_rad],
                "quat": [int(round(q * 1e6)) for q in pose.quaternion_wxyz],
            },
        }
        if cfg.custom.get("arm_current_status", False):
            packet["arm_current_status"] = self._motion.status
        return packet

    def _tick_loop(self) -> None:
        """Physics every 5 ms and the push every `cycle` ticks, against absolute deadlines so
        the rate does not drift with the time the work takes."""
        assert self._udp is not None
        tick = 0
        deadline = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                due = int((now - deadline) / BASE_PERIOD_S) + 1
                if due > MAX_CATCH_UP_TICKS:
                    _LOG.warning("tick thread %.0f ms late; skipping ahead", (now - deadline) * 1e3)
                    deadline = now
                    due = 1
                arrivals: List[Arrival] = []
                with self._lock:
                    for _ in range(due):
                        arrivals += self._motion.step(BASE_PERIOD_S)
                        arrivals += self._gripper.step(BASE_PERIOD_S)
                        tick += 1
                        cfg = self._push
                        if cfg.enable and not self._push_paused and tick % cfg.cycle == 0:
                            data = json.dumps(self._push_packet(), separators=(",", ":")).encode()
                            self._pending_packets.append(
                                (deadline + self._push_delay_s, data, (cfg.ip, cfg.port)))
                        deadline += BASE_PERIOD_S
                    unresponsive = self._unresponsive
                if not unresponsive:
                    self._send_arrivals(arrivals)
            self._send_due_packets(time.monotonic())
            wake = deadline
            if self._pending_packets:
                wake = min(wake, self._pending_packets[0][0])
            delay = wake - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _send_due_packets(self, now: float) -> None:
        assert self._udp is not None
        while self._pending_packets and self._pending_packets[0][0] <= now:
            _, data, addr = self._pending_packets.popleft()
            try:
                self._udp.sendto(data, addr)
                self.packets_sent += 1
            except OSError as exc:
                # Nobody listening yields ICMP errors on loopback; a controller ignores them.
                _LOG.debug("push to %s:%d failed: %s", addr[0], addr[1], exc)

    def _send_arrivals(self, arrivals: List[Arrival]) -> None:
        for arrival in arrivals:
            if arrival.tag is None:
                continue
            with self._conn_lock:
                conn = self._connections.get(arrival.tag)
            if conn is not None:
                conn.send(_completion_event(arrival.device))

    # ---- control socket ---------------------------------------------------------------------------
    def _control_loop(self) -> None:
        assert self._control is not None
        sel = selectors.DefaultSelector()
        sel.register(self._control, selectors.EVENT_READ, None)
        buffers: Dict[socket.socket, bytes] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=_POLL_S):
                    if key.data is None:
                        try:
                            client, _ = self._control.accept()
                        except OSError:
                            continue
                        client.setblocking(False)
                        buffers[client] = b""
                        sel.register(client, selectors.EVENT_READ, "client")
                        continue
                    client = key.fileobj  # type: ignore[assignment]
                    try:
                        data = client.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(client)
                        buffers.pop(client, None)
                        client.close()
                        continue
                    buffers[client] += data
                    while b"\n" in buffers[client]:
                        line, buffers[client] = buffers[client].split(b"\n", 1)
                        reply = self.control(line.decode(errors="replace"))
                        try:
                            client.settimeout(1.0)  # a client that never reads cannot hang us
                            client.sendall((json.dumps(reply) + "\n").encode())
                            client.setblocking(False)
                        except OSError:
                            pass
        finally:
            for client in list(buffers):
                client.close()
            sel.close()

    def control(self, line: str) -> Json:
        """Run one control-protocol line (what the control socket does), return its reply."""
        words = line.strip().split()
        if not words:
            return {"ok": False, "error": "empty command"}
        cmd, args = words[0].lower(), words[1:]

        def on_off() -> bool:
            if not args or args[0].lower() not in ("on", "off"):
                raise ValueError(f"{cmd} needs on|off")
            return args[0].lower() == "on"

        try:
            if cmd == "ping":
                return {"ok": True}
            if cmd == "drop":
                return {"ok": True, "dropped": self.drop_connections()}
            if cmd == "refuse":
                self.set_refuse_connections(on_off())
            elif cmd == "push":
                if on_off():
                    self.resume_push()
                else:
                    self.pause_push()
            elif cmd == "push_delay":
                self.set_push_delay_ms(float(args[0]))
            elif cmd == "error":
                self.raise_error(int(args[0], 0))
            elif cmd == "clear_errors":
                self.clear_errors()
            elif cmd == "unresponsive":
                self.set_unresponsive(on_off())
            elif cmd == "state":
                return {"ok": True, "state": self.state_summary()}
            elif cmd == "commands":
                name = args[0] if args else None
                return {"ok": True, "commands": [asdict(c) for c in self.commands(name)]}
            elif cmd == "clear_commands":
                self.clear_commands()
            else:
                return {"ok": False, "error": f"unknown control command {cmd!r}"}
        except (IndexError, ValueError) as exc:
            return {"ok": False, "error": f"{cmd}: {exc or 'missing argument'}"}
        return {"ok": True}


# ---- command line ---------------------------------------------------------------------------------------
def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ate_realman_emulator",
        description="Emulate one RealMan 3rd-generation arm controller (JSON/TCP + UDP push).")
    parser.add_argument("--ip", default=DEFAULT_IP, help="address to listen on and push from")
    parser.add_argument("--port", type=int, default=DEFAULT_TCP_PORT, help="TCP port (0: any)")
    parser.add_argument("--push-port", type=int, default=DEFAULT_PUSH_PORT,
                        help="UDP port the push goes to until set_realtime_push changes it")
    parser.add_argument("--push-ip", default=DEFAULT_IP, help="UDP push target address")
    parser.add_argument("--model", default="RM75-B", help="RM75-B or RM65-B")
    parser.add_argument("--cycle", type=int, default=1, help="push period in units of 5 ms")
    parser.add_argument("--log", default=None, metavar="PATH",
                        help="append every received command to PATH as JSON lines")
    parser.add_argument("--initial-joints-deg", type=float, nargs="+", default=None,
                        metavar="DEG", help="starting joint angles, one per joint")
    parser.add_argument("--control-port", type=int, default=None,
                        help="enable the line-based fault-injection socket on this port (0: any)")
    parser.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                        help="SCHED_FIFO priority for every thread (0: normal scheduling)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before the emulator starts its threads: they inherit it.
    raise_to_fifo(args.realtime_priority, lambda why: print(f"ate_realman_emulator: {why}",
                                                            file=sys.stderr), "emulator")
    try:
        emulator = RealManEmulator(
            model=args.model, ip=args.ip, tcp_port=args.port, push_port=args.push_port,
            push_ip=args.push_ip, cycle=args.cycle, log_path=args.log,
            initial_joints_deg=args.initial_joints_deg, control_port=args.control_port)
        emulator.start()
    except (KeyError, ValueError, OSError) as exc:
        print(f"ate_realman_emulator: {exc}", file=sys.stderr)
        return 2
    signals: List[int] = []
    stop = threading.Event()

    set_stop = setting(stop)

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)
        set_stop(signum, frame)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    control = "" if emulator.control_port is None else f" control_port={emulator.control_port}"
    print(f"ate_realman_emulator listening model={emulator.model.name} ip={emulator.ip} "
          f"tcp_port={emulator.tcp_port} push={emulator.push_config.ip}:{emulator.push_port} "
          f"cycle_ms={emulator.push_config.cycle * 5}{control}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
        # `ros2 launch` signals every process at once: the arm drivers stop the arm on their
        # way out, and a controller that vanished first would never hear that stop. A real
        # controller outlives its clients, so serve on until they have gone, for 1 s at most
        # (a second signal ends the wait at once).
        deadline = time.monotonic() + 1.0
        while (emulator.connection_count() > 0 and len(signals) < 2
               and time.monotonic() < deadline):
            time.sleep(0.02)
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
