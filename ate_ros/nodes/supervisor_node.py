"""The supervisor node: the only publisher of arm commands.

Inputs: each arm's joint states and what has it besides the command stream (``/{arm}_arm/busy``,
latched: drag teaching, a planned move; such an arm is not engaged, and one taken over while
engaged drops the supervisor to idle), each camera's ``camera_info`` (a camera watchdog that costs no
image decoding), the policy's chunks on ``/ate/action_chunk`` and the teleop leaders' joints on
``/{arm}_arm/teleop_target`` (JointState in the follower's joint names, from ``teleop_node``
or the jog). Outputs: one
``/{arm}_arm/command`` JointState per arm per control tick (stamped with the tick, naming its
joints), ``/diagnostics`` with the mode, the tick timing and every intervention counted by rule
and arm. Services: ``/ate/estop`` and ``/ate/rearm`` (std_srvs/Trigger), ``/ate/engage``
(std_srvs/SetBool) for the policy and ``/ate/engage_teleop`` (std_srvs/SetBool) for the
leaders. Every decision is :class:`ate_core.runtime.supervisor.Supervisor`'s; this
node converts messages and keeps time.

The control loop runs on its own thread (``supervisor-tick``) against absolute deadlines rather
than on an rclpy timer: the executor also delivers 400 joint states a second and the chunks, and
a tick must not wait behind them. Callbacks and the tick share one lock around the supervisor,
held for microseconds. In dry-run mode the commands go to ``/{arm}_arm/command_preview``
instead; everything else (including the e-stop's controller stop) is live.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.robot.config import BimanualConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.chunk import ChunkRejected
from ate_core.runtime.supervisor import POLICY, TELEOP, Answer, Mode, Supervisor, TickOutput
from ate_core.runtime.tick_timing import TickTiming
from ate_ros.chunk_msgs import trajectory_to_chunk
from ate_ros.conversions import ns_to_stamp
from ate_ros.diagnostics import ERROR, OK, WARN, diagnostic_array, diagnostic_status
from ate_ros.node_host import GIL_SWITCH_INTERVAL_S, run_nodes
from ate_ros.params import declare_config
from ate_ros.qos import LATCHED
from ate_ros.realtime import raise_process_to_fifo, raise_to_fifo


class SupervisorNode(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, own_process: bool = False,
                 **kwargs) -> None:
        """``own_process``: this process is the supervisor's (``main``), and every thread of it
        runs at SCHED_FIFO, not only the tick (``supervisor.realtime_priority``; the others one
        below it): the executor that takes the joint states and the DDS threads that deliver
        them too, so that none of them is preempted by other work while the tick waits for it
        (for the interpreter lock or for a message). Tests that host nodes in their own
        process leave it off."""
        super().__init__("supervisor", **kwargs)
        self._own_process = own_process
        cfg = config if config is not None else declare_config(
            self, ("arms", "gripper", "topics", "supervisor"))
        self.cfg = cfg
        layout = layout_from_config(cfg)
        self.supervisor = Supervisor(layout, cfg.supervisor, cfg.gripper.max_opening_m,
                                     cameras=tuple(cfg.cameras))
        self.dry_run = cfg.supervisor.dry_run
        self._lock = threading.Lock()
        self._period_ns = int(round(1e9 / cfg.supervisor.rate_hz))
        self.timing = TickTiming(self._period_ns)
        self.realtime = False
        self._last_output: Optional[TickOutput] = None
        #: Ticks whose commands went out (one message per arm each).
        self.commands_published = 0
        self._last_rejection = ""

        topic = cfg.topics.arm_command + ("_preview" if self.dry_run else "")
        self._arm_names = {arm.prefix: (*arm.joint_names, arm.gripper_joint) for arm in layout}
        self._command_pubs = {side: self.create_publisher(JointState, f"/{side}_arm/{topic}", 10)
                              for side in self.supervisor.arms}
        self._stop_clients = {side: self.create_client(Trigger, f"/{side}_arm/stop")
                              for side in self.supervisor.arms}
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        for side in self.supervisor.arms:
            self.create_subscription(JointState, f"/{side}_arm/{cfg.topics.arm_joint_states}",
                                     lambda msg, s=side: self._on_joint_state(s, msg),
                                     qos_profile_sensor_data)
            self.create_subscription(String, f"/{side}_arm/{cfg.topics.arm_busy}",
                                     lambda msg, s=side: self._on_busy(s, msg), LATCHED)
        for cam in cfg.cameras:
            self.create_subscription(CameraInfo, f"{cfg.topics.cameras}/{cam}/camera_info",
                                     lambda _msg, c=cam: self._on_camera(c),
                                     qos_profile_sensor_data)
        self.create_subscription(JointTrajectory, cfg.topics.action_chunk, self._on_chunk, 10)
        for side in self.supervisor.arms:  # one topic per arm: one cannot crowd out the other
            self.create_subscription(JointState, f"/{side}_arm/{cfg.topics.teleop_target}",
                                     lambda msg, s=side: self._on_leader(s, msg),
                                     qos_profile_sensor_data)
        self.create_service(Trigger, cfg.topics.estop, self._srv_estop)
        self.create_service(Trigger, cfg.topics.rearm, self._srv_rearm)
        self.create_service(SetBool, cfg.topics.engage, self._srv_engage)
        self.create_service(SetBool, cfg.topics.engage_teleop,
                            lambda req, res: self._srv_engage(req, res, TELEOP))
        self.create_timer(1.0, self._publish_diagnostics)

        # A thread waking from sleep waits for the GIL until the running thread yields it, by
        # default up to 5 ms: as long as half a control period. The executor thread handles
        # 400 joint states a second, so the tick would wake late by that much; a 0.5 ms switch
        # interval bounds the wait (process-wide, at the cost of a little switching overhead).
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor-tick", daemon=True)
        self._thread.start()

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        # Shut down while commanding the arms (SIGINT to the launch): each arm's last target
        # would stand. No tick can follow to undo it, so each arm is told to stop and given half
        # a second to answer. Under `ros2 launch` the arm nodes get the same signal and stop
        # their controllers themselves; an arm node that is gone already is no error then.
        with self._lock:
            commanding = self.supervisor.mode in (Mode.ENGAGED, Mode.DISENGAGING)
        if commanding and not self.context.ok():
            self.get_logger().error("shut down while commanding the arms, with ROS already "
                                    "shut down: the arms were not told to stop")
        elif commanding:
            from rclpy.executors import SingleThreadedExecutor

            stop_answer_s = 0.5
            log = self.get_logger()
            calls = {}
            for side, client in self._stop_clients.items():
                if client.service_is_ready():
                    calls[side] = client.call_async(Trigger.Request())
                else:
                    log.warning(f"shut down while commanding the arms: /{side}_arm/stop is not "
                                f"available")
            # The spinning executor has stopped; the answers need one for this moment.
            executor = SingleThreadedExecutor(context=self.context)
            executor.add_node(self)
            try:
                deadline = time.monotonic() + stop_answer_s
                while (not all(f.done() for f in calls.values()) and self.context.ok()
                       and time.monotonic() < deadline):
                    executor.spin_once(timeout_sec=max(0.0, deadline - time.monotonic()))
            finally:
                executor.remove_node(self)
                executor.shutdown(timeout_sec=0)
            for side, future in calls.items():
                answer = future.result() if future.done() else None
                if answer is None:
                    log.info(f"shut down while commanding the arms: the {side} arm did not "
                             f"answer stop within {stop_answer_s} s (its driver stops it on "
                             f"its own shutdown)")
                elif answer.success:
                    log.info(f"shut down while commanding the arms: {side} arm stopped")
                else:
                    log.error(f"shut down while commanding the arms: {side} arm stop failed: "
                              f"{answer.message}")
        super().destroy_node()

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # ---- inputs ---------------------------------------------------------------------------------

    def _on_joint_state(self, side: str, msg: JointState) -> None:
        names = self._arm_names[side]
        index = {n: i for i, n in enumerate(msg.name)}
        if any(n not in index for n in names) or len(msg.position) != len(msg.name):
            positions = [float("nan")] * len(names)  # counted as a bad state, never as fresh
        else:
            positions = [msg.position[index[n]] for n in names]
        with self._lock:
            self.supervisor.on_joint_state(side, positions, self._now_ns())

    def _on_busy(self, side: str, msg: String) -> None:
        with self._lock:
            self.supervisor.on_arm_busy(side, msg.data)

    def _on_leader(self, side: str, msg: JointState) -> None:
        names = self._arm_names[side]
        index = {n: i for i, n in enumerate(msg.name)}
        if any(n not in index for n in names) or len(msg.position) != len(msg.name):
            positions = [float("nan")] * len(names)  # counted as a bad leader sample
        else:
            positions = [msg.position[index[n]] for n in names]
        with self._lock:
            self.supervisor.on_leader(side, positions, self._now_ns())

    def _on_camera(self, name: str) -> None:
        with self._lock:
            self.supervisor.on_camera(name, self._now_ns())

    def _on_chunk(self, msg: JointTrajectory) -> None:
        try:
            chunk = trajectory_to_chunk(msg, self.supervisor.joint_names)
        except ChunkRejected as e:
            with self._lock:
                self.supervisor.reject_chunk(e.rule)
            self._last_rejection = f"{e.rule}: {e}"
            self.get_logger().warning(f"rejected chunk ({e.rule}): {e}", throttle_duration_sec=1.0)
            return
        with self._lock:
            reason = self.supervisor.on_chunk(chunk, self._now_ns())
        if reason is not None:
            self._last_rejection = reason
            self.get_logger().warning(f"rejected chunk ({reason})", throttle_duration_sec=1.0)

    # ---- the control loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        self.realtime = self._raise_priority(self.cfg.supervisor.realtime_priority)
        deadline = time.monotonic_ns()
        while not self._stop.is_set():
            deadline += self._period_ns
            delay = deadline - time.monotonic_ns()
            if delay > 0:
                if self._stop.wait(delay * 1e-9):
                    break
            else:  # behind schedule: skip to the next deadline instead of bursting
                deadline += (-delay // self._period_ns) * self._period_ns
            self.timing.record(time.monotonic_ns())
            if not self.context.ok():
                break
            try:
                self.tick()
            except Exception:
                if self.context.ok():
                    raise
                break  # Ctrl-C shut the context down under this tick: nothing left to command

    def _raise_priority(self, priority: int) -> bool:
        """SCHED_FIFO for this thread (for the whole process with ``own_process``): a woken tick
        then preempts the model and the cameras at once (see ``ate_ros.realtime``)."""
        warn = self.get_logger().warning
        if self._own_process and priority > 1:
            # The rest of the process one below the tick: at equal FIFO priorities a running
            # executor or DDS thread would keep the woken tick off its core until it blocks.
            raise_process_to_fifo(priority - 1, warn, "supervisor")
        return raise_to_fifo(priority, warn, "control loop")

    def tick(self) -> TickOutput:
        with self._lock:
            out = self.supervisor.tick(self._now_ns())
            self._publish(out)
        self._last_output = out
        if out.stop_arms:
            self._stop_arms(out.stop_arms)
        return out

    def _publish(self, out: TickOutput) -> None:
        """Per-arm commands of one tick; called with the lock held so stamps stay ordered."""
        if out.positions is None:
            return
        stamp = ns_to_stamp(out.now_ns)  # the tick's stamp, by which the caps hold
        for side, positions in self.supervisor.split(out.positions).items():
            velocities = self.supervisor.split(out.velocities)[side]
            msg = JointState(name=list(self._arm_names[side]),
                             position=[float(v) for v in positions],
                             velocity=[float(v) for v in velocities])
            msg.header.stamp = stamp
            self._command_pubs[side].publish(msg)
        self.commands_published += 1

    def _stop_arms(self, sides: Sequence[str]) -> None:
        for side in sides:
            client = self._stop_clients[side]
            if client.service_is_ready():
                client.call_async(Trigger.Request())
            else:
                self.get_logger().error(f"/{side}_arm/stop is not available: the {side} arm was "
                                        f"not told to stop")

    # ---- services -------------------------------------------------------------------------------

    def _srv_estop(self, _request, response):
        with self._lock:
            answer = self.supervisor.estop(self._now_ns())
            # The hold is in effect before the answer: publish it now, not at the next tick.
            out = self.supervisor.tick(self._now_ns())
            self._publish(out)
        self._stop_arms(out.stop_arms or self.supervisor.arms)
        self.get_logger().warning(f"E-STOP: {answer.message}")
        response.success, response.message = answer.success, answer.message
        return response

    def _srv_rearm(self, _request, response):
        with self._lock:
            answer = self.supervisor.rearm(self._now_ns())
        self.get_logger().info(f"rearm: {answer.message}")
        response.success, response.message = answer.success, answer.message
        return response

    def _srv_engage(self, request, response, source: str = POLICY):
        with self._lock:
            now = self._now_ns()
            if request.data:
                answer = self.supervisor.engage(now, source)
            elif self.supervisor.mode is Mode.ENGAGED and self.supervisor.source != source:
                answer = Answer(False, f"engaged with {self.supervisor.source}, not {source}: "
                                       f"nothing changed")
            else:
                answer = self.supervisor.disengage(now)
        self.get_logger().info(f"engage {source} {request.data}: {answer.message}")
        response.success, response.message = answer.success, answer.message
        return response

    # ---- diagnostics ----------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        with self._lock:
            sup = self.supervisor
            mode, reason, source = sup.mode, sup.reason, sup.source
            counts = dict(sup.counts)
            executor = sup.executor.stats
            published = self.commands_published
            chunk_age_ns = sup.last_chunk_age_ns
            busy = sup.busy_arms()
            out = self._last_output
        faults = out.faults if out is not None else ()
        if mode is Mode.ESTOPPED:
            level, message = ERROR, reason
        elif faults:
            level, message = WARN, "; ".join(str(f) for f in faults)
        else:
            level, message = OK, reason
        timing = self.timing.summary()
        values = {"mode": mode.value, "source": source, "reason": reason, "dry_run": self.dry_run,
                  "realtime": self.realtime,
                  "holding": bool(out.holding) if out is not None else False,
                  "rate_hz": self.cfg.supervisor.rate_hz,
                  **{f"tick.{k}": (f"{v:.3f}" if isinstance(v, float) else v)
                     for k, v in timing.items()},
                  "chunks_added": executor.chunks_added,
                  "commands_published": published,
                  **{f"busy.{arm}": busy.get(arm, "no") for arm in self.supervisor.arms},
                  "last_chunk_rejection": self._last_rejection or "none",
                  # Arrival minus stamp of the newest chunk: negative means the policy's clock
                  # is ahead of this one (beyond executor.max_future_s such chunks are refused).
                  "chunk_age_at_arrival_ms": ("none" if chunk_age_ns is None
                                              else f"{chunk_age_ns * 1e-6:.3f}"),
                  **{f"count.{rule}.{who}": n for (rule, who), n in sorted(counts.items())}}
        status = diagnostic_status("supervisor", level, message, values=values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))


def main(args: Optional[Sequence[str]] = None) -> None:
    run_nodes(lambda: [SupervisorNode(own_process=True)], args)


if __name__ == "__main__":
    main()
