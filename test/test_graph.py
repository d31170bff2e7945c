"""The node graph that `ros2 launch` and the bringup both start, and how a node becomes a process."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ate_core.robot.config import load_config
from ate_ros import graph
from ate_ros.bringup import stack_plan
from ate_ros.graph import (NodeSpec, executable_command, in_process, robot_graph,
                           sim_controllers, sim_hardware)
from ate_ros.sim.realman_emulator import parse_args as emulator_args
from conftest import REPO


def test_graph_has_one_arm_driver_per_arm_in_its_namespace_and_passes_sim():
    cfg = load_config(REPO / "config/bimanual.yaml")
    for sim in (False, True):
        specs = robot_graph(cfg, "robot.yaml", urdf_xml="<robot/>", sim=sim)
        arms = [s for s in specs if s.executable == "arm_node"]
        assert [(s.namespace, s.parameters["arm"]) for s in arms] == [("/left_arm", "left"),
                                                                      ("/right_arm", "right")]
        assert all(s.parameters["sim"] is sim and s.parameters["config_file"] == "robot.yaml"
                   for s in arms)
    ours, external = in_process(robot_graph(cfg, "robot.yaml", urdf_xml="<robot/>"))
    assert [s.executable for s in external] == ["robot_state_publisher"]
    # Every node of this package in the graph is an installed console script.
    scripts = {e.name: e.value for e in importlib.metadata.distribution("ate_ros").entry_points
               if e.group == "console_scripts"}
    for spec in ours:
        assert scripts[spec.executable].startswith("ate_ros.entry:")
        assert Path(executable_command(spec.executable)[-1]).name == spec.executable or \
            executable_command(spec.executable)[1] == "-c"


def test_sim_controllers_match_the_config_and_their_argv_is_accepted_by_the_emulator():
    cfg = load_config(REPO / "config/bimanual.yaml")
    specs = sim_controllers(cfg)
    assert [s.side for s in specs] == ["left", "right"]
    for spec, endpoint in zip(specs, (cfg.sim.arms.left, cfg.sim.arms.right)):
        args = emulator_args(spec.argv())
        assert (args.ip, args.port, args.push_port) == (endpoint.ip, endpoint.tcp_port,
                                                        endpoint.udp_port)
        assert args.control_port == 0  # any free port: the bringup reads it from the output
        arm = getattr(cfg.arms, spec.side)
        assert args.model == arm.model and args.cycle == arm.push_cycle
        assert all(abs(math.radians(a) - b) < 1e-7
                   for a, b in zip(args.initial_joints_deg, arm.home_rad))
        assert Path(spec.command()[0]).name == "ate_realman_emulator"


def test_node_command_is_what_ros2_run_gets_and_strings_stay_strings():
    spec = NodeSpec("inference_node", "inference", namespace="/robot",
                    parameters={"config_file": "true", "inference.checkpoint": "1.0",
                                "sim": True, "rate_hz": 10.0, "it's": "a 'quote'"})
    assert spec.fully_qualified_name == "/robot/inference"
    assert spec.ros_arguments("p.yaml") == ["--ros-args", "-r", "__node:=inference",
                                            "-r", "__ns:=/robot", "--params-file", "p.yaml"]
    rules = spec.ros_arguments()[5:]
    assert rules[::2] == ["-p"] * 5
    # rcl reads a `-p` value as YAML: quoted, "true" and "1.0" stay strings.
    parsed = {rule.split(":=", 1)[0]: yaml.safe_load(rule.split(":=", 1)[1]) for rule in rules[1::2]}
    assert parsed == spec.parameters
    # The parameter file is what launch_ros writes: keyed by the node's full name.
    assert yaml.safe_load(spec.params_file_yaml()) == {
        "/robot/inference": {"ros__parameters": spec.parameters}}
    assert list(yaml.safe_load(NodeSpec("x", "y").params_file_yaml())) == ["/**"]
    wrapped = spec.launch_parameters(as_string=lambda v: ("str", v))
    assert wrapped["config_file"] == ("str", "true") and wrapped["sim"] is True
    args = spec.ros_arguments("p.yaml")
    assert spec.command("p.yaml")[-len(args):] == args


def test_rcl_reads_the_parameter_rules_and_file_with_their_types(tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    spec = NodeSpec("x", "probe", parameters={"config_file": "true", "checkpoint": "1.0",
                                              "sim": True, "rate_hz": 10.0, "n": 3})
    params = tmp_path / "p.yaml"
    params.write_text(spec.params_file_yaml())
    for args in (spec.ros_arguments(), spec.ros_arguments(str(params))):
        context = Context()
        rclpy.init(args=["probe", *args], context=context)
        try:
            node = Node("default_name", context=context,
                        automatically_declare_parameters_from_overrides=True)
            assert node.get_name() == "probe"
            got = {k: node.get_parameter(k).value for k in spec.parameters}
            assert got == spec.parameters and all(
                type(got[k]) is type(v) for k, v in spec.parameters.items()), got
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)


def test_a_node_without_an_installed_script_runs_through_this_interpreter(monkeypatch, tmp_path):
    monkeypatch.setattr(graph, "script_dirs", lambda: [str(tmp_path)])
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    cmd = executable_command("ate_realman_emulator")
    assert cmd[:2] == [sys.executable, "-c"]
    result = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--push-port" in result.stdout, result.stderr
    with pytest.raises(FileNotFoundError, match="not a console script"):
        executable_command("no_such_node")


def _launch_processes(tmp_path: Path, monkeypatch, config: Path, checkpoint: str,
                      twin: str = ""):
    """Run the launch file's OpaqueFunction as `ros2 launch ... sim:=true` would, and return
    (emulator commands, nodes as (package, executable, name, namespace, argv after the
    executable, parameter files' contents)) without starting anything."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node

    # An install prefix holding ate_ros, as `colcon build` makes (launch finds it through the
    # ament index); launch_ros's parameter files go to tmp_path.
    prefix = tmp_path / "prefix"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "ate_ros").write_text("")
    (prefix / "share" / "ate_ros").symlink_to(REPO)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    spec = importlib.util.spec_from_file_location("bimanual_launch", REPO / "launch/bimanual.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = LaunchContext()
    context.launch_configurations.update(
        {"sim": "true", "config_file": str(config), "checkpoint": checkpoint, "twin": twin})
    actions = []
    for entity in module.generate_launch_description().entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)  # the defaults of what the test did not set
        elif isinstance(entity, OpaqueFunction):
            actions += entity.execute(context) or []
    emulators, nodes = [], []
    for action in actions:
        if isinstance(action, Node):
            if action.node_package != "ate_ros":
                continue
            action._perform_substitutions(context)
            name = action.node_name.rsplit("/", 1)[1]
            namespace = action.expanded_node_namespace
            namespace = "" if namespace == Node.UNSPECIFIED_NODE_NAMESPACE else namespace
            context.extend_locals({"ros_specific_arguments": {
                "name": f"__node:={name}", "ns": f"__ns:={namespace}"}})
            argv = [perform_substitutions(context, part) for part in action.cmd[1:]]
            files = [Path(argv[i + 1]).read_text() for i, a in enumerate(argv) if a == "--params-file"]
            nodes.append((action.node_package, action.node_executable, name, namespace,
                          argv, files))
        elif isinstance(action, ExecuteProcess):
            emulators.append((perform_substitutions(context, action.name),
                              [perform_substitutions(context, part) for part in action.cmd]))
    return emulators, nodes


@pytest.mark.parametrize("twin, hardware", [
    ("true", [("twin", "ate_twin")]),
    ("", [("emulator_left", "ate_realman_emulator"),
          ("emulator_right", "ate_realman_emulator")])], ids=["twin", "emulators"])
def test_launch_file_and_bringup_start_the_same_processes_with_the_same_parameters(
        tmp_path, monkeypatch, twin, hardware):
    pytest.importorskip("launch", reason="`launch` is not installed (run "
                        "../shared/ros2_launch/install.sh .venv, as scripts/bootstrap.sh does)")
    pytest.importorskip("launch_ros", reason="`launch_ros` is not installed")
    config = REPO / "config/bimanual.yaml"
    checkpoint = "1.0"  # a checkpoint path that reads like a number must stay a string
    emulators, nodes = _launch_processes(tmp_path, monkeypatch, config, checkpoint, twin)

    cfg = load_config(config)
    hw = sim_hardware(cfg, str(config), twin=None if not twin else twin == "true")
    plan, _ = stack_plan(cfg, str(config), checkpoint, tmp_path / "params",
                         twin=None if not twin else twin == "true")
    planned_emulators = [item for item in plan if item.controllers]
    planned_nodes = [item for item in plan if item.node is not None]
    assert [item.name for item in plan] == (
        [item.name for item in planned_emulators] + [item.name for item in planned_nodes])
    assert [c.side for item in planned_emulators for c in item.controllers] == ["left", "right"]

    assert [name for name, _ in emulators] == [item.name for item in planned_emulators] == \
        [name for name, _ in hardware]
    for (_, cmd), item, spec, (_, executable) in zip(emulators, planned_emulators, hw, hardware):
        assert Path(cmd[0]).name == executable
        assert cmd[1:] == list(item.argv[-len(cmd[1:]):]) == spec.argv()

    assert [n[:4] for n in nodes] == [(item.node.package, item.node.executable, item.node.name,
                                       item.node.namespace) for item in planned_nodes]
    assert "inference_node" in [n[1] for n in nodes]
    for (_, executable, _, _, argv, files), item in zip(nodes, planned_nodes):
        ours = list(item.argv)
        start = ours.index("--ros-args")
        assert Path(ours[start - 1]).name == executable or ours[1] == "-c"
        # The same arguments, but for where each puts the parameter file ...
        assert [a if prev != "--params-file" else "FILE" for prev, a in zip([""] + argv, argv)] == \
            [a if prev != "--params-file" else "FILE"
             for prev, a in zip([""] + ours[start:], ours[start:])]
        # ... and the same file: same key, names, values and types.
        assert len(files) == 1
        assert yaml.safe_load(files[0]) == yaml.safe_load(item.params_yaml)
        params = next(iter(yaml.safe_load(item.params_yaml).values()))["ros__parameters"]
        assert params == item.node.parameters
    inference = next(item for item in planned_nodes if item.node.executable == "inference_node")
    assert yaml.safe_load(inference.params_yaml)["/**"]["ros__parameters"][
        "inference.checkpoint"] == "1.0"


def test_sim_hardware_is_one_twin_host_serving_both_controllers_when_the_twin_is_on():
    cfg = load_config(REPO / "config/bimanual.yaml")
    assert not cfg.sim.twin  # off by default: see sim.twin in config/bimanual.yaml
    assert sim_hardware(cfg, "robot.yaml") == sim_controllers(cfg)
    (twin,) = sim_hardware(cfg, "robot.yaml", twin=True)
    assert twin.controllers == tuple(sim_controllers(cfg))
    assert twin.argv()[:2] == ["--config", "robot.yaml"]
    assert Path(twin.command()[0]).name == "ate_twin" or twin.command()[1] == "-c"
    # The cameras are told only when the choice differs from the config's.
    cameras = [s for s in robot_graph(cfg, "robot.yaml", sim=True, twin=True)
               if s.executable == "camera_node"]
    assert cameras and all(s.parameters["sim.twin"] is True for s in cameras)
    assert all("sim.twin" not in s.parameters for s in robot_graph(cfg, "robot.yaml", sim=True)
               if s.executable == "camera_node")
