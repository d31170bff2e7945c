"""Both arms' controller emulators on the twin's physics, in one process.

In ``sim:=true`` with the twin on, this process stands for the robot: it owns one MuJoCo
:class:`~ate_core.twin.twin.Twin` and serves each arm's RealMan controller (the same server and
protocol as ``ate_realman_emulator``) on the arm's configured loopback endpoint. One clock runs
every controller: each 5 ms tick the controllers advance their references (the interpolated
joint paths and gripper moves of ``arm_motion``), the references become the twin's servo and
gripper targets, physics advances 5 ms, and what the controllers then report (UDP push, state
queries) is what the physics measured. An arm held back by a table or a gripper closed on a cube
is reported where it is, not where it was told to go.

A second thread renders each configured camera at its configured size and rate into shared
memory (`frame_shm`), where the camera nodes' `twin` source reads the newest frame. It copies
the scene between two physics ticks and draws outside them, so drawing never holds physics up.

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
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ate_core.robot.config import (BimanualConfig, CameraConfig, load_config, simulated,
                                   twin_frame_block)
from ate_core.robot.models import PUSH_CYCLE_UNIT_S
from ate_core.twin.twin import Twin
from ate_ros.realtime import raise_to_fifo
from ate_ros.sim.frame_shm import FrameWriter
from ate_ros.sim.realman_emulator import MAX_CATCH_UP_TICKS, RealManEmulator
from ate_ros.sim.realman_protocol import ControllerProtocol, MeasuredPlant

_LOG = logging.getLogger(__name__)

#: Period of the `twin` node's /diagnostics.
DIAGNOSTICS_PERIOD_S = 1.0
#: The real-time factor below which the diagnostics warn.
MIN_REAL_TIME_FACTOR = 0.95


@dataclass(frozen=True)
class CameraStats:
    """One camera's rendering since the host started."""

    frames: int
    #: Frames not rendered because the renderer was busy past their due time.
    dropped: int
    render_s: float  # total time spent drawing


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
    ``endpoints[side]`` (tests bind port 0). Each controller starts where the twin's arm and
    gripper are; the twin is the clock thread's once `start` has returned.
    """

    def __init__(self, cfg: BimanualConfig, twin: Twin,
                 endpoints: Optional[Mapping[str, Dict[str, Any]]] = None,
                 cameras: bool = True) -> None:
        self.twin = twin
        #: The cameras rendered into shared memory: the config's that the twin has.
        self.cameras: Dict[str, CameraConfig] = (
            {n: c for n, c in cfg.cameras.items() if n in twin.camera_names} if cameras else {})
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
        self._renderer_thread: Optional[threading.Thread] = None
        self._camera_stats: Dict[str, CameraStats] = {
            name: CameraStats(0, 0, 0.0) for name in self.cameras}

    @staticmethod
    def _plant_for(plant: MeasuredPlant) -> Any:
        def make(_: ControllerProtocol) -> MeasuredPlant:
            return plant
        return make

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "TwinHost":
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
        except BaseException:
            self.stop()
            raise
        self._start_s = time.monotonic()
        self._thread = threading.Thread(target=self._clock, name="twin-clock", daemon=True)
        self._thread.start()
        if self._writers:
            self._renderer_thread = threading.Thread(target=self._render_loop,
                                                     name="twin-render", daemon=True)
            self._renderer_thread.start()
        return self

    def frame_block(self, camera: str) -> str:
        """The shared-memory block `camera`'s frames go to."""
        return self._writers[camera].name

    def stop(self) -> None:
        """Stop the clock, then every emulator. Idempotent."""
        self._stop.set()
        for thread in (self._thread, self._renderer_thread):
            if thread is not None:
                thread.join()
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
        with self._stats_lock:
            return dict(self._camera_stats)

    def object_positions(self) -> Dict[str, np.ndarray]:
        """Each object's position (m, base frame) at the last tick."""
        with self._stats_lock:
            return {name: pose.copy() for name, pose in self._poses.items()}

    @contextlib.contextmanager
    def edit(self) -> Iterator[Twin]:
        """The twin between two ticks, to change the scene (place an object, reset it): the
        clock waits meanwhile, so keep it short. The controllers keep their references: an
        arm moved here is pulled back to where its controller holds it."""
        with self._twin_lock:
            yield self.twin

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


    # ---- the cameras ---------------------------------------------------------------------------
    def _render_loop(self) -> None:
        from ate_core.twin.gl import require_rendering
        from ate_core.twin.model import mujoco

        require_rendering()
        # GL contexts belong to the thread that made them: made, used and closed here.
        renderers = {name: mujoco.Renderer(self.twin.model, height=cam.height, width=cam.width)
                     for name, cam in self.cameras.items()}
        try:
            start = time.monotonic()
            due = {name: start for name in self.cameras}
            while not self._stop.is_set():
                name = min(due, key=due.__getitem__)
                delay = due[name] - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                period = 1.0 / self.cameras[name].fps
                renderer = renderers[name]
                with self._twin_lock:
                    self.twin.forward()
                    renderer.update_scene(self.twin.data, camera=name)
                stamp_ns = time.monotonic_ns()
                rgb = renderer.render()
                self._writers[name].write(rgb, stamp_ns)
                now = time.monotonic()
                # The next frame is due a period after this one's due time; those already
                # past are not drawn late, they are dropped.
                missed = max(int((now - due[name]) / period), 0)
                due[name] += (missed + 1) * period
                with self._stats_lock:
                    s = self._camera_stats[name]
                    self._camera_stats[name] = CameraStats(
                        s.frames + 1, s.dropped + missed, s.render_s + now - stamp_ns * 1e-9)
        finally:
            for renderer in renderers.values():
                renderer.close()


# ---- the ROS side ---------------------------------------------------------------------------
def diagnostics_node(host: TwinHost) -> Any:
    """The rclpy node ``twin``: the host's real-time factor, late ticks, sim time and object
    positions on /diagnostics every ``DIAGNOSTICS_PERIOD_S``."""
    from rclpy.node import Node

    from ate_ros.diagnostics import OK, WARN, diagnostic_array, diagnostic_status
    from diagnostic_msgs.msg import DiagnosticArray

    node = Node("twin")
    pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish() -> None:
        s = host.stats()
        rtf = s.real_time_factor
        behind = rtf < MIN_REAL_TIME_FACTOR or s.skipped_ticks > 0
        message = (f"physics behind real time: factor {rtf:.3f}, {s.late_ticks} late and "
                   f"{s.skipped_ticks} skipped ticks" if behind
                   else f"real time (factor {rtf:.3f})")
        values: Dict[str, object] = {
            "real_time_factor": f"{rtf:.4f}", "sim_time_s": f"{s.sim_time_s:.3f}",
            "wall_time_s": f"{s.wall_time_s:.3f}", "ticks": s.ticks,
            "late_ticks": s.late_ticks, "skipped_ticks": s.skipped_ticks,
            "worst_lateness_ms": f"{s.worst_lateness_s * 1e3:.1f}"}
        wall = max(s.wall_time_s, 1e-9)
        for name, cam in host.camera_stats().items():
            values[f"camera.{name}.fps"] = f"{cam.frames / wall:.1f}"
            values[f"camera.{name}.dropped"] = cam.dropped
            values[f"camera.{name}.render_ms"] = f"{cam.render_s / max(cam.frames, 1) * 1e3:.1f}"
        for name, xyz in host.object_positions().items():
            values[f"object.{name}"] = " ".join(f"{v:.4f}" for v in xyz)
        pub.publish(diagnostic_array(node.get_clock().now().to_msg(), diagnostic_status(
            "twin: physics", WARN if behind else OK, message, "twin", values)))

    node.create_timer(DIAGNOSTICS_PERIOD_S, publish)
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
    parser.add_argument("--seed", type=int, default=0, help="scene seed of the twin's reset")
    parser.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                        help="SCHED_FIFO priority for every thread (0: normal scheduling)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``argv`` as ``sys.argv`` (program name first), the convention of ``ate_ros.entry``."""
    from ate_core.twin.model import TwinRobot
    from ate_ros.node_host import run_nodes

    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_to_fifo(args.realtime_priority,
                  lambda why: print(f"ate_twin: {why}", file=sys.stderr), "twin")
    try:
        cfg = load_config(args.config)
        twin = Twin(TwinRobot.from_config(cfg))
        twin.reset(args.seed)
        options: Dict[str, Dict[str, Any]] = {side: {} for side, _ in cfg.arms.items()}
        for side, opts in options.items():
            if args.control_port is not None:
                opts["control_port"] = args.control_port
            if args.log_dir:
                os.makedirs(args.log_dir, exist_ok=True)
                opts["log_path"] = os.path.join(args.log_dir, f"emulator_{side}.jsonl")
        # The cameras as the camera nodes see them in sim (the twin's size and rate).
        cameras = simulated(cfg).cameras
        host = TwinHost(dataclasses.replace(cfg, cameras=cameras), twin, options,
                        cameras=not args.no_cameras).start()
    except (KeyError, ValueError, OSError) as exc:
        print(f"ate_twin: {exc}", file=sys.stderr)
        return 2
    # One line per controller, as `ate_realman_emulator` says it (`ate_ros.sim.bimanual` reads
    # them).
    for side, e in host.emulators.items():
        control = "" if e.control_port is None else f" control_port={e.control_port}"
        print(f"ate_twin listening side={side} model={e.model.name} ip={e.ip} "
              f"tcp_port={e.tcp_port} push={e.push_config.ip}:{e.push_port}{control}",
              flush=True)
    try:
        run_nodes(lambda: [diagnostics_node(host)], argv)
        # As the emulators do: serve the arm drivers' last stop for up to 1 s after a signal.
        deadline = time.monotonic() + 1.0
        while host.connection_count() > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
