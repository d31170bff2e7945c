"""Teleoperated data collection: ``ros2 launch ate_ros teleop.launch.py [sim:=true]
[record:=false] [config_file:=...] [rviz:=true] [twin:=false] [task:=NAME] [seed:=S]``.

The robot of ``bimanual.launch.py`` with the teleop node in place of the policy, and the
episode recorder on (``record:=false`` leaves it off). The leaders are any JointState source on
``teleop.leader_topic`` (default ``/leader/{arm}_arm/joint_states``): a second pair of RealMan
arms through their own arm nodes in the ``/leader`` namespace, another device, or the keyboard
jog (``ros2 run ate_ros jog_node`` in a terminal, for bring-up). Nothing moves until

    ros2 service call /ate/engage_teleop std_srvs/srv/SetBool "{data: true}"

after which the followers ramp to the leaders and follow them through the supervisor (its
safety filter, watchdogs and e-stop as always; a leader that jumps or goes silent makes them
hold). A take: ``ros2 param set /recorder task "..."``, ``ros2 service call /recorder/start
std_srvs/srv/Trigger``, then ``/recorder/stop`` (std_srvs/SetBool, ``data``: success) or
``/recorder/discard``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from ate_ros.resources import share_dir

#: Passed through to bimanual.launch.py, with their defaults there (record: on here).
PASSED = {"config_file": str(share_dir() / "config" / "bimanual.yaml"), "sim": "false",
          "record": "true", "rviz": "false", "twin": "", "task": "", "seed": "0",
          "emulator_log_dir": ""}


def generate_launch_description():
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share_dir() / "launch" / "bimanual.launch.py")),
        launch_arguments=[*((name, LaunchConfiguration(name)) for name in PASSED),
                          ("teleop", "true"), ("checkpoint", "")])
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default,
                                description="as in bimanual.launch.py")
          for name, default in PASSED.items()),
        robot,
    ])
