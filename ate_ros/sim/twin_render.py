"""The twin host's cameras, drawn in a process of their own.

Drawing a frame is CPU work of milliseconds to tens of milliseconds (Mesa's llvmpipe where
there is no GPU). Drawn by a thread of the physics process, it made 5 ms physics ticks up to
45 ms late with three 320x240 cameras at 15 fps: the drawing thread took the interpreter lock
and the twin's lock from the clock, and its CPU time was the clock's. Here the physics process
only publishes the state a camera sees, and this process draws it:

* The model is the physics' own: the host saves its compiled ``MjModel`` (MuJoCo's binary MJB,
  textures and meshes included) and this process loads it, so the cameras see the same robot,
  table, objects and task scene, and nothing is parsed or compiled twice.
* What changes while the host runs is in one shared-memory block (:class:`SceneBlock`) that
  the physics rewrites after every tick: the joint positions (``qpos``: arms, fingers, free
  objects) and the mocap bodies (the target marker, which an episode's reset moves). Its
  sequence is a seqlock as in `frame_shm`: a frame never shows half of one tick and half of the
  next, and the physics never waits for the renderer.
* Each camera is drawn at its rate from the newest state into the camera's `frame_shm` block
  (created by the host, so the camera nodes find it from the start), stamped with the time the
  physics reached that state. A frame that comes due while the renderer is still busy is
  dropped, not drawn late.
* The same block carries back what the host reports on ``/diagnostics``: the renderer's state
  (starting, rendering, or failed with the reason) and, per camera, frames, dropped frames and
  drawing time.

The process runs niced, with Mesa's rasterizer threads limited (:class:`RenderSettings`), so
that on a small machine the physics clock gets the CPU when both want it and the renderer never
takes more than one core. Measured beside a training run (``bench/twin_host.py --variants``),
neither setting changed the physics' worst lateness beyond the noise; they are a bound, not a
speed-up. :class:`RenderProcess` is the host's side: it starts the process in a session
of its own (a Ctrl-C in a terminal reaches the host, which then stops its renderer), at normal
scheduling even under a SCHED_FIFO host, and dying with the thread that started it
(PR_SET_PDEATHSIG: start it from a thread that lives as long as the host, the main thread).
The renderer ends on SIGTERM and ignores SIGINT.

    python -m ate_ros.sim.twin_render --model M.mjb --scene BLOCK --camera NAME W H FPS BLOCK ...
"""

from __future__ import annotations

import argparse
import itertools
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ate_ros.signals import die_with_parent
from ate_ros.sim.frame_shm import FrameWriter

__all__ = ["CameraStats", "RenderSettings", "RendererState", "SceneBlock", "RenderProcess",
           "main"]

#: Where POSIX shared memory lives on Linux.
_SHM_DIR = "/dev/shm"
# Header, u64 each: sequence (seqlock, the physics writes), stamp (time.monotonic_ns of the
# state), nq, nmocap, cameras, renderer status, renderer pid, reserved.
_HEADER_WORDS = 8
_SEQUENCE, _STAMP, _NQ, _NMOCAP, _CAMERAS, _STATUS, _PID = range(7)
_MESSAGE_BYTES = 512
_STAT_FIELDS = 3  # frames, dropped, drawing time in ns
#: How often a reader retries a copy that a write overlapped before it gives up for now.
_READ_TRIES = 20
#: How long the host waits for its renderer to end on SIGTERM before it kills it.
STOP_TIMEOUT_S = 5.0

_block_numbers = itertools.count()


def _aligned(offset: int) -> int:
    return (offset + 63) // 64 * 64


@dataclass(frozen=True)
class CameraStats:
    """One camera's drawing since the renderer started."""

    frames: int
    #: Frames not drawn because the renderer was busy past their due time.
    dropped: int
    render_s: float  # total time spent drawing


@dataclass(frozen=True)
class RenderSettings:
    """How the render process shares the machine with the physics."""

    #: Added to the process's nice value: the physics clock preempts it when both want a core,
    #: and the policy's worker (``inference.nice``, 10) gets the CPU before it: a frame drawn
    #: late is dropped, a chunk computed late moves the arms late.
    nice: int = 19
    #: Mesa llvmpipe's rasterizer threads (``LP_NUM_THREADS``; 0: rasterize in the drawing
    #: thread); None leaves Mesa's default, one per core, all of them busy while a frame draws.
    gl_threads: Optional[int] = 0


@dataclass(frozen=True)
class RendererState:
    """``starting`` (loading, making GL contexts), ``rendering`` (every camera has drawn a
    frame), ``failed`` (``reason`` says why) or ``stopped`` (by the host)."""

    phase: str
    reason: str = ""


class SceneBlock:
    """The shared-memory block between the physics and the renderer (see the module
    docstring): the scene state under a seqlock, the renderer's status and camera counters.

    The physics process `create`s it and is its only state writer; the renderer `attach`es to
    it (mapped from /dev/shm directly, as `frame_shm.FrameReader` does, so that its exit never
    removes the block) and is the only writer of the status and the counters.
    """

    STARTING, RENDERING, FAILED = 0, 1, 2

    def __init__(self, name: str, buf: memoryview, owner: Optional[shared_memory.SharedMemory],
                 mapping: Optional[mmap.mmap]) -> None:
        self.name = name
        self._owner, self._map, self._buf = owner, mapping, buf
        self._header = np.ndarray((_HEADER_WORDS,), np.uint64, buf, 0)
        nq, nmocap, cameras = (int(self._header[i]) for i in (_NQ, _NMOCAP, _CAMERAS))
        self.nq, self.nmocap, self.cameras = nq, nmocap, cameras
        offset = _HEADER_WORDS * 8
        self._state = np.ndarray((nq + 7 * nmocap,), np.float64, buf, offset)
        offset = _aligned(offset + self._state.nbytes)
        self._message = np.ndarray((_MESSAGE_BYTES,), np.uint8, buf, offset)
        offset = _aligned(offset + _MESSAGE_BYTES)
        #: Per camera (in the order of the renderer's arguments): frames, dropped, drawing ns.
        self.stats = np.ndarray((cameras, _STAT_FIELDS), np.uint64, buf, offset)
        self._sequence = int(self._header[_SEQUENCE])

    @staticmethod
    def size(nq: int, nmocap: int, cameras: int) -> int:
        state = _aligned(_HEADER_WORDS * 8 + 8 * (nq + 7 * nmocap))
        return _aligned(state + _MESSAGE_BYTES) + 8 * _STAT_FIELDS * cameras

    @classmethod
    def create(cls, nq: int, nmocap: int, cameras: int) -> "SceneBlock":
        """A new block named for this process (a host's renderer finds it by its argument)."""
        name = f"ate_twin_scene_{os.getpid()}_{next(_block_numbers)}"
        shm = shared_memory.SharedMemory(name=name, create=True,
                                         size=cls.size(nq, nmocap, cameras))
        header = np.ndarray((_HEADER_WORDS,), np.uint64, shm.buf, 0)
        header[:] = 0
        header[[_NQ, _NMOCAP, _CAMERAS]] = (nq, nmocap, cameras)
        del header
        return cls(name, shm.buf, shm, None)

    @classmethod
    def attach(cls, name: str) -> "SceneBlock":
        with open(os.path.join(_SHM_DIR, name), "r+b") as f:
            mapping = mmap.mmap(f.fileno(), 0)
        return cls(name, memoryview(mapping), None, mapping)

    # ---- the scene (physics -> renderer) -----------------------------------------------------
    def write_state(self, qpos: np.ndarray, mocap_pos: np.ndarray, mocap_quat: np.ndarray,
                    stamp_ns: int) -> None:
        nq, m = self.nq, self.nmocap
        header, state = self._header, self._state
        header[_SEQUENCE] = self._sequence + 1  # odd: being written
        state[:nq] = qpos
        state[nq:nq + 3 * m] = np.ravel(mocap_pos)
        state[nq + 3 * m:] = np.ravel(mocap_quat)
        header[_STAMP] = stamp_ns
        self._sequence += 2
        header[_SEQUENCE] = self._sequence

    def read_state(self) -> Optional[Tuple[int, int, np.ndarray]]:
        """(sequence, stamp in monotonic ns, a copy of the state vector) of the newest whole
        state; None before the first or while writes kept overlapping the copy."""
        header = self._header
        for _ in range(_READ_TRIES):
            before = int(header[_SEQUENCE])
            if before == 0:
                return None
            if before % 2:
                time.sleep(0.0001)
                continue
            state, stamp = self._state.copy(), int(header[_STAMP])
            if int(header[_SEQUENCE]) == before:
                return before // 2, stamp, state
        return None

    def apply(self, state: np.ndarray, data: Any) -> None:
        """Put a state vector from `read_state` into MuJoCo's ``MjData``."""
        nq, m = self.nq, self.nmocap
        data.qpos[:] = state[:nq]
        data.mocap_pos[:] = state[nq:nq + 3 * m].reshape(m, 3)
        data.mocap_quat[:] = state[nq + 3 * m:].reshape(m, 4)

    # ---- the renderer's status (renderer -> physics) ------------------------------------------
    def set_status(self, status: int, message: str = "", pid: Optional[int] = None) -> None:
        if message:
            raw = message.encode("utf-8", "replace")[:_MESSAGE_BYTES - 1]
            self._message[:] = 0
            self._message[:len(raw)] = np.frombuffer(raw, np.uint8)
        if pid is not None:
            self._header[_PID] = pid
        self._header[_STATUS] = status  # after the message: a reader that sees it sees that

    def status(self) -> Tuple[int, str]:
        status = int(self._header[_STATUS])
        raw = bytes(self._message).split(b"\0", 1)[0]
        return status, raw.decode("utf-8", "replace")

    def close(self) -> None:
        """Let go of the block; the creator also removes it."""
        del self._header, self._state, self._message, self.stats
        if self._owner is not None:
            self._owner.close()
            try:
                self._owner.unlink()
            except FileNotFoundError:
                pass
        else:
            assert self._map is not None
            self._buf.release()
            self._map.close()


# ---- the host's side ------------------------------------------------------------------------
def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class RenderProcess:
    """The render process of one twin host, and the block it draws from.

    ``cameras`` gives each camera's size and rate (``CameraConfig``: width, height, fps) and
    ``blocks`` its `frame_shm` block, which must exist before `start`. Call `publish` with the
    physics' ``MjData`` after each tick; `state` and `camera_stats` say how the drawing goes.
    """

    def __init__(self, model: Any, cameras: Mapping[str, Any], blocks: Mapping[str, str],
                 settings: RenderSettings = RenderSettings()) -> None:
        self.model = model
        self.cameras = dict(cameras)
        self.blocks = dict(blocks)
        self.settings = settings
        self._block: Optional[SceneBlock] = None
        self._model_path: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._stopped = False

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    def start(self, data: Any) -> "RenderProcess":
        """Publish ``data`` (the scene now) and start the process; raises ``TwinRenderError``
        at once where MuJoCo has no offscreen OpenGL (with what each backend said)."""
        from ate_core.twin.gl import require_rendering
        from ate_core.twin.model import mujoco

        require_rendering()
        self._block = SceneBlock.create(self.model.nq, self.model.nmocap, len(self.cameras))
        self.publish(data, time.monotonic_ns())
        fd, self._model_path = tempfile.mkstemp(prefix="ate_twin_", suffix=".mjb")
        os.close(fd)
        mujoco.mj_saveModel(self.model, self._model_path, None)
        argv = [sys.executable, "-m", "ate_ros.sim.twin_render", "--model", self._model_path,
                "--scene", self._block.name]
        for name, cam in self.cameras.items():
            argv += ["--camera", name, str(cam.width), str(cam.height), str(cam.fps),
                     self.blocks[name]]
        env = dict(os.environ)
        if self.settings.gl_threads is not None:
            env["LP_NUM_THREADS"] = str(self.settings.gl_threads)
        # The child runs `-m ate_ros.sim.twin_render` from wherever this package was imported.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
            __file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                      start_new_session=True,
                                      preexec_fn=_child_setup(os.getpid(), self.settings.nice))
        return self

    def publish(self, data: Any, stamp_ns: int) -> None:
        """The scene the cameras draw from now on: ``data``'s joint positions and mocap bodies
        as the physics reached them at ``stamp_ns`` (monotonic). Cheap: a copy of a few hundred
        bytes into shared memory."""
        assert self._block is not None
        self._block.write_state(data.qpos, data.mocap_pos, data.mocap_quat, stamp_ns)

    def state(self) -> RendererState:
        if self._stopped:
            return RendererState("stopped")
        if self._block is None or self._proc is None:
            return RendererState("starting")
        status, message = self._block.status()
        if status == SceneBlock.FAILED:
            return RendererState("failed", message or "the renderer gave no reason")
        code = self._proc.poll()
        if code is not None:
            return RendererState("failed", f"the render process (pid {self._proc.pid}) exited "
                                           f"with status {_exit_description(code)}")
        return RendererState("rendering" if status == SceneBlock.RENDERING else "starting")

    def wait_rendering(self, timeout_s: float, stop: Optional[threading.Event] = None) -> bool:
        """Wait until every camera has drawn a frame; raises ``TwinRenderError`` with the reason
        when the renderer failed or did not get there within ``timeout_s``. False if ``stop``
        was set meanwhile."""
        from ate_core.twin.gl import TwinRenderError

        deadline = time.monotonic() + timeout_s
        stop = stop or threading.Event()
        while not stop.is_set():
            state = self.state()
            if state.phase == "rendering":
                return True
            if state.phase == "failed":
                raise TwinRenderError(state.reason)
            if time.monotonic() > deadline:
                raise TwinRenderError(f"the render process (pid {self.pid}) drew no frame of "
                                      f"every camera within {timeout_s:.0f} s")
            stop.wait(0.02)
        return False

    def camera_stats(self) -> Dict[str, CameraStats]:
        if self._block is None:
            return {name: CameraStats(0, 0, 0.0) for name in self.cameras}
        stats = self._block.stats.copy()
        return {name: CameraStats(int(row[0]), int(row[1]), int(row[2]) * 1e-9)
                for name, row in zip(self.cameras, stats)}

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End the process (SIGTERM, then SIGKILL after ``timeout_s``) and remove the block and
        the model file. Idempotent."""
        self._stopped = True
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._block is not None:
            self._block.close()
            self._block = None
        if self._model_path is not None:
            try:
                os.unlink(self._model_path)
            except FileNotFoundError:
                pass  # the renderer removes it once loaded
            self._model_path = None


def _child_setup(parent_pid: int, nice: int):
    normal = os.sched_param(0)

    def preexec() -> None:
        # Linux sends the signal when the thread that forked ends (see the module docstring).
        die_with_parent(parent_pid)
        # A SCHED_FIFO host's child would inherit its policy and could starve the physics.
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, normal)
        except OSError:
            pass
        if nice:
            os.nice(nice)
    return preexec


# ---- the render process -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Camera:
    name: str
    width: int
    height: int
    fps: float
    block: str


def _renderer(mujoco: Any, model: Any, camera: _Camera) -> Any:
    from ate_core.twin.gl import TwinRenderError, backend

    limit = (model.vis.global_.offwidth, model.vis.global_.offheight)
    if not (0 < camera.width <= limit[0] and 0 < camera.height <= limit[1]):
        raise TwinRenderError(f"camera {camera.name}: {camera.width}x{camera.height} px is "
                              f"outside the twin's offscreen buffer of {limit[0]}x{limit[1]} px")
    try:
        return mujoco.Renderer(model, height=camera.height, width=camera.width)
    except Exception as e:  # the GL bindings raise their own types
        raise TwinRenderError(f"MUJOCO_GL={backend()}: no offscreen context for camera "
                              f"{camera.name} ({camera.width}x{camera.height}): "
                              f"{type(e).__name__}: {e}") from None


def render(block: SceneBlock, model: Any, cameras: Sequence[_Camera],
           stop: threading.Event) -> None:
    """Draw every camera at its rate from the newest scene until ``stop`` is set."""
    from ate_core.twin.gl import require_rendering
    from ate_core.twin.model import mujoco

    require_rendering()
    data = mujoco.MjData(model)
    # GL contexts belong to the thread that made them: made, used and closed here.
    renderers: Dict[str, Any] = {}
    writers: Dict[str, FrameWriter] = {}
    try:
        for cam in cameras:
            renderers[cam.name] = _renderer(mujoco, model, cam)
            writers[cam.name] = FrameWriter.attach(cam.block)
        index = {cam.name: i for i, cam in enumerate(cameras)}
        period = {cam.name: 1.0 / cam.fps for cam in cameras}
        start = time.monotonic()
        due = {cam.name: start for cam in cameras}
        waiting_for_first = set(due)
        applied = -1
        stamp_ns = time.monotonic_ns()
        while not stop.is_set():
            name = min(due, key=due.__getitem__)
            delay = due[name] - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            began = time.monotonic()
            got = block.read_state()
            if got is not None and got[0] != applied:
                applied, stamp_ns, state = got
                block.apply(state, data)
                mujoco.mj_forward(model, data)
            renderer = renderers[name]
            renderer.update_scene(data, camera=name)
            writers[name].write(renderer.render(), stamp_ns)
            now = time.monotonic()
            # The next frame is due a period after this one's due time; those already past are
            # not drawn late, they are dropped.
            missed = max(int((now - due[name]) / period[name]), 0)
            due[name] += (missed + 1) * period[name]
            row = block.stats[index[name]]
            row += np.array((1, missed, int((now - began) * 1e9)), np.uint64)
            if waiting_for_first:
                waiting_for_first.discard(name)
                if not waiting_for_first:
                    block.set_status(SceneBlock.RENDERING)
    finally:
        for renderer in renderers.values():
            renderer.close()
        for writer in writers.values():
            writer.close()


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ate_ros.sim.twin_render",
        description="Draw the twin host's cameras from the scene it publishes in shared memory "
                    "(started by the host; see ate_ros.sim.twin_render).")
    parser.add_argument("--model", required=True, help="the twin's compiled model (MJB); "
                                                       "removed once loaded")
    parser.add_argument("--scene", required=True, help="the host's scene block in /dev/shm")
    parser.add_argument("--camera", nargs=5, action="append", default=[],
                        metavar=("NAME", "WIDTH", "HEIGHT", "FPS", "BLOCK"),
                        help="a camera of the model, its frame size and rate, and its "
                             "frame_shm block")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ate_core.twin.gl import TwinRenderError
    from ate_ros.signals import setting

    stop = threading.Event()
    signal.signal(signal.SIGTERM, setting(stop))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = parse_args(argv)
    try:
        cameras = [_Camera(n, int(w), int(h), float(fps), block)
                   for n, w, h, fps, block in args.camera]
    except ValueError as e:
        print(f"twin_render: --camera: {e}", file=sys.stderr)
        return 2
    try:
        block = SceneBlock.attach(args.scene)
    except OSError as e:
        print(f"twin_render: no scene block {args.scene!r}: {e}", file=sys.stderr)
        return 2
    try:
        block.set_status(SceneBlock.STARTING, pid=os.getpid())
        from ate_core.twin.model import mujoco

        try:
            model = mujoco.MjModel.from_binary_path(args.model)
        finally:
            try:
                os.unlink(args.model)
            except OSError:
                pass
        render(block, model, cameras, stop)
    except Exception as e:  # reported to the host through the block, and here
        reason = str(e) if isinstance(e, TwinRenderError) else f"{type(e).__name__}: {e}"
        block.set_status(SceneBlock.FAILED, reason)
        print(f"twin_render: {reason}", file=sys.stderr, flush=True)
        return 1
    finally:
        block.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
