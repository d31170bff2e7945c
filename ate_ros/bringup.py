"""``ate_bringup``: the simulated bimanual robot in one process, with a status report.

This is what ``ros2 launch ate_ros bimanual.launch.py sim:=true`` starts, run without the
``launch`` tool: the controller emulators of both arms, then every node of
``ate_ros.graph.robot_graph`` in one executor (arm drivers, simulated cameras, the supervisor,
and with ``--checkpoint`` the inference node). It watches the topics for ``--duration`` seconds
(0: until Ctrl-C) and prints what it saw. The supervisor starts idle; ``--engage`` hands control
to the policy once it publishes, so the emulated arms follow the policy's chunks.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import signal
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import BimanualConfig, ConfigError, load_config
from ate_core.robot.from_config import layout_from_config
from ate_ros.graph import NodeSpec, in_process, robot_graph
from ate_ros.node_host import NodeHost
from ate_ros.nodes.arm_node import ArmNode
from ate_ros.nodes.supervisor_node import SupervisorNode
from ate_ros.resources import default_config_path
from ate_ros.sim.bimanual import SimulatedArms

#: Executables of this package that the bringup can run in-process: name -> "module:class".
#: Imported on use, so a bringup without an inference node never imports torch.
NODE_CLASSES = {
    "arm_node": "ate_ros.nodes.arm_node:ArmNode",
    "joint_state_aggregator": "ate_ros.nodes.joint_state_aggregator:JointStateAggregator",
    "camera_node": "ate_ros.nodes.camera_node:CameraNode",
    "inference_node": "ate_ros.nodes.inference_node:InferenceNode",
    "supervisor_node": "ate_ros.nodes.supervisor_node:SupervisorNode",
}


def node_class(executable: str) -> type:
    module, name = NODE_CLASSES[executable].split(":")
    return getattr(importlib.import_module(module), name)


class TopicWatch:
    """Counts messages per topic and keeps the newest whole-robot joint state."""

    def __init__(self, node: Node, topics: Mapping[str, type]) -> None:
        self._lock = threading.Lock()
        self.counts: Dict[str, int] = {t: 0 for t in topics}
        self.latest: Optional[JointState] = None
        for topic, msg_type in topics.items():
            node.create_subscription(msg_type, topic, lambda m, t=topic: self._on(t, m),
                                     qos_profile_sensor_data)

    def _on(self, topic: str, msg) -> None:
        with self._lock:
            self.counts[topic] += 1
            if topic == "/joint_states":
                self.latest = msg


def start_nodes(host: NodeHost, specs: List[NodeSpec]) -> List[Node]:
    nodes = []
    for spec in specs:
        params = [Parameter(k, value=v) for k, v in spec.parameters.items()]
        nodes.append(host.start(node_class(spec.executable), namespace=spec.namespace or None,
                                parameter_overrides=params))
    return nodes


def report(cfg: BimanualConfig, sim: SimulatedArms, nodes: List[Node], skipped: List[NodeSpec],
           watch: TopicWatch, seconds: float) -> str:
    layout = layout_from_config(cfg)
    lines = ["ate_bringup: simulated bimanual robot"]
    for side, emulator in sim.emulators.items():
        lines.append(f"  controller {side:<5} {emulator.model.name} emulated at "
                     f"{emulator.ip}:{emulator.tcp_port}, state push -> UDP {emulator.push_port}, "
                     f"{emulator.packets_sent} packets sent")
    for node in nodes:
        if isinstance(node, ArmNode):
            d = node.driver
            lines.append(f"  arm driver {node.side:<5} link {d.link.value}, {d.stats.pushes} states "
                         f"received, {d.stats.reconnects} reconnects")
    for node in nodes:
        if isinstance(node, SupervisorNode):
            t = node.timing.summary()
            lines.append(f"  supervisor {node.supervisor.mode.value} ({node.supervisor.reason}); "
                         f"{t['ticks']} ticks, period p50 {t['period_p50_ms']:.2f} ms, "
                         f"p99 {t['period_p99_ms']:.2f} ms, {t['missed']} missed")
    lines.append("  nodes: " + ", ".join(n.get_fully_qualified_name() for n in nodes))
    if skipped:
        lines.append("  left to `ros2 launch`: " + ", ".join(s.executable for s in skipped))
    for topic, count in watch.counts.items():
        lines.append(f"  {topic:<28} {count / seconds:7.1f} Hz over {seconds:.1f} s")
    for side, arm in cfg.arms.items():
        q = np.asarray(arm.home_rad)
        source = "home pose (no joint state yet)"
        if watch.latest is not None and set(arm.joint_names) <= set(watch.latest.name):
            pos = dict(zip(watch.latest.name, watch.latest.position))
            q, source = np.array([pos[n] for n in arm.joint_names]), "measured"
        xyz = layout.arm(side).tcp_pose(q)[:3, 3]
        lines.append(f"  {side:<5} TCP at ({xyz[0]:+.3f}, {xyz[1]:+.3f}, {xyz[2]:+.3f}) m in "
                     f"base_link, {source}")
    return "\n".join(lines)


def engage_when_chunks_arrive(node: Node, cfg: BimanualConfig, watch: TopicWatch,
                              stop: threading.Event, timeout_s: float = 120.0) -> None:
    """Call ``/ate/engage`` once the policy publishes (warm-up can take a while on a CPU)."""
    client = node.create_client(SetBool, cfg.topics.engage)
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        if watch.counts[cfg.topics.action_chunk] > 0 and client.service_is_ready():
            future = client.call_async(SetBool.Request(data=True))
            while not future.done() and not stop.wait(0.05):
                pass
            result = future.result() if future.done() else None
            if result is not None:
                print(f"ate_bringup: engage: {result.message}", flush=True)
                if result.success:
                    return
        stop.wait(0.2)
    print("ate_bringup: not engaged (no chunks from the policy)", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ate_bringup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config_path()), help="robot config YAML")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds to run before reporting (0: until Ctrl-C)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID (default: the environment's)")
    parser.add_argument("--checkpoint", default="",
                        help="policy checkpoint: also run the inference node on it")
    parser.add_argument("--engage", action="store_true",
                        help="hand control to the policy once it is publishing chunks")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"ate_bringup: {e}", file=sys.stderr)
        return 2

    gc.collect()
    gc.freeze()  # see ate_ros.nodes.arm_node._spin: keep full collections short
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    specs, skipped = in_process(robot_graph(cfg, args.config, urdf_xml="", sim=True,
                                            checkpoint=args.checkpoint))
    with SimulatedArms(cfg) as sim, NodeHost(domain_id=args.domain_id, name="bringup") as host:
        nodes = start_nodes(host, specs)
        topics: Dict[str, type] = {"/joint_states": JointState}
        topics.update({f"/{side}_arm/{cfg.topics.arm_joint_states}": JointState
                       for side, _ in cfg.arms.items()})
        topics.update({f"{cfg.topics.cameras}/{name}/camera_info": CameraInfo for name in cfg.cameras})
        topics[cfg.topics.action_chunk] = JointTrajectory
        topics.update({f"/{side}_arm/{cfg.topics.arm_command}": JointState
                       for side, _ in cfg.arms.items()})
        status_node = host.node("bringup_status")
        watch = TopicWatch(status_node, topics)
        started = time.monotonic()
        if args.engage:
            engage_when_chunks_arrive(status_node, cfg, watch, stop)
        stop.wait(max(0.0, args.duration - (time.monotonic() - started))
                  if args.duration > 0 else None)
        print(report(cfg, sim, nodes, skipped, watch, time.monotonic() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
