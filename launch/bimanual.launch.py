"""The dual-arm robot: ``ros2 launch ate_ros bimanual.launch.py [sim:=true] [config_file:=...]
[checkpoint:=...] [rviz:=true]``.

Everything starts idle: the supervisor commands nothing until ``/ate/engage`` is called
(``ros2 service call /ate/engage std_srvs/srv/SetBool "{data: true}"``); ``/ate/estop`` latches a
stop that only ``/ate/rearm`` releases.

``sim:=true`` starts an emulator of each arm's controller on loopback (the `sim` section of the
config) and points the arm drivers at them; everything else is the real-robot graph.

The node list comes from ``ate_ros.graph.robot_graph``, the same function the in-process
bringup (``ate_bringup``) runs, and the URDF is generated from the same config file.
"""

import os

from ament_index_python.packages import get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ate_core.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf
from ate_ros.graph import robot_graph, sim_controllers
from ate_ros.resources import share_dir


def _robot_nodes(context):
    config_file = LaunchConfiguration("config_file").perform(context)
    sim = LaunchConfiguration("sim").perform(context).lower() in ("true", "1", "yes")
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    cfg = load_config(config_file)
    urdf = bimanual_urdf(layout_from_config(cfg), robot_name=cfg.robot_name)
    actions = []
    if sim:
        emulator = os.path.join(get_package_prefix("ate_ros"), "lib", "ate_ros",
                                "ate_realman_emulator")
        actions += [ExecuteProcess(cmd=[emulator, *spec.argv()], name=f"emulator_{spec.side}",
                                   output="screen") for spec in sim_controllers(cfg)]
    for spec in robot_graph(cfg, config_file, urdf_xml=urdf, sim=sim, checkpoint=checkpoint):
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
        DeclareLaunchArgument("sim", default_value="false",
                              description="emulated controllers on loopback instead of the arms"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="policy checkpoint for the inference node "
                                          "(default: the config's inference.checkpoint; none: "
                                          "no inference node)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz"),
        OpaqueFunction(function=_robot_nodes),
        Node(package="rviz2", executable="rviz2", arguments=["-d", str(share / "config" / "ate.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz")), output="log"),
    ])
