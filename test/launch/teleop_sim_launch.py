"""`ros2 launch ate_ros teleop.launch.py sim:=true twin:=false record:=false`, checked over DDS,
then stopped by SIGINT.

Run by test/test_launch.py under `launch_test`. A leader device (this test, publishing each
arm's joints on /leader/<arm>_arm/joint_states in RealMan's names) stands away from the
followers; engage_teleop ramps the followers to it and they follow it as it moves; the e-stop
latches while it keeps moving. Post-shutdown: every process exited 0 and none is left.
"""

import threading
import time
import unittest
from pathlib import Path
import sys

import launch_testing
import launch_testing.actions
import launch_testing.asserts
from launch import LaunchDescription
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_probe
from launch_probe import (  # noqa: E402
    CONFIG_FILE, DEADLINE_S, SIDES, Probe, bimanual_launch, config, expected_nodes, joint_names,
    measured, processes_left,
)

SHORT = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7", "gripper")
TOLERANCE_RAD = 0.01


def generate_test_description():
    return LaunchDescription([
        bimanual_launch("teleop.launch.py", sim="true", twin="false", record="false",
                        config_file=CONFIG_FILE),
        launch_testing.actions.ReadyToTest(),
    ])


class Leader:
    """A leader device at 100 Hz: each arm's joints and gripper, in RealMan's names."""

    def __init__(self, probe: Probe, start) -> None:
        self.positions = {side: list(start[side]) for side in SIDES}
        self.pubs = {side: probe.publisher(JointState, f"/leader/{side}_arm/joint_states")
                     for side in SIDES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for side, pub in self.pubs.items():
                pub.publish(JointState(name=list(SHORT), position=list(self.positions[side])))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


class TestTeleopSim(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cfg = config()
        cls.names = joint_names(cls.cfg)
        cls.ros = Probe()
        cls.states = {side: cls.ros.listen(JointState, f"/{side}_arm/joint_states")
                      for side in SIDES}
        cls.commands = {side: cls.ros.listen(JointState, f"/{side}_arm/command", 10)
                        for side in SIDES}

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "leader"):
            cls.leader.close()
        cls.ros.close()

    def at_leader(self):
        return all(max(abs(a - b) for a, b in zip(measured(self.states[s], self.names[s]),
                                                  self.leader.positions[s])) < TOLERANCE_RAD
                   for s in SIDES)

    def test_1_the_teleop_graph_is_up(self):
        expected = expected_nodes(self.cfg, with_urdf=False, teleop=True)
        self.assertIn("/teleop", expected)
        self.assertNotIn("/inference", expected)
        self.ros.wait_for_graph(expected)

    def test_2_the_followers_ramp_to_the_leader_and_follow_it(self):
        self.ros.wait_for(lambda: all(s.count for s in self.states.values()), DEADLINE_S,
                          "both arms' joint states")
        start = {s: measured(self.states[s], self.names[s]) for s in SIDES}
        away = {s: [q + (0.1 if j in (0, 3) else 0.0) for j, q in enumerate(start[s])]
                for s in SIDES}
        type(self).leader = Leader(self.ros, away)
        deadline = time.monotonic() + DEADLINE_S
        while True:  # refused until the supervisor has heard both leaders
            answer = self.ros.call(SetBool, self.cfg.topics.engage_teleop, SetBool.Request(data=True))
            if answer.success or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertTrue(answer.success, answer.message)
        self.ros.wait_for(self.at_leader, DEADLINE_S, "the followers at the leader")
        for k in range(1, 51):  # the leader moves on, over a second
            for s in SIDES:
                self.leader.positions[s][0] = away[s][0] + 0.1 * k / 50
            time.sleep(0.02)
        self.ros.wait_for(self.at_leader, DEADLINE_S, "the followers at the moved leader")

    def test_3_estop_latches_while_the_leader_moves(self):
        answer = self.ros.call(Trigger, self.cfg.topics.estop)
        self.assertTrue(answer.success, answer.message)
        answered_ns = self.ros.now_ns()
        recorded = {side: self.commands[side].record() for side in SIDES}
        for k in range(1, 51):
            for s in SIDES:
                self.leader.positions[s][0] -= 0.002
            time.sleep(0.02)
        for side in SIDES:
            self.commands[side].stop_recording()
            msgs = [m for m in recorded[side]
                    if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec > answered_ns]
            self.assertGreater(len(msgs), 10, f"{side}: the e-stop's hold is commanded")
            held = {tuple(m.position) for m in msgs}
            self.assertEqual(len(held), 1, f"{side}: commands changed after the e-stop")
        refused = self.ros.call(SetBool, self.cfg.topics.engage_teleop, SetBool.Request(data=True))
        self.assertFalse(refused.success, "engage_teleop must be refused while latched")


@launch_testing.post_shutdown_test()
class TestAfterSigint(unittest.TestCase):

    def test_every_process_exited_0(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

    def test_no_process_of_the_launch_is_left_running(self, proc_info):
        self.assertGreaterEqual(len(list(proc_info)), 8)  # 2 emulators + 6 nodes at least
        self.assertEqual(processes_left(proc_info), [])
