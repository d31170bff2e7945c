"""Whole-robot ``/joint_states`` from the per-arm topics, for robot_state_publisher and RViz.

Each arm pushes 200 states a second; republishing on every one (400 Hz) costs the robot PC CPU
that nothing gains from: robot_state_publisher and RViz need tens of Hz. The merged state goes out
at ``publish_rate_hz`` (default 50; 0 republishes every input), and only when something new came in.
The control path does not use this topic: the supervisor reads the per-arm states directly.
"""

from __future__ import annotations

from typing import Optional, Sequence

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from ate_core.robot.config import BimanualConfig
from ate_core.runtime.joint_states import JointStateMerger, JointStateRejected
from ate_ros.conversions import joint_state_to_sample, sample_to_joint_state
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_config, declare_fixed


class JointStateAggregator(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, **kwargs) -> None:
        super().__init__("joint_state_aggregator", **kwargs)
        cfg = config if config is not None else declare_config(self, ("arms", "topics"))
        sources = {side: (*arm.joint_names, arm.gripper_joint) for side, arm in cfg.arms.items()}
        self._merger = JointStateMerger(sources)
        self._rejected = 0
        self._fresh = False
        rate = float(declare_fixed(self, "publish_rate_hz", 50.0,
                                   "merged-state rate in Hz (0: on every arm state)"))
        if not rate >= 0.0:
            raise ValueError(f"parameter publish_rate_hz: {rate} must be >= 0")
        self._every_input = rate == 0.0
        self._pub = self.create_publisher(JointState, cfg.topics.joint_states, 10)
        if not self._every_input:
            self.create_timer(1.0 / rate, self._publish)
        for side, _arm in cfg.arms.items():
            topic = f"/{side}_arm/{cfg.topics.arm_joint_states}"
            self.create_subscription(JointState, topic, lambda msg, s=side: self._on_arm(s, msg),
                                     qos_profile_sensor_data)

    def _on_arm(self, side: str, msg: JointState) -> None:
        try:
            self._merger.update(side, joint_state_to_sample(msg))
        except JointStateRejected as e:
            self._rejected += 1
            self.get_logger().warning(f"ignoring {side} joint state: {e}",
                                      throttle_duration_sec=5.0)
            return
        self._fresh = True
        if self._every_input:
            self._publish()

    def _publish(self) -> None:
        if self._fresh:
            self._fresh = False
            self._pub.publish(sample_to_joint_state(self._merger.merged()))


def main(args: Optional[Sequence[str]] = None) -> None:
    run_nodes(lambda: [JointStateAggregator()], args)


if __name__ == "__main__":
    main()
