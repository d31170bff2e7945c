"""The node graph of the robot, as data: what the launch file starts and what the bringup runs.

Both `launch/bimanual.launch.py` (on a ROS install) and `ate_ros.bringup` (in-process, where
`launch` is not available) read these lists, so the graph tested here is the graph launched
on the robot PC.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class EmulatorSpec:
    """One emulated RealMan controller (sim): where it listens and where it pushes state."""

    side: str
    model: str
    ip: str
    tcp_port: int
    push_port: int
    cycle: int
    initial_joints_deg: Tuple[float, ...]

    def argv(self) -> List[str]:
        """Arguments of the `ate_realman_emulator` console script."""
        return ["--model", self.model, "--ip", self.ip, "--port", str(self.tcp_port),
                "--push-port", str(self.push_port), "--cycle", str(self.cycle),
                "--initial-joints-deg", *(f"{q:.6f}" for q in self.initial_joints_deg)]


def robot_graph(cfg: BimanualConfig, config_file: str, urdf_xml: Optional[str] = None,
                sim: bool = False, checkpoint: str = "") -> List[NodeSpec]:
    """Every node of the bimanual robot, in start order.

    The supervisor comes last and starts idle: nothing moves until ``/ate/engage``. The inference
    node runs only when a checkpoint is named: ``checkpoint`` (the launch argument), else the
    config's ``inference.checkpoint``.
    """
    specs: List[NodeSpec] = [
        NodeSpec("arm_node", "arm_driver", namespace=f"/{side}_arm",
                 parameters={"config_file": config_file, "arm": side, "sim": sim})
        for side, _ in cfg.arms.items()
    ]
    specs.append(NodeSpec("joint_state_aggregator", "joint_state_aggregator",
                          parameters={"config_file": config_file}))
    specs += [NodeSpec("camera_node", f"{name}_camera",
                       parameters={"config_file": config_file, "camera": name, "sim": sim})
              for name in cfg.cameras]
    if checkpoint or cfg.inference.checkpoint:
        params: Dict[str, object] = {"config_file": config_file}
        if checkpoint:
            params["inference.checkpoint"] = checkpoint
        specs.append(NodeSpec("inference_node", "inference", parameters=params))
    specs.append(NodeSpec("supervisor_node", "supervisor", parameters={"config_file": config_file}))
    if urdf_xml is not None:
        specs.append(NodeSpec("robot_state_publisher", "robot_state_publisher",
                              package="robot_state_publisher",
                              parameters={"robot_description": urdf_xml}, external=True))
    return specs


def sim_controllers(cfg: BimanualConfig) -> List[EmulatorSpec]:
    """The emulated controllers behind `sim`, at the config's sim endpoints, arms at home."""
    endpoints = {"left": cfg.sim.arms.left, "right": cfg.sim.arms.right}
    return [EmulatorSpec(side, arm.model, endpoints[side].ip, endpoints[side].tcp_port,
                         endpoints[side].udp_port, arm.push_cycle,
                         tuple(math.degrees(q) for q in arm.home_rad))
            for side, arm in cfg.arms.items()]


def in_process(specs: List[NodeSpec]) -> Tuple[List[NodeSpec], List[NodeSpec]]:
    """Split into (nodes this package runs in-process, external nodes left to ros2 launch)."""
    return [s for s in specs if not s.external], [s for s in specs if s.external]
