"""Replay a recorded take: ``ros2 launch ate_ros replay.launch.py bag:=DIR [rate:=1.0]
[start_offset_s:=0.0] [delay_s:=0.0] [loop:=false] [clock:=false]``.

Publishes the bag's topics at their recorded timing (``ate_ros.nodes.replay_node``), as
``ros2 bag play`` would, so RViz, an inference node or the whole stack can run on recorded data.
With ``clock:=true`` the bag's time goes out on /clock; start the other nodes with
``use_sim_time:=true`` to run on it.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    args = {"bag": ("", str, "the bag folder to play (episode_NNNNNN)"),
            "rate": ("1.0", float, "playback speed"),
            "start_offset_s": ("0.0", float, "seconds of the bag skipped at the start"),
            "delay_s": ("0.0", float, "wait before playing, s"),
            "loop": ("false", bool, "play the bag again and again"),
            "clock": ("false", bool, "publish the bag's time on /clock")}
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=doc)
          for name, (default, _, doc) in args.items()),
        Node(package="ate_ros", executable="replay_node", name="replay", output="screen",
             emulate_tty=True,
             parameters=[{name: ParameterValue(LaunchConfiguration(name), value_type=kind)
                          for name, (_, kind, _) in args.items()}]),
    ])
