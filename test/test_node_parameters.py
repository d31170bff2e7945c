"""Node parameters are the config file's keys: the file gives defaults, -p overrides are checked;
each node declares the sections it reads, described and read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import yaml
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient

from ate_core.config import ConfigError, flatten, key_docs
from ate_core.robot.config import load_config
from ate_ros.graph import NodeSpec, in_process, robot_graph
from ate_ros.nodes.arm_node import ArmNode
from ate_ros.nodes.camera_node import CameraNode
from ate_ros.nodes.inference_node import InferenceNode
from ate_ros.nodes.joint_state_aggregator import JointStateAggregator
from ate_ros.nodes.supervisor_node import SupervisorNode
from ate_ros.nodes.teleop_node import TeleopNode
from ate_ros.params import declare_config
from conftest import REPO, free_port, next_loopback_ip, sdk_push_port
from test_policy_runner import make_data, train_tiny_policy

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


def test_parameters_default_to_the_config_file(ros, repo, tmp_path):
    data = yaml.safe_load((repo / "config/bimanual.yaml").read_text())
    data["arms"]["left"]["ip"] = "10.1.2.3"
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    node = ros.start(Node, "configured", cli_args=["--ros-args", "-p", f"config_file:={path}"])
    cfg = declare_config(node, ("arms",))
    assert cfg.arms.left.ip == "10.1.2.3"
    assert node.get_parameter("arms.left.ip").value == "10.1.2.3"
    assert node.get_parameter("arms.right.home_rad").value == list(cfg.arms.right.home_rad)


def test_command_line_override_wins_and_is_typed(ros):
    node = ros.start(Node, "overridden", cli_args=[
        "--ros-args", "-p", "arms.right.udp_port:=9001", "-p", "arms.left.follow:=true"])
    cfg = declare_config(node, ("arms",))
    assert cfg.arms.right.udp_port == 9001 and cfg.arms.left.follow is True


def test_bad_override_fails_with_the_same_clear_error(ros):
    with pytest.raises(ConfigError, match=r"parameters of /joint_state_aggregator\): "
                                          r"arms\.left\.ip: not an IPv4 address"):
        JointStateAggregator(context=ros.context,
                             cli_args=["--ros-args", "-p", "arms.left.ip:=left-arm.local"])


# ---- what each node declares, as `ros2 param` sees it over DDS --------------------------------

#: Parameters every rclpy node declares itself.
RCLPY_OWN = {"use_sim_time", "start_type_description_service"}


def expected_sections(spec: NodeSpec) -> Tuple[str, ...]:
    """The config sections each node reads (and so declares), by what its code uses."""
    if spec.executable == "arm_node":
        side = spec.parameters["arm"]
        return (f"arms.{side}", "gripper", "topics") + ((f"sim.arms.{side}",)
                                                        if spec.parameters["sim"] else ())
    return {"camera_node": (f"cameras.{spec.parameters.get('camera')}", "topics", "sim.twin",
                            "sim.camera_width", "sim.camera_height", "sim.camera_fps"),
            "joint_state_aggregator": ("arms", "topics"),
            "inference_node": ("arms", "cameras", "topics", "inference"),
            "supervisor_node": ("arms", "gripper", "topics", "supervisor"),
            "teleop_node": ("arms", "gripper", "topics", "teleop")}[spec.executable]


#: A node's own parameters, outside the robot config.
NODE_OWN = {"arm_node": {"arm", "sim"}, "camera_node": {"camera", "sim"},
            "joint_state_aggregator": {"publish_rate_hz"}, "inference_node": set(),
            "supervisor_node": set(), "teleop_node": set()}

FACTORIES = {"arm_node": ArmNode, "camera_node": CameraNode,
             "joint_state_aggregator": JointStateAggregator, "inference_node": InferenceNode,
             "supervisor_node": SupervisorNode, "teleop_node": TeleopNode}


def remote_parameters(ros, node: str) -> Dict[str, Tuple[Any, ParameterDescriptor]]:
    """{name: (value, descriptor)} of every parameter of ``node``, through its parameter
    services, as ``ros2 param list/get/describe`` read them."""
    client = AsyncParameterClient(ros.probe, node)
    assert client.wait_for_services(timeout_sec=10.0), f"parameter services of {node}"

    def answer(future):
        ros.wait_for(future.done, 10.0, f"a parameter service of {node}")
        return future.result()

    names = list(answer(client.list_parameters()).result.names)
    values = answer(client.get_parameters(names)).values
    descriptors = answer(client.describe_parameters(names)).descriptors
    return {n: (parameter_value_to_python(v), d) for n, v, d in zip(names, values, descriptors)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("node_parameters")
    return train_tiny_policy(base / "run", make_data(base / "rm75"))


def small_sim_config(repo: Path, tmp_path: Path) -> Path:
    """The shipped config with small, slow simulated cameras, the policy on one CPU thread and
    each emulator endpoint on an address of its own (no emulator listens there)."""
    data = yaml.safe_load((repo / "config/bimanual.yaml").read_text())
    for camera in data["cameras"].values():
        camera.update(width=64, height=48, fps=5.0)
    data["inference"].update(device="cpu", torch_threads=1)
    for slot, side in enumerate(("left", "right"), start=1):
        data["sim"]["arms"][side].update(ip=next_loopback_ip(), tcp_port=free_port(),
                                         udp_port=sdk_push_port(slot))
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_node_declares_its_launch_parameters_and_its_config_sections_only_all_described(
        ros, repo, tmp_path, checkpoint):
    config_file = small_sim_config(repo, tmp_path)
    cfg = load_config(config_file)
    ours, _ = in_process(robot_graph(cfg, str(config_file), sim=True, checkpoint=str(checkpoint)))
    assert sorted({s.executable for s in ours}) == sorted(set(FACTORIES) - {"teleop_node"})
    check_declared(ros, cfg, ours, tmp_path)


def test_the_teleop_node_declares_its_config_sections_only_all_described(ros, repo, tmp_path):
    config_file = small_sim_config(repo, tmp_path)
    cfg = load_config(config_file)
    ours, _ = in_process(robot_graph(cfg, str(config_file), sim=True, teleop=True))
    assert "inference_node" not in {s.executable for s in ours}
    check_declared(ros, cfg, [s for s in ours if s.executable == "teleop_node"], tmp_path)


def check_declared(ros, cfg, ours, tmp_path) -> None:
    for spec in ours:  # as the bringup starts them: the parameter file launch_ros would write
        params = tmp_path / f"{spec.name}.yaml"
        params.write_text(spec.params_file_yaml())
        ros.start(FACTORIES[spec.executable], cli_args=spec.ros_arguments(str(params)))

    keys = flatten(cfg)
    docs = key_docs(cfg)
    for spec in ours:
        expected = {**keys, **spec.parameters}
        node = spec.fully_qualified_name
        declared = remote_parameters(ros, node)
        # A parameter the node does not declare would be dropped by ROS without a word.
        for name, value in spec.parameters.items():
            assert name in declared and declared[name][0] == value, (node, name)
        sections = expected_sections(spec)
        config_keys = {k for k in declared if k in keys}
        assert config_keys == {k for k in keys
                               if any(k == s or k.startswith(s + ".") for s in sections)}, node
        assert set(declared) - config_keys - {"config_file"} - RCLPY_OWN == \
            NODE_OWN[spec.executable], node
        for name in config_keys | {"config_file"} | NODE_OWN[spec.executable]:
            value, descriptor = declared[name]
            assert descriptor.description and descriptor.read_only, (node, name)
            if name in keys:
                assert descriptor.description == docs[name].doc, (node, name)
                assert value == expected[name], (node, name)


def test_every_config_key_has_a_description():
    docs = key_docs(load_config(REPO / "config/bimanual.yaml"))
    assert not [key for key, doc in docs.items() if not doc.doc]


def test_ranges_show_in_the_descriptors(ros):
    node = ros.start(Node, "described")
    declare_config(node, ("arms.left", "supervisor.rate_hz"))
    rate = node.describe_parameter("supervisor.rate_hz")
    assert [(r.from_value, r.to_value) for r in rate.floating_point_range] == [(1.0, 1000.0)]
    cycle = node.describe_parameter("arms.left.push_cycle")
    assert [(r.from_value, r.to_value, r.step) for r in cycle.integer_range] == [(1, 100, 1)]
    assert "5 ms" in cycle.description
    home = node.describe_parameter("arms.left.home_rad")
    assert home.additional_constraints == "every element in [-6.28319, 6.28319]"
    assert not node.describe_parameter("arms.left.ip").additional_constraints


def test_setting_a_parameter_at_run_time_is_refused_and_the_value_kept(ros):
    supervisor = ros.start(SupervisorNode)
    client = AsyncParameterClient(ros.probe, "/supervisor")
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.set_parameters([Parameter("supervisor.safety.joint_margin_rad", value=0.1)])
    ros.wait_for(future.done, 10.0, "the answer of /supervisor/set_parameters")
    [result] = future.result().results
    assert not result.successful and "read-only" in result.reason
    value, _ = remote_parameters(ros, "/supervisor")["supervisor.safety.joint_margin_rad"]
    assert value == supervisor.cfg.supervisor.safety.joint_margin_rad == 0.05


def test_a_robot_wide_parameter_file_reaches_each_node_in_its_sections(ros, tmp_path):
    params = tmp_path / "robot_params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "supervisor.safety.joint_margin_rad": 0.1, "arms.left.gripper_joint": "left_hand"}}}))
    args = ["--ros-args", "--params-file", str(params)]
    supervisor = ros.start(SupervisorNode, cli_args=args)
    assert supervisor.cfg.supervisor.safety.joint_margin_rad == 0.1
    assert supervisor.cfg.arms.left.gripper_joint == "left_hand"
    # The aggregator does not read the supervisor's section: it neither declares nor uses it.
    aggregator = ros.start(JointStateAggregator, cli_args=args)
    assert not aggregator.has_parameter("supervisor.safety.joint_margin_rad")
    assert aggregator.get_parameter("arms.left.gripper_joint").value == "left_hand"
