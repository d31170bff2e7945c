"""Look at the robot model: ``ros2 launch ate_ros view_urdf.launch.py [config_file:=...]``.

robot_state_publisher with the URDF generated from the config, sliders for every joint
(joint_state_publisher_gui) and RViz.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ate_core.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf
from ate_ros.resources import share_dir


def _model_nodes(context):
    cfg = load_config(LaunchConfiguration("config_file").perform(context))
    urdf = bimanual_urdf(layout_from_config(cfg), robot_name=cfg.robot_name)
    return [
        Node(package="robot_state_publisher", executable="robot_state_publisher",
             parameters=[{"robot_description": ParameterValue(urdf, value_type=str)}]),
        Node(package="joint_state_publisher_gui", executable="joint_state_publisher_gui"),
    ]


def generate_launch_description():
    share = share_dir()
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=str(share / "config" / "bimanual.yaml")),
        OpaqueFunction(function=_model_nodes),
        Node(package="rviz2", executable="rviz2", arguments=["-d", str(share / "config" / "ate.rviz")]),
    ])
