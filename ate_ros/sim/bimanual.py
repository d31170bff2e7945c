"""The simulated robot hardware: one controller emulator per arm, at the config's sim endpoints."""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Dict

from ate_core.config import BimanualConfig
from ate_ros.sim.realman_emulator import RealManEmulator


class SimulatedArms:
    """Both arms' controllers on loopback, standing at their home poses; a context manager."""

    def __init__(self, cfg: BimanualConfig) -> None:
        self._cfg = cfg
        self.emulators: Dict[str, RealManEmulator] = {}
        self._stack = ExitStack()

    def start(self) -> "SimulatedArms":
        try:
            for (side, arm), ep in zip(self._cfg.arms.items(),
                                       (self._cfg.sim.arms.left, self._cfg.sim.arms.right)):
                emulator = RealManEmulator(
                    model=arm.model, ip=ep.ip, tcp_port=ep.tcp_port, push_port=ep.udp_port,
                    push_ip="127.0.0.1", cycle=arm.push_cycle,
                    initial_joints_deg=[math.degrees(q) for q in arm.home_rad])
                emulator.start()
                self._stack.callback(emulator.stop)
                self.emulators[side] = emulator
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()
        self.emulators.clear()

    def __enter__(self) -> "SimulatedArms":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
