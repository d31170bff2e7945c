"""RViz markers of a predicted chunk: where each arm's TCP would go, so a person watching can
see what the policy intends before (or while) the supervisor executes it."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from ate_core.robot.layout import BimanualLayout
from ate_core.runtime.chunk import ActionChunk

__all__ = ["chunk_markers", "MARKER_LIFETIME_S"]

#: A path is shown this long: about a chunk's worth, so a policy that stops leaves no old path.
MARKER_LIFETIME_S = 1.0
LINE_WIDTH_M = 0.005
START_DIAMETER_M = 0.02

# left blue, right orange; further arms take the next colour.
_COLOURS: Sequence[Tuple[float, float, float]] = ((0.15, 0.55, 1.0), (1.0, 0.45, 0.1), (0.3, 0.85, 0.3),
                                                  (0.85, 0.3, 0.85))


def _colour(index: int) -> ColorRGBA:
    r, g, b = _COLOURS[index % len(_COLOURS)]
    return ColorRGBA(r=r, g=g, b=b, a=1.0)


def chunk_markers(chunk: ActionChunk, layout: BimanualLayout, stamp: Time,
                  frame_id: str = "base_link") -> MarkerArray:
    """Per arm, a LINE_STRIP through the TCP positions along the chunk and a SPHERE at its first
    point (namespace ``{prefix}_tcp_path``). An arm whose joints the chunk does not name is left out."""
    out = MarkerArray()
    names = list(chunk.joint_names)
    lifetime = Duration(sec=int(MARKER_LIFETIME_S), nanosec=int((MARKER_LIFETIME_S % 1) * 1e9))
    for index, arm in enumerate(layout):
        if not all(j in names for j in arm.joint_names):
            continue
        q = chunk.positions[:, [names.index(j) for j in arm.joint_names]]
        xyz = np.asarray(arm.tcp_pose(q))[:, :3, 3]  # [N, 3], one FK call for the whole chunk
        points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in xyz]
        colour = _colour(index)
        path = Marker(type=Marker.LINE_STRIP, action=Marker.ADD, ns=f"{arm.prefix}_tcp_path", id=0,
                      points=points, color=colour, lifetime=lifetime, frame_locked=False)
        path.scale.x = LINE_WIDTH_M
        start = Marker(type=Marker.SPHERE, action=Marker.ADD, ns=f"{arm.prefix}_tcp_path", id=1,
                       color=colour, lifetime=lifetime)
        start.pose.position = points[0]
        start.pose.orientation.w = 1.0
        start.scale.x = start.scale.y = start.scale.z = START_DIAMETER_M
        path.pose.orientation.w = 1.0
        for marker in (path, start):
            marker.header.stamp = stamp
            marker.header.frame_id = frame_id
            out.markers.append(marker)
    return out
