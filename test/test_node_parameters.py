"""Node parameters are the config file's keys: the file gives defaults, -p overrides are checked."""

from __future__ import annotations

import pytest
import yaml

from ate_core.config import ConfigError
from ate_ros.nodes.joint_state_aggregator import JointStateAggregator
from ate_ros.params import declare_config
from rclpy.node import Node

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


def test_parameters_default_to_the_config_file(ros, repo, tmp_path):
    data = yaml.safe_load((repo / "config/bimanual.yaml").read_text())
    data["arms"]["left"]["ip"] = "10.1.2.3"
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    node = ros.start(Node, "configured", cli_args=["--ros-args", "-p", f"config_file:={path}"])
    cfg = declare_config(node)
    assert cfg.arms.left.ip == "10.1.2.3"
    assert node.get_parameter("arms.left.ip").value == "10.1.2.3"
    assert node.get_parameter("arms.right.home_rad").value == list(cfg.arms.right.home_rad)


def test_command_line_override_wins_and_is_typed(ros):
    node = ros.start(Node, "overridden", cli_args=[
        "--ros-args", "-p", "arms.right.udp_port:=9001", "-p", "arms.left.follow:=true"])
    cfg = declare_config(node)
    assert cfg.arms.right.udp_port == 9001 and cfg.arms.left.follow is True


def test_bad_override_fails_with_the_same_clear_error(ros):
    with pytest.raises(ConfigError, match=r"parameters of /joint_state_aggregator\): "
                                          r"arms\.left\.ip: not an IPv4 address"):
        JointStateAggregator(context=ros.context,
                             cli_args=["--ros-args", "-p", "arms.left.ip:=left-arm.local"])
