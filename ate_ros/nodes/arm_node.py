"""One RealMan arm on ROS: ``joint_states`` out, ``command`` in, stop/home/gripper services,
Cartesian moves planned by the controller, drag teaching.

Services (std_srvs/Trigger): ``stop`` (immediate), ``slow_stop`` (decelerate), ``home``
(planned move to the configured home pose; outcome on ``home_result``), ``gripper_open``,
``gripper_close``; (std_srvs/SetBool) ``drag_teach``: true hands the arm to whoever pushes it
(RealMan's drag teaching, the usual way to teach a RealMan arm by hand; its joint states go on
as always, so the recorder takes a kinesthetic demonstration like any other, converted with
``--action-from state``), false takes it back.

Cartesian moves: a ``geometry_msgs/PoseStamped`` of the TCP (the configured ``tcp`` offset
from the flange; frame ``base_link``, the robot's, or empty for it) on ``move_tcp`` is planned
by the controller in joint space (``movej_p``), on ``move_tcp_linear`` as a straight line
(``movel``); the outcome follows on ``move_tcp_result`` (std_msgs/Bool), as for ``home`` and
as RealMan's own ROS driver pairs ``movel_cmd`` with ``movel_result`` (standard messages have
no service that carries a pose). A move, like ``home`` and drag teaching, is refused while the
arm is being commanded (an engaged supervisor streams to it: only the supervisor commands a
driven arm), while another of them runs, and while the link is not ready; commands are refused
while one runs, and ``stop`` works. What has the arm instead of the command stream ("homing",
"moving to a pose", "drag teaching", also drag teaching switched on at the controller's own
pendant; "" when nothing) is on ``busy`` (std_msgs/String, latched, sent on every change): the
supervisor does not engage such an arm.

Runs in the arm's namespace (``/left_arm``, ``/right_arm``). Joint states are published from
the controller's realtime push as it arrives (100 Hz by default), joints in rad plus the gripper opening
in metres, and only while the link is ready (so their silence means "not commandable": the
state is stale or the controller lost). Every command goes through
``ate_core.runtime.arm_command.CommandChecker``; a rejected command is counted by rule, logged
with its reason and never sent. The launch file and ``ate_bringup`` give each arm a process of
its own, at SCHED_FIFO (``arms.<side>.realtime_priority``): RealMan's SDK runs one request at a
time per process (``ate_ros.drivers.realman_sdk``), and its state pushes must not wait for an
interpreter lock held by other work (``ate_ros.realtime``). ``arm_nodes`` (both arms in one
process) is for a quick look, not for the robot.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from ate_core.robot.config import BimanualConfig, simulated
from ate_core.robot.from_config import placement_from_config
from ate_core.runtime.arm_command import CommandChecker, CommandRejected
from ate_core.runtime.joint_states import JointSample
from ate_ros.conversions import pose_to_matrix, sample_to_joint_state
from ate_ros.diagnostics import ERROR, OK, STALE, WARN, diagnostic_array, diagnostic_status
from ate_ros.drivers.realman_arm import STATUS_CURRENT_DRAG, ArmState, Link, RealManArm
from ate_ros.drivers.realman_sdk import describe_error
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_config, declare_fixed
from ate_ros.qos import LATCHED
from ate_ros.realtime import raise_process_to_fifo
from diagnostic_msgs.msg import DiagnosticArray

#: A command stream that pauses longer than this restarts from the measured position.
STREAM_GAP_S = 0.1
#: A node shut down within this long of its last command stops the controller.
SHUTDOWN_STOP_WINDOW_S = 1.0
#: An arm commanded within this long is being driven (an engaged supervisor streams at 100 Hz):
#: planned moves and drag teaching are refused.
DRIVEN_WINDOW_S = 0.5
#: The frames a Cartesian move's pose may be given in: the robot's base ("" means it too).
BASE_FRAMES = ("", "base_link")
#: How often ``busy`` is looked at (also at once when a service or a move changes it).
BUSY_POLL_S = 0.05


class ArmNode(Node):
    def __init__(self, side: Optional[str] = None, config: Optional[BimanualConfig] = None,
                 sim: Optional[bool] = None, realtime: bool = False, **kwargs) -> None:
        """``realtime``: this process is the arm's own (``main``): every thread of it (the
        executor's, DDS's, and those started from here on: the SDK's state-push and reply
        threads, the driver's worker and watchdog) runs at the arm's SCHED_FIFO
        ``realtime_priority``. Tests that host nodes in their own process leave it off."""
        # Under `ros2 run`, the arm comes as a parameter and the namespace as a remap
        # (`-r __ns:=/right_arm -p arm:=right`); launch and bringup set both.
        namespace = kwargs.pop("namespace", None) or (f"/{side}_arm" if side else None)
        super().__init__("arm_driver", namespace=namespace, **kwargs)
        side = declare_fixed(self, "arm", side or "left", "which arm this driver commands: left | right")
        use_sim = declare_fixed(self, "sim", bool(sim), "drive the arm's emulated controller (config sim.arms)")
        cfg = config if config is not None else declare_config(
            self, (f"arms.{side}", "gripper", "topics", *([f"sim.arms.{side}"] if use_sim else [])))
        if use_sim:
            cfg = simulated(cfg)
        if side not in ("left", "right"):
            raise ValueError(f"parameter arm: {side!r} is not 'left' or 'right'")
        self.side = side
        self.arm_cfg = getattr(cfg.arms, side)
        self._gripper_max_m = cfg.gripper.max_opening_m
        self._names = (*self.arm_cfg.joint_names, self.arm_cfg.gripper_joint)
        self._rejected: Dict[str, int] = {}
        self._last_command: Optional[Tuple[Tuple[float, ...], float]] = None
        #: When the last command came (monotonic s), sent on or not: it says the arm is being
        #: driven, whatever the link did since (a stale period resets `_last_command`).
        self._commanded_at = float("-inf")
        self._checker: Optional[CommandChecker] = None
        self._pushes_at_report = (0, time.monotonic())
        self._lock = threading.Lock()
        self._closing = False
        self._link_seen = Link.CONNECTING

        self._state_pub = self.create_publisher(JointState, cfg.topics.arm_joint_states, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        self.create_subscription(JointState, cfg.topics.arm_command, self._on_command, 10)
        self.create_service(Trigger, "stop", self._srv_stop)
        self.create_service(Trigger, "slow_stop", self._srv_slow_stop)
        self.create_service(Trigger, "gripper_open", self._srv_gripper(lambda d: d.gripper_open()))
        self.create_service(Trigger, "gripper_close", self._srv_gripper(lambda d: d.gripper_close()))
        # A home move takes seconds: the service starts it on its own thread and answers at
        # once; the outcome follows on `home_result` (RealMan's ROS driver pairs `*_cmd` with
        # `*_result` the same way). Commands are refused and `stop` works while it runs.
        self.create_service(Trigger, "home", self._srv_home)
        self._home_result_pub = self.create_publisher(Bool, "home_result", 10)
        self._home_thread: Optional[threading.Thread] = None
        self._placement = placement_from_config(side, self.arm_cfg)
        self.create_subscription(PoseStamped, "move_tcp", lambda m: self._on_move_tcp(m, False), 10)
        self.create_subscription(PoseStamped, "move_tcp_linear", lambda m: self._on_move_tcp(m, True), 10)
        self._move_result_pub = self.create_publisher(Bool, "move_tcp_result", 10)
        self._move_thread: Optional[threading.Thread] = None
        self.create_service(SetBool, "drag_teach", self._srv_drag_teach)
        self._busy_pub = self.create_publisher(String, cfg.topics.arm_busy, LATCHED)
        self._busy_said: Optional[str] = None
        self._busy_lock = threading.Lock()
        self.create_timer(1.0, self._publish_diagnostics)

        # Before the driver starts its threads and the SDK its own: they inherit the policy.
        self.realtime = realtime and raise_process_to_fifo(self.arm_cfg.realtime_priority,
                                                           self.get_logger().warning,
                                                           f"{side} arm driver")
        self.driver = RealManArm(side, self.arm_cfg, on_state=self._on_state,
                                 on_link=self._on_link,
                                 gripper_max_opening_m=cfg.gripper.max_opening_m)
        self.driver.start()
        self._publish_busy()
        self.create_timer(BUSY_POLL_S, self._publish_busy)

    def destroy_node(self) -> None:
        # From here on the driver's callbacks must not publish.
        self._closing = True
        homing = self._home_thread is not None and self._home_thread.is_alive()
        commanded = time.monotonic() - self._commanded_at <= SHUTDOWN_STOP_WINDOW_S
        if (homing or commanded) and self.driver.link is not Link.CLOSED:
            # The arm was moving on our commands. `ros2 launch` signals the supervisor and this
            # node at once, so the supervisor's stop request may find this node already gone:
            # the controller is stopped here, not left holding or chasing the last target.
            rc = self.driver.stop_motion()
            if rc == 0:
                self.get_logger().info(f"{self.side} arm stopped on shutdown")
            else:
                self.get_logger().error(f"{self.side} arm: stop on shutdown failed "
                                        f"(SDK returned {rc})")
        self.driver.close()
        if self._home_thread is not None:
            self._home_thread.join(5.0)
        super().destroy_node()

    # ---- state out -----------------------------------------------------------------------------

    def _alive(self) -> bool:
        return not self._closing and self.context.ok()

    def _on_state(self, state: ArmState) -> None:
        # Called on the SDK's UDP thread; publishing is thread-safe in rclpy.
        if state.gripper_opening_m is None or not self._alive():
            return  # the first gripper reading comes within ms of connecting
        if self.driver.link is not Link.READY:
            # Pushes may go on while the command link is down; a state published then would
            # tell the supervisor this arm can be commanded. Silence makes its watchdog hold.
            return
        msg = sample_to_joint_state(JointSample(
            self._names, (*state.positions_rad, state.gripper_opening_m),
            (*state.velocities_rad_s, 0.0), self.get_clock().now().nanoseconds))
        try:
            self._state_pub.publish(msg)
        except Exception:
            if self._alive():
                raise  # a real publishing error; a context shut down under this thread is not

    def _on_link(self, link: Link, reason: str) -> None:
        previous, self._link_seen = self._link_seen, link
        if not self._alive():
            return
        if link is Link.READY:
            d = self.driver
            self._checker = CommandChecker(self.arm_cfg.joint_names, self.arm_cfg.gripper_joint,
                                           d.limits, max_step_s=STREAM_GAP_S,
                                           gripper_max_opening_m=self._gripper_max_m)
            self._last_command = None  # resume only from freshly measured state
            if previous is Link.STALE:  # late pushes may come and go on a loaded PC
                self.get_logger().info(f"{self.side} arm {reason}", throttle_duration_sec=1.0)
            else:
                self.get_logger().info(f"{self.side} arm {reason}")
        elif link is Link.STALE:
            self.get_logger().warning(f"{self.side} arm state stale ({reason}); not commanding "
                                      f"until it is fresh", throttle_duration_sec=1.0)
        elif link is Link.LOST:
            self.get_logger().error(f"{self.side} arm controller lost ({reason}); not commanding, "
                                    f"reconnecting")
        self._publish_diagnostics()

    # ---- commands in ---------------------------------------------------------------------------

    def _reject(self, rule: str, reason: str) -> None:
        with self._lock:
            self._rejected[rule] = self._rejected.get(rule, 0) + 1
        self.get_logger().warning(f"rejected command ({rule}): {reason}",
                                  throttle_duration_sec=1.0)

    def _reference(self) -> Optional[Sequence[float]]:
        now = time.monotonic()
        if self._last_command is not None and now - self._last_command[1] <= STREAM_GAP_S:
            return self._last_command[0]
        state = self.driver.state
        return state.positions_rad if state is not None else None

    def _on_command(self, msg: JointState) -> None:
        self._commanded_at = time.monotonic()
        checker = self._checker
        if checker is None or self.driver.link is not Link.READY:
            self._reject("not_ready", f"controller link is {self.driver.link.value}")
            return
        try:
            cmd = checker.check(msg.name, msg.position, self._reference())
        except CommandRejected as e:
            self._reject(e.rule, str(e))
            return
        if self.driver.stream(cmd.positions_rad):
            self._last_command = (cmd.positions_rad, time.monotonic())
        if cmd.gripper_opening_m is not None:
            self.driver.set_gripper(cmd.gripper_opening_m)

    # ---- services ------------------------------------------------------------------------------

    @staticmethod
    def _answer(response: Trigger.Response, rc: int, what: str) -> Trigger.Response:
        response.success = rc == 0
        response.message = f"{what}: ok" if rc == 0 else f"{what}: SDK returned {rc}"
        return response

    def _srv_stop(self, _request, response):
        self._last_command = None
        return self._answer(response, self.driver.stop_motion(), "stop")

    def _srv_slow_stop(self, _request, response):
        self._last_command = None
        return self._answer(response, self.driver.slow_stop(), "slow stop")

    def _srv_gripper(self, action):
        def handler(_request, response):
            return self._answer(response, action(self.driver), "gripper")
        return handler

    def busy(self) -> str:
        """What has the arm instead of the command stream ("" when nothing has)."""
        for thread, what in ((self._home_thread, "homing"), (self._move_thread, "moving to a pose")):
            if thread is not None and thread.is_alive():
                return what
        if self.driver.busy:
            return self.driver.busy
        state = self.driver.state
        if state is not None and state.status_code == STATUS_CURRENT_DRAG:
            return "drag teaching (switched on at the controller)"
        return ""

    def _publish_busy(self) -> None:
        if not self._alive():
            return
        with self._busy_lock:  # the timer and the move threads: one message per change, in order
            busy = self.busy()
            if busy != self._busy_said:
                self._busy_said = busy
                self._busy_pub.publish(String(data=busy))

    def _refusal(self) -> str:
        """Why a planned move or drag teaching cannot start now ("" if it can)."""
        if self.driver.link is not Link.READY:
            return f"link is {self.driver.link.value}"
        if time.monotonic() - self._commanded_at <= DRIVEN_WINDOW_S:
            return "the arm is being commanded (the supervisor is engaged)"
        busy = self.busy()
        return f"the arm is {busy}" if busy else ""

    def _srv_home(self, _request, response):
        refusal = self._refusal()
        if refusal:
            response.success, response.message = False, f"home: {refusal}"
            return response
        self._home_thread = threading.Thread(target=self._move_home, name=f"{self.side}-home",
                                             daemon=True)
        self._home_thread.start()
        self._publish_busy()
        response.success, response.message = True, "home: moving; outcome on home_result"
        return response

    def _on_move_tcp(self, msg: PoseStamped, linear: bool) -> None:
        what = "move_tcp_linear" if linear else "move_tcp"
        refusal = self._refusal()
        if not refusal and msg.header.frame_id not in BASE_FRAMES:
            refusal = f"the pose is in frame {msg.header.frame_id!r}, not base_link"
        target = pose_to_matrix(msg.pose)
        if not refusal and target is None:
            refusal = "the pose is not finite or its quaternion is not a unit one"
        if refusal:
            self.get_logger().error(f"{what} refused: {refusal}")
            self._move_result_pub.publish(Bool(data=False))
            return
        # base_link -> TCP, into the controller's frames: arm base -> flange.
        flange = np.linalg.inv(self._placement.mount.matrix()) @ target \
            @ np.linalg.inv(self._placement.tcp.matrix())
        self._move_thread = threading.Thread(target=self._move_to, args=(flange, linear, what),
                                             name=f"{self.side}-move-tcp", daemon=True)
        self._move_thread.start()
        self._publish_busy()

    def _move_to(self, flange: np.ndarray, linear: bool, what: str) -> None:
        rc = self.driver.move_to_pose(flange, linear=linear)
        self._last_command = None
        if rc != 0:
            self.get_logger().error(f"{what} failed: SDK returned {rc}"
                                    + (" (the controller refused: out of reach, or a path it "
                                       "cannot follow)" if rc == 1 else ""))
        self._move_result_pub.publish(Bool(data=rc == 0))

    def _srv_drag_teach(self, request, response):
        if request.data:
            refusal = self._refusal()
            if refusal:
                response.success, response.message = False, f"drag teaching: {refusal}"
                return response
        rc = self.driver.set_drag_teach(bool(request.data))
        self._last_command = None
        self._publish_busy()
        state = "on" if request.data else "off"
        return self._answer(response, rc, f"drag teaching {state}")

    def _move_home(self) -> None:
        rc = self.driver.move_home(self.arm_cfg.home_rad)
        self._last_command = None
        if rc != 0:
            self.get_logger().error(f"home move failed: SDK returned {rc}")
        self._home_result_pub.publish(Bool(data=rc == 0))

    # ---- diagnostics ---------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        d = self.driver
        now = time.monotonic()
        pushes, since = self._pushes_at_report
        rate = (d.stats.pushes - pushes) / max(now - since, 1e-6)
        self._pushes_at_report = (d.stats.pushes, now)
        state = d.state
        errors = state.errors if state is not None else ()
        if d.link is Link.LOST:
            level, message = ERROR, f"controller lost: {d.stats.last_fault}"
        elif d.link is Link.STALE:
            level, message = ERROR, f"controller silent: {d.stats.last_fault}"
        elif d.link is not Link.READY:
            level, message = STALE, f"link {d.link.value}"
        elif errors:
            level, message = ERROR, "controller error " + ", ".join(describe_error(e) for e in errors)
        elif d.stats.reply_timeouts:
            level, message = WARN, f"{d.stats.reply_timeouts} reply timeouts"
        else:
            level, message = OK, "streaming" if self._last_command else "connected"
        with self._lock:
            rejected = dict(self._rejected)
        values = {"link": d.link.value, "ip": f"{self.arm_cfg.ip}:{self.arm_cfg.tcp_port}",
                  "realtime": self.realtime,
                  "udp_port": self.arm_cfg.udp_port, "state_rate_hz": f"{rate:.1f}",
                  "states_received": d.stats.pushes,
                  "commands_sent": d.stats.commands_sent, "commands_refused": d.stats.commands_refused,
                  "reconnects": d.stats.reconnects, "stale_periods": d.stats.stale_periods,
                  "last_fault": d.stats.last_fault,
                  "push_parse_errors": d.stats.push_parse_errors,
                  "gripper_commands": d.stats.gripper_commands,
                  **{f"faults.{kind}": n for kind, n in sorted(d.stats.faults.items())},
                  "controller_errors": ", ".join(describe_error(e) for e in errors) or "none",
                  **{f"rejected.{rule}": n for rule, n in sorted(rejected.items())}}
        status = diagnostic_status(f"{self.get_namespace().strip('/')}: RealMan {self.arm_cfg.model}",
                                   level, message, hardware_id=self.arm_cfg.ip, values=values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))


def main(args: Optional[Sequence[str]] = None) -> None:
    """``ros2 run ate_ros arm_node --ros-args -r __ns:=/left_arm -p arm:=left``."""
    run_nodes(lambda: [ArmNode(realtime=True)], args)


def main_both(args: Optional[Sequence[str]] = None) -> None:
    """``ros2 run ate_ros arm_nodes``: both arms in one process (one SDK instance)."""
    run_nodes(lambda: [ArmNode("left"), ArmNode("right")], args)


if __name__ == "__main__":
    main()
