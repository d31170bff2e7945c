"""The teleop node: leader arms -> the followers' targets, for the supervisor's teleop mode.

A leader is any JointState source, one topic per follower arm (``teleop.leader_topic``, default
``/leader/{arm}_arm/joint_states``):

- a second pair of RealMan arms read through RealMan's SDK: their own arm nodes in the
  ``/leader`` namespace (``ros2 run ate_ros arm_node --ros-args -r __ns:=/leader/left_arm -p
  arm:=left -p config_file:=leader.yaml``, the leader pair's addresses in that file), put in
  drag-teach mode on their pendant or with ``/leader/{arm}_arm/drag_teach``. They name their
  joints as the followers do;
- any device that publishes the joints and gripper (``joint1``..., ``gripper``, with any prefix,
  or exactly one nameless value per follower joint, in the follower's order).

Each leader message goes out on its follower's ``/{arm}_arm/teleop_target``
(``topics.teleop_target``) with the follower's joint names and the leader's own stamp. Nothing here judges or limits: the supervisor, engaged
with ``/ate/engage_teleop``, ramps the followers to the leaders, holds when a leader jumps or
goes silent, and runs every target through its safety filter. A message that cannot be read
as the follower's joints is counted and reported (``/diagnostics``), never forwarded.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState

from ate_core.robot.config import BimanualConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.teleop import LeaderMap, LeaderMismatch
from ate_ros.diagnostics import OK, WARN, diagnostic_array, diagnostic_status
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_config

#: The targets' QoS: reliable, so that a recorder keeps every one.
TARGET_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


class TeleopNode(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, **kwargs) -> None:
        super().__init__("teleop", **kwargs)
        cfg = config if config is not None else declare_config(
            self, ("arms", "gripper", "topics", "teleop"))
        self.cfg = cfg
        layout = layout_from_config(cfg)
        self._maps = {arm.prefix: LeaderMap((*arm.joint_names, arm.gripper_joint),
                                            f"{arm.prefix}_")
                      for arm in layout}
        self.leader_topics = {side: cfg.teleop.leader_topic.format(arm=side) for side in self._maps}
        self._lock = threading.Lock()
        self.forwarded: Dict[str, int] = {side: 0 for side in self._maps}
        self.refused: Dict[str, int] = {side: 0 for side in self._maps}
        self._last_problem: Dict[str, str] = {}
        # Reliable: the supervisor's best-effort subscription takes the newest, the recorder's
        # reliable one every sample.
        self._pubs = {side: self.create_publisher(JointState,
                                                  f"/{side}_arm/{cfg.topics.teleop_target}",
                                                  TARGET_QOS)
                      for side in self._maps}
        for side, topic in self.leader_topics.items():
            self.create_subscription(JointState, topic, lambda msg, s=side: self._on_leader(s, msg),
                                     qos_profile_sensor_data)
        self._diag_pub = self.create_publisher(DiagnosticArray, cfg.topics.diagnostics, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info("leaders: " + ", ".join(f"{s} <- {t}" for s, t in
                                                        self.leader_topics.items())
                               + f"; targets on /<arm>_arm/{cfg.topics.teleop_target}")

    def _on_leader(self, side: str, msg: JointState) -> None:
        leader_map = self._maps[side]
        try:
            positions = leader_map(msg.name, msg.position)
        except LeaderMismatch as e:
            with self._lock:
                self.refused[side] += 1
                self._last_problem[side] = str(e)
            self.get_logger().warning(f"{self.leader_topics[side]}: {e}",
                                      throttle_duration_sec=2.0)
            return
        out = JointState(name=list(leader_map.names), position=[float(v) for v in positions])
        out.header.stamp = msg.header.stamp
        if out.header.stamp.sec == 0 and out.header.stamp.nanosec == 0:
            out.header.stamp = self.get_clock().now().to_msg()
        self._pubs[side].publish(out)
        with self._lock:
            self.forwarded[side] += 1

    def _publish_diagnostics(self) -> None:
        with self._lock:
            forwarded, refused = dict(self.forwarded), dict(self.refused)
            problems = dict(self._last_problem)
        level = WARN if any(refused.values()) else OK
        message = "; ".join(f"{s}: {p}" for s, p in problems.items()) or "forwarding the leaders"
        values = {**{f"{s}.topic": t for s, t in self.leader_topics.items()},
                  **{f"{s}.forwarded": n for s, n in forwarded.items()},
                  **{f"{s}.refused": n for s, n in refused.items()}}
        status = diagnostic_status("teleop", level, message, values=values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))


def main(args: Optional[Sequence[str]] = None) -> None:
    run_nodes(lambda: [TeleopNode()], args)


if __name__ == "__main__":
    main()
