"""ROS parameters as the flattened robot config: one schema for files, launch and `-p`.

A node declares ``config_file`` and the keys of the config sections it reads, nothing else: a
key that a node declares is one that ``-p`` and parameter files change for that node. Every
parameter carries its field's description, with the unit, and its range where the field has one
(``ros2 param describe``). All are read-only: a node reads its config once, at start, so a
value set later would be accepted and never used; ``ros2 param set`` is refused instead.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from ate_core.config import KeyDoc, Range, flatten, from_flat, key_docs, load_dataclass
from ate_core.robot.config import BimanualConfig
from ate_ros.resources import default_config_path


def _in_sections(key: str, sections: Sequence[str]) -> bool:
    """Whether a dotted config key lies in one of ``sections`` (``arms.left``, ``topics``, or a
    single key)."""
    return any(key == s or key.startswith(s + ".") for s in sections)


def _read_only(doc: KeyDoc, value: object, parameter_type: int) -> ParameterDescriptor:
    """The final descriptor of a config key: its description and, for a number checked by
    ``in_range``, its range (for a list, as a constraint in words: ROS ranges hold scalars)."""
    descriptor = ParameterDescriptor(description=doc.doc, read_only=True, type=parameter_type)
    bounds = doc.check
    if not isinstance(bounds, Range) or isinstance(value, bool):
        return descriptor
    if isinstance(value, int):
        descriptor.integer_range = [IntegerRange(from_value=math.ceil(bounds.lo),
                                                 to_value=math.floor(bounds.hi), step=1)]
    elif isinstance(value, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(bounds.lo),
                                                              to_value=float(bounds.hi))]
    else:
        descriptor.additional_constraints = f"every element in [{bounds.lo:g}, {bounds.hi:g}]"
    return descriptor


def declare_fixed(node: Node, name: str, default: Any, description: str) -> Any:
    """Declare a node's own start-up parameter (``arm``, ``camera``, ``sim``...): described and
    read-only like the config keys, since it too is read once; returns its value."""
    return node.declare_parameter(name, default,
                                  ParameterDescriptor(description=description, read_only=True)).value


def declare_config(node: Node, sections: Sequence[str]) -> BimanualConfig:
    """Declare ``config_file`` and one parameter per config key in ``sections``; return the
    typed config.

    The file gives the defaults and every value outside ``sections``; parameters set on the
    command line or by launch override the keys in them. The result goes through the same
    validation as the file, so a bad ``-p`` value gets the same clear error. The parameters are
    declared without their ranges and made read-only with them only after that validation:
    rclpy would otherwise reject an out-of-range override with a message of its own.
    """
    path = node.declare_parameter(
        "config_file", str(default_config_path()),
        ParameterDescriptor(description="YAML config (ate_core.robot.config schema)",
                            read_only=True)).value
    base = load_dataclass(path, BimanualConfig)
    docs = key_docs(base)
    values = flatten(base)
    declared = [key for key in values if _in_sections(key, sections)]
    for key in declared:
        values[key] = node.declare_parameter(
            key, values[key], ParameterDescriptor(description=docs[key].doc)).value
    cfg = from_flat(BimanualConfig, values,
                    source=f"{path} (parameters of {node.get_fully_qualified_name()})")
    for key in declared:
        node.set_descriptor(key, _read_only(docs[key], values[key],
                                            node.describe_parameter(key).type))
    return cfg
