"""The robot stack's configuration: ``config/bimanual.yaml`` as frozen dataclasses.

Both arms (controller endpoints, kinematic model, mounts), the cameras, the inference node, the
supervisor (executor, safety filter, watchdogs) and the emulated controllers of ``sim:=true``.
Every node, the launch file and the bringup read this one schema (:func:`load_config`); a node
declares the sections it uses as ROS parameters (``ate_ros.params``), described by the ``doc``
of each field. Loading and validation are :mod:`ate_core.config`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, Tuple, Union

from ate_core.config import (Problem, checked, in_range, ipv4, load_dataclass, nonempty, one_of,
                             port_number)
from ate_core.robot.models import ARM_MODELS, GRIPPER_MAX_OPENING_M, arm_model

__all__ = ["MountConfig", "ArmConfig", "ArmsConfig", "GripperConfig", "TopicsConfig", "EndpointConfig",
           "SimArmsConfig", "SimConfig", "CameraConfig", "InferenceConfig", "ExecutorConfig", "WorkspaceBox",
           "SafetyConfig", "WatchdogConfig", "LeaderConfig", "SupervisorConfig", "RecorderConfig",
           "TeleopConfig", "BimanualConfig", "simulated",
           "load_config"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

Vec3 = Tuple[float, float, float]


@dataclass(frozen=True)
class MountConfig:
    """Where an arm's base sits on the robot base (URDF xyz / fixed-axis rpy)."""

    xyz_m: Vec3 = checked((0.0, 0.0, 0.0), doc="translation x, y, z from the parent frame, m")
    rpy_rad: Vec3 = checked((0.0, 0.0, 0.0), check=in_range(-2 * math.pi, 2 * math.pi),
                            doc="rotation roll, pitch, yaw about the parent's fixed axes, rad")


@dataclass(frozen=True)
class ArmConfig:
    """One RealMan arm: its controller endpoint, kinematic model and naming."""

    ip: str = checked(check=ipv4, doc="IPv4 address of the arm's controller")
    udp_port: int = checked(check=port_number,
                            doc="UDP port on the robot PC the controller pushes state to (1-65535)")
    joint_names: Tuple[str, ...] = checked(check=nonempty,
                                           doc="the arm's joint names, base to flange")
    gripper_joint: str = checked(check=nonempty, doc="joint name of the gripper opening (m)")
    home_rad: Tuple[float, ...] = checked(check=in_range(-2 * math.pi, 2 * math.pi),
                                          doc="home pose of the `home` service, rad per joint")
    model: str = checked("RM75-B", check=one_of(*sorted(ARM_MODELS)),
                         doc=f"RealMan arm model: {', '.join(sorted(ARM_MODELS))}")
    tcp_port: int = checked(8080, check=port_number,
                            doc="TCP port of the controller's JSON API (1-65535)")
    follow: bool = checked(False, doc="RealMan high-follow pass-through of streamed joint targets")
    control_period_s: float = checked(0.01, check=in_range(0.002, 0.1),
                                      doc="period of the arm's command stream, s (follow: <= 0.01)")
    push_cycle: int = checked(1, check=in_range(1, 100),
                              doc="state push period of the controller, in 5 ms units")
    realtime_priority: int = checked(49, check=in_range(0, 99),
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
    max_opening_m: float = checked(GRIPPER_MAX_OPENING_M, check=in_range(0.0, 0.2),
                                   doc="gripper opening at its widest, m (both grippers)")


@dataclass(frozen=True)
class TopicsConfig:
    """Topic names the nodes share (see the ROS interface table in the README)."""

    joint_states: str = checked("/joint_states", check=nonempty,
                                doc="whole-robot joint states topic (robot_state_publisher, RViz)")
    arm_joint_states: str = checked("joint_states", check=nonempty,
                                    doc="per-arm joint states topic, relative to the arm namespace")
    arm_command: str = checked("command", check=nonempty,
                               doc="per-arm joint command topic, relative to the arm namespace")
    diagnostics: str = checked("/diagnostics", check=nonempty, doc="diagnostics topic")
    cameras: str = checked("/cameras", check=nonempty,
                           doc="camera namespace: {cameras}/{name}/image_raw")
    action_chunk: str = checked("/ate/action_chunk", check=nonempty,
                                doc="the policy's action chunks (trajectory_msgs/JointTrajectory)")
    markers: str = checked("/ate/markers", check=nonempty,
                           doc="RViz markers of the planned TCP paths")
    estop: str = checked("/ate/estop", check=nonempty,
                         doc="emergency stop service (std_srvs/Trigger)")
    rearm: str = checked("/ate/rearm", check=nonempty,
                         doc="service clearing a stop (std_srvs/Trigger)")
    engage: str = checked("/ate/engage", check=nonempty,
                          doc="service starting or ending execution of chunks (std_srvs/SetBool)")
    engage_teleop: str = checked("/ate/engage_teleop", check=nonempty,
                                 doc="service starting or ending teleoperation: the followers "
                                     "track the leaders (std_srvs/SetBool)")
    arm_busy: str = checked("busy", check=nonempty,
                            doc="per-arm topic, relative to the arm namespace: what has the arm "
                                "instead of the command stream (drag teaching, a planned move; "
                                "empty when nothing: std_msgs/String, latched)")
    teleop_target: str = checked("teleop_target", check=nonempty,
                                 doc="per-arm teleop target topic, relative to the arm "
                                     "namespace: the leader's joints in the follower's names "
                                     "(sensor_msgs/JointState)")


@dataclass(frozen=True)
class EndpointConfig:
    """Where an emulated controller listens in simulation (loopback)."""

    ip: str = checked(check=ipv4, doc="loopback IPv4 address the emulated controller listens on")
    tcp_port: int = checked(check=port_number, doc="TCP port of the emulated JSON API (1-65535)")
    udp_port: int = checked(check=port_number,
                            doc="UDP port the emulated controller pushes state to (1-65535)")


@dataclass(frozen=True)
class SimArmsConfig:
    left: EndpointConfig = EndpointConfig("127.0.0.1", 18080, 18089)
    right: EndpointConfig = EndpointConfig("127.0.0.2", 18080, 18090)


@dataclass(frozen=True)
class SimConfig:
    """`sim:=true`: each arm's controller is an emulator on loopback, driven by the real SDK."""

    arms: SimArmsConfig = SimArmsConfig()
    twin: bool = checked(False, doc="the controllers run on the MuJoCo twin's physics and the "
                                    "cameras show its rendered scene (false: idealised "
                                    "controllers and a test pattern)")
    # Rendering three 640x480 cameras at 30 fps takes most of a core in software GL, and the
    # whole stack runs on two: the twin's cameras render smaller and slower.
    camera_width: int = checked(320, check=in_range(16, 8192),
                                doc="twin: width of every rendered camera, px")
    camera_height: int = checked(240, check=in_range(16, 8192),
                                 doc="twin: height of every rendered camera, px")
    camera_fps: float = checked(15.0, check=in_range(0.5, 240.0),
                                doc="twin: frame rate of every rendered camera, Hz")


# ---------------------------------------------------------------------------------------------
# Cameras, inference and the supervisor (the control path)


@dataclass(frozen=True)
class CameraConfig:
    """One camera: where frames come from and how they are published.

    ``source``: ``v4l2`` (a device through OpenCV), ``video`` (a file, looped), ``sim`` (a
    moving test pattern) or ``twin`` (the twin's rendered frames, from shared memory). Frames are published at ``width`` x ``height``; ``horizontal_fov_deg``
    gives the pinhole intrinsics of ``camera_info`` until a calibration is loaded.
    """

    source: str = checked("sim", check=one_of("v4l2", "video", "sim", "twin"),
                          doc="where frames come from: v4l2, video, sim or twin")
    device: str = checked("/dev/video0", check=nonempty,
                          doc="v4l2: device path or index; twin: the shared-memory block of its "
                              "frames")
    video_file: str = checked("", doc="video: the file, played in a loop")
    width: int = checked(640, check=in_range(16, 8192), doc="published image width, px")
    height: int = checked(480, check=in_range(16, 8192), doc="published image height, px")
    fps: float = checked(30.0, check=in_range(0.5, 240.0), doc="frame rate asked of the source, Hz")
    pixel_format: str = checked("MJPG", check=one_of("MJPG", "YUYV"),
                                doc="v4l2: pixel format asked of the device, MJPG or YUYV")
    jpeg_quality: int = checked(90, check=in_range(1, 100),
                                doc="JPEG quality of image_raw/compressed, 1-100")
    horizontal_fov_deg: float = checked(70.0, check=in_range(1.0, 179.0),
                                        doc="horizontal field of view of camera_info, deg")
    max_age_s: float = checked(0.1, check=in_range(0.001, 10.0),
                               doc="a newest frame older than this blocks inference, s")
    reopen_s: float = checked(1.0, check=in_range(0.01, 60.0),
                              doc="wait before reopening a device that failed, s")

    def problems(self) -> Iterator[Problem]:
        if self.source == "video" and not self.video_file:
            yield ("video_file", "source video needs a video_file")


def _default_cameras() -> Dict[str, CameraConfig]:
    return {name: CameraConfig() for name in ("head", "left_wrist", "right_wrist")}


@dataclass(frozen=True)
class InferenceConfig:
    """The inference node: which checkpoint, where it runs, how often, on what instruction."""

    checkpoint: str = checked("", doc="policy checkpoint directory (\"\": no inference node)")
    device: str = checked("auto", check=one_of("auto", "cpu", "cuda"),
                          doc="where the policy runs: auto, cpu or cuda")
    dtype: str = checked("float32", check=one_of("float32", "float16", "bfloat16"),
                         doc="autocast dtype on CUDA (CPU always runs float32)")
    task: str = checked("", doc="the instruction given to the policy")
    num_steps: int = checked(0, check=in_range(0, 1000), doc="denoising steps (0: the policy's)")
    period_s: float = checked(0.0, check=in_range(0.0, 10.0),
                              doc="least time between inferences, s (0: the policy's n_action_steps "
                                  "chunk points, as it was trained to run them)")
    action_period_s: float = checked(0.0, check=in_range(0.0, 1.0),
                                     doc="time between chunk points, s (0: the checkpoint's fps)")
    torch_threads: int = checked(2, check=in_range(1, 256), doc="torch intra-op threads")
    image_transport: str = checked("raw", check=one_of("raw", "compressed"),
                                   doc="the camera stream the policy reads: raw (image_raw) or "
                                       "compressed (image_raw/compressed, the JPEG the recorder "
                                       "keeps: offline replay then sees the same pixels)")
    nice: int = checked(10, check=in_range(0, 19),
                        doc="the worker's niceness: the model yields the CPU to the control loop")
    warmup_runs: int = checked(2, check=in_range(0, 100),
                               doc="inferences run and discarded before chunks are published")
    trace: bool = checked(True, doc="run the per-step denoising network as a frozen TorchScript "
                                    "trace, taken at the warm-up (same outputs to float rounding; "
                                    "about half the time per step on the CPU); false: eager")
    joint_state_max_age_s: float = checked(0.05, check=in_range(0.001, 10.0),
                                           doc="an older newest joint state blocks inference, s")
    guidance: bool = checked(False, doc="ATE latent guidance at inference")
    guidance_vae: str = checked("", doc="ATE VAE for guidance (\"\": the checkpoint's own)")
    guidance_scale: float = checked(1.0, check=in_range(0.0, 100.0),
                                    doc="strength of the latent guidance (0: none)")


@dataclass(frozen=True)
class ExecutorConfig:
    """How the supervisor turns chunks into per-tick targets (``ate_core.runtime.executor``)."""

    mode: str = checked("crossfade", check=one_of("replace", "crossfade", "ensemble"),
                        doc="how a new chunk takes over: replace, crossfade or ensemble")
    crossfade_s: float = checked(0.1, check=in_range(0.0, 5.0),
                                 doc="crossfade: blend time from the old chunk to the new, s")
    ensemble_k: float = checked(0.01, check=in_range(0.0, 10.0),
                                doc="ACT temporal ensembling: weight exp(-k i), i = 0 oldest")
    max_chunks: int = checked(8, check=in_range(1, 1000), doc="chunks kept for blending")
    max_future_s: float = checked(0.05, check=in_range(0.0, 10.0),
                                  doc="chunks stamped further ahead of the supervisor's clock are "
                                      "rejected (the PCs' clocks disagree), s")


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box in base_link that an arm's TCP must stay in."""

    min_m: Vec3 = checked((-1.0, -1.0, -1.0), doc="lowest x, y, z of the TCP in base_link, m")
    max_m: Vec3 = checked((1.0, 1.0, 1.0), doc="highest x, y, z of the TCP in base_link, m")

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

    joint_margin_rad: float = checked(0.05, check=in_range(0.0, 0.5),
                                      doc="distance kept inside every joint limit, rad")
    velocity_scale: float = checked(0.5, check=in_range(0.01, 1.0),
                                    doc="fraction of each joint's rated velocity")
    acceleration_scale: float = checked(0.2, check=in_range(0.01, 1.0),
                                        doc="fraction of each joint's rated acceleration")
    gripper_velocity_m_s: float = checked(0.1, check=in_range(0.001, 1.0),
                                          doc="fastest gripper opening or closing, m/s")
    workspace: Dict[str, WorkspaceBox] = field(default_factory=_default_workspace)
    min_arm_distance_m: float = checked(0.05, check=in_range(0.0, 1.0),
                                        doc="least distance between the two arms' link capsules, m")
    link_radius_m: float = checked(0.06, check=in_range(0.0, 0.5),
                                   doc="capsule radius of every arm link, m")


@dataclass(frozen=True)
class WatchdogConfig:
    """Timeouts after which the supervisor holds (or stops, for a lost controller)."""

    joint_state_timeout_s: float = checked(0.05, check=in_range(0.005, 10.0),
                                           doc="joint state older than this: hold, s")
    chunk_timeout_s: float = checked(1.0, check=in_range(0.01, 60.0),
                                     doc="no chunk for this long: hold, s")
    camera_timeout_s: float = checked(0.25, check=in_range(0.01, 60.0),
                                      doc="a camera silent this long: hold, s")
    controller_timeout_s: float = checked(0.5, check=in_range(0.01, 60.0),
                                          doc="joint state silent this long: controller lost, s")

    def problems(self) -> Iterator[Problem]:
        if self.controller_timeout_s <= self.joint_state_timeout_s:
            yield ("controller_timeout_s", "must be longer than joint_state_timeout_s")


@dataclass(frozen=True)
class LeaderConfig:
    """Teleoperation as the supervisor judges it: the leaders' stream and its faults."""

    timeout_s: float = checked(0.1, check=in_range(0.005, 10.0),
                               doc="a leader arm silent this long while teleoperating: hold, s")
    max_jump_rad: float = checked(0.2, check=in_range(0.001, 6.3),
                                  doc="a leader sample moving a joint further than this from the "
                                      "leader's previous sample is a jump: hold, rad")
    jump_hold_s: float = checked(0.5, check=in_range(0.0, 60.0),
                                 doc="after a leader jump the followers hold this long, then "
                                     "ramp to the leader again, s")


@dataclass(frozen=True)
class SupervisorConfig:
    """The only commander of the arms: control rate, ramps, executor, safety, watchdogs."""

    rate_hz: float = checked(100.0, check=in_range(1.0, 1000.0),
                             doc="control rate: arm commands per second, Hz")
    realtime_priority: int = checked(50, check=in_range(0, 99),
                                     doc="SCHED_FIFO priority of the control loop (0: normal)")
    ramp_s: float = checked(1.0, check=in_range(0.0, 30.0),
                            doc="engage / re-engage ramp from the measured state, s")
    dry_run: bool = checked(False, doc="commands go to command_preview, not to the arms")
    executor: ExecutorConfig = ExecutorConfig()
    safety: SafetyConfig = SafetyConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    leader: LeaderConfig = LeaderConfig()


@dataclass(frozen=True)
class TeleopConfig:
    """The teleop node (leaders to follower targets) and the keyboard jog."""

    leader_topic: str = checked("/leader/{arm}_arm/joint_states", check=nonempty,
                                doc="each leader arm's JointState topic; {arm} is the follower's "
                                    "side (a second pair of RealMan arms: their arm nodes in "
                                    "the /leader namespace)")
    jog_step_rad: float = checked(0.02, check=in_range(0.0001, 0.5),
                                  doc="keyboard jog: one key press moves the joint this far, rad "
                                      "(the gripper a tenth of it, in m)")
    jog_rate_hz: float = checked(50.0, check=in_range(1.0, 1000.0),
                                 doc="keyboard jog: the targets are published this often, Hz "
                                     "(above the leader timeout's rate)")

    def problems(self) -> Iterator[Problem]:
        try:
            left, right = (self.leader_topic.format(arm=side) for side in ("left", "right"))
        except (KeyError, IndexError, ValueError) as e:
            yield ("leader_topic", f"{self.leader_topic!r}: only {{arm}} may be substituted ({e})")
            return
        if left == right:
            yield ("leader_topic", f"{self.leader_topic!r} must contain {{arm}}: each arm has "
                                   f"its own leader")


@dataclass(frozen=True)
class RecorderConfig:
    """The episode recorder: one rosbag2 (MCAP) bag per take, its flushes and its audit."""

    output_dir: str = checked("~/ate_episodes", check=nonempty,
                              doc="folder of the takes, one bag folder each (~ is expanded)")
    flush_period_s: float = checked(0.5, check=in_range(0.05, 10.0),
                                    doc="recorded messages reach the disk at least this often: "
                                        "the most a crash of the recorder can lose, s")
    min_free_disk_gb: float = checked(2.0, check=in_range(0.0, 100000.0),
                                      doc="a take does not start with less free space than this "
                                          "on output_dir's disk, and stops (saved) below half, GB")
    max_duration_s: float = checked(900.0, check=in_range(1.0, 86400.0),
                                    doc="a take running this long is stopped and saved, s")
    record_chunks: bool = checked(True, doc="record the policy's action chunks")
    record_diagnostics: bool = checked(True, doc="record /diagnostics")
    min_rate_fraction: float = checked(0.9, check=in_range(0.0, 1.0),
                                       doc="audit: a joint-state or camera stream below this "
                                           "fraction of its rate is a problem")
    max_gap_s: float = checked(0.5, check=in_range(0.001, 3600.0),
                               doc="audit: a longer gap in a joint-state or camera stream is a "
                                   "problem, s")
    reject_on_audit: bool = checked(False, doc="audit: a take with a problem is rejected (kept, "
                                               "marked, left out of conversion), not flagged")


@dataclass(frozen=True)
class BimanualConfig:
    """The whole robot: both arms, their layout, and the names the nodes use."""

    arms: ArmsConfig
    robot_name: str = checked("ate_bimanual", check=nonempty, doc="name of the robot in the URDF")
    gripper: GripperConfig = GripperConfig()
    topics: TopicsConfig = TopicsConfig()
    cameras: Dict[str, CameraConfig] = field(default_factory=_default_cameras)
    inference: InferenceConfig = InferenceConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    sim: SimConfig = SimConfig()
    recorder: RecorderConfig = RecorderConfig()
    teleop: TeleopConfig = TeleopConfig()

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


def twin_frame_block(ip: str, tcp_port: int, camera: str) -> str:
    """The shared-memory block of ``camera``'s frames from the twin whose first controller
    serves ``ip:tcp_port``: the twin host and the camera nodes of one config find each other,
    two stacks on one machine do not."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"ate_twin_{ip}_{tcp_port}_{camera}")


def simulated(cfg: BimanualConfig) -> BimanualConfig:
    """The same robot with every arm pointed at its emulator endpoint from ``cfg.sim`` and
    every camera showing the simulated scene: the twin's render at the ``sim`` section's camera
    size and rate (``sim.twin``), or the test pattern."""
    arms = {side: dataclasses.replace(arm, ip=ep.ip, tcp_port=ep.tcp_port, udp_port=ep.udp_port)
            for (side, arm), ep in zip(cfg.arms.items(), (cfg.sim.arms.left, cfg.sim.arms.right))}
    sim, first = cfg.sim, cfg.sim.arms.left
    cameras = {name: (dataclasses.replace(
                          cam, source="twin", width=sim.camera_width, height=sim.camera_height,
                          fps=sim.camera_fps,
                          device=twin_frame_block(first.ip, first.tcp_port, name))
                      if sim.twin else dataclasses.replace(cam, source="sim"))
               for name, cam in cfg.cameras.items()}
    return dataclasses.replace(cfg, arms=ArmsConfig(**arms), cameras=cameras)


def load_config(path: Union[str, os.PathLike]) -> BimanualConfig:
    """Read a robot config YAML (``config/bimanual.yaml``); every problem raises ``ConfigError``."""
    return load_dataclass(path, BimanualConfig)
