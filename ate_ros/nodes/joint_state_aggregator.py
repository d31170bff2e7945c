"""Whole-robot ``/joint_states`` from the per-arm topics, for robot_state_publisher and RViz."""

from __future__ import annotations

from typing import Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from ate_core.config import BimanualConfig
from ate_core.runtime.joint_states import JointStateMerger, JointStateRejected
from ate_ros.conversions import joint_state_to_sample, sample_to_joint_state
from ate_ros.params import declare_config


class JointStateAggregator(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, **kwargs) -> None:
        super().__init__("joint_state_aggregator", **kwargs)
        cfg = config if config is not None else declare_config(self)
        sources = {side: (*arm.joint_names, arm.gripper_joint) for side, arm in cfg.arms.items()}
        self._merger = JointStateMerger(sources)
        self._rejected = 0
        self._pub = self.create_publisher(JointState, cfg.topics.joint_states, 10)
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
        self._pub.publish(sample_to_joint_state(self._merger.merged()))


def main(args: Optional[Sequence[str]] = None) -> None:
    rclpy.init(args=args)
    node = JointStateAggregator()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
