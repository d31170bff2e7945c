"""Keyboard joint jog, for bring-up: ``ros2 run ate_ros jog_node`` in a terminal.

The jog is a leader like any other: it publishes joint targets on each arm's ``/{arm}_arm/teleop_target``
(``topics.teleop_target``) for the supervisor's teleop mode, and the supervisor alone commands
the arms, through its ramp, safety filter and e-stop. The targets start at the measured joints
(each arm's first joint state) and change one key at a time (``ate_core.runtime.teleop.JOG_HELP``:
Tab selects the arm, 1-7 and g the joint, + and - move it by ``teleop.jog_step_rad``);
they are published at ``teleop.jog_rate_hz`` so the supervisor's leader watchdog stays quiet
while no key is pressed. Then ``ros2 service call /ate/engage_teleop std_srvs/srv/SetBool
"{data: true}"``.

Keys come from the terminal in cbreak mode (no Enter needed) and are echoed as what they did;
from a pipe they are read as they come. ``q`` quits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional, Sequence, TextIO

import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from ate_core.robot.config import BimanualConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.teleop import JOG_HELP, Jog
from ate_ros.node_host import run_nodes
from ate_ros.nodes.teleop_node import TARGET_QOS
from ate_ros.params import declare_config


class JogNode(Node):
    def __init__(self, config: Optional[BimanualConfig] = None, keys: Optional[TextIO] = None,
                 **kwargs) -> None:
        """``keys``: where the key presses come from (default: this terminal's stdin)."""
        super().__init__("jog", **kwargs)
        cfg = config if config is not None else declare_config(
            self, ("arms", "gripper", "topics", "supervisor", "teleop"))
        self.cfg = cfg
        layout = layout_from_config(cfg)
        margin = cfg.supervisor.safety.joint_margin_rad
        self._names = {arm.prefix: (*arm.joint_names, arm.gripper_joint) for arm in layout}
        limits = {arm.prefix: (np.array([*(lo + margin for lo in arm.model.lower_rad), 0.0]),
                               np.array([*(hi - margin for hi in arm.model.upper_rad),
                                         cfg.gripper.max_opening_m]))
                  for arm in layout}
        self.jog = Jog(limits, cfg.teleop.jog_step_rad)
        self._lock = threading.Lock()
        self._pubs = {side: self.create_publisher(
            JointState, f"/{side}_arm/{cfg.topics.teleop_target}", TARGET_QOS)
            for side in self._names}
        self._subs = {side: self.create_subscription(
            JointState, f"/{side}_arm/{cfg.topics.arm_joint_states}",
            lambda msg, s=side: self._on_joint_state(s, msg), qos_profile_sensor_data)
            for side in self._names}
        self.create_timer(1.0 / cfg.teleop.jog_rate_hz, self._publish)
        self._keys = keys if keys is not None else sys.stdin
        self._thread = threading.Thread(target=self._read_keys, name="jog-keys", daemon=True)
        self._thread.start()
        self._say(JOG_HELP)

    def _say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _on_joint_state(self, side: str, msg: JointState) -> None:
        with self._lock:
            if self.jog.targets[side] is not None:
                return
            index = {n: i for i, n in enumerate(msg.name)}
            if any(n not in index for n in self._names[side]):
                return
            self.jog.reset({side: [msg.position[index[n]] for n in self._names[side]]})
        self._say(f"{side}: starting from the measured joints")

    def _publish(self) -> None:
        now = self.get_clock().now().to_msg()
        with self._lock:
            targets = {s: t.copy() for s, t in self.jog.targets.items() if t is not None}
        for side, target in targets.items():
            msg = JointState(name=list(self._names[side]), position=[float(v) for v in target])
            msg.header.stamp = now
            self._pubs[side].publish(msg)

    def key(self, ch: str) -> Optional[str]:
        """One key press (also the tests' way in); the line it printed."""
        if ch in ("h", "?"):
            self._say(JOG_HELP)
            return JOG_HELP
        if ch == "0":
            with self._lock:
                for side in self.jog.targets:
                    self.jog.targets[side] = None  # the next joint state starts them again
            self._say("targets back to the measured joints")
            return "reset"
        with self._lock:
            line = self.jog.key(ch)
        if line:
            self._say(line)
        return line

    def _read_keys(self) -> None:
        stream = self._keys
        restore = None
        try:
            if stream.isatty():
                import termios
                import tty

                fd = stream.fileno()
                restore = (fd, termios.tcgetattr(fd))
                tty.setcbreak(fd)
            while True:
                ch = stream.read(1)
                if not ch:
                    return  # end of input: the targets stay, published until shutdown
                if ch == "q":
                    self._say("quit")
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                self.key(ch)
        except (OSError, ValueError):
            return  # the terminal went away
        finally:
            if restore is not None:
                import termios

                termios.tcsetattr(restore[0], termios.TCSADRAIN, restore[1])


def main(args: Optional[Sequence[str]] = None) -> None:
    run_nodes(lambda: [JogNode()], args)


if __name__ == "__main__":
    main()
