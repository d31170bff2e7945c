"""The simulated robot hardware: one emulated controller per arm, in a process of its own or all
in the twin host.

``ros2 launch ate_ros bimanual.launch.py sim:=true`` and ``ate_bringup`` run the ``ate_twin``
console script (``TwinSpec``), or with the twin off ``ate_realman_emulator`` once per arm
(``EmulatorSpec.command()``), at the config's sim endpoints, arms at home. This module knows
what such a process says when a controller is up and asks it, through its control port, what
it has done.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ate_ros.graph import EmulatorSpec

#: What ``ate_realman_emulator`` prints once it listens (with ``--control-port``).
LISTENING = re.compile(r"ate_realman_emulator listening .*\bcontrol_port=(?P<control_port>\d+)")
#: What ``ate_twin`` prints for each of its controllers once they listen.
TWIN_LISTENING = re.compile(
    r"ate_twin listening side=(?P<side>\w+) .*\bcontrol_port=(?P<control_port>\d+)")


class EmulatorUnreachable(RuntimeError):
    """An emulator's control port did not answer."""


@dataclass(frozen=True)
class EmulatedController:
    """A running emulator process: its spec and the control port it reported."""

    spec: EmulatorSpec
    control_port: int

    @classmethod
    def from_output(cls, spec: EmulatorSpec, output: str) -> Optional["EmulatedController"]:
        """The controller once its output (an emulator's, or the twin host's) says it is
        listening, else None."""
        match = LISTENING.search(output) or next(
            (m for m in TWIN_LISTENING.finditer(output) if m.group("side") == spec.side), None)
        return cls(spec, int(match.group("control_port"))) if match else None

    def request(self, line: str, timeout_s: float = 1.0) -> Dict[str, Any]:
        """One line of the emulator's control protocol and its JSON reply."""
        try:
            with socket.create_connection((self.spec.ip, self.control_port), timeout_s) as sock:
                sock.sendall(line.encode() + b"\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as e:
            raise EmulatorUnreachable(f"emulator {self.spec.side} at {self.spec.ip}:"
                                      f"{self.control_port}: {e}") from e
        try:
            return json.loads(reply)
        except ValueError as e:
            raise EmulatorUnreachable(f"emulator {self.spec.side}: bad reply {reply[:80]!r}") from e

    def state(self, timeout_s: float = 1.0) -> Dict[str, Any]:
        """Joints, push settings, connections and ``packets_sent`` (the emulator's summary)."""
        return self.request("state", timeout_s)["state"]

    def describe(self, state: Optional[Dict[str, Any]]) -> str:
        """``RM75-B emulated at 127.0.0.1:18080, state push -> UDP 18089, 1058 packets sent``."""
        s = self.spec
        packets = "packets sent unknown" if state is None else f"{state['packets_sent']} packets sent"
        return f"{s.model} emulated at {s.ip}:{s.tcp_port}, state push -> UDP {s.push_port}, {packets}"
