"""What one emulated RealMan controller answers: RealMan's JSON commands in, replies, the UDP push
packet and completion events out.

`ControllerProtocol` holds the controller's state (the motion models of `arm_motion`, the
realtime-push settings) and answers each request with the reply names, keys and units that
RealMan's Python SDK (`Robotic_Arm` 1.1.6) parses (see the project's realman_protocol
reference, section 1), so the driver runs the same code path against the emulator as against
the robot. It owns no socket, thread or clock: the server (`realman_emulator`) frames the TCP
stream with `JsonObjectStream`, passes each request with its receive time, steps the motion
every push unit and serialises every call under one lock.

Choices where the real controller's behaviour is not documented:
- unknown commands are logged (a warning the first time per name) and answered
  `{"command": <name>, "set_state": false, "emulator_unsupported": true}`, what a controller
  that does not know the command plausibly says. SDK calls whose reply carries the request's
  name then fail at once (-3, e.g. `rm_set_arm_pause`) instead of looking like a network
  fault; calls that expect another name (e.g. `rm_get_joint_en_state`) still time out (-2);
- Cartesian motion (`movej_p`, `movel`, `movec`, `moves`, `trajectory_connect`) and the work
  and tool frames are `realman_cartesian`'s: planned by inverse kinematics off the server's
  lock (`prepare`, `plan`, `handle`), refused with `receive_state: false` where the arm cannot
  reach or follow; `movep_canfd`/`movep_follow` are logged and ignored (they have no reply to
  refuse with);
- a refused `movej` target also answers `receive_state: false` and latches 0x1002;
- completion events go to the connection that sent the command (motions are tagged with it);
  a quick stop sends none, so a blocking `rm_movej` interrupted by `set_arm_stop` ends in the
  SDK's -6 "stopped externally";
- the push includes `joint_speed` and `arm_current_status` until `set_realtime_push` turns
  those custom items off.
"""

from __future__ import annotations

import codecs
import dataclasses
import ipaddress
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ate_core.robot.models import ArmModel
from ate_ros.sim.arm_motion import (
    GRIPPER_DEFAULT_SPEED,
    GRIPPER_WIRE_MAX,
    ArmMotion,
    Arrival,
    GripperMotion,
    opening_m_to_wire,
)
from ate_core.robot.cartesian_path import TimedJointPath
from ate_ros.sim.realman_cartesian import CartesianController, PlanRequest, Refused

_LOG = logging.getLogger(__name__)

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
    ip: str
    cycle: int = 1
    enable: bool = True
    force_coordinate: int = 0
    custom: Dict[str, bool] = field(default_factory=lambda: {
        "joint_speed": True, "lift_state": False, "expand_state": False,
        "arm_current_status": True, "aloha_state": False})


def completion_event(device: int) -> Json:
    """The `current_trajectory_state` event that ends a blocking motion call in the SDK."""
    return {"state": "current_trajectory_state", "trajectory_state": True, "device": device,
            "trajectory_connect": 0}


#: Motions the controller plans (realman_cartesian); movej joins them when trajectory_connect
#: is used.
_PLANNED = frozenset({"movej_p", "movel", "movec", "moves"})


@dataclass(frozen=True)
class Prepared:
    """A planned motion between `ControllerProtocol.prepare` and `handle`: the queue to plan
    (None while `trajectory_connect` keeps it waiting), its segments once planned, or why it
    is refused."""

    command: str
    request: Optional[PlanRequest]
    segments: Tuple[Tuple[TimedJointPath, str], ...] = ()
    error: str = ""


#: A command handler: (request, connection id, receive time) -> reply (a list: several
#: messages), or None for no reply.
Handler = Callable[[Json, int, float], Union[None, Json, List[Json]]]


# ---- what the controller measures ---------------------------------------------------------------
class Plant:
    """The arm and gripper the controller drives, as its encoders measure them.

    The controller plans and interpolates a joint reference (`ArmMotion`) and a gripper
    reference (`GripperMotion`); what it reports (push, state queries) is the plant's
    measurement. This base is the ideal plant: the arm is exactly where the reference is.
    """

    def __init__(self, motion: ArmMotion, gripper: GripperMotion) -> None:
        self._motion = motion
        self._gripper = gripper

    def joints_rad(self) -> np.ndarray:
        return self._motion.joints_rad

    def velocities_rad_s(self) -> np.ndarray:
        return self._motion.velocities_rad_s

    def gripper_wire(self) -> float:
        """Gripper opening in wire units (1 closed .. 1000 open)."""
        return self._gripper.position


class MeasuredPlant(Plant):
    """A plant measured elsewhere (the physics of the twin), handed in once per tick.

    `update` replaces the measurement in one assignment, so a reader on another thread sees a
    whole tick's state, never half of two.
    """

    def __init__(self, joints_rad: Sequence[float], gripper_opening_m: float) -> None:
        q = np.asarray(joints_rad, dtype=float).copy()
        self._state: Tuple[np.ndarray, np.ndarray, float] = (
            q, np.zeros_like(q), opening_m_to_wire(gripper_opening_m))

    def update(self, joints_rad: Sequence[float], velocities_rad_s: Sequence[float],
               gripper_opening_m: float) -> None:
        self._state = (np.asarray(joints_rad, dtype=float).copy(),
                       np.asarray(velocities_rad_s, dtype=float).copy(),
                       opening_m_to_wire(gripper_opening_m))

    def joints_rad(self) -> np.ndarray:
        return self._state[0].copy()

    def velocities_rad_s(self) -> np.ndarray:
        return self._state[1].copy()

    def gripper_wire(self) -> float:
        return self._state[2]


# ---- the controller -----------------------------------------------------------------------------
class ControllerProtocol:
    """The emulated controller's state and its answers; not thread-safe (the server holds a
    lock around every call).

    `motion`, `gripper` and `push` are the live state, for the server to observe and to inject
    errors into; `motion` and `gripper` are the references, `plant` what is reported (by
    default the ideal plant, which is the reference). Connection ids tag planned motions, so
    their `Arrival`s say where the completion event goes.
    """

    def __init__(self, model: ArmModel, push: PushConfig,
                 initial_joints_rad: Optional[np.ndarray] = None,
                 plant: Optional[Plant] = None,
                 initial_gripper: float = GRIPPER_WIRE_MAX) -> None:
        self.model = model
        self.motion = ArmMotion(model, initial_joints_rad)
        self.gripper = GripperMotion(initial_gripper)
        self.plant = plant if plant is not None else Plant(self.motion, self.gripper)
        self.push = push
        self.cartesian = CartesianController(model, self.motion)
        self._warned: Set[str] = set()
        self._handlers: Dict[str, Handler] = {
            "get_arm_software_info": self._h_software_info,
            "get_arm_current_trajectory": self._h_current_trajectory,
            "get_realtime_push": self._h_get_realtime_push,
            "set_realtime_push": self._h_set_realtime_push,
            "get_current_work_frame": lambda p, c, t: self.cartesian.work_reply(
                "current_work_frame", self.cartesian.current_work),
            "get_current_tool_frame": lambda p, c, t: self.cartesian.tool_reply(
                "current_tool_frame", self.cartesian.current_tool),
            "get_total_work_frame": lambda p, c, t: {
                "state": "total_work_frame", "frame_names": list(self.cartesian.work)},
            "get_total_tool_frame": lambda p, c, t: {
                "state": "total_tool_frame", "tool_names": list(self.cartesian.tools)},
            "get_work_frame": self._h_given_frame,
            "get_tool_frame": self._h_given_frame,
            "set_manual_work_frame": self._h_frame_change,
            "update_work_frame": self._h_frame_change,
            "set_change_work_frame": self._h_frame_change,
            "set_delete_work_frame": self._h_frame_change,
            "set_manual_tool_frame": self._h_frame_change,
            "update_tool_frame": self._h_frame_change,
            "set_change_tool_frame": self._h_frame_change,
            "set_delete_tool_frame": self._h_frame_change,
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
            "movel": self._h_planned,
            "movej_p": self._h_planned,
            "movec": self._h_planned,
            "moves": self._h_planned,
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
            "start_drag_teach": self._h_drag,
            "stop_drag_teach": self._h_drag,
            "save_trajectory": self._h_save_trajectory,
            "set_arm_power": self._h_set_power,
            "get_arm_power_state": lambda p, c, t: {
                "state": "arm_power_state", "power_state": int(self.motion.powered)},
        }

    def prepare(self, request: Json) -> Optional[Prepared]:
        """First of the two halves of a motion the controller plans (movej_p, movel, movec,
        moves; movej with `trajectory_connect` or after one): queue it and take the snapshot
        to plan from. The server then calls :meth:`plan` without its lock and passes the
        result to :meth:`handle`. None for every other command (and a queued motion)."""
        name = request.get("command")
        connect = request.get("trajectory_connect", 0)
        if name not in _PLANNED and not (name == "movej" and (connect == 1 or self.cartesian.queued)):
            return None
        try:
            return Prepared(name, self.cartesian.request(name, request))
        except (KeyError, TypeError, ValueError) as exc:
            self.cartesian.drop_queue()
            return Prepared(name, None, error=f"{type(exc).__name__}: {exc}")

    def plan(self, prepared: Prepared) -> Prepared:
        """The joint paths of a prepared queue (no state is read or written: no lock needed)."""
        if prepared.request is None or prepared.error:
            return prepared
        try:
            return dataclasses.replace(prepared, segments=tuple(self.cartesian.plan(prepared.request)))
        except (Refused, KeyError, TypeError, ValueError) as exc:
            return dataclasses.replace(prepared, error=str(exc))

    def handle(self, request: Json, connection: int, now: float,
               prepared: Optional[Prepared] = None) -> Union[None, Json, List[Json]]:
        """Execute `request` (a JSON object with a `command` name) received at `now` on
        `connection`; return the reply to send (a list: several, in order), or None where the
        controller sends none. `prepared`: the planned half of a motion (:meth:`prepare`, :meth:`plan`); without it
        a planned motion is queued and planned here."""
        name = request["command"]
        if prepared is not None:
            return self._finish_planned(prepared, connection)
        handler = self._handlers.get(name)
        try:
            if handler is None:
                self._warn_once(name, "unsupported command %r: %.200s", name, request)
                reply = {"command": name, "set_state": False, "emulator_unsupported": True}
            else:
                reply = handler(request, connection, now)
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed request to a known command: the controller refuses it.
            _LOG.warning("bad %r request (%s): %.200s", name, exc, request)
            reply = {"command": name, "set_state": False}
        except Exception:  # an emulator bug must not take the connection down
            _LOG.exception("handling %r failed: %.200s", name, request)
            reply = {"command": name, "set_state": False}
        return None if name in _NO_REPLY else reply

    def step(self, dt: float) -> List[Arrival]:
        """Advance the arm and the gripper by `dt` seconds; the planned motions that arrived."""
        return self.motion.step(dt) + self.gripper.step(dt)

    def push_packet(self) -> Json:
        """The realtime push message of the current state."""
        n = self.model.dof
        cfg = self.push
        q = self.plant.joints_rad()
        pose = self.cartesian.reported_pose(q)
        tel = self._joint_telemetry()
        joint_status: Json = {
            "joint_current": tel["current"],
            "joint_en_flag": [int(self.motion.powered)] * n,
            "joint_err_code": [0] * n,
            "joint_position": _milli_deg(q),
            "joint_temperature": tel["temperature"],
            "joint_voltage": tel["voltage"],
        }
        if cfg.custom.get("joint_speed", False):
            # The SDK divides by 100; its struct documents 0.01 deg/s.
            joint_status["joint_speed"] = [int(round(math.degrees(v) * 100))
                                           for v in self.plant.velocities_rad_s()]
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
            packet["arm_current_status"] = self.motion.status
        return packet

    def _warn_once(self, key: str, fmt: str, *args: Any) -> None:
        """Warn the first time per command name: a 100 Hz stream must not flood the log."""
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        _LOG.log(level, fmt, *args)

    # ---- wire views of the state ----------------------------------------------------------------
    def _wire_pose(self) -> List[int]:
        pose = self.cartesian.reported_pose(self.plant.joints_rad())
        return ([int(round(x * 1e6)) for x in pose.position_m]
                + [int(round(a * 1000)) for a in pose.euler_rad])

    def _wire_errors(self) -> List[int]:
        # The SDK rejects anything but an array here; no error is [0].
        return list(self.motion.errors) or [0]

    def _joint_telemetry(self) -> Dict[str, List[int]]:
        """Plausible constant joint electrics: 0.001 mA, 0.001 degC, 0.001 V."""
        n = self.model.dof
        return {"current": [0] * n, "temperature": [30000] * n, "voltage": [48000] * n}

    def _joints_from(self, p: Json) -> np.ndarray:
        values = p["joint"]
        if not isinstance(values, list) or len(values) < self.model.dof:
            raise ValueError(f"'joint' needs {self.model.dof} values")
        return _rad_from_milli_deg(values[: self.model.dof])

    # ---- command handlers (called with the request, the connection id, the receive time) --------
    def _h_software_info(self, p: Json, c: int, now: float) -> Json:
        # Product_version is what the SDK maps to the arm model (RM75-B / RM65-B verified).
        build = {"build_time": "2024/01/01 00:00:00", "version": "V1.5.0"}
        return {"command": "arm_software_info", "Product_version": self.model.name,
                "algorithm_info": {"version": "1.4.3"}, "ctrl_info": dict(build),
                "dynamic_info": {"model_version": "1"}, "plan_info": dict(build)}

    def _h_current_trajectory(self, p: Json, c: int, now: float) -> Json:
        # Blocking rm_movej polls this; "none" while it waits makes it return -6.
        kind = self.motion.planned_type
        return {"state": "arm_current_trajectory", "type": kind,
                "data": _milli_deg(self.plant.joints_rad())}

    def _h_get_realtime_push(self, p: Json, c: int, now: float) -> Json:
        cfg = self.push
        return {"command": "get_realtime_push", "cycle": cfg.cycle, "enable": cfg.enable,
                "port": cfg.port, "ip": cfg.ip, "force_coordinate": cfg.force_coordinate,
                "custom": dict(cfg.custom)}

    def _h_set_realtime_push(self, p: Json, c: int, now: float) -> Json:
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
            cfg = self.push
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
            _LOG.info("realtime push now %s", cfg)
        return {"command": "set_realtime_push", "state": ok}

    def _h_dh_data(self, p: Json, c: int, now: float) -> Json:
        # Rows are [alpha 0.001 deg, a 0.001 mm, d 0.001 mm, offset 0.001 deg].
        reply: Json = {"command": "get_DH_data"}
        for i, j in enumerate(self.model.mdh):
            reply[f"joint_{i + 1}"] = [int(round(math.degrees(j.alpha_rad) * 1000)),
                                       int(round(j.a_m * 1e6)), int(round(j.d_m * 1e6)),
                                       int(round(math.degrees(j.offset_rad) * 1000))]
        return reply

    def _h_current_arm_state(self, p: Json, c: int, now: float) -> Json:
        return {"state": "current_arm_state", "arm_state": {
            "joint": _milli_deg(self.plant.joints_rad()), "pose": self._wire_pose(),
            "err": self._wire_errors()}}

    def _h_joint_degree(self, p: Json, c: int, now: float) -> Json:
        return {"state": "joint_degree", "joint": _milli_deg(self.plant.joints_rad())}

    def _h_all_state(self, p: Json, c: int, now: float) -> Json:
        n = self.model.dof
        tel = self._joint_telemetry()
        powered = int(self.motion.powered)
        return {"state": "arm_all_state", "all_state": {
            "temperature": tel["temperature"], "current": tel["current"],
            "voltage": tel["voltage"], "err_flag": [0] * n, "en_flag": [powered] * n,
            "err": self._wire_errors()}}

    def _h_movej(self, p: Json, c: int, now: float) -> Json:
        if int(p.get("trajectory_connect", 0) or 0) == 1 or self.cartesian.queued:
            return self._h_planned(p, c, now)
        ok = self.motion.move_joints(self._joints_from(p), float(p.get("v", 20)), tag=c)
        return {"command": "movej", "receive_state": ok}

    def _h_planned(self, p: Json, c: int, now: float) -> Json:
        """A motion planned by the controller (realman_cartesian), or queued for the next."""
        prepared = self.prepare(p)
        assert prepared is not None
        return self._finish_planned(self.plan(prepared), c)

    def _finish_planned(self, prepared: Prepared, c: int) -> Json:
        if prepared.error:
            self.cartesian.drop_queue()
            _LOG.warning("%s refused: %s", prepared.command, prepared.error)
            ok = False
        elif prepared.request is None:
            ok = True  # queued until a motion with trajectory_connect 0
        else:
            ok = self.cartesian.start(prepared.segments, tag=c)
        return {"command": prepared.command, "receive_state": ok}

    _FRAME_REPLY_KEYS = {
        "set_manual_work_frame": "manual_work_frame", "update_work_frame": "update_state",
        "set_change_work_frame": "change_work_frame", "set_delete_work_frame": "delete_work_frame",
        "set_manual_tool_frame": "manual_tool_frame", "update_tool_frame": "update_state",
        "set_change_tool_frame": "change_tool_frame", "set_delete_tool_frame": "delete_tool_frame",
    }

    def _h_frame_change(self, p: Json, c: int, now: float) -> Json:
        name = p["command"]
        cart = self.cartesian
        kind = "tool" if "tool" in name else "work"
        frame = p.get("tool_name") if kind == "tool" else p.get("frame_name")
        try:
            if name.startswith("set_manual_") or name.startswith("update_"):
                create = name.startswith("set_manual_")
                if kind == "tool":
                    cart.set_tool(frame, p, create=create)
                else:
                    cart.set_work(frame, p.get("frame_pose"), create=create)
            elif name.startswith("set_change_"):
                cart.change(kind, frame)
            else:
                cart.delete(kind, frame)
            ok = True
        except (Refused, KeyError, TypeError, ValueError) as exc:
            _LOG.warning("%s refused: %s", name, exc)
            ok = False
        return {"command": name, self._FRAME_REPLY_KEYS[name]: ok}

    def _h_given_frame(self, p: Json, c: int, now: float) -> Json:
        cart = self.cartesian
        if p["command"] == "get_tool_frame":
            if p.get("tool_name") in cart.tools:
                return cart.tool_reply("given_tool_frame", p["tool_name"])
        elif p.get("frame_name") in cart.work:
            return cart.work_reply("given_work_frame", p["frame_name"])
        return {"command": p["command"], "get_state": False}

    def _h_movej_canfd(self, p: Json, c: int, now: float) -> None:
        # 3rd-gen controllers never answer pass-through; failures only show in the push.
        follow = bool(p.get("follow", False)) or p["command"] == "movej_follow"
        self.motion.stream(self._joints_from(p), now, follow)
        return None

    def _h_ignored_cartesian(self, p: Json, c: int, now: float) -> None:
        self._warn_once(p["command"], "%s ignored: the emulator has no inverse kinematics",
                        p["command"])
        return None

    def _h_stop(self, p: Json, c: int, now: float) -> Json:
        self.cartesian.drop_queue()
        self.motion.stop()
        return {"command": "set_arm_stop", "arm_stop": True}

    def _h_slow_stop(self, p: Json, c: int, now: float) -> Json:
        self.cartesian.drop_queue()
        self.motion.slow_stop()
        return {"command": "set_arm_slow_stop", "arm_slow_stop": True}

    def _h_delete_trajectory(self, p: Json, c: int, now: float) -> Json:
        self.cartesian.drop_queue()
        self.motion.slow_stop()
        return {"command": "set_arm_delete_trajectory", "arm_delete_trajectory": True}

    def _h_gripper(self, p: Json, c: int, now: float) -> Json:
        name = p["command"]
        # Only a blocking call gets the arrival event (the SDK says so in the request).
        tag = c if p.get("block") else None
        if name == "set_gripper_position":
            ok = self.gripper.move_to(float(p["position"]), GRIPPER_DEFAULT_SPEED, tag)
        elif name == "set_gripper_release":
            ok = self.gripper.open(float(p.get("speed", GRIPPER_DEFAULT_SPEED)), tag)
        else:
            ok = self.gripper.close(float(p.get("speed", GRIPPER_DEFAULT_SPEED)), tag)
        return {"command": "set_gripper", "state": ok}

    def _h_gripper_state(self, p: Json, c: int, now: float) -> Json:
        return {"command": "get_gripper_state", "enable": 1, "status": 1, "error": 0,
                "mode": self.gripper.mode, "current_force": 0, "temperature": 30,
                "actpos": int(round(self.plant.gripper_wire()))}

    def _h_clear_system_err(self, p: Json, c: int, now: float) -> Json:
        self.motion.clear_errors()
        return {"command": "clear_system_err", "clear_state": True}

    def _h_drag(self, p: Json, c: int, now: float) -> Json:
        """Drag teaching (json/dragTech.md): `start_drag_teach` with `trajectory_record` 0|1,
        `stop_drag_teach`. The arm then goes where a hand pushes it (the emulator's `hand`)."""
        if p["command"] == "start_drag_teach":
            self.cartesian.drop_queue()
            ok = self.motion.start_drag(bool(int(p.get("trajectory_record", 0) or 0)))
        else:
            ok = self.motion.stop_drag()
        return {"command": p["command"], "drag_teach": ok}

    def _h_save_trajectory(self, p: Json, c: int, now: float) -> List[Json]:
        """The last drag-taught recording: one `{"point": [joints, 0.001 deg]}` line per
        controller tick (5 ms), then `{"command": "save_trajectory", "save_state": true,
        "total_num": N}`; the SDK writes the point lines into the file it was given and returns
        N (found by running `rm_save_trajectory`; json/dragTech.md shows the point lines only).
        Nothing recorded, or drag teaching still on: `save_state` false."""
        points = self.motion.recorded
        if not points or self.motion.dragging:
            return [{"command": "save_trajectory", "save_state": False, "total_num": 0}]
        return [{"point": _milli_deg(q)} for q in points] + [
            {"command": "save_trajectory", "save_state": True, "total_num": len(points)}]

    def _h_set_power(self, p: Json, c: int, now: float) -> Json:
        self.motion.set_powered(bool(p["arm_power"]))
        return {"command": "set_arm_power", "arm_power": True}
