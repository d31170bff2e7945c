"""Look at the robot model: ``ros2 launch ate_ros view_urdf.launch.py [config_file:=...]``.

robot_state_publisher with the URDF generated from the config, sliders for every joint
(joint_state_publisher_gui) and RViz. Each of the three comes from another package; one that is
not installed is skipped with a line that says how to install it (nothing of this launch needs
the other two to start).
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ate_core.robot.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf
from ate_ros.resources import missing_executable as missing, share_dir


def _model_nodes(context):
    cfg = load_config(LaunchConfiguration("config_file").perform(context))
    urdf = bimanual_urdf(layout_from_config(cfg), robot_name=cfg.robot_name)
    wanted = [
        ("robot_state_publisher", "robot_state_publisher",
         {"parameters": [{"robot_description": ParameterValue(urdf, value_type=str)}]}),
        ("joint_state_publisher_gui", "joint_state_publisher_gui", {}),
        ("rviz2", "rviz2", {"arguments": ["-d", str(share_dir() / "config" / "ate.rviz")]}),
    ]
    distro = os.environ.get("ROS_DISTRO") or "$ROS_DISTRO"
    notes, nodes = [], []
    for package, executable, kwargs in wanted:
        reason = missing(package, executable)
        if reason is None:
            nodes.append(Node(package=package, executable=executable, **kwargs))
        else:
            notes.append(LogInfo(msg=(
                f"not starting {executable}: {reason}. Install it with `sudo apt install "
                f"ros-{distro}-{package.replace('_', '-')}`.")))
    return notes + nodes


def generate_launch_description():
    share = share_dir()
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=str(share / "config" / "bimanual.yaml")),
        OpaqueFunction(function=_model_nodes),
    ])
