"""Small, pure conversions between ROS message fields and ate_core types."""

from __future__ import annotations

from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
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


def pose_to_matrix(pose: Pose) -> Optional[np.ndarray]:
    """A ``geometry_msgs/Pose`` as a 4x4 transform; None if a value is not finite or the
    quaternion is not a unit one (to 1e-3: a message that was never filled in has w = 0...
    and x = y = z = 0)."""
    p, o = pose.position, pose.orientation
    q = np.array([o.w, o.x, o.y, o.z], dtype=float)
    xyz = np.array([p.x, p.y, p.z], dtype=float)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(xyz))) or abs(np.linalg.norm(q) - 1.0) > 1e-3:
        return None
    w, x, y, z = q / np.linalg.norm(q)
    out = np.eye(4)
    out[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    out[:3, 3] = xyz
    return out
