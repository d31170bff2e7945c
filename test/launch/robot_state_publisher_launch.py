"""`bimanual.launch.py sim:=true` where robot_state_publisher is installed: it is started with the
URDF generated from the config, and ``/robot_description`` carries that URDF.

Run by test/test_launch.py under `launch_test`, with a stand-in robot_state_publisher package
(an rclpy script that publishes its ``robot_description`` parameter, latched) on
AMENT_PREFIX_PATH.
"""

import sys
import unittest
from pathlib import Path

import launch_testing
import launch_testing.actions
import launch_testing.asserts
from launch import LaunchDescription
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_probe
from launch_probe import (  # noqa: E402
    CONFIG_FILE, DEADLINE_S, Probe, bimanual_launch, config, expected_nodes, processes_left,
)


def generate_test_description():
    return LaunchDescription([
        bimanual_launch(sim="true", config_file=CONFIG_FILE),
        launch_testing.actions.ReadyToTest(),
    ])


class TestWithRobotStatePublisher(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cfg = config()
        cls.ros = Probe()

    @classmethod
    def tearDownClass(cls):
        cls.ros.close()

    def test_every_node_of_the_graph_is_up_robot_state_publisher_too(self):
        expected = expected_nodes(self.cfg, with_urdf=True)
        self.assertIn("/robot_state_publisher", expected)
        self.ros.wait_for_graph(expected)

    def test_robot_description_carries_the_urdf_of_the_config(self):
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        description = self.ros.listen(String, "/robot_description", latched)
        self.ros.wait_for(lambda: description.count > 0, DEADLINE_S, "/robot_description")
        urdf = bimanual_urdf(layout_from_config(self.cfg), robot_name=self.cfg.robot_name)
        self.assertEqual(description.last.data, urdf)


@launch_testing.post_shutdown_test()
class TestAfterSigint(unittest.TestCase):

    def test_every_process_exited_0(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
        self.assertIn("robot_state_publisher", " ".join(proc_info.process_names()))

    def test_no_process_of_the_launch_is_left_running(self, proc_info):
        self.assertEqual(processes_left(proc_info), [])
