"""Small, pure conversions between ROS message fields and ate_core types."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from sensor_msgs.msg import JointState

from ate_core.runtime.joint_states import JointSample


def stamp_to_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_stamp(ns: int) -> Time:
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def joint_state_to_sample(msg: JointState) -> JointSample:
    return JointSample(tuple(msg.name), tuple(msg.position), tuple(msg.velocity),
                       stamp_to_ns(msg.header.stamp))


def sample_to_joint_state(sample: JointSample) -> JointState:
    msg = JointState()
    msg.header.stamp = ns_to_stamp(sample.stamp_ns)
    msg.name = list(sample.names)
    msg.position = list(sample.positions)
    msg.velocity = list(sample.velocities)
    return msg
