"""The dual-arm robot: ``ros2 launch ate_ros bimanual.launch.py [config_file:=...] [rviz:=true]``.

The node list comes from ``ate_ros.graph.robot_graph``, the same function the in-process
bringup (``ate_bringup``) runs, and the URDF is generated from the same config file.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ate_core.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf
from ate_ros.graph import robot_graph
from ate_ros.resources import share_dir


def _robot_nodes(context):
    config_file = LaunchConfiguration("config_file").perform(context)
    cfg = load_config(config_file)
    urdf = bimanual_urdf(layout_from_config(cfg), robot_name=cfg.robot_name)
    actions = []
    for spec in robot_graph(cfg, config_file, urdf_xml=urdf):
        params = {k: ParameterValue(v, value_type=str) if isinstance(v, str) else v
                  for k, v in spec.parameters.items()}
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                            namespace=spec.namespace or None, parameters=[params],
                            output="screen", emulate_tty=True))
    return actions


def generate_launch_description():
    share = share_dir()
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=str(share / "config" / "bimanual.yaml"),
                              description="robot config (ate_core.config schema)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz"),
        OpaqueFunction(function=_robot_nodes),
        Node(package="rviz2", executable="rviz2", arguments=["-d", str(share / "config" / "ate.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz")), output="log"),
    ])
