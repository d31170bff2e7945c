"""Typed configuration: YAML files under ``config/`` loaded into frozen dataclasses.

Validation happens once, at the edge: a wrong key, type, joint count or value raises
:class:`ConfigError` naming the file and the key path (``config/bimanual.yaml: arms.left.ip:
not an IPv4 address``). The rest of the stack only ever sees the typed objects. ROS node
parameters are the flattened form of the same objects (:func:`flatten` / :func:`from_flat`), so
``-p arms.left.ip:=...`` on a node is checked by exactly the same rules as the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import yaml

from ate_core.robot.models import ARM_MODELS, GRIPPER_MAX_OPENING_M, arm_model

T = TypeVar("T")
Problem = Tuple[str, str]  # (key path relative to the object, message)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the source, the key path and why."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# Field checks: attached through dataclass field metadata, run after the type is right.

Check = Callable[[Any], Optional[str]]


def _ipv4(value: str) -> Optional[str]:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return "not an IPv4 address"
    return None


def _port(value: int) -> Optional[str]:
    return None if 1 <= value <= 65535 else f"{value} is not a port number (1-65535)"


def _in_range(lo: float, hi: float) -> Check:
    def check(value: Any) -> Optional[str]:
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if not (math.isfinite(v) and lo <= v <= hi):
                return f"{v} is outside [{lo}, {hi}]"
        return None
    return check


def _positive(value: float) -> Optional[str]:
    return None if math.isfinite(value) and value > 0 else f"{value} must be > 0"


def _one_of(*choices: str) -> Check:
    def check(value: str) -> Optional[str]:
        return None if value in choices else f"{value!r} is not one of {list(choices)}"
    return check


def _nonempty(value: Any) -> Optional[str]:
    return None if value else "must not be empty"


# Public names for the checks, so other typed configs (policies, training) validate alike.
in_range = _in_range
positive = _positive
one_of = _one_of
nonempty = _nonempty


def checked(default: Any = dataclasses.MISSING, *, check: Check, doc: str = "") -> Any:
    """A dataclass field with a value check (and an optional one-line description)."""
    meta = {"check": check, "doc": doc}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Schema

Vec3 = Tuple[float, float, float]


@dataclass(frozen=True)
class MountConfig:
    """Where an arm's base sits on the robot base (URDF xyz / fixed-axis rpy)."""

    xyz_m: Vec3 = (0.0, 0.0, 0.0)
    rpy_rad: Vec3 = checked((0.0, 0.0, 0.0), check=_in_range(-2 * math.pi, 2 * math.pi))


@dataclass(frozen=True)
class ArmConfig:
    """One RealMan arm: its controller endpoint, kinematic model and naming."""

    ip: str = checked(check=_ipv4)
    udp_port: int = checked(check=_port, doc="UDP port the controller pushes state to")
    joint_names: Tuple[str, ...] = checked(check=_nonempty)
    gripper_joint: str = checked(check=_nonempty)
    home_rad: Tuple[float, ...] = checked(check=_in_range(-2 * math.pi, 2 * math.pi))
    model: str = checked("RM75-B", check=_one_of(*sorted(ARM_MODELS)))
    tcp_port: int = checked(8080, check=_port)
    follow: bool = False
    control_period_s: float = checked(0.01, check=_in_range(0.002, 0.1))
    push_cycle: int = checked(1, check=_in_range(1, 100), doc="UDP push period in 5 ms units")
    realtime_priority: int = checked(49, check=_in_range(0, 99),
                                     doc="SCHED_FIFO priority of the arm driver process's threads "
                                         "(state pushes, commands); 0: normal")
    mount: MountConfig = MountConfig()
    #: Flange -> tool centre point (the gripper's fingertips). The supervisor's workspace box and
    #: inter-arm capsules reach to it, so the gripper body is inside the safety model.
    tcp: MountConfig = MountConfig()

    def problems(self) -> Iterator[Problem]:
        model = arm_model(self.model)
        if len(self.joint_names) != model.dof:
            yield ("joint_names", f"{len(self.joint_names)} joints given, {self.model} has "
                                  f"{model.dof}")
        if len(set(self.joint_names)) != len(self.joint_names):
            yield ("joint_names", "joint names are not unique")
        if len(self.home_rad) != model.dof:
            yield ("home_rad", f"{len(self.home_rad)} values given, {self.model} has "
                               f"{model.dof} joints")
        else:
            for i, (q, lo, hi) in enumerate(zip(self.home_rad, model.lower_rad, model.upper_rad)):
                if not lo <= q <= hi:
                    yield (f"home_rad[{i}]", f"{q} rad is outside the joint limits "
                                             f"[{lo:.4f}, {hi:.4f}] of {self.model}")
        if self.follow and self.control_period_s > 0.010 + 1e-12:
            # RealMan: high-follow pass-through needs a command period of at most 10 ms.
            yield ("control_period_s", f"{self.control_period_s} s is too slow for follow: true "
                                       f"(high-follow mode requires <= 0.01 s)")


@dataclass(frozen=True)
class ArmsConfig:
    left: ArmConfig
    right: ArmConfig

    def items(self) -> Tuple[Tuple[str, ArmConfig], ...]:
        return (("left", self.left), ("right", self.right))

    def problems(self) -> Iterator[Problem]:
        if (self.left.ip, self.left.tcp_port) == (self.right.ip, self.right.tcp_port):
            yield ("right.tcp_port", f"both arms use {self.left.ip}:{self.left.tcp_port}")
        # One push port per arm: with a shared port the kernel delivers every datagram to one
        # socket only, so the other arm's state silently stops (RealMan SDK, dual-arm notes).
        if self.left.udp_port == self.right.udp_port:
            yield ("right.udp_port", f"both arms use UDP push port {self.left.udp_port}; "
                                     f"each arm needs its own")
        names = set(self.left.joint_names) | {self.left.gripper_joint}
        clash = names & (set(self.right.joint_names) | {self.right.gripper_joint})
        if clash:
            yield ("right.joint_names", f"joint names shared with the left arm: {sorted(clash)}")


@dataclass(frozen=True)
class GripperConfig:
    max_opening_m: float = checked(GRIPPER_MAX_OPENING_M, check=_in_range(0.0, 0.2))


@dataclass(frozen=True)
class TopicsConfig:
    """Topic names the nodes share (see the ROS interface table in the README)."""

    joint_states: str = checked("/joint_states", check=_nonempty)
    arm_joint_states: str = checked("joint_states", check=_nonempty,
                                    doc="per-arm topic, relative to the arm namespace")
    arm_command: str = checked("command", check=_nonempty)
    diagnostics: str = checked("/diagnostics", check=_nonempty)
    cameras: str = checked("/cameras", check=_nonempty,
                           doc="camera namespace: {cameras}/{name}/image_raw")
    action_chunk: str = checked("/ate/action_chunk", check=_nonempty)
    markers: str = checked("/ate/markers", check=_nonempty)
    estop: str = checked("/ate/estop", check=_nonempty)
    rearm: str = checked("/ate/rearm", check=_nonempty)
    engage: str = checked("/ate/engage", check=_nonempty)


@dataclass(frozen=True)
class EndpointConfig:
    """Where an emulated controller listens in simulation (loopback)."""

    ip: str = checked(check=_ipv4)
    tcp_port: int = checked(check=_port)
    udp_port: int = checked(check=_port)


@dataclass(frozen=True)
class SimArmsConfig:
    left: EndpointConfig = EndpointConfig("127.0.0.1", 18080, 18089)
    right: EndpointConfig = EndpointConfig("127.0.0.2", 18080, 18090)


@dataclass(frozen=True)
class SimConfig:
    """`sim:=true`: each arm's controller is an emulator on loopback, driven by the real SDK."""

    arms: SimArmsConfig = SimArmsConfig()


# ---------------------------------------------------------------------------------------------
# Cameras, inference and the supervisor (the control path)


@dataclass(frozen=True)
class CameraConfig:
    """One camera: where frames come from and how they are published.

    ``source``: ``v4l2`` (a device through OpenCV), ``video`` (a file, looped) or ``sim`` (the
    simulated scene). Frames are published at ``width`` x ``height``; ``horizontal_fov_deg``
    gives the pinhole intrinsics of ``camera_info`` until a calibration is loaded.
    """

    source: str = checked("sim", check=_one_of("v4l2", "video", "sim"))
    device: str = checked("/dev/video0", check=_nonempty, doc="v4l2: device path or index")
    video_file: str = ""  # video: the file, played in a loop
    width: int = checked(640, check=_in_range(16, 8192))
    height: int = checked(480, check=_in_range(16, 8192))
    fps: float = checked(30.0, check=_in_range(0.5, 240.0))
    pixel_format: str = checked("MJPG", check=_one_of("MJPG", "YUYV"))
    jpeg_quality: int = checked(90, check=_in_range(1, 100))
    horizontal_fov_deg: float = checked(70.0, check=_in_range(1.0, 179.0))
    max_age_s: float = checked(0.1, check=_in_range(0.001, 10.0),
                               doc="an older newest frame blocks inference")
    reopen_s: float = checked(1.0, check=_in_range(0.01, 60.0),
                              doc="wait before reopening a device that failed")

    def problems(self) -> Iterator[Problem]:
        if self.source == "video" and not self.video_file:
            yield ("video_file", "source video needs a video_file")


def _default_cameras() -> Dict[str, CameraConfig]:
    return {name: CameraConfig() for name in ("head", "left_wrist", "right_wrist")}


@dataclass(frozen=True)
class InferenceConfig:
    """The inference node: which checkpoint, where it runs, how often, on what instruction."""

    checkpoint: str = ""  # policy checkpoint directory ("": no inference node is started)
    device: str = checked("auto", check=_one_of("auto", "cpu", "cuda"))
    dtype: str = checked("float32", check=_one_of("float32", "float16", "bfloat16"),
                         doc="autocast dtype on CUDA (CPU always runs float32)")
    task: str = ""  # the instruction given to the policy
    num_steps: int = checked(0, check=_in_range(0, 1000), doc="denoising steps (0: the policy's)")
    period_s: float = checked(0.0, check=_in_range(0.0, 10.0),
                              doc="least time between inferences (0: back to back)")
    action_period_s: float = checked(0.0, check=_in_range(0.0, 1.0),
                                     doc="time between chunk points (0: the checkpoint's fps)")
    torch_threads: int = checked(2, check=_in_range(1, 256))
    nice: int = checked(10, check=_in_range(0, 19),
                        doc="the worker's niceness: the model yields the CPU to the control loop")
    warmup_runs: int = checked(2, check=_in_range(0, 100))
    joint_state_max_age_s: float = checked(0.05, check=_in_range(0.001, 10.0))
    guidance: bool = False
    guidance_vae: str = ""  # ATE VAE for inference guidance ("": the one the checkpoint records)
    guidance_scale: float = checked(1.0, check=_in_range(0.0, 100.0))


@dataclass(frozen=True)
class ExecutorConfig:
    """How the supervisor turns chunks into per-tick targets (``ate_core.runtime.executor``)."""

    mode: str = checked("crossfade", check=_one_of("replace", "crossfade", "ensemble"))
    crossfade_s: float = checked(0.1, check=_in_range(0.0, 5.0))
    ensemble_k: float = checked(0.01, check=_in_range(0.0, 10.0),
                                doc="ACT temporal ensembling: weight exp(-k i), i = 0 oldest")
    max_chunks: int = checked(8, check=_in_range(1, 1000), doc="chunks kept for blending")
    max_future_s: float = checked(0.05, check=_in_range(0.0, 10.0),
                                  doc="a chunk stamped further ahead of the supervisor's clock "
                                      "is rejected (clocks of policy and robot PC disagree)")


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box in base_link that an arm's TCP must stay in."""

    min_m: Vec3 = (-1.0, -1.0, -1.0)
    max_m: Vec3 = (1.0, 1.0, 1.0)

    def problems(self) -> Iterator[Problem]:
        for axis, lo, hi in zip("xyz", self.min_m, self.max_m):
            if not lo < hi:
                yield ("max_m", f"{axis}: max {hi} is not above min {lo}")


def _default_workspace() -> Dict[str, WorkspaceBox]:
    return {"left": WorkspaceBox((-0.05, -0.25, -0.30), (0.70, 0.85, 0.80)),
            "right": WorkspaceBox((-0.05, -0.85, -0.30), (0.70, 0.25, 0.80))}


@dataclass(frozen=True)
class SafetyConfig:
    """Every target passes these each tick (``ate_core.runtime.safety``)."""

    joint_margin_rad: float = checked(0.05, check=_in_range(0.0, 0.5))
    velocity_scale: float = checked(0.5, check=_in_range(0.01, 1.0),
                                    doc="fraction of each joint's rated velocity")
    acceleration_scale: float = checked(0.2, check=_in_range(0.01, 1.0),
                                        doc="fraction of each joint's rated acceleration")
    gripper_velocity_m_s: float = checked(0.1, check=_in_range(0.001, 1.0))
    workspace: Dict[str, WorkspaceBox] = field(default_factory=_default_workspace)
    min_arm_distance_m: float = checked(0.05, check=_in_range(0.0, 1.0))
    link_radius_m: float = checked(0.06, check=_in_range(0.0, 0.5),
                                   doc="capsule radius of every arm link")


@dataclass(frozen=True)
class WatchdogConfig:
    """Timeouts after which the supervisor holds (or stops, for a lost controller)."""

    joint_state_timeout_s: float = checked(0.05, check=_in_range(0.005, 10.0))
    chunk_timeout_s: float = checked(1.0, check=_in_range(0.01, 60.0))
    camera_timeout_s: float = checked(0.25, check=_in_range(0.01, 60.0))
    controller_timeout_s: float = checked(0.5, check=_in_range(0.01, 60.0),
                                          doc="joint state silent this long: controller lost")

    def problems(self) -> Iterator[Problem]:
        if self.controller_timeout_s <= self.joint_state_timeout_s:
            yield ("controller_timeout_s", "must be longer than joint_state_timeout_s")


@dataclass(frozen=True)
class SupervisorConfig:
    """The only commander of the arms: control rate, ramps, executor, safety, watchdogs."""

    rate_hz: float = checked(100.0, check=_in_range(1.0, 1000.0))
    realtime_priority: int = checked(50, check=_in_range(0, 99),
                                     doc="SCHED_FIFO priority of the control loop (0: normal)")
    ramp_s: float = checked(1.0, check=_in_range(0.0, 30.0), doc="engage / re-engage ramp")
    dry_run: bool = False
    executor: ExecutorConfig = ExecutorConfig()
    safety: SafetyConfig = SafetyConfig()
    watchdog: WatchdogConfig = WatchdogConfig()


@dataclass(frozen=True)
class BimanualConfig:
    """The whole robot: both arms, their layout, and the names the nodes use."""

    arms: ArmsConfig
    robot_name: str = checked("ate_bimanual", check=_nonempty)
    gripper: GripperConfig = GripperConfig()
    topics: TopicsConfig = TopicsConfig()
    cameras: Dict[str, CameraConfig] = field(default_factory=_default_cameras)
    inference: InferenceConfig = InferenceConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    sim: SimConfig = SimConfig()

    def problems(self) -> Iterator[Problem]:
        sides = {side for side, _ in self.arms.items()}
        missing = sorted(sides - set(self.supervisor.safety.workspace))
        if missing:
            yield ("supervisor.safety.workspace", f"no workspace box for arms {missing}")
        unknown = sorted(set(self.supervisor.safety.workspace) - sides)
        if unknown:
            yield ("supervisor.safety.workspace", f"boxes for unknown arms {unknown}")
        for name in self.cameras:
            if not _NAME.match(name):
                yield (f"cameras.{name}", "camera names must be ROS name tokens "
                                          "(letters, digits, '_')")


def simulated(cfg: BimanualConfig) -> BimanualConfig:
    """The same robot with every arm pointed at its emulator endpoint from ``cfg.sim`` and
    every camera showing the simulated scene."""
    arms = {side: dataclasses.replace(arm, ip=ep.ip, tcp_port=ep.tcp_port, udp_port=ep.udp_port)
            for (side, arm), ep in zip(cfg.arms.items(), (cfg.sim.arms.left, cfg.sim.arms.right))}
    cameras = {name: dataclasses.replace(cam, source="sim") for name, cam in cfg.cameras.items()}
    return dataclasses.replace(cfg, arms=ArmsConfig(**arms), cameras=cameras)


# ---------------------------------------------------------------------------------------------
# Loading


def plain_data(value: Any) -> Any:
    """Tuples as lists, recursively: the form YAML and JSON write (the inverse of :func:`from_dict`)."""
    if isinstance(value, (tuple, list)):
        return [plain_data(x) for x in value]
    if isinstance(value, dict):
        return {k: plain_data(x) for k, x in value.items()}
    return value


def read_yaml(path: Union[str, os.PathLike]) -> Any:
    """The plain data of a YAML file (``{}`` for an empty one); problems raise :class:`ConfigError`."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        raise ConfigError(source, "", f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return {} if data is None else data


def load_config(path: Union[str, os.PathLike], cls: Type[T] = BimanualConfig) -> T:  # type: ignore[assignment]
    """Read a YAML file into ``cls``; every problem raises :class:`ConfigError`."""
    return from_dict(cls, read_yaml(path), os.fspath(path))


def from_dict(cls: Type[T], data: Any, source: str = "<dict>") -> T:
    """Build and validate ``cls`` from plain data (as YAML gives it)."""
    return _build(cls, data, source, "")


def _join(prefix: str, key: str) -> str:
    if key.startswith("["):
        return prefix + key
    return f"{prefix}.{key}" if prefix else key


def _build(tp: Any, value: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, source, path)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, source, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, path, f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(source, path, f"expected {len(args)} values, got {len(value)}")
        return tuple(_build(a, v, source, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected a mapping, got {_describe(value)}")
        return {str(k): _build(args[1], v, source, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, path, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, path, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {path}")


def _build_dataclass(cls: Any, value: Any, source: str, path: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(source, path, f"expected a mapping, got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(source, _join(path, str(key)), f"unknown key (expected one of: {known})")
    kwargs: Dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, key_path, "required key is missing")
            continue
        built = _build(hints[name], value[name], source, key_path)
        check = f.metadata.get("check")
        if check is not None and built is not None:
            message = check(built)
            if message:
                raise ConfigError(source, key_path, message)
        kwargs[name] = built
    obj = cls(**kwargs)
    problems = getattr(obj, "problems", None)
    if problems is not None:
        for key, message in problems():
            raise ConfigError(source, _join(path, key), message)
    return obj


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


# ---------------------------------------------------------------------------------------------
# Flat form, for ROS parameters: {"arms.left.ip": "192.168.1.18", ...}

ParamValue = Union[bool, int, float, str, List[bool], List[int], List[float], List[str]]


def flatten(obj: Any, prefix: str = "") -> Dict[str, ParamValue]:
    """Dataclass -> {dotted key: scalar or homogeneous list} (what ROS parameters can hold)."""
    out: Dict[str, ParamValue] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key))
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    out.update(flatten(v, f"{key}.{k}"))
                else:
                    out[f"{key}.{k}"] = v
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def from_flat(cls: Type[T], flat: Mapping[str, Any], source: str = "parameters") -> T:
    """Inverse of :func:`flatten`, validated like a file."""
    nested: Dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(source, key, "key is both a value and a section")
        node[parts[-1]] = list(value) if isinstance(value, (list, tuple)) else value
    return from_dict(cls, nested, source)


def replace_in(obj: T, updates: Mapping[str, Any], source: str = "overrides") -> T:
    """Apply dotted-key overrides to a config object and validate the result."""
    flat = flatten(obj)
    flat.update(updates)
    return from_flat(type(obj), flat, source)
