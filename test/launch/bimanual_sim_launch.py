"""`ros2 launch ate_ros bimanual.launch.py sim:=true`, checked over DDS, then stopped by SIGINT.

Run by test/test_launch.py under `launch_test` (the workspace colcon-built; neither
robot_state_publisher nor rviz2 installed, and `rviz:=true`). The active tests run in order
against one launch (with ``record:=true``): the graph is up, the state and camera topics flow,
engage moves both arms along the chunks while a take is recorded (test_launch.py then reads
and converts the bag), the e-stop latches until re-arm, and a second engage leaves the arms commanded
when the launch is shut down. The post-shutdown tests then check that SIGINT ended every process
with 0 and left none running, and that each emulated controller heard a stop after that second
engage and no command after the stop.
"""

import json
import os
import sys
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.actions
import launch_testing.asserts
from launch import LaunchDescription
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, JointState
from std_srvs.srv import SetBool, Trigger

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_probe
from launch_probe import (  # noqa: E402
    CONFIG_FILE, DEADLINE_S, EMULATOR_LOG_DIR, SIDES, ChunkStream, Probe, bimanual_launch, config,
    expected_nodes, joint_names, measured, processes_left,
)

#: What the active tests leave for the post-shutdown ones (same process, one launch).
SHARED = {}
#: Nominal rates (Hz): a state push every 5 ms, the merged state at 50 Hz (cameras: their fps).
#: The tests ask for a tenth of each: they check that data flows, not the machine's speed.
NOMINAL_HZ = {"/left_arm/joint_states": 200.0, "/right_arm/joint_states": 200.0,
              "/joint_states": 50.0}
STEP_RAD = 0.1  # joint1 of each arm, away from the other arm
TOLERANCE_RAD = 0.01
REENGAGE_S = 2.0


def generate_test_description():
    return LaunchDescription([
        bimanual_launch(sim="true", rviz="true", record="true", config_file=CONFIG_FILE,
                        emulator_log_dir=EMULATOR_LOG_DIR),
        launch_testing.actions.ReadyToTest(),
    ])


class TestBimanualSim(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cfg = config()
        cls.names = joint_names(cls.cfg)
        cls.chunk_joints = [n for side in SIDES for n in cls.names[side]]
        cls.ros = Probe()
        cls.states = {side: cls.ros.listen(JointState, f"/{side}_arm/joint_states")
                      for side in SIDES}
        cls.commands = {side: cls.ros.listen(JointState, f"/{side}_arm/command", 10)
                        for side in SIDES}
        cls.chunks = ChunkStream(cls.ros, cls.cfg.topics.action_chunk, cls.chunk_joints)

    @classmethod
    def tearDownClass(cls):
        cls.chunks.close()
        cls.ros.close()

    # ---- helpers ------------------------------------------------------------------------------

    def measured_all(self):
        return [q for side in SIDES for q in measured(self.states[side], self.names[side])]

    def index(self, side, joint):
        return self.chunk_joints.index(f"{side}_{joint}")

    def stepped(self, q, step_rad):
        """``q`` with joint1 of each arm moved ``step_rad`` away from the other arm."""
        out = list(q)
        out[self.index("left", "joint1")] += step_rad
        out[self.index("right", "joint1")] -= step_rad
        return out

    def call(self, srv_type, name, request=None):
        return self.ros.call(srv_type, name, request, timeout_s=DEADLINE_S)

    def engage(self, on: bool):
        return self.call(SetBool, self.cfg.topics.engage, SetBool.Request(data=on))

    def engage_accepted(self):
        """Engage, asking again while it is refused for a state that went silent for a moment
        (the supervisor engages only with fresh states of both arms; a busy machine delays
        them)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            answer = self.engage(True)
            if answer.success or time.monotonic() > deadline:
                return answer
            time.sleep(0.2)

    def wait_engaged(self, predicate, what):
        """Wait for ``predicate`` with the arms engaged.

        A machine that stalls an arm node for a second makes it lose its controller, and the
        supervisor then stops both arms and drops to idle, as it must. Engaging again (a no-op
        while engaged) lets the test go on from there instead of waiting out its deadline.
        """
        deadline = time.monotonic() + DEADLINE_S
        next_engage = time.monotonic() + REENGAGE_S
        while not predicate():
            now = time.monotonic()
            self.assertLess(now, deadline, f"timed out after {DEADLINE_S} s waiting for {what}")
            if now > next_engage:
                self.engage(True)
                next_engage = time.monotonic() + REENGAGE_S
            time.sleep(0.02)

    def wait_until_at(self, target, what):
        def close():
            q = self.measured_all()
            return max(abs(a - b) for a, b in zip(q, target)) < TOLERANCE_RAD
        self.wait_engaged(close, what)

    # ---- the tests, in order ------------------------------------------------------------------

    def test_1_every_node_of_the_graph_is_up(self):
        expected = expected_nodes(self.cfg, with_urdf=False, record=True)
        self.ros.wait_for_graph(expected)

    def test_2_joint_states_and_camera_info_arrive(self):
        topics = {name: self.ros.listen(JointState, name) for name in NOMINAL_HZ}
        nominal = dict(NOMINAL_HZ)
        for cam_name, cam in self.cfg.cameras.items():
            name = f"{self.cfg.topics.cameras}/{cam_name}/camera_info"
            topics[name] = self.ros.listen(CameraInfo, name, qos_profile_sensor_data)
            nominal[name] = cam.fps
        self.ros.wait_for(lambda: all(t.count > 0 for t in topics.values()), DEADLINE_S,
                          "a first message on every topic", poll_s=0.05)
        window_s = 4.0
        start = time.monotonic()
        time.sleep(window_s)
        for name, topic in topics.items():
            rate = topic.since(start) / window_s
            self.assertGreaterEqual(rate, nominal[name] / 10, f"{name}: {rate:.1f} Hz")
        msg = topics["/joint_states"].last
        self.assertEqual(sorted(msg.name), sorted(self.chunk_joints))

    def test_3_engage_moves_both_arms_along_the_chunks(self):
        self.ros.wait_for(lambda: all(s.count for s in self.states.values()), DEADLINE_S,
                          "both arms' joint states")
        start = self.measured_all()
        target = self.stepped(start, STEP_RAD)
        self.chunks.aim(start, target, ramp_s=1.5)
        sent = {side: c.count for side, c in self.commands.items()}
        take = self.ros.call(Trigger, "/recorder/start")  # the take test_launch.py converts
        self.assertTrue(take.success, take.message)
        answer = self.engage_accepted()
        self.assertTrue(answer.success, answer.message)
        self.wait_until_at(target, f"both arms at {STEP_RAD} rad on joint1")
        for side in SIDES:
            self.assertGreater(self.commands[side].count, sent[side], f"commands to the {side} arm")
        saved = self.ros.call(SetBool, "/recorder/stop", SetBool.Request(data=True))
        self.assertTrue(saved.success, saved.message)
        self.assertIn("saved episode_000000: success=True", saved.message)

    def test_4_estop_latches_until_rearm(self):
        # Chunks that would take the arms back: the e-stop must hold them all the same.
        here = self.measured_all()
        self.chunks.aim(here, self.stepped(here, -STEP_RAD), ramp_s=1.5)
        joint1 = self.index("left", "joint1")
        left_joint1 = self.names["left"][:1]
        self.wait_engaged(
            lambda: measured(self.commands["left"], left_joint1)[0] < here[joint1] - 0.002,
            "the commands following the new chunks")
        commands = {side: self.commands[side].record() for side in SIDES}
        states = {side: self.states[side].record() for side in SIDES}
        answer = self.call(Trigger, self.cfg.topics.estop)
        try:
            self.assertTrue(answer.success, answer.message)
            answered_ns = self.ros.now_ns()
            time.sleep(1.5)  # the chunks keep coming: seven of them
            self.ros.wait_for(lambda: all(len(commands[s]) >= 20 for s in SIDES), DEADLINE_S,
                              "commands after the e-stop")
            refused = self.engage(True)
            self.assertFalse(refused.success, "engage must be refused while the e-stop is latched")
            for side in SIDES:
                self.assert_held(side, commands[side], states[side], answered_ns)
        finally:
            for topic in (*self.commands.values(), *self.states.values()):
                topic.stop_recording()
            answer = self.call(Trigger, self.cfg.topics.rearm)
        self.assertTrue(answer.success, answer.message)

    def assert_held(self, side, commands, states, answered_ns):
        """From the e-stop's answer on, every command to the arm is the same, and the arm, once
        its controller has had a moment to stop, stands still."""
        def stamp_ns(msg):
            return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

        after = [m for m in commands if stamp_ns(m) > answered_ns]
        self.assertGreaterEqual(len(after), 5, f"{side}: commands stamped after the e-stop")
        hold = list(after[0].position)
        for msg in after:
            self.assertEqual(list(msg.position), hold, f"{side}: the e-stop hold moved")
        # Not compared with the hold itself: on a busy machine the supervisor's newest state,
        # which the hold repeats, can be a few ticks older than where the controller stopped.
        settled = [m for m in states if stamp_ns(m) > answered_ns + 1_000_000_000]
        self.assertGreaterEqual(len(settled), 5, f"{side}: joint states after the e-stop")
        joints = self.names[side][:-1]  # the gripper follows its own, slower servo
        first = dict(zip(settled[0].name, settled[0].position))
        for msg in settled:
            q = dict(zip(msg.name, msg.position))
            moved = max(abs(q[j] - first[j]) for j in joints)
            self.assertLess(moved, 0.002, f"{side}: the arm moved during the e-stop")

    def test_5_engaged_again_when_the_launch_is_shut_down(self):
        # The launch stops (SIGINT) right after this test, with the arms commanded: the
        # post-shutdown tests look for the stop each controller must have heard.
        here = self.measured_all()
        target = self.stepped(here, STEP_RAD / 2)
        self.chunks.aim(here, target, ramp_s=1.0)
        SHARED["engaged_wall_s"] = time.time()
        answer = self.engage_accepted()
        self.assertTrue(answer.success, answer.message)
        self.wait_until_at(target, "both arms at the new target")


@launch_testing.post_shutdown_test()
class TestAfterSigint(unittest.TestCase):

    def test_every_process_exited_0(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

    def test_no_process_of_the_launch_is_left_running(self, proc_info):
        self.assertGreaterEqual(len(list(proc_info)), 9)  # 2 emulators + 7 nodes at least
        self.assertEqual(processes_left(proc_info), [])

    def test_each_controller_was_stopped_after_the_last_engage(self):
        self.assertIn("engaged_wall_s", SHARED, "the active tests did not get to engage again")
        for side in SIDES:
            path = os.path.join(EMULATOR_LOG_DIR, f"emulator_{side}.jsonl")
            with open(path, encoding="utf-8") as f:
                log = [json.loads(line) for line in f]
            recent = [c for c in log if c["wall_s"] >= SHARED["engaged_wall_s"]]
            names = [c["name"] for c in recent]
            counts = {n: names.count(n) for n in sorted(set(names))}
            self.assertTrue("set_arm_stop" in names,
                            f"{side}: the controller never heard a stop after the second "
                            f"engage; it received {counts}")
            last_stop = len(names) - 1 - names[::-1].index("set_arm_stop")
            self.assertTrue("movej_canfd" in names[:last_stop],
                            f"{side}: no command between the second engage and the stop")
            self.assertFalse("movej_canfd" in names[last_stop:],
                             f"{side}: commanded again after the stop")
