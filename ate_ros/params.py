"""ROS parameters as the flattened typed config: one schema for files, launch and `-p`."""

from __future__ import annotations

from typing import Optional, Type, TypeVar

from rclpy.node import Node
from rcl_interfaces.msg import ParameterDescriptor

from ate_core.config import flatten, from_flat, load_dataclass
from ate_core.robot.config import BimanualConfig
from ate_ros.resources import default_config_path

T = TypeVar("T")


def declare_config(node: Node, cls: Type[T] = BimanualConfig,  # type: ignore[assignment]
                   default_path: Optional[str] = None) -> T:
    """Declare ``config_file`` plus one parameter per config key and return the typed config.

    The file gives the defaults; parameters set on the command line or by launch override
    them; the result goes through the same validation as the file, so a bad ``-p`` value gets
    the same clear error.
    """
    path = node.declare_parameter(
        "config_file", default_path or str(default_config_path()),
        ParameterDescriptor(description="YAML config (ate_core.robot.config schema)")).value
    base = load_dataclass(path, cls)
    values = {}
    for key, default in flatten(base).items():
        values[key] = node.declare_parameter(key, default).value
    return from_flat(cls, values, source=f"{path} (parameters of {node.get_fully_qualified_name()})")
