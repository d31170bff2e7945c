"""One camera on ROS: ``image_raw`` (+ ``/compressed``) and ``camera_info``, stamped at capture.

Topics (sensor-data QoS) under ``{topics.cameras}/{camera}/``: ``image_raw`` (rgb8),
``image_raw/compressed`` (JPEG, encoded only while someone subscribes, as image_transport
does) and ``camera_info`` (pinhole from ``horizontal_fov_deg``, no distortion, same stamp as
the image). Frames come from ``ate_ros.drivers.camera_sources``: a V4L2 device, a looped
video file, or the simulated pattern.

A capture thread named ``camera-{camera}`` reads the source and publishes. A failing device
is reported (log, and ERROR on ``/diagnostics``), closed and reopened every ``reopen_s``
until it works again or the node is destroyed. The three cameras can share one process
(``camera_nodes``).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional, Sequence, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ate_core.robot.config import BimanualConfig, CameraConfig, simulated
from ate_ros.conversions import ns_to_stamp
from ate_ros.diagnostics import ERROR, OK, WARN, diagnostic_array, diagnostic_status
from ate_ros.drivers.camera_sources import CameraError, CameraSource, Frame, open_source
from ate_ros.images import rgb_to_image, rgb_to_jpeg
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_config, declare_fixed

T = TypeVar("T")

#: How long destroy_node() waits for the capture thread (a V4L2 read gives up within ~1 s).
JOIN_TIMEOUT_S = 5.0


def pinhole_camera_info(cfg: CameraConfig, frame_id: str) -> CameraInfo:
    """An uncalibrated camera's CameraInfo: square pixels, centred, from the horizontal FOV."""
    w, h = cfg.width, cfg.height
    f = (w / 2) / math.tan(math.radians(cfg.horizontal_fov_deg) / 2)
    cx, cy = (w - 1) / 2, (h - 1) / 2  # the centre of the pixel grid, OpenCV's convention
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = w, h
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def _startup_value(read: Callable[[Node], T], **node_kwargs) -> T:
    """A parameter value needed before the node exists (its name), read by a short-lived node."""
    keep = {k: v for k, v in node_kwargs.items()
            if k in ("context", "cli_args", "use_global_arguments", "parameter_overrides")}
    probe = rclpy.create_node("camera_node_startup", start_parameter_services=False, **keep)
    try:
        return read(probe)
    finally:
        probe.destroy_node()


class CameraNode(Node):
    def __init__(self, camera: Optional[str] = None, config: Optional[BimanualConfig] = None,
                 sim: Optional[bool] = None, **kwargs) -> None:
        # The node is named after its camera, so under `ros2 run` (`-p camera:=head`) the
        # parameter has to be read before the node is created.
        if camera is None:
            camera = _startup_value(lambda n: n.declare_parameter("camera", "head").value, **kwargs)
        super().__init__(f"{camera}_camera", **kwargs)
        declare_fixed(self, "camera", camera, "which configured camera (config cameras.<name>) this node publishes")
        use_sim = declare_fixed(self, "sim", bool(sim), "publish the simulated scene instead of the device")
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        cfg = config if config is not None else declare_config(
            self, (f"cameras.{camera}", "topics", "sim.twin", "sim.camera_width",
                   "sim.camera_height", "sim.camera_fps"))
        if use_sim:
            cfg = simulated(cfg)  # every camera shows the simulated scene
        if camera not in cfg.cameras:
            super().destroy_node()
            raise ValueError(f"parameter camera: {camera!r} is not a configured camera "
                             f"(cameras: {', '.join(cfg.cameras)})")
        self.camera = camera
        self.cam_cfg = cfg.cameras[camera]
        self.frame_id = f"{camera}_camera_optical_frame"
        self.source: CameraSource = open_source(camera, self.cam_cfg, self._now_ns, self._stop)

        # Written by the capture thread only; the 1 Hz report reads them.
        self.frames = 0
        self.compressed_frames = 0
        self.reopen_attempts = 0
        self.last_error = ""
        self._failing = False
        self._report_mark = (0, 0, time.monotonic())  # frames, dropped, when

        base = f"{cfg.topics.cameras.rstrip('/')}/{camera}"
        self._image_pub = self.create_publisher(Image, f"{base}/image_raw", qos_profile_sensor_data)
        self._jpeg_pub = self.create_publisher(CompressedImage, f"{base}/image_raw/compressed",
                                               qos_profile_sensor_data)
        self._info_pub = self.create_publisher(CameraInfo, f"{base}/camera_info",
                                               qos_profile_sensor_data)
        self._info = pinhole_camera_info(self.cam_cfg, self.frame_id)
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        self.create_timer(1.0, self._publish_diagnostics)

        self._thread = threading.Thread(target=self._capture, name=f"camera-{camera}", daemon=True)
        self._thread.start()

    def destroy_node(self) -> None:
        self._stop.set()  # ends paced waits and the reopen wait at once
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                self.get_logger().error(f"capture thread did not stop in {JOIN_TIMEOUT_S} s "
                                        f"({self.source.kind} {self.source.where} blocked)")
        super().destroy_node()

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # ---- capture thread ------------------------------------------------------------------------

    def _capture(self) -> None:
        source, opened = self.source, False
        while not self._stop.is_set():
            try:
                if not opened:
                    if self._failing:
                        self.reopen_attempts += 1
                    source.open()
                    opened = True
                    mismatch = getattr(source, "mismatch", "")
                    if mismatch:
                        self.get_logger().warning(mismatch)
                self._publish(source.read())
            except Exception as e:  # CameraError, or anything a device did that nobody foresaw
                if self._stop.is_set() or not self.context.ok():
                    break
                self._fail(e)
                source.close()
                opened = False
                self._stop.wait(self.cam_cfg.reopen_s)
        source.close()

    def _fail(self, error: Exception) -> None:
        text = str(error) if isinstance(error, CameraError) else f"{type(error).__name__}: {error}"
        self.last_error = text
        self._failing = True
        self.get_logger().error(f"{text}; reopening every {self.cam_cfg.reopen_s:g} s",
                                throttle_duration_sec=5.0)

    def _publish(self, frame: Frame) -> None:
        stamp_ns = frame.capture_ns
        self._image_pub.publish(rgb_to_image(frame.rgb, stamp_ns, self.frame_id))
        self._info.header.stamp = ns_to_stamp(stamp_ns)
        self._info_pub.publish(self._info)
        if self._jpeg_pub.get_subscription_count() > 0:
            self._jpeg_pub.publish(rgb_to_jpeg(frame.rgb, stamp_ns, self.frame_id,
                                               self.cam_cfg.jpeg_quality))
            self.compressed_frames += 1
        self.frames += 1
        if self._failing:
            self._failing = False
            self.get_logger().info(f"{self.source.kind} {self.source.where} delivering again "
                                   f"after {self.reopen_attempts} reopen attempts")

    # ---- diagnostics ---------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        src = self.source
        frames, dropped, now = self.frames, src.dropped, time.monotonic()
        last_frames, last_dropped, since = self._report_mark
        self._report_mark = (frames, dropped, now)
        fps = (frames - last_frames) / max(now - since, 1e-6)
        if self._failing:
            level, message = ERROR, f"{self.last_error}; reopening"
        elif dropped > last_dropped:
            level = WARN
            message = f"dropping frames ({dropped - last_dropped} in {now - since:.1f} s)"
        elif frames == 0:
            level, message = WARN, "no frame yet"
        else:
            level, message = OK, "streaming"
        where_key = {"v4l2": "device", "video": "file"}.get(src.kind, "scene")
        values = {"source": src.kind, where_key: src.where,
                  "size": f"{self.cam_cfg.width}x{self.cam_cfg.height}",
                  "fps_configured": f"{self.cam_cfg.fps:g}", "fps": f"{fps:.1f}",
                  "frames": frames, "dropped": dropped, "compressed_frames": self.compressed_frames,
                  "reopen_attempts": self.reopen_attempts, "last_error": self.last_error or "none"}
        if src.kind == "v4l2":
            values["negotiated"] = getattr(src, "negotiated", "") or "not open"
            values["mismatch"] = getattr(src, "mismatch", "") or "none"
        status = diagnostic_status(f"{self.camera} camera", level, message,
                                   hardware_id=src.where, values=values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))


def main(args: Optional[Sequence[str]] = None) -> None:
    """``ros2 run ate_ros camera_node --ros-args -p camera:=head [-p sim:=true]``."""
    run_nodes(lambda: [CameraNode()], args)


def main_all(args: Optional[Sequence[str]] = None) -> None:
    """``ros2 run ate_ros camera_nodes``: every configured camera in one process."""
    def make_nodes():
        cfg, sim = _startup_value(lambda n: (declare_config(n, ("cameras", "topics")),
                                             declare_fixed(n, "sim", False, "publish the simulated scene "
                                                                            "instead of the devices")))
        return [CameraNode(name, cfg, sim=sim) for name in cfg.cameras]

    run_nodes(make_nodes, args)


if __name__ == "__main__":
    main()
