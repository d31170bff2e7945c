"""The policy on ROS: camera frames and arm joint states in, timed action chunks out.

Subscriptions only store messages (under a lock, into the observation synchroniser): no
decoding and no model work on the executor, whose single thread also carries the 200 Hz joint
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

import math
import sys
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.logging import get_logger
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from ate_core.config import ConfigError
from ate_core.robot.config import BimanualConfig
from ate_core.policy.pretrained import CheckpointError
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.chunk import ChunkRejected
from ate_core.runtime.latency import LatencyStats
from ate_core.runtime.obs_sync import ObservationSynchronizer, StaleSource, SyncedObservation
from ate_core.runtime.policy_runner import PolicyRunner
from ate_ros.chunk_msgs import chunk_to_trajectory
from ate_ros.conversions import ns_to_stamp, stamp_to_ns
from ate_ros.diagnostics import ERROR, OK, STALE, WARN, diagnostic_array, diagnostic_status
from ate_ros.images import ImageFormatError, image_to_rgb
from ate_ros.markers import chunk_markers
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_config

__all__ = ["InferenceNode", "main"]

#: While blocked, look again this often: soon enough to act on the first fresh frame.
RETRY_S = 0.01
#: After a failed inference, wait this long before the next try (a broken model must not spin).
ERROR_BACKOFF_S = 0.5
#: Sources may run this much faster than configured before the observation window runs short.
RATE_MARGIN = 2.0
JOIN_TIMEOUT_S = 10.0


class _Blocked(Exception):
    """This cycle cannot run: ``source`` is not usable (``reason`` says why)."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(reason)


class InferenceNode(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, runner: Optional[PolicyRunner] = None,
                 **kwargs: Any) -> None:
        super().__init__("inference", **kwargs)
        try:
            self._setup(config if config is not None else declare_config(self), runner)
        except BaseException:
            super().destroy_node()
            raise

    def _setup(self, cfg: BimanualConfig, runner: Optional[PolicyRunner]) -> None:
        icfg = cfg.inference
        self.cfg = cfg
        self.runner = runner if runner is not None else PolicyRunner.from_config(icfg)
        for note in self.runner.notes:
            self.get_logger().warning(note)

        missing = [c for c in self.runner.cameras if c not in cfg.cameras]
        if missing:
            raise ConfigError("config", "cameras", f"the policy needs cameras {missing}; the config has "
                                                   f"{sorted(cfg.cameras)}")
        # Each policy joint is read, by name, from the arm whose joint states carry it.
        arm_joints = {f"{side}_arm": (*arm.joint_names, arm.gripper_joint) for side, arm in cfg.arms.items()}
        self._joint_sources: List[Tuple[str, str]] = []
        for name in self.runner.joint_names:
            source = next((s for s, names in arm_joints.items() if name in names), None)
            if source is None:
                raise ConfigError("config", "arms", f"the policy's joint {name!r} is not a joint of any "
                                                    f"configured arm ({sorted(n for v in arm_joints.values() for n in v)})")
            self._joint_sources.append((source, name))
        arm_sources = sorted({s for s, _ in self._joint_sources})

        max_age = {cam: cfg.cameras[cam].max_age_s for cam in self.runner.cameras}
        max_age.update({s: icfg.joint_state_max_age_s for s in arm_sources})
        # Enough samples to reach back over the observation window at each source's nominal rate
        # (RealMan pushes joint states every 5 ms x push_cycle), with room for twice that rate.
        window_s = (self.runner.n_obs_steps - 1) * self.runner.action_period_ns * 1e-9
        rate_hz = {cam: cfg.cameras[cam].fps for cam in self.runner.cameras}
        rate_hz.update({f"{side}_arm": 200.0 / arm.push_cycle for side, arm in cfg.arms.items()})
        history = {s: math.ceil((window_s + max_age[s]) * rate_hz[s] * RATE_MARGIN) + 4 for s in max_age}
        self._sync = ObservationSynchronizer(max_age, history=history)
        self._sync_lock = threading.Lock()
        self._layout = layout_from_config(cfg)
        self._task = icfg.task
        self._period_s = icfg.period_s
        self._warmup_runs = icfg.warmup_runs
        self._nice = icfg.nice

        self._state_lock = threading.Lock()
        self._phase = "warming up"  # -> running | failed
        self._blocked: Optional[_Blocked] = None
        self._blocks: Dict[str, int] = {s: 0 for s in max_age}
        self._last_block = "none"
        self._failure: Optional[str] = None
        self._chunks = 0
        self._rejected = 0
        self._errors = 0
        self.latency = LatencyStats()

        self._chunk_pub = self.create_publisher(
            JointTrajectory, cfg.topics.action_chunk, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._marker_pub = self.create_publisher(MarkerArray, cfg.topics.markers, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        for cam in self.runner.cameras:
            self.create_subscription(Image, f"{cfg.topics.cameras}/{cam}/image_raw",
                                     lambda msg, s=cam: self._store(s, msg), qos_profile_sensor_data)
        for source in arm_sources:
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

    # ---- input: store only -----------------------------------------------------------------------

    def _store(self, source: str, msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self._sync_lock:
            self._sync.add(source, stamp, msg)

    # ---- the worker --------------------------------------------------------------------------------

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
        try:
            for _ in range(self._warmup_runs):
                if self._stop.is_set():
                    return
                self.runner.warmup(1)
        except Exception as e:  # a model that cannot run on a synthetic input will not run on a real one
            with self._state_lock:
                self._phase, self._failure = "failed", f"warm-up failed: {type(e).__name__}: {e}"
            self.get_logger().error(f"warm-up failed, not running the policy: {type(e).__name__}: {e}")
            self._publish_diagnostics()
            return
        with self._state_lock:
            self._phase = "running"
        self.get_logger().info("policy warmed up; running")
        self._publish_diagnostics()
        while self._alive():
            started = time.monotonic()
            wait = self._cycle()
            if wait is None:
                wait = self._period_s - (time.monotonic() - started)
            if wait > 0:
                self._stop.wait(wait)

    def _cycle(self) -> Optional[float]:
        """One attempt; returns how long to wait before the next (None: the period's rest)."""
        ref_ns = self.get_clock().now().nanoseconds
        with self._sync_lock:
            window = self._sync.window(ref_ns, self.runner.n_obs_steps, self.runner.action_period_ns)
        try:
            images, state = self._inputs(window)
        except _Blocked as blocked:
            self._set_blocked(blocked)
            return RETRY_S
        self._set_blocked(None)
        try:
            chunk = self.runner.infer(images, state, ref_ns, self._task)
        except ChunkRejected as e:
            self._set_failure(f"prediction rejected ({e.rule}): {e}", rejected=True)
            return ERROR_BACKOFF_S
        except Exception as e:  # the loop must go on: count, report, retry
            self._set_failure(f"inference failed: {type(e).__name__}: {e}", rejected=False)
            return ERROR_BACKOFF_S
        if not self._alive():
            return None
        try:
            self._chunk_pub.publish(chunk_to_trajectory(chunk))
            self._marker_pub.publish(chunk_markers(chunk, self._layout, ns_to_stamp(ref_ns)))
        except Exception:
            if self._alive():
                raise  # a real publishing error; a context shut down under this thread is not
            return None
        self.latency.add((self.get_clock().now().nanoseconds - ref_ns) * 1e-9)
        with self._state_lock:
            self._chunks += 1
            recovered, self._failure = self._failure, None
        if recovered:
            self.get_logger().info("inference recovered")
        return None

    def _inputs(self, window: Sequence[SyncedObservation]) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """Decoded frames per camera ``[T, H, W, 3]`` and the state ``[T, D]``, or :class:`_Blocked`."""
        # The newest observation's problem is the one to fix first; an older step of the window
        # (n_obs_steps > 1) can only lack history, e.g. just after start-up.
        for back, obs in enumerate(reversed(window)):
            if obs.stale:
                first: StaleSource = obs.stale[0]
                where = f" ({back} step{'s' if back > 1 else ''} back in the observation window)" if back else ""
                raise _Blocked(first.source, f"{first}{where}")
        images: Dict[str, np.ndarray] = {}
        for cam in self.runner.cameras:
            try:
                frames = [image_to_rgb(obs.values[cam]) for obs in window]
                images[cam] = np.stack(frames)
            except (ImageFormatError, ValueError) as e:
                raise _Blocked(cam, f"{cam}: unusable image: {e}") from None
        rows = []
        for obs in window:
            by_source = {s: dict(zip(obs.values[s].name, obs.values[s].position))
                         for s in {src for src, _ in self._joint_sources}}
            row = []
            for source, name in self._joint_sources:
                value = by_source[source].get(name)
                if value is None:
                    raise _Blocked(source, f"{source}: joint state lacks {name}")
                row.append(value)
            rows.append(row)
        return images, np.asarray(rows, dtype=np.float32)

    # ---- state for diagnostics -------------------------------------------------------------------

    def _set_blocked(self, blocked: Optional[_Blocked]) -> None:
        with self._state_lock:
            before = self._blocked
            if blocked is not None and (before is None or before.source != blocked.source):
                self._blocks[blocked.source] = self._blocks.get(blocked.source, 0) + 1
            if blocked is not None:
                self._last_block = blocked.reason
            self._blocked = blocked
        if blocked is not None and (before is None or before.source != blocked.source):
            self.get_logger().warning(f"inference blocked: {blocked.reason}", throttle_duration_sec=2.0)
            self._publish_diagnostics()
        elif blocked is None and before is not None:
            self.get_logger().info(f"inference unblocked ({before.source} usable again)")
            self._publish_diagnostics()

    def _set_failure(self, reason: str, *, rejected: bool) -> None:
        with self._state_lock:
            first = self._failure is None
            self._failure = reason
            if rejected:
                self._rejected += 1
            else:
                self._errors += 1
        self.get_logger().error(reason, throttle_duration_sec=5.0)
        if first:
            self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        if not self.context.ok():
            return
        with self._state_lock:
            phase, blocked, failure = self._phase, self._blocked, self._failure
            blocks, last_block = dict(self._blocks), self._last_block
            chunks, rejected, errors = self._chunks, self._rejected, self._errors
        if phase == "failed":
            level, message = ERROR, failure or "failed"
        elif phase == "warming up":
            level, message = STALE, f"warming up ({self._warmup_runs} runs)"
        elif blocked is not None:
            level, message = WARN, f"blocked: {blocked.reason}"
        elif failure is not None:
            level, message = ERROR, failure
        else:
            level, message = OK, "running"
        latency = self.latency.summary()
        described = self.runner.describe()
        values = {"ready": str(phase == "running").lower(), "device": described["device"],
                  "dtype": described["dtype"], "guidance": described["guidance"],
                  "checkpoint": described["checkpoint"], "action_period_ms": described["action_period_ms"],
                  "latency_p50_ms": f"{latency['p50_ms']:.1f}", "latency_p99_ms": f"{latency['p99_ms']:.1f}",
                  "chunks": chunks, "rejected": rejected, "errors": errors,
                  **{f"blocked.{source}": n for source, n in sorted(blocks.items())},
                  "last_block": last_block}
        status = diagnostic_status("inference", level, message, values=values)
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))
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
