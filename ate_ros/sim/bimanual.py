"""The simulated robot hardware: one controller emulator per arm, at the config's sim endpoints."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Dict

from ate_core.config import BimanualConfig
from ate_ros.graph import sim_controllers
from ate_ros.sim.realman_emulator import RealManEmulator


class SimulatedArms:
    """Both arms' controllers on loopback, standing at their home poses; a context manager."""

    def __init__(self, cfg: BimanualConfig) -> None:
        self._cfg = cfg
        self.emulators: Dict[str, RealManEmulator] = {}
        self._stack = ExitStack()

    def start(self) -> "SimulatedArms":
        try:
            for spec in sim_controllers(self._cfg):
                emulator = RealManEmulator(
                    model=spec.model, ip=spec.ip, tcp_port=spec.tcp_port,
                    push_port=spec.push_port, cycle=spec.cycle,
                    initial_joints_deg=spec.initial_joints_deg)
                emulator.start()
                self._stack.callback(emulator.stop)
                self.emulators[spec.side] = emulator
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
