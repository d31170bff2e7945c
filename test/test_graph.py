"""The node graph that `ros2 launch` and the in-process bringup both start."""

from __future__ import annotations

import math

from ate_core.config import load_config
from ate_ros.bringup import NODE_CLASSES
from ate_ros.graph import in_process, robot_graph, sim_controllers
from ate_ros.sim.realman_emulator import _parse_args as emulator_args
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
    # Every node of this package in the graph can be run by the bringup, and is installed.
    setup = (REPO / "setup.py").read_text()
    for spec in ours:
        assert spec.executable in NODE_CLASSES
        assert f'"{spec.executable}": "ate_ros.nodes.' in setup


def test_sim_controllers_match_the_config_and_their_argv_is_accepted_by_the_emulator():
    cfg = load_config(REPO / "config/bimanual.yaml")
    specs = sim_controllers(cfg)
    assert [s.side for s in specs] == ["left", "right"]
    for spec, endpoint in zip(specs, (cfg.sim.arms.left, cfg.sim.arms.right)):
        args = emulator_args(spec.argv())
        assert (args.ip, args.port, args.push_port) == (endpoint.ip, endpoint.tcp_port,
                                                        endpoint.udp_port)
        arm = getattr(cfg.arms, spec.side)
        assert args.model == arm.model and args.cycle == arm.push_cycle
        assert all(abs(math.radians(a) - b) < 1e-7
                   for a, b in zip(args.initial_joints_deg, arm.home_rad))
