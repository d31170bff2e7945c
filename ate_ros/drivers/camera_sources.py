"""Where camera frames come from: a V4L2 device, a video file played in a loop, or the simulation
(a test pattern, or the twin's rendered frames).

Every source delivers uint8 RGB frames at the configured size, stamped by the clock it is
given (the node passes the ROS clock) at the moment the frame was obtained, so images carry
their capture time rather than their publish time. Sources that pace themselves (file and
simulation) wait for absolute deadlines ``t0 + k / fps`` on ``time.monotonic``: a late reader
never makes the stream drift, and a deadline missed by more than a period is a dropped frame,
as it would be on a camera whose reader fell behind.

No rclpy here; a source is used from one thread, the camera node's capture thread.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import cv2
import numpy as np

from ate_core.robot.config import CameraConfig
from ate_ros.sim.camera_pattern import CameraPattern
from ate_ros.sim.frame_shm import FrameReader

__all__ = ["CameraError", "Frame", "CameraSource", "V4L2Source", "VideoFileSource",
           "PatternSource", "TwinSource", "open_source"]

ClockNs = Callable[[], int]


class CameraError(RuntimeError):
    """A camera that failed; the message names the camera, the device or file, and what failed."""


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray  # uint8 [H, W, 3]
    capture_ns: int  # the source's clock when the frame was obtained
    sequence: int  # frames delivered by this source before this one


class CameraSource(ABC):
    """One camera. ``open()``, then ``read()`` in a loop, then ``close()``; reopen after a failure.

    ``read()`` blocks until the next frame and raises :class:`CameraError` when the device or
    file fails. Setting the ``stop`` event makes a paced wait give up at once (with a
    CameraError), so a thread that owns the source can always be joined promptly.
    """

    kind = ""  # the CameraConfig.source value this class serves

    def __init__(self, name: str, cfg: CameraConfig, clock_ns: ClockNs,
                 stop: Optional[threading.Event] = None) -> None:
        self.name = name
        self.cfg = cfg
        self._clock_ns = clock_ns
        self._stop = stop if stop is not None else threading.Event()
        self.dropped = 0  # frames lost: deadlines missed, or gaps in a device's stream
        self.delivered = 0  # frames returned by read(); the next frame's sequence number

    @property
    @abstractmethod
    def where(self) -> str:
        """The device, file or scene the frames come from (for messages and diagnostics)."""

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame: ...

    @abstractmethod
    def close(self) -> None: ...

    def error(self, what: str) -> CameraError:
        return CameraError(f"camera {self.name}: {self.kind} {self.where}: {what}")

    def _deliver(self, rgb: np.ndarray, capture_ns: int) -> Frame:
        size = (self.cfg.width, self.cfg.height)
        if (rgb.shape[1], rgb.shape[0]) != size:
            shrink = rgb.shape[1] > size[0] or rgb.shape[0] > size[1]
            rgb = cv2.resize(rgb, size,
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        frame = Frame(rgb, int(capture_ns), self.delivered)
        self.delivered += 1
        return frame

    def __enter__(self) -> "CameraSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Pacer:
    """Absolute deadlines ``t0 + k * period`` from the first frame after (re)start."""

    def __init__(self, fps: float, stop: threading.Event) -> None:
        self.period_s = 1.0 / fps
        self._stop = stop
        self.restart()

    def restart(self) -> None:
        self._t0: Optional[float] = None
        self._index = 0

    def wait(self) -> Optional[Tuple[int, int]]:
        """Sleep until the next deadline; ``(frame index, deadlines skipped)``, None if stopped."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        deadline = self._t0 + self._index * self.period_s
        skipped = 0
        if now - deadline > self.period_s:
            # Too late for this frame and more: deliver the one due now, count the rest lost.
            current = int((now - self._t0) / self.period_s)
            skipped, self._index = current - self._index, current
            deadline = self._t0 + current * self.period_s
        delay = deadline - time.monotonic()
        if self._stop.is_set() or (delay > 0 and self._stop.wait(delay)):
            return None
        index = self._index
        self._index += 1
        return index, skipped


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class PatternSource(CameraSource):
    """The simulated camera: :mod:`ate_ros.sim.camera_pattern` frames at the configured fps."""

    kind = "sim"

    def __init__(self, name: str, cfg: CameraConfig, clock_ns: ClockNs,
                 stop: Optional[threading.Event] = None) -> None:
        super().__init__(name, cfg, clock_ns, stop)
        self._pacer = _Pacer(cfg.fps, self._stop)
        self._pattern: Optional[CameraPattern] = None

    @property
    def where(self) -> str:
        return "camera_pattern"

    def open(self) -> None:
        if self._pattern is None:
            self._pattern = CameraPattern(self.name, self.cfg.width, self.cfg.height)
        self._pacer.restart()

    def read(self) -> Frame:
        if self._pattern is None:
            raise self.error("read before open()")
        due = self._pacer.wait()
        if due is None:
            raise self.error("stopped")
        index, skipped = due
        self.dropped += skipped
        capture_ns = self._clock_ns()  # the simulated exposure; rendering follows it
        return self._deliver(self._pattern.render(index), capture_ns)

    def close(self) -> None:
        pass  # nothing held; the pattern is kept for a reopen


class VideoFileSource(CameraSource):
    """A video file played in a loop at the configured fps (not the file's own).

    At the end of the file it is opened again from its path rather than rewound, so a file
    that was deleted or replaced is noticed within one loop.
    """

    kind = "video"

    def __init__(self, name: str, cfg: CameraConfig, clock_ns: ClockNs,
                 stop: Optional[threading.Event] = None) -> None:
        super().__init__(name, cfg, clock_ns, stop)
        self.path = cfg.video_file
        self._pacer = _Pacer(cfg.fps, self._stop)
        self._cap: Optional[cv2.VideoCapture] = None
        self.loops = 0  # completed passes through the file

    @property
    def where(self) -> str:
        return self.path

    def _open_file(self) -> cv2.VideoCapture:
        if not os.path.isfile(self.path):
            raise self.error("no such file" if not os.path.exists(self.path) else "not a file")
        try:
            cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        except cv2.error as e:
            raise self.error(f"OpenCV failed to open it: {e}") from e
        if not cap.isOpened():
            cap.release()
            raise self.error("OpenCV cannot open it (not a video, or a codec it lacks)")
        return cap

    def open(self) -> None:
        self.close()
        self._cap = self._open_file()
        self._pacer.restart()

    def _next_bgr(self) -> np.ndarray:
        assert self._cap is not None
        try:
            ok, bgr = self._cap.read()
            if ok:
                return bgr
            self._cap.release()
            self._cap = None
            self._cap = self._open_file()
            self.loops += 1
            ok, bgr = self._cap.read()
        except cv2.error as e:
            raise self.error(f"decoding failed: {e}") from e
        if not ok:
            raise self.error("no frame could be decoded from the start of the file")
        return bgr

    def read(self) -> Frame:
        if self._cap is None:
            raise self.error("read before open()")
        bgr = self._next_bgr()  # decode first so the frame goes out right at its deadline
        due = self._pacer.wait()
        if due is None:
            raise self.error("stopped")
        self.dropped += due[1]
        capture_ns = self._clock_ns()
        return self._deliver(_bgr_to_rgb(bgr), capture_ns)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _fourcc_text(code: float) -> str:
    n = int(code)
    return "".join(chr((n >> (8 * i)) & 0xFF) for i in range(4)).strip("\0")


class V4L2Source(CameraSource):
    """A V4L2 device through OpenCV: a path (``/dev/video0``) or an index (``"0"``).

    The pixel format, size and rate are requested; what the driver granted is in
    ``negotiated``, and ``mismatch`` says what differs from the request ("" when nothing
    does). Frames are published at the configured size whatever the device delivers.
    The device paces itself; a gap of more than 1.5 periods between frames counts the
    missing frames as dropped.
    """

    kind = "v4l2"

    def __init__(self, name: str, cfg: CameraConfig, clock_ns: ClockNs,
                 stop: Optional[threading.Event] = None) -> None:
        super().__init__(name, cfg, clock_ns, stop)
        self.device = cfg.device
        self.negotiated = ""
        self.mismatch = ""
        self._cap: Optional[cv2.VideoCapture] = None
        self._last_frame_s: Optional[float] = None

    @property
    def where(self) -> str:
        return self.device

    def _target(self) -> Union[int, str]:
        return int(self.device) if self.device.isdigit() else self.device

    def open(self) -> None:
        self.close()
        target = self._target()
        try:
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        except cv2.error as e:
            raise self.error(f"OpenCV failed to open it: {e}") from e
        if not cap.isOpened():
            cap.release()
            if isinstance(target, str) and not os.path.exists(target):
                raise self.error("no such device (unplugged, or another /dev/video* number?)")
            raise self.error("cannot open it (busy, no permission, or not a capture device)")
        cfg = self.cfg
        # The format goes first: UVC drivers offer sizes and rates per pixel format.
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.pixel_format))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one queued behind others
        if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            # A stalled device must fail read() in bounded time so that the node can reopen it.
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1000.0, 5000.0 / cfg.fps))
        fmt = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.negotiated = f"{fmt or '?'} {width}x{height} @ {fps:g} fps"
        differs = []
        if fmt != cfg.pixel_format:
            differs.append(f"pixel format {fmt or '?'} instead of {cfg.pixel_format}")
        if (width, height) != (cfg.width, cfg.height):
            differs.append(f"{width}x{height} instead of {cfg.width}x{cfg.height} (resized)")
        if fps > 0 and abs(fps - cfg.fps) > 0.01 * cfg.fps:
            differs.append(f"{fps:g} fps instead of {cfg.fps:g}")
        self.mismatch = (f"camera {self.name}: v4l2 {self.device} granted " + "; ".join(differs)
                         if differs else "")
        self._cap = cap
        self._last_frame_s = None

    def read(self) -> Frame:
        if self._cap is None:
            raise self.error("read before open()")
        try:
            ok, bgr = self._cap.read()
        except cv2.error as e:
            raise self.error(f"read failed: {e}") from e
        now_s = time.monotonic()
        capture_ns = self._clock_ns()
        if not ok or bgr is None:
            raise self.error("no frame (unplugged, or the stream stalled)")
        if self._last_frame_s is not None:
            periods = (now_s - self._last_frame_s) * self.cfg.fps
            if periods > 1.5:
                self.dropped += int(round(periods)) - 1
        self._last_frame_s = now_s
        return self._deliver(_bgr_to_rgb(bgr), capture_ns)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class TwinSource(CameraSource):
    """The twin's rendered frames: the newest one in the shared-memory block ``cfg.device``
    that the twin host's render process (`ate_ros.sim.twin_render`) writes at the camera's
    rate.

    ``read`` waits for a frame newer than the last one; frames the host wrote meanwhile count
    as dropped. A frame is stamped with the time the physics reached the state it shows, on
    the given clock.
    """

    kind = "twin"
    #: How often a read looks for a new frame, in frame periods.
    POLL_PERIODS = 0.1
    #: A host that wrote nothing for this many frame periods is gone (its camera has failed).
    SILENT_PERIODS = 30

    def __init__(self, name: str, cfg: CameraConfig, clock_ns: ClockNs,
                 stop: Optional[threading.Event] = None) -> None:
        super().__init__(name, cfg, clock_ns, stop)
        self._reader: Optional[FrameReader] = None
        self._last = 0

    @property
    def where(self) -> str:
        return f"shared memory {self.cfg.device!r}"

    def open(self) -> None:
        self.close()
        try:
            self._reader = FrameReader(self.cfg.device)
        except (FileNotFoundError, ValueError) as exc:
            raise self.error(f"no twin host writes frames there ({exc})") from None
        self._last = self._reader.sequence()

    def read(self) -> Frame:
        if self._reader is None:
            raise self.error("read before open()")
        period = 1.0 / self.cfg.fps
        give_up = time.monotonic() + self.SILENT_PERIODS * period
        while True:
            got = self._reader.read()
            if got is not None and got[0] > self._last:
                sequence, stamp_ns, rgb = got
                if self._last:
                    self.dropped += sequence - self._last - 1
                self._last = sequence
                age_ns = time.monotonic_ns() - stamp_ns
                return self._deliver(rgb, self._clock_ns() - age_ns)
            if time.monotonic() > give_up:
                raise self.error(f"no new frame for {self.SILENT_PERIODS} frame periods")
            if self._stop.wait(self.POLL_PERIODS * period):
                raise self.error("stopped")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


_SOURCES = {cls.kind: cls for cls in (V4L2Source, VideoFileSource, PatternSource, TwinSource)}


def open_source(name: str, cfg: CameraConfig, clock_ns: ClockNs,
                stop: Optional[threading.Event] = None) -> CameraSource:
    """The source ``cfg.source`` names for camera ``name``, not yet opened.

    Opening is left to the caller so that a device that is missing at start-up goes through
    the same report-and-reopen path as one that fails later.
    """
    cls = _SOURCES.get(cfg.source)
    if cls is None:
        raise ValueError(f"camera {name}: source {cfg.source!r} is not one of {sorted(_SOURCES)}")
    return cls(name, cfg, clock_ns, stop)
