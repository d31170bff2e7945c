"""The node graph of the robot, as data: what the launch file starts and what the bringup runs.

Both `launch/bimanual.launch.py` (on a ROS install) and `ate_ros.bringup` (where `launch` is not
available) read these lists, and both turn a `NodeSpec` into a process the same way: the
package's executable, ``--ros-args -r __node:=<name> [-r __ns:=<namespace>] --params-file
<file>``, the file holding the node's parameters as launch_ros writes them. So the graph tested
here is the graph launched on the robot PC, node for node and parameter for parameter.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Tuple, Union

import yaml

from ate_core.robot.config import BimanualConfig


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: an executable of a package, its name, namespace and parameters."""

    executable: str
    name: str
    package: str = "ate_ros"
    namespace: str = ""
    #: Only parameters the node declares: ROS drops an override of an undeclared one without a
    #: word, and a config key is declared only by the nodes whose sections hold it
    #: (``ate_ros.params``); every other value comes from ``config_file``.
    parameters: Dict[str, object] = field(default_factory=dict)
    #: Nodes from other packages (robot_state_publisher, rviz2) run only under `ros2 launch`.
    external: bool = False

    @property
    def fully_qualified_name(self) -> str:
        """``/left_arm/arm_driver``, ``/supervisor``: how the node shows in the ROS graph."""
        return f"{self.namespace.rstrip('/')}/{self.name}"

    def launch_parameters(self, as_string: Optional[Callable[[str], object]] = None
                          ) -> Dict[str, object]:
        """The parameters as the launch file hands them to ``launch_ros.actions.Node``.

        A string parameter must stay a string whatever it reads like (a checkpoint called
        ``1.0``, a config file called ``true``): launch would otherwise parse it as YAML. The
        launch file passes ``as_string=lambda v: ParameterValue(v, value_type=str)``.
        """
        wrap = as_string or (lambda v: v)
        return {k: wrap(v) if isinstance(v, str) else v for k, v in self.parameters.items()}

    def params_file_yaml(self) -> str:
        """The parameter file launch_ros writes for this node (``launch_params_*``): keyed by
        the node's full name when it has a namespace, else by ``/**``, as launch_ros does."""
        key = self.fully_qualified_name if self.namespace else "/**"
        return yaml.dump({key: {"ros__parameters": dict(self.parameters)}},
                         default_flow_style=False)

    def ros_arguments(self, params_file: Optional[str] = None) -> List[str]:
        """``--ros-args`` as launch_ros builds it: the node name and namespace as remaps, then
        the parameters from ``params_file`` (see `params_file_yaml`), or as ``-p`` rules."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        else:
            for key, value in self.parameters.items():
                args += ["-p", f"{key}:={parameter_yaml(value)}"]
        return args

    def command(self, params_file: Optional[str] = None) -> List[str]:
        """The node's command line, as ``ros2 run`` or launch_ros runs it."""
        return [*executable_command(self.executable, self.package),
                *self.ros_arguments(params_file)]


@dataclass(frozen=True)
class EmulatorSpec:
    """One emulated RealMan controller (sim): where it listens and where it pushes state."""

    side: str
    model: str
    ip: str
    tcp_port: int
    push_port: int
    cycle: int
    initial_joints_deg: Tuple[float, ...]
    #: The emulator's fault-injection and status port on ``ip`` (0: any free one; the emulator
    #: prints it when it is listening). The bringup reads the packets sent through it.
    control_port: int = 0
    #: SCHED_FIFO priority of the emulator's threads (0: normal). It stands for a controller
    #: with a computer of its own: on a loaded simulation host it must not be what falls behind.
    realtime_priority: int = 0

    #: The console script that runs one emulated controller.
    executable: ClassVar[str] = "ate_realman_emulator"

    @property
    def name(self) -> str:
        """The process's name in launch and the bringup: ``emulator_left``."""
        return f"emulator_{self.side}"

    def argv(self) -> List[str]:
        """Arguments of the `ate_realman_emulator` console script."""
        return ["--model", self.model, "--ip", self.ip, "--port", str(self.tcp_port),
                "--push-port", str(self.push_port), "--cycle", str(self.cycle),
                "--control-port", str(self.control_port),
                "--realtime-priority", str(self.realtime_priority),
                "--initial-joints-deg", *(f"{q:.6f}" for q in self.initial_joints_deg)]

    def command(self) -> List[str]:
        """The emulator's whole command line."""
        return [*executable_command(self.executable), *self.argv()]


@dataclass(frozen=True)
class TwinSpec:
    """The twin host (sim with ``sim.twin``): every arm's emulated controller on the MuJoCo
    physics, and the cameras' rendered frames, in one process."""

    controllers: Tuple[EmulatorSpec, ...]
    config_file: str
    #: SCHED_FIFO priority of the host's threads (0: normal): the arms' controllers run in it.
    realtime_priority: int = 0
    #: The task whose scene the twin holds, with its /twin/reset and /twin/check services
    #: (``ate_core.twin.tasks``; empty: the whole scene, no episodes).
    task: str = ""
    #: The seed of the start-up scene (and of the first /twin/reset).
    seed: int = 0

    executable: ClassVar[str] = "ate_twin"
    name: ClassVar[str] = "twin"

    def argv(self) -> List[str]:
        """Arguments of the `ate_twin` console script (each controller's control port: any)."""
        task = ["--task", self.task] if self.task else []
        return ["--config", self.config_file, "--control-port", "0",
                "--realtime-priority", str(self.realtime_priority), *task,
                "--seed", str(self.seed)]

    def command(self) -> List[str]:
        return [*executable_command(self.executable), *self.argv()]


SimHardware = Union[EmulatorSpec, TwinSpec]


def controllers_of(spec: SimHardware) -> Tuple[EmulatorSpec, ...]:
    """The emulated controllers a simulation process serves."""
    return spec.controllers if isinstance(spec, TwinSpec) else (spec,)


def robot_graph(cfg: BimanualConfig, config_file: str, urdf_xml: Optional[str] = None,
                sim: bool = False, checkpoint: str = "",
                twin: Optional[bool] = None, record: bool = False,
                teleop: bool = False) -> List[NodeSpec]:
    """Every node of the bimanual robot, in start order.

    ``record``: the episode recorder too (``/recorder/start``, ``/recorder/stop``,
    ``/recorder/discard``), in a process of its own. ``teleop``: the teleop node (leaders to
    follower targets; the supervisor follows them once ``/ate/engage_teleop`` is called)
    instead of the inference node.

    The supervisor comes last and starts idle: nothing moves until ``/ate/engage``. The inference
    node runs only when a checkpoint is named: ``checkpoint`` (the launch argument), else the
    config's ``inference.checkpoint``. ``twin`` (sim only; default: the config's ``sim.twin``)
    tells the cameras whether they show the twin's render or the test pattern.
    """
    use_twin = cfg.sim.twin if twin is None else twin
    specs: List[NodeSpec] = [
        NodeSpec("arm_node", "arm_driver", namespace=f"/{side}_arm",
                 parameters={"config_file": config_file, "arm": side, "sim": sim})
        for side, _ in cfg.arms.items()
    ]
    specs.append(NodeSpec("joint_state_aggregator", "joint_state_aggregator",
                          parameters={"config_file": config_file}))
    camera_sim: Dict[str, object] = {"sim": sim}
    if sim and use_twin != cfg.sim.twin:
        camera_sim["sim.twin"] = use_twin
    specs += [NodeSpec("camera_node", f"{name}_camera",
                       parameters={"config_file": config_file, "camera": name, **camera_sim})
              for name in cfg.cameras]
    if teleop:
        specs.append(NodeSpec("teleop_node", "teleop", parameters={"config_file": config_file}))
    elif checkpoint or cfg.inference.checkpoint:
        params: Dict[str, object] = {"config_file": config_file}
        if checkpoint:
            params["inference.checkpoint"] = checkpoint
        specs.append(NodeSpec("inference_node", "inference", parameters=params))
    specs.append(NodeSpec("supervisor_node", "supervisor", parameters={"config_file": config_file}))
    if record:
        specs.append(NodeSpec("recorder_node", "recorder", parameters={"config_file": config_file}))
    if urdf_xml is not None:
        specs.append(NodeSpec("robot_state_publisher", "robot_state_publisher",
                              package="robot_state_publisher",
                              parameters={"robot_description": urdf_xml}, external=True))
    return specs


def sim_controllers(cfg: BimanualConfig) -> List[EmulatorSpec]:
    """The emulated controllers behind `sim`, at the config's sim endpoints, arms at home."""
    endpoints = {"left": cfg.sim.arms.left, "right": cfg.sim.arms.right}
    return [EmulatorSpec(side, arm.model, endpoints[side].ip, endpoints[side].tcp_port,
                         endpoints[side].udp_port, arm.push_cycle,
                         tuple(math.degrees(q) for q in arm.home_rad),
                         realtime_priority=arm.realtime_priority)
            for side, arm in cfg.arms.items()]


def sim_hardware(cfg: BimanualConfig, config_file: str, twin: Optional[bool] = None,
                 task: str = "", seed: int = 0) -> List[SimHardware]:
    """The processes that stand for the robot in sim, started before the nodes: one twin host
    (``twin``, default the config's ``sim.twin``), holding ``task``'s scene of ``seed``, or one
    idealised emulator per arm (which know no tasks)."""
    controllers = sim_controllers(cfg)
    if cfg.sim.twin if twin is None else twin:
        return [TwinSpec(tuple(controllers), config_file,
                         max(c.realtime_priority for c in controllers), task, int(seed))]
    return list(controllers)


def in_process(specs: List[NodeSpec]) -> Tuple[List[NodeSpec], List[NodeSpec]]:
    """Split into (nodes of this package, which the bringup runs too, and external nodes left
    to ``ros2 launch``)."""
    return [s for s in specs if not s.external], [s for s in specs if s.external]


def parameter_yaml(value: object) -> str:
    """A parameter value as a ``-p name:=value`` rule spells it (rcl reads it as YAML): strings
    quoted, so that ``'true'`` or ``'1.0'`` stays a string."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(parameter_yaml(v) for v in value) + "]"
    return repr(value)


def _ament_executable(package: str, executable: str) -> Optional[Path]:
    """``<prefix>/lib/<package>/<executable>`` from the ament index, where ``ros2 run`` looks."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        path = Path(get_package_prefix(package)) / "lib" / package / executable
    except (PackageNotFoundError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return None
    return path if os.access(path, os.X_OK) and path.is_file() else None


def _entry_point(package: str, executable: str) -> Optional[str]:
    """``module:function`` of a console script of ``package`` (setup.py ``NODES``/``TOOLS``)."""
    try:
        points = importlib.metadata.distribution(package).entry_points
    except importlib.metadata.PackageNotFoundError:
        return None
    for point in points:
        if point.group == "console_scripts" and point.name == executable:
            return point.value
    return None


def script_dirs() -> List[str]:
    """Where pip puts this interpreter's console scripts (a venv's ``bin/``)."""
    return [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]


def executable_command(executable: str, package: str = "ate_ros") -> List[str]:
    """How to run an executable of ``package``, found the way ``ros2 run`` finds it.

    First ``lib/<package>/`` of the package's install prefix (a colcon workspace that is
    sourced); then, for this package, the console script beside the running interpreter (a
    venv's ``bin/``, where pip puts it); else this interpreter runs the script's entry point,
    so a checkout whose scripts are not installed still starts every node. Other packages'
    executables (robot_state_publisher) come only from the ament index.
    """
    found = _ament_executable(package, executable)
    if found is not None:
        return [str(found)]
    if package != "ate_ros":
        raise FileNotFoundError(f"executable {executable!r} of package {package!r} not found "
                                f"(no ament index entry: source the workspace's setup file)")
    target = _entry_point(package, executable)
    if target is None:
        raise FileNotFoundError(f"{executable!r} is not a console script of {package} "
                                f"(see NODES and TOOLS in setup.py; reinstall the package)")
    for scripts in script_dirs():
        path = Path(scripts) / executable
        if os.access(path, os.X_OK) and path.is_file():
            return [str(path)]
    module, function = target.split(":")
    return [sys.executable, "-c",
            f"import sys; from {module} import {function}; sys.exit({function}())"]
