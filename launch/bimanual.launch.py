"""The dual-arm robot: ``ros2 launch ate_ros bimanual.launch.py [sim:=true] [config_file:=...]
[checkpoint:=...] [rviz:=true] [record:=true] [teleop:=true] [twin:=false] [task:=NAME] [seed:=S]
[emulator_log_dir:=...]``.

Everything starts idle: the supervisor commands nothing until ``/ate/engage`` is called
(``ros2 service call /ate/engage std_srvs/srv/SetBool "{data: true}"``); ``/ate/estop`` latches a
stop that only ``/ate/rearm`` releases.

``sim:=true`` starts each arm's controller on loopback (the `sim` section of the config) and
points the arm drivers at them; everything else is the real-robot graph. With the config's
``sim.twin`` (or ``twin:=true``) one process, ``ate_twin``, runs both controllers on the MuJoCo
twin's physics and renders the cameras; ``twin:=false`` starts an idealised emulator per arm
and the cameras show a test pattern.
``task:=NAME`` (twin only; ``pick_place``, ``push``, ``handover``, ``lift_box``) gives the twin that
task's scene, reset with ``seed:=S`` (default 0) at start, and episodes: ``/twin/reset``
(std_srvs/Trigger) resets the scene with the next seed (S, S+1, ...) and the arms to home,
``/twin/check`` answers the task's success check (``ros2 service call /twin/check
std_srvs/srv/Trigger``).
``record:=true`` adds the episode recorder (one rosbag2 MCAP bag per take, in the config's
``recorder.output_dir``): ``ros2 param set /recorder task "..."``, then ``ros2 service call
/recorder/start std_srvs/srv/Trigger``, and ``/recorder/stop`` (std_srvs/SetBool, ``data``: the
take succeeded) or ``/recorder/discard``.
``teleop:=true`` starts the teleop node instead of the inference node (``teleop.launch.py``
starts the robot that way, recording).
``emulator_log_dir:=DIR`` has each emulator write what it received to
``DIR/emulator_<arm>.jsonl`` (JSON lines; tests read them).

The node list comes from ``ate_ros.graph.robot_graph``, from which ``ate_bringup`` (the README's
main job, where ``launch`` is not installed) starts the same processes with the same parameters;
the URDF is generated from the same config file.

Nodes of other packages (robot_state_publisher; rviz2 with ``rviz:=true``) start only where
they are installed: a missing one is skipped with a line that says what is lost and how to
install it, before anything starts. (A launch that names a missing package fails after starting
the nodes before it, and leaves those running.)

Ctrl-C (SIGINT to every process at once) stops the arms: the supervisor, when engaged, asks
each arm to stop; each arm node that was streaming commands stops its controller itself on the
way out; the emulators (sim) serve until their drivers have disconnected, for 1 s at most.
"""

import os

from ament_index_python.packages import get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ate_core.robot.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf
from ate_ros.graph import TwinSpec, robot_graph, sim_hardware
from ate_ros.resources import missing_executable as missing, share_dir

#: What the robot loses without a node of another package.
WITHOUT = {
    "robot_state_publisher": "no /robot_description and no TF of the robot model (RViz shows "
                             "no robot); the arms, cameras and supervisor run without it",
    "rviz2": "no RViz window; everything else runs",
}


def _flag(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ("true", "1", "yes", "on")


def skipped(package: str, executable: str, reason: str) -> LogInfo:
    """The line that says what is not started, what that costs, and how to install it."""
    distro = os.environ.get("ROS_DISTRO") or "$ROS_DISTRO"
    cost = f" Without it: {WITHOUT[package]}." if package in WITHOUT else ""
    return LogInfo(msg=(
        f"not starting {executable}: {reason}.{cost} Install it with "
        f"`sudo apt install ros-{distro}-{package.replace('_', '-')}` (on the robot PC, "
        f"`rosdep install --from-paths src --ignore-src -y` in the workspace installs every "
        f"dependency of ate_ros)."))


def _robot_nodes(context):
    config_file = LaunchConfiguration("config_file").perform(context)
    sim = _flag(context, "sim")
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    log_dir = LaunchConfiguration("emulator_log_dir").perform(context)
    cfg = load_config(config_file)
    urdf = bimanual_urdf(layout_from_config(cfg), robot_name=cfg.robot_name)
    twin_arg = LaunchConfiguration("twin").perform(context).strip()
    twin = None if not twin_arg else _flag(context, "twin")
    task = LaunchConfiguration("task").perform(context).strip()
    seed_arg = LaunchConfiguration("seed").perform(context).strip()
    try:
        seed = int(seed_arg or "0")
    except ValueError:
        raise ValueError(f"launch argument seed: {seed_arg!r} is not an integer") from None
    specs = robot_graph(cfg, config_file, urdf_xml=urdf, sim=sim, checkpoint=checkpoint,
                        twin=twin, record=_flag(context, "record"),
                        teleop=_flag(context, "teleop"))

    # Every package check comes before any action: a missing package is skipped with a line,
    # never a failure after the nodes before it have started.
    notes, runnable = [], []
    for spec in specs:
        reason = missing(spec.package, spec.executable) if spec.external else None
        if reason is None:
            runnable.append(spec)
        else:
            notes.append(skipped(spec.package, spec.executable, reason))
    rviz = []
    if _flag(context, "rviz"):
        reason = missing("rviz2", "rviz2")
        if reason is None:
            rviz.append(Node(package="rviz2", executable="rviz2", output="log",
                             arguments=["-d", str(share_dir() / "config" / "ate.rviz")]))
        else:
            notes.append(skipped("rviz2", "rviz2", reason))

    actions = list(notes)
    hardware = sim_hardware(cfg, config_file, twin, task, seed) if sim else []
    if task and not any(isinstance(hw, TwinSpec) for hw in hardware):
        actions.append(LogInfo(msg=f"task:={task} is ignored: tasks run on the twin only "
                                   f"(sim:=true twin:=true)"))
    if sim:
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        for hw in hardware:
            executable = os.path.join(get_package_prefix("ate_ros"), "lib", "ate_ros",
                                      hw.executable)
            if not log_dir:
                log = []
            elif isinstance(hw, TwinSpec):
                log = ["--log-dir", log_dir]
            else:
                log = ["--log", os.path.join(log_dir, f"emulator_{hw.side}.jsonl")]
            actions.append(ExecuteProcess(cmd=[executable, *hw.argv(), *log], name=hw.name,
                                          output="screen"))
    for spec in runnable:
        params = {k: ParameterValue(v, value_type=str) if isinstance(v, str) else v
                  for k, v in spec.parameters.items()}
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                            namespace=spec.namespace or None, parameters=[params],
                            output="screen", emulate_tty=True))
    return actions + rviz


def generate_launch_description():
    share = share_dir()
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=str(share / "config" / "bimanual.yaml"),
                              description="robot config (ate_core.robot.config schema)"),
        DeclareLaunchArgument("sim", default_value="false",
                              description="emulated controllers on loopback instead of the arms"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="policy checkpoint for the inference node "
                                          "(default: the config's inference.checkpoint; none: "
                                          "no inference node)"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="start RViz (where rviz2 is installed)"),
        DeclareLaunchArgument("record", default_value="false",
                              description="start the episode recorder (/recorder/start, "
                                          "/recorder/stop, /recorder/discard)"),
        DeclareLaunchArgument("teleop", default_value="false",
                              description="the teleop node (leaders -> /<arm>_arm/teleop_target) "
                                          "instead of the inference node; engage with "
                                          "/ate/engage_teleop"),
        DeclareLaunchArgument("twin", default_value="",
                              description="sim: the controllers on the MuJoCo twin's physics "
                                          "and the cameras on its render (true), or idealised "
                                          "emulators and a test pattern (false); default: the "
                                          "config's sim.twin"),
        DeclareLaunchArgument("task", default_value="",
                              description="sim with the twin: the task whose scene the twin "
                                          "holds, with /twin/reset and /twin/check (pick_place, "
                                          "push, handover, lift_box; default: none)"),
        DeclareLaunchArgument("seed", default_value="0",
                              description="sim with the twin: the seed of the start-up scene "
                                          "and of the first /twin/reset"),
        DeclareLaunchArgument("emulator_log_dir", default_value="",
                              description="sim: each emulator logs what it received to "
                                          "DIR/emulator_<arm>.jsonl (default: no log)"),
        OpaqueFunction(function=_robot_nodes),
    ])
