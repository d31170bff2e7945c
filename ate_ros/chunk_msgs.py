"""trajectory_msgs/JointTrajectory <-> :class:`ate_core.runtime.chunk.ActionChunk`."""

from __future__ import annotations

from typing import Sequence

from builtin_interfaces.msg import Duration
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ate_core.runtime.chunk import ActionChunk, ChunkRejected, make_chunk
from ate_ros.conversions import ns_to_stamp, stamp_to_ns

__all__ = ["chunk_to_trajectory", "trajectory_to_chunk"]


def chunk_to_trajectory(chunk: ActionChunk, frame_id: str = "base_link") -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp = ns_to_stamp(chunk.stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = list(chunk.joint_names)
    for t_ns, row in zip(chunk.times_ns, chunk.positions):
        sec, nanosec = divmod(int(t_ns), 1_000_000_000)
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in row],
                                               time_from_start=Duration(sec=sec, nanosec=nanosec)))
    return msg


def trajectory_to_chunk(msg: JointTrajectory, joint_order: Sequence[str]) -> ActionChunk:
    """Validated chunk in ``joint_order``; :class:`ChunkRejected` if anything is malformed."""
    times = [p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec for p in msg.points]
    if any(t < 0 for t in times):
        raise ChunkRejected("times", "negative time_from_start")
    return make_chunk(msg.joint_names, stamp_to_ns(msg.header.stamp), times,
                      [p.positions for p in msg.points], joint_order)
