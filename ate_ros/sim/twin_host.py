"""Both arms' controller emulators on the twin's physics, in one process; episodes of a task.

In ``sim:=true`` with the twin on, this process stands for the robot: it owns one MuJoCo
:class:`~ate_core.twin.twin.Twin` and serves each arm's RealMan controller (the same server and
protocol as ``ate_realman_emulator``) on the arm's configured loopback endpoint. One clock runs
every controller: each 5 ms tick the controllers advance their references (the interpolated
joint paths and gripper moves of ``arm_motion``), the references become the twin's servo and
gripper targets, physics advances 5 ms, and what the controllers then report (UDP push, state
queries) is what the physics measured. An arm held back by a table or a gripper closed on a cube
is reported where it is, not where it was told to go.

The cameras are drawn by a process of its own (`twin_render`): after every tick the clock
publishes the scene (joint positions, mocap bodies) in shared memory, and the renderer draws
each configured camera at its size and rate from the newest scene into the camera's
`frame_shm` block, where the camera nodes' ``twin`` source reads it. Drawing in this process
made physics ticks up to 45 ms late (the README's timing table has the numbers before and
after). A renderer that cannot start (no offscreen OpenGL) ends ``ate_twin`` with the reason
(``--no-cameras`` runs the physics alone); one that fails later turns the diagnostics to ERROR.

With ``--task NAME --seed S`` the twin holds that task's scene (``get_task(NAME).scene()``),
reset with seed S at start. The node ``twin`` then runs episodes: ``/twin/reset``
(std_srvs/Trigger) resets the scene between two ticks with the next seed (S, S+1, ...: the
first episode's scene is S either way) and has each controller hold its arm and gripper where
the reset put them; ``/twin/check`` answers the task's success check and its reason.

Physics runs against absolute deadlines, in real time. A host too slow for it does not slow
the robot down silently: the ticks it could not run on time are counted (and beyond
``MAX_CATCH_UP_TICKS`` skipped), and the node ``twin`` says so on ``/diagnostics`` with the
real-time factor. Console entry ``ate_twin``, also ``python -m ate_ros.sim.twin_host``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot.config import (BimanualConfig, CameraConfig, load_config, simulated,
                                   twin_frame_block)
from ate_core.robot.models import PUSH_CYCLE_UNIT_S
from ate_core.twin.tasks import Outcome, Task
from ate_core.twin.twin import Twin
from ate_ros.realtime import raise_to_fifo
from ate_ros.sim.frame_shm import FrameWriter
from ate_ros.sim.realman_emulator import MAX_CATCH_UP_TICKS, RealManEmulator
from ate_ros.sim.realman_protocol import ControllerProtocol, MeasuredPlant
from ate_ros.sim.twin_render import CameraStats, RendererState, RenderProcess, RenderSettings

_LOG = logging.getLogger(__name__)

#: Period of the `twin` node's /diagnostics.
DIAGNOSTICS_PERIOD_S = 1.0
#: The real-time factor below which the diagnostics warn.
MIN_REAL_TIME_FACTOR = 0.95
#: How long ``ate_twin`` waits for its renderer's first frame of every camera (loading the
#: model and making GL contexts takes a second or two; far longer on a loaded machine).
CAMERA_START_TIMEOUT_S = 20.0


class NoTaskError(RuntimeError):
    """An episode service was called on a host started without a task."""


@dataclass(frozen=True)
class TwinStats:
    """How the physics keeps up with the wall clock since the host started."""

    sim_time_s: float
    wall_time_s: float
    ticks: int
    #: Ticks that ran a push unit (5 ms) or more after their deadline, skipped ones included.
    late_ticks: int
    skipped_ticks: int
    worst_lateness_s: float

    @property
    def real_time_factor(self) -> float:
        return self.sim_time_s / self.wall_time_s if self.wall_time_s > 0 else 1.0


class TwinHost:
    """One twin and one controller emulator per arm, stepped by one clock thread.

    ``cfg`` gives the arms (model, home pose, push cycle) and their sim endpoints
    (``cfg.sim.arms``), each overridable by the emulator's keyword arguments in
    ``endpoints[side]`` (tests bind port 0). With a ``task`` the twin (built from
    ``task.scene()``) is reset to the task's scene of ``seed`` first. Each controller starts
    where the twin's arm and gripper are; the twin is the clock thread's once `start` has
    returned (`edit` borrows it between two ticks).
    """

    def __init__(self, cfg: BimanualConfig, twin: Twin,
                 endpoints: Optional[Mapping[str, Dict[str, Any]]] = None,
                 cameras: bool = True, task: Optional[Task] = None, seed: int = 0,
                 render: RenderSettings = RenderSettings()) -> None:
        self.twin = twin
        self.task = task
        #: The seed of the scene the twin holds (its last reset's).
        self.seed = int(seed)
        self._next_seed = int(seed)
        if task is not None:
            task.reset(twin, self.seed)
        #: The cameras rendered into shared memory: the config's that the twin has.
        self.cameras: Dict[str, CameraConfig] = (
            {n: c for n, c in cfg.cameras.items() if n in twin.camera_names} if cameras else {})
        self._render_settings = render
        sim = {"left": cfg.sim.arms.left, "right": cfg.sim.arms.right}
        self.plants: Dict[str, MeasuredPlant] = {}
        self.emulators: Dict[str, RealManEmulator] = {}
        for side, arm in cfg.arms.items():
            if side not in twin.arm_prefixes:
                raise KeyError(f"arm {side!r} is not in the twin (arms: {twin.arm_prefixes})")
            q0 = twin.joint_positions(side)
            plant = MeasuredPlant(q0, twin.gripper_opening(side))
            ep = sim[side]
            options: Dict[str, Any] = {"ip": ep.ip, "tcp_port": ep.tcp_port,
                                       "push_port": ep.udp_port, "push_ip": ep.ip}
            options.update((endpoints or {}).get(side, {}))
            self.plants[side] = plant
            self.emulators[side] = RealManEmulator(
                model=arm.model, cycle=arm.push_cycle, initial_joints_deg=np.degrees(q0),
                initial_gripper=plant.gripper_wire(), plant=self._plant_for(plant),
                clocked=False, **options)
        # Held by the clock while it ticks: `edit` waits for the gap between two ticks.
        self._twin_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stats_lock = threading.Lock()
        self._ticks = 0
        self._late = 0
        self._skipped = 0
        self._worst_late_s = 0.0
        self._start_s = 0.0
        self._poses: Dict[str, np.ndarray] = {}
        self._writers: Dict[str, FrameWriter] = {}
        self._renderer: Optional[RenderProcess] = None
        self._camera_base: Dict[str, CameraStats] = {}

    @staticmethod
    def _plant_for(plant: MeasuredPlant) -> Any:
        def make(_: ControllerProtocol) -> MeasuredPlant:
            return plant
        return make

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "TwinHost":
        """Serve the controllers, start the clock and the render process (without waiting for
        its first frames: `wait_for_cameras`). Call it from a thread that lives as long as the
        host: the render process dies with it."""
        started: List[RealManEmulator] = []
        try:
            for emulator in self.emulators.values():
                started.append(emulator.start())
        except BaseException:
            for emulator in started:
                emulator.stop()
            raise
        try:
            left = self.emulators[next(iter(self.emulators))]
            for name, cam in self.cameras.items():
                self._writers[name] = FrameWriter(twin_frame_block(left.ip, left.tcp_port, name),
                                                  cam.width, cam.height)
            if self._writers:
                self._renderer = RenderProcess(
                    self.twin.model, self.cameras,
                    {name: w.name for name, w in self._writers.items()},
                    self._render_settings)
                self._renderer.start(self.twin.data)
        except BaseException:
            self.stop()
            raise
        self._start_s = time.monotonic()
        self._thread = threading.Thread(target=self._clock, name="twin-clock", daemon=True)
        self._thread.start()
        return self

    def wait_for_cameras(self, timeout_s: float = CAMERA_START_TIMEOUT_S,
                         stop: Optional[threading.Event] = None) -> bool:
        """Wait until every camera has a frame; ``TwinRenderError`` with the reason when the
        renderer failed or took longer than ``timeout_s``. True at once without cameras; False
        when ``stop`` was set meanwhile."""
        if self._renderer is None:
            return True
        return self._renderer.wait_rendering(timeout_s, stop)

    def frame_block(self, camera: str) -> str:
        """The shared-memory block `camera`'s frames go to."""
        return self._writers[camera].name

    def stop(self) -> None:
        """Stop the clock, the renderer, then every emulator. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._renderer is not None:
            self._renderer.stop()
        for emulator in self.emulators.values():
            emulator.stop()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "TwinHost":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def connection_count(self) -> int:
        return sum(e.connection_count() for e in self.emulators.values())

    # ---- observation -----------------------------------------------------------------------
    def stats(self) -> TwinStats:
        with self._stats_lock:
            ticks = self._ticks
            return TwinStats(ticks * PUSH_CYCLE_UNIT_S, time.monotonic() - self._start_s, ticks,
                             self._late, self._skipped, self._worst_late_s)

    def camera_stats(self) -> Dict[str, CameraStats]:
        """Each camera's frames, dropped frames and drawing time since the host started (or
        since `restart_stats`)."""
        if self._renderer is None:
            return {}
        now = self._renderer.camera_stats()
        with self._stats_lock:
            base = dict(self._camera_base)
        zero = CameraStats(0, 0, 0.0)
        return {name: CameraStats(s.frames - base.get(name, zero).frames,
                                  s.dropped - base.get(name, zero).dropped,
                                  s.render_s - base.get(name, zero).render_s)
                for name, s in now.items()}

    def renderer_state(self) -> Optional[RendererState]:
        """How the render process is doing; None without cameras."""
        return None if self._renderer is None else self._renderer.state()

    @property
    def renderer_pid(self) -> Optional[int]:
        return None if self._renderer is None else self._renderer.pid

    def restart_stats(self) -> None:
        """Count ticks, lateness and frames afresh from now (a benchmark's measured window
        starts after the start-up)."""
        base = self._renderer.camera_stats() if self._renderer is not None else {}
        with self._stats_lock:
            self._ticks = self._late = self._skipped = 0
            self._worst_late_s = 0.0
            self._start_s = time.monotonic()
            self._camera_base = base

    def object_positions(self) -> Dict[str, np.ndarray]:
        """Each object's position (m, base frame) at the last tick."""
        with self._stats_lock:
            return {name: pose.copy() for name, pose in self._poses.items()}

    @contextlib.contextmanager
    def edit(self) -> Iterator[Twin]:
        """The twin between two ticks, to change the scene (place an object, reset it): the
        clock waits meanwhile, so keep it short. The controllers keep their references: an
        arm moved here is pulled back to where its controller holds it (`reset_episode` moves
        the controllers with the arms)."""
        with self._twin_lock:
            yield self.twin

    # ---- episodes ------------------------------------------------------------------------------
    def _task(self) -> Task:
        if self.task is None:
            raise NoTaskError("the twin host runs no task: start it with --task NAME "
                              "(ate_twin --task pick_place, or the launch argument task:=NAME)")
        return self.task

    def reset_episode(self) -> Tuple[int, str]:
        """Reset the task's scene with the next seed, between two ticks, and have every
        controller hold its arm and gripper where the reset put them (at rest, nothing
        pending); (the seed, where the objects are now in words). `NoTaskError` without a
        task."""
        task = self._task()
        with self.edit() as twin:
            seed = self._next_seed
            task.reset(twin, seed)
            for side, emulator in self.emulators.items():
                q, opening = twin.joint_positions(side), twin.gripper_opening(side)
                emulator.place(q, opening)
                self.plants[side].update(q, np.zeros_like(q), opening)
            if self._renderer is not None:
                self._renderer.publish(twin.data, time.monotonic_ns())
            self.seed, self._next_seed = seed, seed + 1
            return seed, task.describe(twin)

    def check_episode(self) -> Outcome:
        """The task's success check on the scene now (between two ticks). `NoTaskError`
        without a task."""
        task = self._task()
        with self.edit() as twin:
            return task.check(twin)

    # ---- the clock ---------------------------------------------------------------------------
    def _tick(self, deadline: float) -> None:
        arrivals = {side: e.step_controller() for side, e in self.emulators.items()}
        twin = self.twin
        for side, emulator in self.emulators.items():
            joints, opening = emulator.reference()
            twin.set_joint_targets(side, joints)
            twin.set_gripper_target(side, opening)
        twin.step(PUSH_CYCLE_UNIT_S)
        for side, plant in self.plants.items():
            plant.update(twin.joint_positions(side), twin.joint_velocities(side),
                         twin.gripper_opening(side))
        for side, emulator in self.emulators.items():
            emulator.complete_tick(deadline, arrivals[side])

    def _clock(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                lateness = now - deadline
                due = int(lateness / PUSH_CYCLE_UNIT_S) + 1
                # Every tick of this batch but the last starts a push unit or more after its
                # deadline.
                late = due - 1
                skipped = 0
                if due > MAX_CATCH_UP_TICKS:
                    skipped = due - 1
                    _LOG.warning("physics %.0f ms behind; skipping %d ticks", lateness * 1e3,
                                 skipped)
                    deadline = now
                    due = 1
                with self._twin_lock:
                    for _ in range(due):
                        self._tick(deadline)
                        deadline += PUSH_CYCLE_UNIT_S
                    if self._renderer is not None:
                        self._renderer.publish(self.twin.data, time.monotonic_ns())
                    poses = {n: self.twin.object_pose(n)[:3, 3] for n in self.twin.object_names}
                with self._stats_lock:
                    self._ticks += due
                    self._skipped += skipped
                    self._late += late
                    self._worst_late_s = max(self._worst_late_s, lateness)
                    self._poses = poses
            for emulator in self.emulators.values():
                emulator.send_due_packets()
            wake = min([deadline] + [t for t in (e.next_packet_s()
                                                 for e in self.emulators.values())
                                     if t is not None])
            delay = wake - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)


# ---- the ROS side ---------------------------------------------------------------------------
def twin_node(host: TwinHost, **kwargs: Any) -> Any:
    """The rclpy node ``twin`` (``kwargs`` go to ``Node``: a test's context).

    ``/diagnostics`` every ``DIAGNOSTICS_PERIOD_S``: the real-time factor, late ticks, sim
    time, object positions, the episode's ``task`` and ``seed``, the renderer and each
    camera's rate, dropped frames and drawing time. Services (std_srvs/Trigger), answered
    between two physics ticks: ``~/reset`` (``/twin/reset``) resets the task's scene with the
    next seed, message ``seed=<seed>: <where the objects are>``; ``~/check`` (``/twin/check``)
    answers the task's success check, message its reason. Without a task both answer
    success=False with a message that says to start with ``--task``.
    """
    from rclpy.node import Node
    from std_srvs.srv import Trigger

    from ate_ros.diagnostics import ERROR, OK, WARN, diagnostic_array, diagnostic_status
    from diagnostic_msgs.msg import DiagnosticArray

    node = Node("twin", **kwargs)
    pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish() -> None:
        s = host.stats()
        rtf = s.real_time_factor
        behind = rtf < MIN_REAL_TIME_FACTOR or s.skipped_ticks > 0
        level = WARN if behind else OK
        message = (f"physics behind real time: factor {rtf:.3f}, {s.late_ticks} late and "
                   f"{s.skipped_ticks} skipped ticks" if behind
                   else f"real time (factor {rtf:.3f})")
        values: Dict[str, object] = {
            "real_time_factor": f"{rtf:.4f}", "sim_time_s": f"{s.sim_time_s:.3f}",
            "wall_time_s": f"{s.wall_time_s:.3f}", "ticks": s.ticks,
            "late_ticks": s.late_ticks, "skipped_ticks": s.skipped_ticks,
            "worst_lateness_ms": f"{s.worst_lateness_s * 1e3:.1f}",
            "task": host.task.name if host.task is not None else "none", "seed": host.seed}
        renderer = host.renderer_state()
        if renderer is not None:
            values["renderer"] = (f"{renderer.phase}: {renderer.reason}" if renderer.reason
                                  else renderer.phase)
            values["renderer_pid"] = host.renderer_pid
            if renderer.phase == "failed":
                level = ERROR
                message = f"camera renderer failed, the cameras get no frames: {renderer.reason}"
        wall = max(s.wall_time_s, 1e-9)
        for name, cam in host.camera_stats().items():
            values[f"camera.{name}.fps"] = f"{cam.frames / wall:.1f}"
            values[f"camera.{name}.dropped"] = cam.dropped
            values[f"camera.{name}.render_ms"] = f"{cam.render_s / max(cam.frames, 1) * 1e3:.1f}"
        for name, xyz in host.object_positions().items():
            values[f"object.{name}"] = " ".join(f"{v:.4f}" for v in xyz)
        pub.publish(diagnostic_array(node.get_clock().now().to_msg(), diagnostic_status(
            "twin: physics", level, message, "twin", values)))

    def reset(_: Any, response: Any) -> Any:
        try:
            seed, where = host.reset_episode()
        except NoTaskError as e:
            response.success, response.message = False, str(e)
            return response
        except Exception as e:  # a scene the task cannot draw: answered, never raised
            response.success, response.message = False, f"reset failed: {type(e).__name__}: {e}"
            node.get_logger().error(response.message)
            return response
        response.success, response.message = True, f"seed={seed}: {where}"
        node.get_logger().info(f"episode reset: {response.message}")
        return response

    def check(_: Any, response: Any) -> Any:
        try:
            outcome = host.check_episode()
        except NoTaskError as e:
            response.success, response.message = False, str(e)
            return response
        response.success, response.message = outcome.success, outcome.reason
        return response

    node.create_timer(DIAGNOSTICS_PERIOD_S, publish)
    node.create_service(Trigger, "~/reset", reset)
    node.create_service(Trigger, "~/check", check)
    return node


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``ate_twin`` command line (without the program name; ROS arguments are left to
    rclpy)."""
    parser = argparse.ArgumentParser(
        prog="ate_twin",
        description="Both arms' RealMan controller emulators on the MuJoCo twin's physics.")
    parser.add_argument("--config", required=True, help="the robot's config (bimanual.yaml)")
    parser.add_argument("--control-port", type=int, default=None,
                        help="give each controller the emulator's fault-injection and status "
                             "socket on this port of its own address (0: any)")
    parser.add_argument("--log-dir", default=None, metavar="DIR",
                        help="each controller appends what it receives to "
                             "DIR/emulator_<arm>.jsonl")
    parser.add_argument("--no-cameras", action="store_true",
                        help="physics only: render no camera (the camera nodes then wait)")
    parser.add_argument("--task", default="", metavar="NAME",
                        help="the scene of this task (ate_core.twin.tasks: pick_place, push, "
                             "handover, lift_box), with the /twin/reset and /twin/check "
                             "services; default: the twin's whole scene, no episodes")
    parser.add_argument("--seed", type=int, default=0,
                        help="scene seed of the start-up reset (and, with --task, of the first "
                             "/twin/reset; each later one takes the next)")
    parser.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                        help="SCHED_FIFO priority for every thread (0: normal scheduling)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``argv`` as ``sys.argv`` (program name first), the convention of ``ate_ros.entry``.

    Exit status 0 after SIGINT or SIGTERM, 2 for a bad config or task, 3 when the cameras
    cannot be drawn (the reason on stderr)."""
    from ate_core.twin.config import TwinConfig
    from ate_core.twin.gl import TwinRenderError
    from ate_core.twin.model import TwinRobot
    from ate_core.twin.tasks import get_task
    from ate_ros.node_host import run_nodes
    from ate_ros.signals import setting

    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_to_fifo(args.realtime_priority,
                  lambda why: print(f"ate_twin: {why}", file=sys.stderr), "twin")
    try:
        cfg = load_config(args.config)
        task = get_task(args.task) if args.task else None
        twin = Twin(TwinRobot.from_config(cfg),
                    task.scene() if task is not None else TwinConfig())
        if task is None:
            twin.reset(args.seed)
        options: Dict[str, Dict[str, Any]] = {side: {} for side, _ in cfg.arms.items()}
        for side, opts in options.items():
            if args.control_port is not None:
                opts["control_port"] = args.control_port
            if args.log_dir:
                os.makedirs(args.log_dir, exist_ok=True)
                opts["log_path"] = os.path.join(args.log_dir, f"emulator_{side}.jsonl")
        # The cameras as the camera nodes see them in sim with the twin on (the twin's size
        # and rate), whether the config turns the twin on or the launch (twin:=true) does.
        cameras = simulated(dataclasses.replace(
            cfg, sim=dataclasses.replace(cfg.sim, twin=True))).cameras
        host = TwinHost(dataclasses.replace(cfg, cameras=cameras), twin, options,
                        cameras=not args.no_cameras, task=task, seed=args.seed).start()
    except TwinRenderError as exc:
        print(f"ate_twin: cameras: {exc} (--no-cameras runs the physics without them)",
              file=sys.stderr)
        return 3
    except (KeyError, ValueError, OSError) as exc:
        print(f"ate_twin: {exc}", file=sys.stderr)
        return 2
    # One line per controller, as `ate_realman_emulator` says it (`ate_ros.sim.bimanual` reads
    # them): the controllers serve from here on, whatever the cameras do.
    for side, e in host.emulators.items():
        control = "" if e.control_port is None else f" control_port={e.control_port}"
        print(f"ate_twin listening side={side} model={e.model.name} ip={e.ip} "
              f"tcp_port={e.tcp_port} push={e.push_config.ip}:{e.push_port}{control}",
              flush=True)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, setting(stop))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cameras_up = host.wait_for_cameras(CAMERA_START_TIMEOUT_S, stop)
        except TwinRenderError as exc:
            print(f"ate_twin: cameras: {exc} (--no-cameras runs the physics without them)",
                  file=sys.stderr, flush=True)
            return 3
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if cameras_up and host.cameras:
            print(f"ate_twin rendering cameras={','.join(host.cameras)} "
                  f"pid={host.renderer_pid}", flush=True)
        if cameras_up:
            run_nodes(lambda: [twin_node(host)], argv)
            # As the emulators do: serve the arm drivers' last stop for up to 1 s after a
            # signal.
            deadline = time.monotonic() + 1.0
            while host.connection_count() > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
