"""Two real nodes over loopback DDS: per-arm joint states become one whole-robot /joint_states."""

from __future__ import annotations

import math

import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from ate_core.robot.config import load_config
from ate_ros.nodes.joint_state_aggregator import JointStateAggregator

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


def _arm_state(names, positions):
    msg = JointState()
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    return msg


def test_aggregator_merges_both_arms_by_name(ros, repo):
    cfg = load_config(repo / "config/bimanual.yaml")
    ros.start(JointStateAggregator, config=cfg)
    merged = ros.subscribe(JointState, "/joint_states")
    left = ros.publisher(JointState, "/left_arm/joint_states", qos_profile_sensor_data)
    right = ros.publisher(JointState, "/right_arm/joint_states", qos_profile_sensor_data)
    ros.wait_for_subscribers(left)
    ros.wait_for_subscribers(right)

    left_names = (*cfg.arms.left.joint_names, cfg.arms.left.gripper_joint)
    right_names = (*cfg.arms.right.joint_names, cfg.arms.right.gripper_joint)
    # The right arm sends its joints in reverse order: the merge must go by name.
    right_msg = _arm_state(reversed(right_names), reversed([1.0 + i for i in range(8)]))

    def complete():
        left.publish(_arm_state(left_names, [0.1 * i for i in range(8)]))
        right.publish(right_msg)
        return any(len(m.name) == 16 for m in merged.messages)

    ros.wait_for(complete, 10.0, "a merged state with both arms")
    msg = next(m for m in merged.messages if len(m.name) == 16)
    assert list(msg.name) == [*left_names, *right_names]
    positions = dict(zip(msg.name, msg.position))
    assert math.isclose(positions["left_joint3"], 0.2)
    assert math.isclose(positions["right_joint1"], 1.0)
    assert math.isclose(positions["right_gripper"], 8.0)


def test_aggregator_ignores_state_with_missing_joints(ros, repo):
    cfg = load_config(repo / "config/bimanual.yaml")
    ros.start(JointStateAggregator, config=cfg)
    merged = ros.subscribe(JointState, "/joint_states")
    left = ros.publisher(JointState, "/left_arm/joint_states", qos_profile_sensor_data)
    ros.wait_for_subscribers(left)
    good_names = (*cfg.arms.left.joint_names, cfg.arms.left.gripper_joint)

    def got_good():
        left.publish(_arm_state(good_names[:3], [9.0, 9.0, 9.0]))  # missing joints: dropped
        left.publish(_arm_state(good_names, [0.5] * 8))
        return len(merged) > 0

    ros.wait_for(got_good, 10.0, "the well-formed left state")
    assert all(9.0 not in m.position for m in merged.messages)


def test_separate_domains_do_not_hear_each_other(ros):
    from ros_harness import RosHarness
    from std_msgs.msg import String

    other = RosHarness(domain_id=(ros.domain_id % 100) + 101)
    try:
        heard = other.subscribe(String, "/chatter")
        local = ros.subscribe(String, "/chatter")
        pub = ros.publisher(String, "/chatter")
        ros.wait_for_subscribers(pub)
        for _ in range(20):
            pub.publish(String(data="hello"))
            ros.wait_for(lambda: len(local) > 0, 5.0, "the same-domain subscriber")
        assert len(heard) == 0
    finally:
        other.close()


def test_aggregator_limits_its_rate_to_the_parameter(ros, repo):
    from rclpy.parameter import Parameter
    import time

    cfg = load_config(repo / "config/bimanual.yaml")
    ros.start(JointStateAggregator, config=cfg,
              parameter_overrides=[Parameter("publish_rate_hz", value=20.0)])
    merged = ros.subscribe(JointState, "/joint_states")
    left = ros.publisher(JointState, "/left_arm/joint_states", qos_profile_sensor_data)
    ros.wait_for_subscribers(left)
    names = (*cfg.arms.left.joint_names, cfg.arms.left.gripper_joint)
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < 1.0:  # 200 states a second, as an arm pushes them
        left.publish(_arm_state(names, [0.01 * sent] * 8))
        sent += 1
        time.sleep(0.005)
    time.sleep(0.2)
    # 20 Hz over ~1 s: far fewer merged states than inputs, but a steady stream of them.
    assert sent > 100
    assert 5 <= len(merged) <= 30
