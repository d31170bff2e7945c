"""The policy on ROS: camera frames and arm joint states in, timed action chunks out.

Every decision is :class:`ate_core.runtime.inference_loop.InferenceLoop`'s (fit checks, history
sizing, as-of inputs, stale blocking, warm-up and back-off); this node converts and publishes.
Subscriptions only store messages (under a lock, into the loop's observation synchroniser): no
decoding and no model work on the executor, whose single thread also carries the arms' joint
states. One worker thread, ``inference-worker``, owns the model: it warms it up, then loops:
take the time, align the newest observation window as of that time, and either wait (a source
is stale: which one and how old goes to /diagnostics) or decode, run the policy and publish the
chunk stamped with that observation time, plus the predicted TCP paths for RViz.

Publishes ``topics.action_chunk`` (JointTrajectory, reliable, depth 10), ``topics.markers``
(MarkerArray) and ``/diagnostics`` at 1 Hz (and on every change of state): level STALE while
warming up, WARN while blocked by a stale source, ERROR when warm-up or the last inference
failed, OK while running.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence

from rclpy.logging import get_logger
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from ate_core.config import ConfigError
from ate_core.robot.config import BimanualConfig
from ate_core.io import CheckpointError
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.inference_loop import InferenceLoop, Phase
from ate_core.runtime.policy_runner import PolicyRunner
from ate_ros.chunk_msgs import chunk_to_trajectory
from ate_ros.conversions import ns_to_stamp, stamp_to_ns
from ate_ros.diagnostics import ERROR, OK, STALE, WARN, diagnostic_array, diagnostic_status
from ate_ros.images import image_to_rgb, jpeg_to_rgb
from ate_ros.markers import chunk_markers
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_config

__all__ = ["InferenceNode", "main"]

JOIN_TIMEOUT_S = 10.0


def _joint_positions(msg: JointState) -> Dict[str, float]:
    return dict(zip(msg.name, msg.position))


class InferenceNode(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, runner: Optional[PolicyRunner] = None,
                 **kwargs: Any) -> None:
        super().__init__("inference", **kwargs)
        try:
            self._setup(config if config is not None
                        else declare_config(self, ("arms", "cameras", "topics", "inference")), runner)
        except BaseException:
            super().destroy_node()
            raise

    def _setup(self, cfg: BimanualConfig, runner: Optional[PolicyRunner]) -> None:
        self.cfg = cfg
        self.runner = runner if runner is not None else PolicyRunner.from_config(cfg.inference)
        for note in self.runner.notes:
            self.get_logger().warning(note)
        if getattr(self.runner, "env_state_dim", 0):
            raise ConfigError("config", "inference.checkpoint",
                              f"{cfg.inference.checkpoint}: the policy reads the scene's state "
                              f"({self.runner.env_state_dim} env_state columns: object poses a "
                              f"simulation knows), which no robot topic carries; run it with "
                              f"python -m ate_core.eval on the twin")
        compressed = cfg.inference.image_transport == "compressed"
        self.loop = InferenceLoop(self.runner, cfg,
                                  decode_image=jpeg_to_rgb if compressed else image_to_rgb,
                                  joint_positions=_joint_positions)
        self._sync_lock = threading.Lock()  # the executor adds samples while the worker takes windows
        self._layout = layout_from_config(cfg)
        self._nice = cfg.inference.nice

        self._chunk_pub = self.create_publisher(
            JointTrajectory, cfg.topics.action_chunk, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._marker_pub = self.create_publisher(MarkerArray, cfg.topics.markers, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        for cam in self.loop.cameras:
            self.create_subscription(CompressedImage if compressed else Image,
                                     f"{cfg.topics.cameras}/{cam}/image_raw"
                                     + ("/compressed" if compressed else ""),
                                     lambda msg, s=cam: self._store(s, msg), qos_profile_sensor_data)
        for source in self.loop.arms:
            self.create_subscription(JointState, f"/{source}/{cfg.topics.arm_joint_states}",
                                     lambda msg, s=source: self._store(s, msg), qos_profile_sensor_data)
        self.create_timer(1.0, self._publish_diagnostics)

        described = self.runner.describe()
        self.get_logger().info(f"policy {described['policy']} from {described['checkpoint']} on "
                               f"{described['device']} ({described['dtype']}), guidance {described['guidance']}, "
                               f"cameras {list(self.runner.cameras)}, chunk point every "
                               f"{described['action_period_ms']} ms")
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="inference-worker", daemon=True)
        self._worker.start()

    def destroy_node(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._worker.join(JOIN_TIMEOUT_S)
            if self._worker.is_alive():
                self.get_logger().error(f"inference worker still running {JOIN_TIMEOUT_S} s after stop")
        super().destroy_node()

    def _store(self, source: str, msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self._sync_lock:
            self.loop.add(source, stamp, msg)

    # ---- the worker: the only caller of the loop's warm_up and step ------------------------------

    def _alive(self) -> bool:
        return not self._stop.is_set() and self.context.ok()

    def _work(self) -> None:
        if self._nice > 0:
            # Only this thread (and the intra-op threads it starts) yields: on a shared CPU the
            # model waits for the supervisor's tick and the drivers, never the other way round.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except OSError as e:
                self.get_logger().warning(f"inference worker keeps its priority: {e}")
        self._publish_diagnostics()
        while self.loop.status.phase is Phase.WARMING_UP:
            if self._stop.is_set():
                return
            self.loop.warm_up()
        if self.loop.status.phase is Phase.FAILED:
            self.get_logger().error(f"{self.loop.status.failure}; not running the policy")
            self._publish_diagnostics()
            return
        self.get_logger().info("policy warmed up; running")
        self._publish_diagnostics()
        while self._alive():
            started = time.monotonic()
            wait = self._cycle()
            if wait is None:
                wait = self.loop.period_s - (time.monotonic() - started)
            if wait > 0:
                self._stop.wait(wait)

    def _cycle(self) -> Optional[float]:
        """One attempt; returns how long to wait before the next (None: the period's rest)."""
        ref_ns = self.get_clock().now().nanoseconds
        with self._sync_lock:
            window = self.loop.window(ref_ns)
        cycle = self.loop.step(window)
        log = self.get_logger()
        if cycle.unblocked is not None:
            log.info(f"inference unblocked ({cycle.unblocked} usable again)")
        if cycle.blocked is not None:
            log.warning(f"inference blocked: {cycle.blocked.reason}", throttle_duration_sec=2.0)
        if cycle.failure is not None:
            log.error(cycle.failure, throttle_duration_sec=5.0)
        if cycle.changed:
            self._publish_diagnostics()
        if cycle.chunk is None or not self._alive():
            return cycle.wait_s
        try:
            self._chunk_pub.publish(chunk_to_trajectory(cycle.chunk))
            self._marker_pub.publish(chunk_markers(cycle.chunk, self._layout, ns_to_stamp(ref_ns)))
        except Exception:
            if self._alive():
                raise  # a real publishing error; a context shut down under this thread is not
            return None
        if self.loop.delivered(cycle.chunk, self.get_clock().now().nanoseconds):
            log.info("inference recovered")
        return cycle.wait_s

    def _publish_diagnostics(self) -> None:
        if not self.context.ok():
            return
        status = self.loop.status  # a snapshot the worker replaces whole: read it once
        if status.phase is Phase.FAILED:
            level, message = ERROR, status.failure or "failed"
        elif status.phase is Phase.WARMING_UP:
            level, message = STALE, f"warming up ({self.loop.warmup_runs} runs)"
        elif status.blocked is not None:
            level, message = WARN, f"blocked: {status.blocked.reason}"
        elif status.failure is not None:
            level, message = ERROR, status.failure
        else:
            level, message = OK, "running"
        latency = self.loop.latency.summary()
        described = self.runner.describe()
        values = {"ready": str(status.phase is Phase.RUNNING).lower(), "device": described["device"],
                  "dtype": described["dtype"], "guidance": described["guidance"],
                  "checkpoint": described["checkpoint"], "action_period_ms": described["action_period_ms"],
                  "latency_p50_ms": f"{latency['p50_ms']:.1f}", "latency_p99_ms": f"{latency['p99_ms']:.1f}",
                  "chunks": status.chunks, "rejected": status.rejected, "errors": status.errors,
                  **{f"blocked.{source}": n for source, n in sorted(status.blocks.items())},
                  "last_block": status.last_block}
        diag = diagnostic_status("inference", level, message, values=values)
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), diag))
        except Exception:
            if self.context.ok():
                raise


def main(args: Optional[Sequence[str]] = None) -> None:
    """``ros2 run ate_ros inference_node --ros-args -p inference.checkpoint:=/path/to/checkpoint``."""
    try:
        run_nodes(lambda: [InferenceNode()], args)
    except (ConfigError, CheckpointError) as e:
        get_logger("inference").fatal(f"cannot start: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
