"""Emulated RealMan arms driven by the real SDK through the arm nodes, for tests that need arms."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Dict, Iterator, List

import numpy as np
from sensor_msgs.msg import JointState

from ate_core.config import replace_in
from ate_core.robot.config import BimanualConfig, load_config
from ate_ros.nodes.arm_node import ArmNode
from ate_ros.sim.realman_emulator import RealManEmulator
from conftest import REPO, free_port, next_loopback_ip, sdk_push_port

SIDES = ("left", "right")


def robot_config(endpoints: Dict[str, tuple]) -> BimanualConfig:
    """The shipped config with each arm pointed at (ip, tcp_port, udp_port) on loopback."""
    cfg = load_config(REPO / "config/bimanual.yaml")
    updates = {}
    for side, (ip, tcp, udp) in endpoints.items():
        updates.update({f"arms.{side}.ip": ip, f"arms.{side}.tcp_port": tcp,
                        f"arms.{side}.udp_port": udp})
    return replace_in(cfg, updates, source="test")


def home_deg(cfg: BimanualConfig, side: str) -> List[float]:
    return [math.degrees(q) for q in getattr(cfg.arms, side).home_rad]


@dataclasses.dataclass
class Rig:
    cfg: BimanualConfig
    emulators: Dict[str, RealManEmulator]
    nodes: Dict[str, ArmNode]
    states: Dict[str, object]


@contextlib.contextmanager
def emulated_arms(ros, sides=SIDES, namespace: str = "", first_slot: int = 1) -> Iterator[Rig]:
    """Emulated controllers for the given arms and their arm nodes, all in this process.

    ``namespace``: the arm nodes under it (``/leader``: a teleop leader pair); ``first_slot``:
    the first of the SDK push ports they use (one per arm, fixed per slot)."""
    endpoints = {side: (next_loopback_ip(), free_port(), sdk_push_port(first_slot + i))
                 for i, side in enumerate(sides)}
    cfg = robot_config(endpoints)
    emulators = {}
    try:
        for side, (ip, tcp, udp) in endpoints.items():
            emulators[side] = RealManEmulator(ip=ip, tcp_port=tcp, push_port=udp,
                                              initial_joints_deg=home_deg(cfg, side)).start()
        states = {side: ros.subscribe(JointState, f"{namespace}/{side}_arm/joint_states")
                  for side in sides}
        nodes = {side: ros.start(ArmNode, side, config=cfg, namespace=f"{namespace}/{side}_arm")
                 for side in sides}
        for side in sides:
            ros.wait_for(lambda s=side: nodes[s].driver.wait_ready(0) and len(states[s]) > 0,
                         10.0, f"{side} arm ready and publishing")
        yield Rig(cfg, emulators, nodes, states)
    finally:
        # Arms off first, then the controllers (as on the robot: the drivers disconnect).
        for node in list(locals().get("nodes", {}).values()):
            node.driver.close()
        for emulator in emulators.values():
            emulator.stop()


def command_msg(names, positions) -> JointState:
    msg = JointState()
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    return msg


def measured(rig: Rig, side: str) -> np.ndarray:
    msg = rig.states[side].messages[-1]
    return np.array(msg.position[:7])
