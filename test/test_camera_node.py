"""The camera node on real rclpy: images and camera info, JPEG on demand, diagnostics, reopen."""

from __future__ import annotations

import math
import os
import shutil
import threading
from pathlib import Path
from typing import Dict, Optional

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ate_core.config import replace_in
from ate_core.robot.config import BimanualConfig, load_config
from ate_ros.conversions import stamp_to_ns
from ate_ros.images import image_to_rgb, jpeg_to_rgb
from ate_ros.nodes.camera_node import CameraNode
from ate_ros.sim.camera_pattern import frame_number
from conftest import REPO

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too

TOPIC = "/cameras/head"


def head_config(**camera) -> BimanualConfig:
    """The shipped config with the head camera changed (simulated unless ``source`` says)."""
    cfg = load_config(REPO / "config/bimanual.yaml")
    camera.setdefault("source", "sim")
    return replace_in(cfg, {f"cameras.head.{k}": v for k, v in camera.items()}, source="test")


def head_status(inbox) -> Optional[DiagnosticStatus]:
    """The newest status of the head camera on /diagnostics."""
    for msg in reversed(inbox.messages):
        for status in msg.status:
            if status.name == "head camera":
                return status
    return None


def values(status: DiagnosticStatus) -> Dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def write_video(path: Path, frames: int = 5) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for i in range(frames):
        writer.write(np.full((120, 160, 3), 40 * i, dtype=np.uint8))
    writer.release()
    return path


def test_sim_camera_publishes_images_and_camera_info_stamped_at_capture(ros):
    images = ros.subscribe(Image, f"{TOPIC}/image_raw", qos_profile_sensor_data)
    infos = ros.subscribe(CameraInfo, f"{TOPIC}/camera_info", qos_profile_sensor_data)
    ros.start(CameraNode, "head", config=head_config(horizontal_fov_deg=90.0))
    ros.wait_for(lambda: len(images) >= 10 and len(infos) >= 10, 10.0, "10 images and infos")
    now_ns = ros.probe.get_clock().now().nanoseconds

    image = images.messages[-1]
    assert (image.width, image.height, image.encoding, image.step) == (640, 480, "rgb8", 1920)
    assert image.header.frame_id == "head_camera_optical_frame"
    stamp_ns = stamp_to_ns(image.header.stamp)
    assert 0 <= now_ns - stamp_ns < 2_000_000_000  # ROS time of capture, not another clock
    info_stamps = {stamp_to_ns(m.header.stamp) for m in infos.messages}
    image_stamps = [stamp_to_ns(m.header.stamp) for m in images.messages]
    assert len(set(image_stamps[:-2]) & info_stamps) >= 5  # each image has its info twin
    assert image_stamps == sorted(set(image_stamps))
    numbers = [frame_number(image_to_rgb(m)) for m in images.messages]
    assert numbers == sorted(set(numbers))  # the frames advance

    info = infos.messages[-1]
    assert (info.width, info.height, info.distortion_model) == (640, 480, "plumb_bob")
    assert info.header.frame_id == "head_camera_optical_frame"
    fx, fy, cx, cy = info.k[0], info.k[4], info.k[2], info.k[5]
    assert math.isclose(fx, 320.0) and math.isclose(fy, 320.0)  # 90 deg over 640 px
    assert math.isclose(2 * math.degrees(math.atan(640 / (2 * fx))), 90.0)
    assert (cx, cy) == (319.5, 239.5) and list(info.d) == [0.0] * 5
    assert list(info.p) == [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_compressed_images_are_encoded_only_while_subscribed_and_match_the_raw_frame(ros):
    raw = ros.subscribe(Image, f"{TOPIC}/image_raw", qos_profile_sensor_data)
    node = ros.start(CameraNode, "head", config=head_config(width=320, height=240,
                                                             jpeg_quality=95))
    ros.wait_for(lambda: len(raw) >= 10, 10.0, "10 raw images")
    assert node.compressed_frames == 0

    compressed = ros.subscribe(CompressedImage, f"{TOPIC}/image_raw/compressed",
                               qos_profile_sensor_data)
    ros.wait_for(lambda: len(compressed) >= 3, 10.0, "3 compressed images")
    by_stamp = {stamp_to_ns(m.header.stamp): m for m in raw.messages}
    pairs = [(jpeg_to_rgb(c), image_to_rgb(by_stamp[stamp_to_ns(c.header.stamp)]))
             for c in compressed.messages if stamp_to_ns(c.header.stamp) in by_stamp]
    assert pairs, "no compressed image with a raw twin"
    for decoded, exact in pairs:
        assert decoded.shape == exact.shape == (240, 320, 3)
        assert np.abs(decoded.astype(int) - exact).mean() < 3.0
        assert frame_number(decoded) == frame_number(exact)


def test_diagnostics_report_the_camera_with_its_measured_fps(ros):
    diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
    # A device camera (as shipped) under sim=true shows the simulated scene instead (here the
    # test pattern: no twin runs).
    cfg = replace_in(head_config(source="v4l2", width=320, height=240), {"sim.twin": False},
                     source="test")
    ros.start(CameraNode, "head", config=cfg, sim=True)
    # The first report may cover the start-up; a later one measures a whole second of frames.
    ros.wait_for(lambda: len([m for m in diagnostics.messages
                              if any(s.name == "head camera" for s in m.status)]) >= 3,
                 10.0, "three head camera reports")
    status = head_status(diagnostics)
    v = values(status)
    assert status.level == DiagnosticStatus.OK, status.message
    assert 20.0 <= float(v["fps"]) <= 40.0, v["fps"]
    assert v["source"] == "sim" and v["fps_configured"] == "30"
    assert int(v["frames"]) >= 40 and v["reopen_attempts"] == "0" and v["last_error"] == "none"


def test_camera_and_sim_come_from_parameters_as_under_ros2_run(ros):
    images = ros.subscribe(Image, "/cameras/left_wrist/image_raw", qos_profile_sensor_data)
    node = ros.start(CameraNode, parameter_overrides=[
        Parameter("camera", value="left_wrist"), Parameter("sim", value=True),
        Parameter("sim.twin", value=False),
        Parameter("config_file", value=str(REPO / "config/bimanual.yaml")),
        Parameter("cameras.left_wrist.width", value=160),
        Parameter("cameras.left_wrist.height", value=120)])
    ros.wait_for(lambda: len(images) >= 3, 10.0, "left wrist images")
    assert node.get_name() == "left_wrist_camera"
    image = images.messages[-1]
    assert (image.width, image.height) == (160, 120)
    assert image.header.frame_id == "left_wrist_camera_optical_frame"


def test_an_unknown_camera_is_refused_by_name(ros):
    with pytest.raises(ValueError, match="'top' is not a configured camera .*head"):
        ros.start(CameraNode, "top", config=head_config())


def test_video_camera_reports_a_lost_file_and_resumes_when_it_returns(ros, tmp_path):
    path = write_video(tmp_path / "clip.avi")
    spare = shutil.copy(path, tmp_path / "spare.avi")
    images = ros.subscribe(Image, f"{TOPIC}/image_raw", qos_profile_sensor_data)
    diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
    ros.start(CameraNode, "head", config=head_config(
        source="video", video_file=str(path), width=160, height=120, reopen_s=0.2))
    ros.wait_for(lambda: len(images) >= 5, 10.0, "images from the video")

    os.remove(path)
    status = ros.wait_for(lambda: (s := head_status(diagnostics)) is not None
                          and s.level == DiagnosticStatus.ERROR and s, 10.0, "an ERROR report")
    assert str(path) in status.message and "no such file" in status.message
    assert values(status)["file"] == str(path)
    ros.wait_for(lambda: int(values(head_status(diagnostics))["reopen_attempts"]) >= 2, 10.0,
                 "repeated reopen attempts")

    os.replace(spare, path)  # the file is back, whole
    diagnostics.clear()
    images.clear()
    ros.wait_for(lambda: len(images) >= 5, 10.0, "images after the file came back")
    status = ros.wait_for(lambda: (s := head_status(diagnostics)) is not None
                          and s.level == DiagnosticStatus.OK and s, 10.0, "an OK report")
    assert str(path) in values(status)["last_error"]  # what happened stays visible
    assert images.messages[-1].width == 160 and images.messages[-1].height == 120


def test_destroying_the_node_ends_a_long_reopen_wait(ros, tmp_path):
    diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
    node = ros.start(CameraNode, "head", config=head_config(
        source="video", video_file=str(tmp_path / "never.avi"), reopen_s=60.0))
    ros.wait_for(lambda: (s := head_status(diagnostics)) is not None
                 and s.level == DiagnosticStatus.ERROR, 10.0, "an ERROR report")
    ros.close()  # destroys the node: a 60 s wait that did not end would outlive the join
    assert not any(t.name == "camera-head" for t in threading.enumerate())
    assert node.reopen_attempts == 0 and "never.avi" in node.last_error
