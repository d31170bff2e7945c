"""The node graph of the robot, as data: what the launch file starts and what the bringup runs.

Both `launch/bimanual.launch.py` (on a ROS install) and `ate_ros.bringup` (in-process, where
`launch` is not available) read this one list, so the graph tested here is the graph launched
on the robot PC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ate_core.config import BimanualConfig


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: an executable of a package, its name, namespace and parameters."""

    executable: str
    name: str
    package: str = "ate_ros"
    namespace: str = ""
    parameters: Dict[str, object] = field(default_factory=dict)
    #: Nodes from other packages (robot_state_publisher, rviz2) run only under `ros2 launch`.
    external: bool = False


def robot_graph(cfg: BimanualConfig, config_file: str,
                urdf_xml: Optional[str] = None) -> List[NodeSpec]:
    """Every node of the bimanual robot, in start order."""
    common = {"config_file": config_file}
    specs: List[NodeSpec] = [
        NodeSpec("joint_state_aggregator", "joint_state_aggregator", parameters=dict(common)),
    ]
    if urdf_xml is not None:
        specs.append(NodeSpec("robot_state_publisher", "robot_state_publisher",
                              package="robot_state_publisher",
                              parameters={"robot_description": urdf_xml}, external=True))
    return specs


def in_process(specs: List[NodeSpec]) -> Tuple[List[NodeSpec], List[NodeSpec]]:
    """Split into (nodes this package runs in-process, external nodes left to ros2 launch)."""
    return [s for s in specs if not s.external], [s for s in specs if s.external]
