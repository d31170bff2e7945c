"""ament_python package ``ate_ros``: installs with colcon on a robot PC and with pip in a venv."""

import os

from setuptools import find_packages, setup

PACKAGE = "ate_ros"


def share_tree(folder: str) -> list:
    """(install dir, files) pairs that mirror ``folder`` under share/ate_ros/."""
    pairs = []
    for root, _dirs, files in os.walk(folder):
        paths = sorted(os.path.join(root, f) for f in files if not f.endswith((".pyc", "~")))
        if paths:
            pairs.append((os.path.join("share", PACKAGE, root), paths))
    return pairs


#: Node executables: ``ate_ros.entry`` holds each signal until the node's module has loaded.
NODES = {name: f"ate_ros.entry:{name}" for name in (
    "arm_node", "arm_nodes", "joint_state_aggregator", "camera_node", "camera_nodes",
    "inference_node", "supervisor_node", "recorder_node", "replay_node", "teleop_node",
    "jog_node")}
#: The twin host is started like a node (its rclpy node reports on /diagnostics).
NODES["ate_twin"] = "ate_ros.entry:twin_host"
TOOLS = {
    "ate_bringup": "ate_ros.bringup:main",
    "ate_urdf": "ate_core.robot.urdf_cli:main",
    "ate_realman_emulator": "ate_ros.sim.realman_emulator:main",
    "ate_train": "ate_core.train.cli:main",
    "ate_align": "ate_core.align.cli:main",
    "ate_finetune": "ate_core.steer.cli:main",
    "ate_synthetic_dataset": "ate_core.data.synthetic:main",
    "ate_bag": "ate_core.data.bag:main",
    "ate_convert": "ate_core.data.convert:main",
    "ate_lerobot_export": "ate_core.data.lerobot:main",
    "ate_replay_eval": "ate_core.eval.replay:main",
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["ate_ros", "ate_ros.*", "ate_core", "ate_core.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *share_tree("launch"),
        *share_tree("config"),
        *share_tree("urdf"),
        *share_tree("policies"),
    ],
    # Runtime dependencies come from package.xml (rosdep) on a robot PC and from
    # requirements.txt in a venv; setuptools must not try to resolve ROS packages from PyPI.
    install_requires=["setuptools"],
    python_requires=">=3.10",
    zip_safe=False,
    maintainer="ate_ros maintainers",
    maintainer_email="maintainers@ate-ros.dev",
    description="ROS 2 stack for an ATE-adapted VLA policy on a RealMan dual-arm robot",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in {**NODES, **TOOLS}.items()],
    },
)
