"""Camera sources with real OpenCV: the simulated pattern, looped video files, V4L2 failures."""

from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest

from ate_core.robot.config import CameraConfig
from ate_ros.drivers.camera_sources import (CameraError, PatternSource, V4L2Source,
                                            VideoFileSource, open_source)
from ate_ros.sim.camera_pattern import CameraPattern, frame_number, render_pattern

CAMERAS = ("head", "left_wrist", "right_wrist")
#: Green level of each frame of the test video (BGR (0, g, 200): red 200 in RGB).
GREENS = (0, 50, 100, 150, 200)


def monotonic_ns() -> int:
    return time.monotonic_ns()


def write_video(path: Path, size=(320, 240)) -> Path:
    """A short MJPG .avi whose frames are flat colours, each with its own green level."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi files here"
    for green in GREENS:
        writer.write(np.full((size[1], size[0], 3), (0, green, 200), dtype=np.uint8))
    writer.release()
    return path


# ---- the simulated pattern ----------------------------------------------------------------------

def test_pattern_frames_carry_their_number_through_jpeg_and_resizing():
    pattern = CameraPattern("head", 640, 480)
    for k in (0, 1, 29, 1000, 123457):
        rgb = pattern.render(k)
        assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8
        ok, jpeg = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 50])
        small = cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA)
        assert frame_number(rgb) == frame_number(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)) == \
            frame_number(small) == k


def test_pattern_moves_a_little_from_one_frame_to_the_next():
    pattern = CameraPattern("head", 640, 480)
    below_code = slice(40, None)  # leave out the frame-number band and the text
    changed = [float((np.abs(pattern.render(k).astype(int) - pattern.render(k + 1))
                      [below_code].sum(axis=2) > 0).mean()) for k in range(0, 120, 7)]
    assert all(0 < c < 0.05 for c in changed), changed  # the disc moves; the background stays
    far = (np.abs(pattern.render(0).astype(int) - pattern.render(40))[below_code].sum(axis=2) > 0)
    assert far.mean() > max(changed)


def test_pattern_differs_between_cameras():
    frames = {name: render_pattern(name, 7, 320, 240).astype(int) for name in CAMERAS}
    for a, b in itertools.combinations(CAMERAS, 2):
        assert np.abs(frames[a] - frames[b]).mean() > 10, (a, b)


def test_pattern_source_delivers_numbered_frames_stamped_by_the_given_clock():
    ticks = itertools.count(1_000_000_000, 7)
    source = PatternSource("head", CameraConfig(width=320, height=240, fps=60.0),
                           lambda: next(ticks))
    with source:
        frames = [source.read() for _ in range(6)]
        dropped = source.dropped
    assert [f.sequence for f in frames] == list(range(6))
    assert [f.capture_ns for f in frames] == [1_000_000_000 + 7 * i for i in range(6)]
    numbers = [frame_number(f.rgb) for f in frames]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 5 + dropped
    assert all(f.rgb.shape == (240, 320, 3) and f.rgb.dtype == np.uint8 for f in frames)


def test_pattern_source_paces_at_the_configured_fps():
    source = PatternSource("left_wrist", CameraConfig(width=160, height=120, fps=30.0),
                           monotonic_ns)
    with source:
        source.read()
        end = time.monotonic() + 1.0
        count = 0
        while time.monotonic() < end:
            source.read()
            count += 1
    assert 20 <= count <= 40, count


def test_pattern_source_counts_missed_deadlines_as_dropped_and_skips_ahead():
    source = PatternSource("head", CameraConfig(width=160, height=120, fps=30.0), monotonic_ns)
    with source:
        first = source.read()
        time.sleep(0.2)  # six periods: the reader fell behind
        late = source.read()
    assert late.sequence == first.sequence + 1
    assert source.dropped >= 4
    assert frame_number(late.rgb) == frame_number(first.rgb) + 1 + source.dropped


def test_a_stop_request_ends_a_paced_wait_with_a_camera_error():
    stop = threading.Event()
    source = PatternSource("head", CameraConfig(width=160, height=120, fps=0.5), monotonic_ns, stop)
    with source:
        source.read()  # the next frame is due in 2 s
        stop.set()
        with pytest.raises(CameraError, match="camera head: sim .*stopped"):
            source.read()


# ---- video files --------------------------------------------------------------------------------

def test_video_file_plays_in_a_loop_resized_to_the_configured_size(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    cfg = CameraConfig(source="video", video_file=str(path), width=160, height=120, fps=120.0)
    with VideoFileSource("head", cfg, monotonic_ns) as source:
        frames = [source.read() for _ in range(2 * len(GREENS) + 2)]
        loops = source.loops
    assert loops == 2
    assert [f.sequence for f in frames] == list(range(len(frames)))
    for i, frame in enumerate(frames):
        assert frame.rgb.shape == (120, 160, 3) and frame.rgb.dtype == np.uint8
        red, green, blue = frame.rgb.reshape(-1, 3).mean(axis=0)
        assert abs(red - 200) < 10 and blue < 10, (i, red, blue)  # BGR file, RGB out
        assert abs(green - GREENS[i % len(GREENS)]) < 10, (i, green)


def test_deleted_video_file_is_reported_by_name_at_the_next_loop(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    cfg = CameraConfig(source="video", video_file=str(path), width=64, height=48, fps=200.0)
    with VideoFileSource("left_wrist", cfg, monotonic_ns) as source:
        source.read()
        path.unlink()
        with pytest.raises(CameraError) as raised:
            for _ in range(len(GREENS) + 1):
                source.read()
    assert str(path) in str(raised.value) and "left_wrist" in str(raised.value)
    assert "no such file" in str(raised.value)


def test_a_file_that_is_not_a_video_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("not a video")
    source = VideoFileSource("head", CameraConfig(source="video", video_file=str(path)),
                             monotonic_ns)
    expected = re.escape(f"camera head: video {path}: OpenCV cannot open")
    with pytest.raises(CameraError, match=expected):
        source.open()


# ---- V4L2 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/ate_no_such_camera", "63"])
def test_v4l2_device_that_does_not_exist_raises_naming_it(device):
    source = V4L2Source("head", CameraConfig(source="v4l2", device=device), monotonic_ns)
    with pytest.raises(CameraError) as raised:
        source.open()
    assert f"camera head: v4l2 {device}:" in str(raised.value)
    with pytest.raises(CameraError, match="read before open"):
        source.read()


# ---- choosing a source --------------------------------------------------------------------------

def test_open_source_builds_the_configured_kind_and_leaves_opening_to_the_caller(tmp_path):
    missing = str(tmp_path / "gone.avi")
    kinds: List[type] = []
    for cfg in (CameraConfig(source="sim"), CameraConfig(source="video", video_file=missing),
                CameraConfig(source="v4l2", device="/dev/ate_no_such_camera")):
        source = open_source("head", cfg, monotonic_ns)  # nothing fails before open()
        kinds.append(type(source))
    assert kinds == [PatternSource, VideoFileSource, V4L2Source]
    with pytest.raises(CameraError, match=re.escape(f"video {missing}: no such file")):
        open_source("head", CameraConfig(source="video", video_file=missing), monotonic_ns).open()
