"""Console-script entry points of the node executables.

Importing a node's module (rclpy, numpy, torch, the RealMan SDK) takes a second or more, and a
SIGINT or SIGTERM in that time would end the process with a ``KeyboardInterrupt`` traceback or
a non-zero status: ``ros2 launch`` stopped right after it started, or a bringup that gives up
during start-up. Until the node's own ``main`` takes the signals over
(``ate_ros.node_host.run_nodes``), a signal here just ends the process, cleanly: nothing has
started that would need stopping.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Callable


def _node_main(module: str, function: str = "main") -> Callable[[], None]:
    def entry() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: os._exit(0))
        # A main that returns its exit status (ate_twin: 2 for a bad config, 3 for cameras that
        # cannot be drawn) exits with it; one that returns None exits 0.
        sys.exit(getattr(importlib.import_module(module), function)(sys.argv))

    entry.__name__ = f"{module.rsplit('.', 1)[-1]}_{function}"
    return entry


arm_node = _node_main("ate_ros.nodes.arm_node")
arm_nodes = _node_main("ate_ros.nodes.arm_node", "main_both")
joint_state_aggregator = _node_main("ate_ros.nodes.joint_state_aggregator")
camera_node = _node_main("ate_ros.nodes.camera_node")
camera_nodes = _node_main("ate_ros.nodes.camera_node", "main_all")
inference_node = _node_main("ate_ros.nodes.inference_node")
supervisor_node = _node_main("ate_ros.nodes.supervisor_node")
recorder_node = _node_main("ate_ros.nodes.recorder_node")
replay_node = _node_main("ate_ros.nodes.replay_node")
teleop_node = _node_main("ate_ros.nodes.teleop_node")
jog_node = _node_main("ate_ros.nodes.jog_node")
twin_host = _node_main("ate_ros.sim.twin_host")
