"""Emulator of one RealMan 3rd-generation arm controller: JSON over TCP plus the UDP push.

RealMan's Python SDK connects to it as to a robot, so the driver runs the same code path in
simulation and in tests as on the hardware. This module is the server: the sockets, the 5 ms
clock that steps the motion and sends the push, the command log, and the process entry point
(`ate_realman_emulator`, `python -m ate_ros.sim.realman_emulator`). What the controller answers
is `realman_protocol`, how the arm moves `arm_motion`, and the faults it can be told to show
`realman_faults`.

The push goes out whenever it is enabled, with or without a TCP client (a configured target IP
is enough for the real controller).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, replace
from typing import IO, Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ate_core.robot.models import PUSH_CYCLE_UNIT_S, ArmModel, arm_model, push_period_s
from ate_ros.realtime import raise_to_fifo
from ate_ros.signals import setting
from ate_ros.sim.arm_motion import GRIPPER_WIRE_MAX, Arrival, opening_m_to_wire
from ate_ros.sim.realman_faults import ControlServer, Faults
from ate_ros.sim.realman_protocol import (
    ControllerProtocol,
    Json,
    JsonObjectStream,
    Plant,
    PushConfig,
    ReceivedCommand,
    completion_event,
)

_LOG = logging.getLogger(__name__)

DEFAULT_IP = "127.0.0.1"
DEFAULT_TCP_PORT = 8080
DEFAULT_PUSH_PORT = 8089
#: If the tick thread falls this many push units behind (a stalled process), it skips ahead
#: instead of bursting stale packets.
MAX_CATCH_UP_TICKS = 20
#: Socket timeouts that bound how long a thread takes to notice `stop()`.
_POLL_S = 0.1


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


class CommandLog:
    """Every received command: the newest `max_commands` in memory, and all of them appended to
    a JSON-lines file once `open` is given a path. Thread-safe."""

    def __init__(self, max_commands: int) -> None:
        self._lock = threading.Lock()
        self._commands: Deque[ReceivedCommand] = deque(maxlen=max_commands)
        self._file: Optional[IO[str]] = None

    def open(self, path: str) -> None:
        with self._lock:
            self._file = open(path, "a", encoding="utf-8")

    def record(self, cmd: ReceivedCommand) -> None:
        with self._lock:
            self._commands.append(cmd)
            if self._file is not None:
                self._file.write(cmd.to_json() + "\n")
                self._file.flush()

    def commands(self, name: Optional[str] = None) -> List[ReceivedCommand]:
        with self._lock:
            return [c for c in self._commands if name is None or c.name == name]

    def clear(self) -> None:
        with self._lock:
            self._commands.clear()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# ---- the emulator -----------------------------------------------------------------------------------
class RealManEmulator:
    """One emulated RealMan controller on (ip, tcp_port), pushing state to (push ip, push port).

    Ports may be 0 (OS-chosen); after `start()` the bound ones are in `tcp_port`,
    `push_source_port` and `control_port`. `push_port` is where the push goes; the SDK binds
    that port itself after reading `get_realtime_push`, so it has to be a real port number,
    and one the SDK process can still add (it listens on at most five per process).
    `log_path` is appended to, one JSON line per received command.

    `initial_gripper` is the gripper's opening at start, wire units (1 closed .. 1000 open).
    `plant` is what the controller measures and reports (default: the ideal arm, which is the
    reference; `twin_host` hands in the physics'). With `clocked=False` the emulator runs no
    clock of its own: its owner calls `step_controller`, then `complete_tick`, every 5 ms (one
    clock for several controllers and the physics between the two halves).
    """

    def __init__(self, model: Union[str, ArmModel] = "RM75-B", ip: str = DEFAULT_IP,
                 tcp_port: int = DEFAULT_TCP_PORT, push_port: int = DEFAULT_PUSH_PORT,
                 push_ip: str = DEFAULT_IP, cycle: int = 1, log_path: Optional[str] = None,
                 initial_joints_deg: Optional[Sequence[float]] = None,
                 control_port: Optional[int] = None,
                 max_logged_commands: int = 200_000,
                 plant: Optional[Callable[[ControllerProtocol], Plant]] = None,
                 clocked: bool = True, initial_gripper: float = GRIPPER_WIRE_MAX) -> None:
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
        # Guards the controller and the faults: the tick, connection and control threads share them.
        self._lock = threading.RLock()
        self._controller = ControllerProtocol(self.model, PushConfig(port=push_port, ip=push_ip,
                                                                     cycle=cycle), q0,
                                              initial_gripper=initial_gripper)
        if plant is not None:
            self._controller.plant = plant(self._controller)
        self._clocked = clocked
        self._tick = 0
        self._faults = Faults()
        self._log = CommandLog(max_logged_commands)
        # sockets and threads
        self._stop = threading.Event()
        self._started = False
        self._listener: Optional[socket.socket] = None
        self._udp: Optional[socket.socket] = None
        self._control: Optional[ControlServer] = None
        self._connections: Dict[int, _Connection] = {}
        self._conn_lock = threading.Lock()
        self._next_conn_id = 1
        self._threads: List[threading.Thread] = []
        self._pending_packets: Deque[Tuple[float, bytes, Tuple[str, int]]] = deque()
        self.packets_sent = 0

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
                self._control = ControlServer(self, self.ip, self.control_port)
                self.control_port = self._control.port
            if self._log_path:
                self._log.open(self._log_path)
        except BaseException:
            self._close_sockets()
            raise
        self._spawn(self._accept_loop, "accept")
        if self._clocked:
            self._spawn(self._tick_loop, "tick")
        if self._control is not None:
            self._spawn(self._control.serve, "control", self._stop, _POLL_S)
        push = self._controller.push
        _LOG.info("%s emulator on %s:%d, push -> %s:%d every %g ms", self.model.name, self.ip,
                  self.tcp_port, push.ip, push.port, push_period_s(push.cycle) * 1e3)
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
        self._log.close()

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
        """The joint angles the controller reports (the plant's)."""
        with self._lock:
            return np.degrees(self._controller.plant.joints_rad()).tolist()

    def gripper_position(self) -> float:
        """Reported gripper opening in wire units (1 closed .. 1000 open)."""
        with self._lock:
            return self._controller.plant.gripper_wire()

    def reference(self) -> Tuple[np.ndarray, float]:
        """The controller's joint reference (rad) and gripper reference (opening, m): what it
        sends its servos."""
        with self._lock:
            return self._controller.motion.joints_rad, self._controller.gripper.opening_m

    def place(self, joints_rad: Sequence[float], gripper_opening_m: float) -> None:
        """Make the controller hold the arm at `joints_rad` and the gripper at
        `gripper_opening_m`, at rest, with nothing pending (`ArmMotion.place`): for a simulator
        that has just put them there (the twin host's episode reset)."""
        with self._lock:
            self._controller.motion.place(joints_rad)
            self._controller.gripper.place(opening_m_to_wire(gripper_opening_m))

    @property
    def arm_status(self) -> str:
        with self._lock:
            return self._controller.motion.status

    @property
    def errors(self) -> Tuple[int, ...]:
        with self._lock:
            return self._controller.motion.errors

    @property
    def push_config(self) -> PushConfig:
        with self._lock:
            push = self._controller.push
            return replace(push, custom=dict(push.custom))

    @property
    def push_port(self) -> int:
        """Where the push currently goes (the SDK listens there)."""
        with self._lock:
            return self._controller.push.port

    def connection_count(self) -> int:
        with self._conn_lock:
            return len(self._connections)

    def commands(self, name: Optional[str] = None) -> List[ReceivedCommand]:
        """Commands received so far (oldest first), optionally only those called `name`."""
        return self._log.commands(name)

    def clear_commands(self) -> None:
        self._log.clear()

    def state_summary(self) -> Json:
        with self._lock:
            motion, faults = self._controller.motion, self._faults
            return {
                "model": self.model.name,
                "joints_deg": np.degrees(self._controller.plant.joints_rad()).tolist(),
                "status": motion.status, "errors": list(motion.errors),
                "gripper": self._controller.gripper.position, "powered": motion.powered,
                "push": asdict(self._controller.push), "push_paused": faults.push_paused,
                "push_delay_ms": faults.push_delay_s * 1000.0, "unresponsive": faults.unresponsive,
                "refuse_connections": faults.refuse_connections,
                "connections": self.connection_count(), "packets_sent": self.packets_sent,
            }

    # ---- fault injection (see realman_faults) ----------------------------------------------------
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
        with self._lock:
            self._faults.refuse_connections = bool(refuse)

    def pause_push(self) -> None:
        with self._lock:
            self._faults.push_paused = True

    def resume_push(self) -> None:
        with self._lock:
            self._faults.push_paused = False

    def set_push_delay_ms(self, delay_ms: float) -> None:
        """Send each push packet this late (its content is still from its own tick)."""
        if delay_ms < 0:
            raise ValueError(f"push delay must be >= 0 ms, got {delay_ms}")
        with self._lock:
            self._faults.push_delay_s = delay_ms / 1000.0

    def hand_guide(self, q_rad: Sequence[float]) -> bool:
        """A hand pushes the arm toward `q_rad` (rad): the arm follows while drag teaching is
        on (`start_drag_teach`), within its limits; otherwise nothing moves (False)."""
        with self._lock:
            return self._controller.motion.hand_guide(q_rad)

    def pendant_drag(self, on: bool) -> bool:
        """Drag teaching switched on or off at the teach pendant, not through the SDK: nothing
        is recorded, and only the push's arm status (`current_drag`) tells a driver. False when
        it cannot (off: it was not on; on: the arm is not powered)."""
        with self._lock:
            motion = self._controller.motion
            return motion.start_drag(record=False) if on else motion.stop_drag()

    def raise_error(self, code: int) -> None:
        """Latch a system error code; it shows in `err` until `clear_system_err`."""
        with self._lock:
            self._controller.motion.raise_error(int(code))

    def clear_errors(self) -> None:
        with self._lock:
            self._controller.motion.clear_errors()

    def set_unresponsive(self, unresponsive: bool) -> None:
        """Keep connections open but execute and answer nothing (a hung controller)."""
        with self._lock:
            self._faults.unresponsive = bool(unresponsive)

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
            with self._lock:
                refuse = self._faults.refuse_connections
            if refuse:
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
            unresponsive = self._faults.unresponsive
        self._log.record(ReceivedCommand(name, msg, now, wall, conn.id, not unresponsive))
        if unresponsive:
            return
        with self._lock:
            prepared = self._controller.prepare(msg)
        if prepared is not None:  # a motion the controller plans: IK along it, off the lock
            prepared = self._controller.plan(prepared)
        with self._lock:
            reply = self._controller.handle(msg, conn.id, now, prepared)
        for message in reply if isinstance(reply, list) else [reply] if reply is not None else []:
            conn.send(message)

    # ---- the controller's clock: motion + UDP push --------------------------------------------------
    def step_controller(self) -> List[Arrival]:
        """First half of a tick: advance the references by one push unit; the planned motions
        that arrived (for `complete_tick`)."""
        with self._lock:
            return self._controller.step(PUSH_CYCLE_UNIT_S)

    def complete_tick(self, deadline: float, arrivals: List[Arrival]) -> None:
        """Second half of the tick due at `deadline` (monotonic s), once the plant has been
        measured: queue the push when one is due, send the completion events, and send
        every packet whose time has come."""
        with self._lock:
            self._tick += 1
            push = self._controller.push
            if push.enable and not self._faults.push_paused and self._tick % push.cycle == 0:
                data = json.dumps(self._controller.push_packet(), separators=(",", ":")).encode()
                self._pending_packets.append(
                    (deadline + self._faults.push_delay_s, data, (push.ip, push.port)))
            unresponsive = self._faults.unresponsive
        if not unresponsive:
            self._send_arrivals(arrivals)
        self._send_due_packets(time.monotonic())

    def next_packet_s(self) -> Optional[float]:
        """When the oldest delayed push packet is due (monotonic s), if one waits."""
        pending = self._pending_packets
        return pending[0][0] if pending else None

    def send_due_packets(self) -> None:
        self._send_due_packets(time.monotonic())

    def _tick_loop(self) -> None:
        """Motion every push unit (5 ms) and the push every `cycle` ticks, against absolute
        deadlines so the rate does not drift with the time the work takes."""
        deadline = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                due = int((now - deadline) / PUSH_CYCLE_UNIT_S) + 1
                if due > MAX_CATCH_UP_TICKS:
                    _LOG.warning("tick thread %.0f ms late; skipping ahead", (now - deadline) * 1e3)
                    deadline = now
                    due = 1
                for _ in range(due):
                    self.complete_tick(deadline, self.step_controller())
                    deadline += PUSH_CYCLE_UNIT_S
            self._send_due_packets(time.monotonic())
            wake = deadline
            pending = self.next_packet_s()
            if pending is not None:
                wake = min(wake, pending)
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
                conn.send(completion_event(arrival.device))


# ---- command line ---------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The `ate_realman_emulator` command line (`ate_ros.graph.EmulatorSpec.argv` writes it)."""
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
    args = parse_args(argv)
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
          f"cycle_ms={round(push_period_s(emulator.push_config.cycle) * 1e3)}{control}", flush=True)
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
