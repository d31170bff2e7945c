"""The episode recorder: one rosbag2 (MCAP) bag per take, in a process of its own.

Services (std_srvs; the node is ``/recorder`` by default):

- ``~/start`` (Trigger): a new take, ``<output_dir>/episode_NNNNNN``, with the node's
  parameters ``task`` (the instruction) and ``operator`` as they are at that moment
  (``ros2 param set /recorder task "put the cube in the bowl"``). Refused while a take runs
  and when the output disk has less than ``recorder.min_free_disk_gb`` free.
- ``~/stop`` (SetBool): stop and save; ``data`` is whether the take succeeded. A failed take is
  kept and marked, as LeRobot's and OpenRAL's converters expect; the capture audit
  (``ate_core.data.audit``) is stored with it and may flag or reject it.
- ``~/discard`` (Trigger): stop and delete the take.

What is recorded is the robot contract's streams (``ate_core.robot.recording``): each arm's
joint states, commands and teleop leader targets, the whole-robot joint states, every camera's JPEG frames, the
policy's chunks and diagnostics. Messages are taken as the bytes DDS delivered (``raw=True``:
never deserialized here) and handed to the take's writer thread; the receive time is the
bag's log time and each message keeps its own header stamp. A take also stops (and is saved)
after ``recorder.max_duration_s``, when the disk falls below half the minimum, and when the
node shuts down: an interrupted session never loses a take, and a killed recorder leaves one
that ``python -m ate_core.data.bag recover`` finishes.

A process of its own because recording must never slow the control loop: it shares no
interpreter lock with the supervisor or a driver, and JPEG encoding stays in the cameras.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rcl_interfaces.msg import ParameterDescriptor
from sensor_msgs.msg import CompressedImage, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import flatten
from ate_core.data.audit import AuditRules
from ate_core.data.bag import BagError
from ate_core.data.take import Take, TakeError, free_disk_gb, next_episode_path
from ate_core.robot.config import BimanualConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.recording import BEST_EFFORT_ROLES, recorded_streams, streams_to_dict
from ate_core.robot.urdf import bimanual_urdf
from ate_ros.diagnostics import ERROR, OK, WARN, diagnostic_array, diagnostic_status
from ate_ros.node_host import run_nodes
from ate_ros.nodes.camera_node import pinhole_camera_info
from ate_ros.params import declare_config

_TYPES = {"sensor_msgs/msg/JointState": JointState,
          "sensor_msgs/msg/CompressedImage": CompressedImage,
          "trajectory_msgs/msg/JointTrajectory": JointTrajectory,
          "diagnostic_msgs/msg/DiagnosticArray": DiagnosticArray}
#: Deep enough for a second of the busiest reliable stream while the executor is held up.
_RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)


def software_version() -> Dict[str, str]:
    """The package version, and the git commit when running from a checkout."""
    out = {"ate_ros": "unknown"}
    try:
        out["ate_ros"] = importlib.metadata.version("ate_ros")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        here = Path(__file__).resolve().parent
        done = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=5)
        if done.returncode == 0 and done.stdout.strip():
            out["git"] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def robot_contract(cfg: BimanualConfig, config_file: str) -> Dict[str, Any]:
    """What a bag needs to be read without the robot: the config (file and effective values),
    the URDF, the cameras' intrinsics, the streams and the software version."""
    try:
        config_text = Path(config_file).read_text()
    except OSError:
        config_text = ""
    cameras = {}
    for name, cam in cfg.cameras.items():
        info = pinhole_camera_info(cam, f"{name}_camera")
        cameras[name] = {"width": cam.width, "height": cam.height, "fps": cam.fps,
                         "k": [float(v) for v in info.k], "d": [float(v) for v in info.d],
                         "distortion_model": info.distortion_model}
    return {"robot": cfg.robot_name, "software": software_version(),
            "config_file": str(config_file), "config_text": config_text,
            "config": flatten(cfg), "urdf": bimanual_urdf(layout_from_config(cfg), cfg.robot_name),
            "cameras": cameras, "streams": streams_to_dict(recorded_streams(cfg))}


class RecorderNode(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, config_file: str = "",
                 **kwargs: Any) -> None:
        super().__init__("recorder", **kwargs)
        if config is None:
            config = declare_config(self, ("recorder",))
            config_file = self.get_parameter("config_file").value
        cfg = config
        self.cfg = cfg
        self.rec = cfg.recorder
        self.output_dir = Path(self.rec.output_dir).expanduser()
        self._config_file = config_file
        self.declare_parameter("task", cfg.inference.task, ParameterDescriptor(
            description="the instruction of the next take (read at ~/start)"))
        self.declare_parameter("operator", "", ParameterDescriptor(
            description="who demonstrates the next take (read at ~/start)"))
        self.streams = recorded_streams(cfg)
        self._expected = {t: s.expected_hz for t, s in self.streams.items()
                          if s.expected_hz is not None}
        self._rules = AuditRules(self.rec.min_rate_fraction, self.rec.max_gap_s,
                                 self.rec.reject_on_audit)
        self._lock = threading.Lock()  # the take, against services, callbacks and the timer
        self._take: Optional[Take] = None
        self._takes_saved = 0
        self._last = "idle"
        self._last_level = OK
        for topic, stream in self.streams.items():
            qos = qos_profile_sensor_data if stream.role in BEST_EFFORT_ROLES else _RELIABLE
            self.create_subscription(_TYPES[stream.msgtype], topic,
                                     lambda data, t=topic: self._on_message(t, data), qos,
                                     raw=True)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(SetBool, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/discard", self._on_discard)
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        self.create_timer(1.0, self._check_and_report)

    # ------------------------------------------------------------------ messages

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_message(self, topic: str, data: bytes) -> None:
        take = self._take
        if take is not None:
            take.put(topic, self._now_ns(), data)

    # ------------------------------------------------------------------ services

    def start_take(self) -> str:
        """Start a take; returns its folder. TakeError says why not."""
        with self._lock:
            if self._take is not None:
                raise TakeError(f"already recording {self._take.path.name}")
            free = free_disk_gb(self.output_dir)
            if free < self.rec.min_free_disk_gb:
                raise TakeError(f"{self.output_dir}: {free:.2f} GB free, below "
                                f"recorder.min_free_disk_gb {self.rec.min_free_disk_gb:g} GB")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = next_episode_path(self.output_dir)
            info = {"task": str(self.get_parameter("task").value),
                    "operator": str(self.get_parameter("operator").value),
                    "contract": robot_contract(self.cfg, self._config_file)}
            try:
                take = Take(path, info, {t: s.msgtype for t, s in self.streams.items()},
                            start_ns=self._now_ns(), flush_period_s=self.rec.flush_period_s,
                            expected_hz=self._expected, rules=self._rules)
            except BagError as e:
                raise TakeError(str(e)) from None
            # The take starts when it can take messages, not when the bag began to open (a
            # tenth of a second or more): the audit's start edge would otherwise show a gap in
            # every stream. What arrives meanwhile waits in DDS and is recorded after this.
            take.start_ns = self._now_ns()
            self._take = take
            self._last, self._last_level = f"recording {path.name}", OK
            return str(path)

    def stop_take(self, success: Optional[bool], reason: str = "operator") -> str:
        """Stop and save the running take; returns a one-line summary."""
        with self._lock:
            take, self._take = self._take, None
            if take is None:
                raise TakeError("no take is recording")
            outcome = {"success": success, "stop_reason": reason}
            try:
                path, audit = take.stop(self._now_ns(), outcome)
            except (TakeError, BagError) as e:
                self._last, self._last_level = f"{take.path.name} failed: {e}", ERROR
                raise TakeError(str(e)) from None
            self._takes_saved += 1
            verdict = audit.verdict + (f" ({'; '.join(audit.problems)})" if audit.problems else "")
            self._last = f"saved {path.name}: success={success}, audit {verdict}"
            self._last_level = OK if audit.verdict == "ok" else WARN
            return self._last

    def discard_take(self) -> str:
        with self._lock:
            take, self._take = self._take, None
            if take is None:
                raise TakeError("no take is recording")
            take.discard()
            self._last, self._last_level = f"discarded {take.path.name}", OK
            return self._last

    def _answer(self, response: Any, action: Any) -> Any:
        try:
            response.message = action()
            response.success = True
        except TakeError as e:
            response.success, response.message = False, str(e)
        self.get_logger().info(f"{'' if response.success else 'refused: '}{response.message}")
        return response

    def _on_start(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._answer(response, lambda: f"recording {self.start_take()}")

    def _on_stop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        return self._answer(response, lambda: self.stop_take(bool(request.data)))

    def _on_discard(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._answer(response, self.discard_take)

    # ------------------------------------------------------------------ upkeep

    def _check_and_report(self) -> None:
        take = self._take
        if take is not None:
            elapsed_s = (self._now_ns() - take.start_ns) * 1e-9
            reason = ""
            if elapsed_s >= self.rec.max_duration_s:
                reason = f"max_duration_s {self.rec.max_duration_s:g} s reached"
            elif free_disk_gb(self.output_dir) < self.rec.min_free_disk_gb / 2:
                reason = "the disk is nearly full"
            elif take.failure is not None:
                reason = f"writing failed: {take.failure}"
            if reason:
                self.get_logger().warning(f"stopping {take.path.name}: {reason}")
                try:
                    self.stop_take(None, reason)
                except TakeError as e:
                    self.get_logger().error(str(e))
        take = self._take
        values: Dict[str, object] = {"takes_saved": self._takes_saved,
                                     "output_dir": str(self.output_dir)}
        if take is not None:
            values.update(episode=take.path.name, messages=take.written,
                          backlog=take.queued - take.written, max_backlog=take.max_backlog,
                          mb_written=round(take.bytes_written / 1e6, 3))
        status = diagnostic_status("ate: recorder", self._last_level, self._last, "recorder",
                                   values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        # A shutdown (Ctrl-C, launch ending) saves the take rather than losing it.
        if self._take is not None:
            try:
                self.stop_take(None, "recorder shut down")
            except TakeError as e:
                self.get_logger().error(str(e))
        super().destroy_node()


def main(args: Optional[Sequence[str]] = None) -> None:
    run_nodes(lambda: [RecorderNode()], args)


if __name__ == "__main__":
    main()
