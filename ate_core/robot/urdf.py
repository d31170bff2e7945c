"""The project's own URDF of the dual-arm robot, generated from the arm models, and a URDF reader.

Generation: each arm's links carry the MDH frames exactly (``{prefix}_link{i}`` is MDH frame i,
``{prefix}_base_link`` is frame 0), so robot_state_publisher, RViz and
:mod:`ate_core.robot.kinematics` agree on every link at every joint value. Joint i's URDF origin
is the MDH transform at q_i = 0, RotX(alpha) Tx(a) RotZ(offset) Tz(d); since RotZ(q) commutes
with Tz(d), the URDF's ``origin * RotZ(q)`` equals the MDH row at any q, offsets and nonzero
``a`` included. Geometry is primitives only (cylinders, boxes), for RRT/RViz, not for contact.

Each gripper is one prismatic joint ``{prefix}_gripper`` whose position is the finger opening in
metres (DESIGN.md); it moves an invisible link, and the two fingers follow it through ``mimic``
joints with multipliers +0.5 / -0.5, which robot_state_publisher resolves.

Reading: :func:`parse_urdf` and :func:`urdf_chain_fk` use nothing but the URDF text (their own
rpy and axis-angle code), so they check the generator and the MDH code independently, and the
safety supervisor can take joint limits from whatever URDF the robot runs with.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ate_core.robot import kinematics
from ate_core.robot.layout import ArmPlacement, BimanualLayout, matrix_to_rpy
from ate_core.robot.models import GRIPPER_MAX_FORCE_N, GRIPPER_MAX_OPENING_M, \
    GRIPPER_MAX_SPEED_M_S

__all__ = [
    "UrdfError",
    "UrdfMimic",
    "UrdfJoint",
    "UrdfRobot",
    "bimanual_urdf",
    "write_bimanual_urdf",
    "parse_urdf",
    "urdf_chain_fk",
]


class UrdfError(ValueError):
    """A URDF that is malformed, inconsistent, or asked for something it does not contain."""


# ------------------------------------------------------------------------------ generation

# Visual-only dimensions (m). The real links are not cylinders; nothing safety-related reads these.
_BASE_MARGIN_M = 0.15
_BASE_THICKNESS_M = 0.05
_GRIPPER_BODY_M = (0.04, 0.10, 0.08)  # x, y, z; the palm face is at z = body height
_FINGER_M = (0.02, 0.01, 0.05)

_MATERIALS = {
    "ate_base": "0.35 0.35 0.38 1",
    "ate_link": "0.92 0.92 0.92 1",
    "ate_joint": "0.25 0.25 0.28 1",
    "ate_gripper": "0.15 0.15 0.15 1",
}


def _fmt(x: float) -> str:
    """Shortest text that reads back as the same double, so limits survive the file exactly."""
    x = float(x)
    if abs(x) < 1e-12:
        return "0"
    text = repr(x)
    return text[:-2] if text.endswith(".0") else text


def _fmts(values: Iterable[float]) -> str:
    return " ".join(_fmt(v) for v in values)


def _snap(t: np.ndarray) -> np.ndarray:
    """Zero the 1e-17 residues of cos(pi/2) so the file reads as the table does."""
    return np.where(np.abs(t) < 1e-15, 0.0, t)


def _origin(parent: ET.Element, transform: np.ndarray) -> None:
    t = _snap(np.asarray(transform, dtype=np.float64))
    ET.SubElement(parent, "origin", xyz=_fmts(t[:3, 3]), rpy=_fmts(matrix_to_rpy(t[:3, :3])))


def _pose(xyz: Sequence[float], rotation: Optional[np.ndarray] = None) -> np.ndarray:
    t = np.eye(4)
    if rotation is not None:
        t[:3, :3] = rotation
    t[:3, 3] = xyz
    return t


def _z_onto(direction: np.ndarray) -> np.ndarray:
    """A rotation taking +z onto ``direction`` (cylinders in URDF lie along their z)."""
    u = direction / np.linalg.norm(direction)
    axis = np.cross([0.0, 0.0, 1.0], u)
    s, c = np.linalg.norm(axis), float(u[2])
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


def _shape(link: ET.Element, transform: np.ndarray, material: str, geometry: str,
           **size: str) -> None:
    """Same primitive as visual and collision (MoveIt/RRT can use the latter)."""
    for kind in ("visual", "collision"):
        element = ET.SubElement(link, kind)
        _origin(element, transform)
        ET.SubElement(ET.SubElement(element, "geometry"), geometry, **size)
        if kind == "visual":
            ET.SubElement(element, "material", name=material)


def _cylinder_between(link: ET.Element, start: np.ndarray, end: np.ndarray, radius: float,
                      material: str) -> None:
    span = np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)
    length = float(np.linalg.norm(span))
    if length < 1e-9:  # RealMan's wrist and shoulder frames coincide pairwise
        return
    _shape(link, _pose((start + end) / 2, _z_onto(span)), material, "cylinder",
           radius=_fmt(radius), length=_fmt(length))


def _joint_radius_m(effort_nm: float) -> float:
    """Bigger drives are bigger housings; visual only."""
    return 0.05 if effort_nm >= 60 else 0.045 if effort_nm >= 30 else 0.04


class _Builder:
    """Accumulates links and joints, refusing a name twice (URDF requires uniqueness)."""

    def __init__(self, robot_name: str) -> None:
        self.robot = ET.Element("robot", name=robot_name)
        self.robot.append(ET.Comment(
            " Generated by ate_core.robot.urdf from ate_core/robot/models.py and the arm layout; "
            "do not edit, regenerate. Link {prefix}_link{i} is MDH frame i of that arm. "))
        for name, rgba in _MATERIALS.items():
            ET.SubElement(ET.SubElement(self.robot, "material", name=name), "color", rgba=rgba)
        self.links: Dict[str, ET.Element] = {}
        self.joints: Dict[str, ET.Element] = {}

    def link(self, name: str) -> ET.Element:
        if name in self.links:
            raise UrdfError(f"generated URDF: link name {name!r} used twice")
        self.links[name] = ET.SubElement(self.robot, "link", name=name)
        return self.links[name]

    def joint(self, name: str, kind: str, parent: str, child: str, origin: np.ndarray,
              axis: Optional[Sequence[float]] = None) -> ET.Element:
        if name in self.joints:
            raise UrdfError(f"generated URDF: joint name {name!r} used twice")
        joint = ET.SubElement(self.robot, "joint", name=name, type=kind)
        ET.SubElement(joint, "parent", link=parent)
        ET.SubElement(joint, "child", link=child)
        _origin(joint, origin)
        if axis is not None:
            ET.SubElement(joint, "axis", xyz=_fmts(axis))
        self.joints[name] = joint
        return joint


def _add_arm(b: _Builder, base_link: str, arm: ArmPlacement) -> None:
    model = arm.model
    origins = _snap(kinematics.mdh_joint_transforms(model, np.zeros(model.dof)))
    next_origin = [origins[i, :3, 3] for i in range(model.dof)]  # joint i+1's origin in frame i
    radii = [_joint_radius_m(e) for e in model.effort_nm]
    zero = np.zeros(3)

    b.joint(f"{arm.prefix}_mount", "fixed", base_link, arm.base_link, arm.mount.matrix())
    _cylinder_between(b.link(arm.base_link), zero, next_origin[0], radii[0], "ate_link")

    parent = arm.base_link
    for i, (joint_name, link_name) in enumerate(zip(arm.joint_names, arm.link_names)):
        joint = b.joint(joint_name, "revolute", parent, link_name, origins[i], axis=(0, 0, 1))
        ET.SubElement(joint, "limit", lower=_fmt(model.lower_rad[i]),
                      upper=_fmt(model.upper_rad[i]), effort=_fmt(model.effort_nm[i]),
                      velocity=_fmt(model.max_velocity_rad_s[i]))
        link = b.link(link_name)
        r = radii[i]
        housing_len = 2 * r + 0.02
        last = i == model.dof - 1
        # The last housing ends at the flange face, which is frame dof's origin.
        _shape(link, _pose((0, 0, -housing_len / 2 if last else 0.0)), "ate_joint", "cylinder",
               radius=_fmt(r), length=_fmt(housing_len))
        if not last:
            _cylinder_between(link, zero, next_origin[i + 1], 0.8 * r, "ate_link")
        parent = link_name

    b.joint(f"{arm.prefix}_flange_joint", "fixed", parent, arm.flange_link, np.eye(4))
    b.link(arm.flange_link)
    b.joint(f"{arm.prefix}_tcp_joint", "fixed", arm.flange_link, arm.tcp_link, arm.tcp.matrix())
    b.link(arm.tcp_link)
    _add_gripper(b, arm)


def _add_gripper(b: _Builder, arm: ArmPlacement) -> None:
    p = arm.prefix
    body_x, body_y, body_z = _GRIPPER_BODY_M
    fx, fy, fz = _FINGER_M
    half = GRIPPER_MAX_OPENING_M / 2
    palm = _pose((0, 0, body_z))

    b.joint(f"{p}_gripper_base_joint", "fixed", arm.flange_link, f"{p}_gripper_base", np.eye(4))
    _shape(b.link(f"{p}_gripper_base"), _pose((0, 0, body_z / 2)), "ate_gripper", "box",
           size=_fmts((body_x, body_y, body_z)))

    opening = b.joint(arm.gripper_joint, "prismatic", f"{p}_gripper_base",
                      f"{p}_gripper_opening", palm, axis=(0, 1, 0))
    ET.SubElement(opening, "limit", lower="0", upper=_fmt(GRIPPER_MAX_OPENING_M),
                  effort=_fmt(GRIPPER_MAX_FORCE_N), velocity=_fmt(GRIPPER_MAX_SPEED_M_S))
    b.link(f"{p}_gripper_opening")  # invisible: the joint's value, not a body

    for n, sign in ((1, 1.0), (2, -1.0)):
        finger = b.joint(f"{p}_gripper_finger{n}_joint", "prismatic", f"{p}_gripper_base",
                         f"{p}_gripper_finger{n}", palm, axis=(0, 1, 0))
        lower, upper = (0.0, half) if sign > 0 else (-half, 0.0)
        ET.SubElement(finger, "limit", lower=_fmt(lower), upper=_fmt(upper),
                      effort=_fmt(GRIPPER_MAX_FORCE_N), velocity=_fmt(GRIPPER_MAX_SPEED_M_S / 2))
        ET.SubElement(finger, "mimic", joint=arm.gripper_joint, multiplier=_fmt(0.5 * sign),
                      offset="0")
        # At opening 0 the inner faces touch at y = 0.
        _shape(b.link(f"{p}_gripper_finger{n}"), _pose((0, sign * fy / 2, fz / 2)),
               "ate_gripper", "box", size=_fmts((fx, fy, fz)))


def _add_base(b: _Builder, layout: BimanualLayout) -> None:
    mounts = np.array([arm.mount.xyz_m for arm in layout.arms])
    lo = mounts.min(axis=0) - _BASE_MARGIN_M
    hi = mounts.max(axis=0) + _BASE_MARGIN_M
    top = mounts[:, 2].min()
    size = (hi[0] - lo[0], hi[1] - lo[1], _BASE_THICKNESS_M)
    centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, top - _BASE_THICKNESS_M / 2)
    _shape(b.link(layout.base_link), _pose(centre), "ate_base", "box", size=_fmts(size))


def bimanual_urdf(layout: BimanualLayout, robot_name: str = "ate_bimanual") -> str:
    """URDF XML of the robot: ``base_link`` (the world frame), then each arm with its gripper."""
    b = _Builder(robot_name)
    _add_base(b, layout)
    for arm in layout.arms:
        _add_arm(b, layout.base_link, arm)
    ET.indent(b.robot, space="  ")
    text = '<?xml version="1.0"?>\n' + ET.tostring(b.robot, encoding="unicode") + "\n"
    parse_urdf(text)  # the reader's consistency checks: one tree, every link reachable
    return text


def write_bimanual_urdf(layout: BimanualLayout, path: Union[str, Path],
                        robot_name: str = "ate_bimanual") -> Path:
    """Write :func:`bimanual_urdf` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bimanual_urdf(layout, robot_name), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class UrdfMimic:
    joint: str
    multiplier: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class UrdfJoint:
    """One ``<joint>``; limits are None where the URDF gives no ``<limit>``."""

    name: str
    type: str
    parent: str
    child: str
    origin_xyz: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    origin_rpy: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    axis: Tuple[float, float, float] = (1.0, 0.0, 0.0)  # the URDF default
    lower: Optional[float] = None
    upper: Optional[float] = None
    velocity: Optional[float] = None
    effort: Optional[float] = None
    mimic: Optional[UrdfMimic] = None

    @property
    def movable(self) -> bool:
        return self.type in ("revolute", "continuous", "prismatic")


@dataclass(frozen=True)
class UrdfRobot:
    name: str
    links: Tuple[str, ...]
    joints: Mapping[str, UrdfJoint]  # in document order

    @property
    def root(self) -> str:
        children = {j.child for j in self.joints.values()}
        return next(link for link in self.links if link not in children)


_JOINT_TYPES = ("revolute", "continuous", "prismatic", "fixed", "floating", "planar")


def _floats(text: Optional[str], n: int, default: Tuple[float, ...],
            where: str) -> Tuple[float, ...]:
    if text is None:
        return default
    try:
        values = tuple(float(v) for v in text.split())
    except ValueError:
        raise UrdfError(f"{where}: not numbers: {text!r}") from None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise UrdfError(f"{where}: expected {n} finite numbers, got {text!r}")
    return values


def _attr_float(element: ET.Element, key: str, where: str, default: Optional[float] = None
                ) -> Optional[float]:
    text = element.get(key)
    return default if text is None else _floats(text, 1, (), f"{where} {key}")[0]


def _parse_joint(element: ET.Element) -> UrdfJoint:
    name = element.get("name")
    if not name:
        raise UrdfError("<joint> without a name")
    where = f"joint {name!r}"
    kind = element.get("type")
    if kind not in _JOINT_TYPES:
        raise UrdfError(f"{where}: unknown type {kind!r}")
    links = {}
    for tag in ("parent", "child"):
        sub = element.find(tag)
        if sub is None or not sub.get("link"):
            raise UrdfError(f"{where}: missing <{tag} link=...>")
        links[tag] = sub.get("link")
    origin = element.find("origin")
    xyz = _floats(None if origin is None else origin.get("xyz"), 3, (0.0, 0.0, 0.0),
                  f"{where} origin xyz")
    rpy = _floats(None if origin is None else origin.get("rpy"), 3, (0.0, 0.0, 0.0),
                  f"{where} origin rpy")
    axis_el = element.find("axis")
    axis = _floats(None if axis_el is None else axis_el.get("xyz"), 3, (1.0, 0.0, 0.0),
                   f"{where} axis")
    if kind in ("revolute", "continuous", "prismatic") and np.linalg.norm(axis) < 1e-9:
        raise UrdfError(f"{where}: zero axis")
    limit = element.find("limit")
    lower = upper = velocity = effort = None
    if limit is not None:
        lower = _attr_float(limit, "lower", f"{where} limit", 0.0)
        upper = _attr_float(limit, "upper", f"{where} limit", 0.0)
        velocity = _attr_float(limit, "velocity", f"{where} limit")
        effort = _attr_float(limit, "effort", f"{where} limit")
    mimic_el = element.find("mimic")
    mimic = None
    if mimic_el is not None:
        if not mimic_el.get("joint"):
            raise UrdfError(f"{where}: <mimic> without joint")
        mimic = UrdfMimic(mimic_el.get("joint"),
                          _attr_float(mimic_el, "multiplier", f"{where} mimic", 1.0),
                          _attr_float(mimic_el, "offset", f"{where} mimic", 0.0))
    return UrdfJoint(name, kind, links["parent"], links["child"], xyz, rpy, axis,
                     lower, upper, velocity, effort, mimic)


def parse_urdf(xml: str) -> UrdfRobot:
    """Joints and links of a URDF, checked to form one tree with unique names."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UrdfError(f"URDF is not well-formed XML: {exc}") from None
    if root.tag != "robot":
        raise UrdfError(f"URDF root element is <{root.tag}>, expected <robot>")
    links: List[str] = []
    for element in root.findall("link"):
        name = element.get("name")
        if not name:
            raise UrdfError("<link> without a name")
        if name in links:
            raise UrdfError(f"link name {name!r} used twice")
        links.append(name)
    joints: Dict[str, UrdfJoint] = {}
    parent_of: Dict[str, str] = {}
    for element in root.findall("joint"):
        joint = _parse_joint(element)
        if joint.name in joints:
            raise UrdfError(f"joint name {joint.name!r} used twice")
        for link in (joint.parent, joint.child):
            if link not in links:
                raise UrdfError(f"joint {joint.name!r}: no link named {link!r}")
        if joint.child in parent_of:
            raise UrdfError(f"link {joint.child!r} is the child of both "
                            f"{parent_of[joint.child]!r} and {joint.name!r}")
        parent_of[joint.child] = joint.name
        joints[joint.name] = joint
    for joint in joints.values():
        if joint.mimic is not None and joint.mimic.joint not in joints:
            raise UrdfError(f"joint {joint.name!r} mimics unknown joint {joint.mimic.joint!r}")
    roots = [link for link in links if link not in parent_of]
    if len(roots) != 1:
        raise UrdfError(f"URDF must have exactly one root link, has {roots}")
    for link in links:  # a cycle leaves links that never reach the root
        seen = set()
        while link in parent_of:
            if link in seen:
                raise UrdfError(f"URDF has a kinematic loop through link {link!r}")
            seen.add(link)
            link = joints[parent_of[link]].parent
    return UrdfRobot(root.get("name", ""), tuple(links), joints)


def _rot_rpy(rpy: Sequence[float]) -> np.ndarray:
    """URDF's fixed-axis rpy, as the product of the three elementary rotations."""
    roll, pitch, yaw = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(roll), -math.sin(roll)],
                   [0, math.sin(roll), math.cos(roll)]])
    ry = np.array([[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0],
                   [-math.sin(pitch), 0, math.cos(pitch)]])
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0],
                   [0, 0, 1]])
    return rz @ ry @ rx


def _joint_motion(joint: UrdfJoint, value: np.ndarray) -> np.ndarray:
    """The joint's own motion at ``value`` (batched), about/along its unit axis."""
    axis = np.asarray(joint.axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    out = np.broadcast_to(np.eye(4), value.shape + (4, 4)).copy()
    if joint.type == "prismatic":
        out[..., :3, 3] = value[..., None] * axis
        return out
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    s, c = np.sin(value)[..., None, None], np.cos(value)[..., None, None]
    out[..., :3, :3] = np.eye(3) + s * k + (1 - c) * (k @ k)  # Rodrigues
    return out


def _joint_value(joint: UrdfJoint, joints: Mapping[str, UrdfJoint],
                 values: Mapping[str, Union[float, np.ndarray]], depth: int = 0) -> np.ndarray:
    if joint.mimic is not None:
        if depth > len(joints):
            raise UrdfError(f"joint {joint.name!r}: mimic chain loops")
        source = joints[joint.mimic.joint]
        return (joint.mimic.multiplier * _joint_value(source, joints, values, depth + 1)
                + joint.mimic.offset)
    if joint.name not in values:
        raise UrdfError(f"no value given for joint {joint.name!r}")
    return np.asarray(values[joint.name], dtype=np.float64)


def urdf_chain_fk(joints: Union[Mapping[str, UrdfJoint], Iterable[UrdfJoint]], root: str,
                  tip: str, joint_values: Mapping[str, Union[float, np.ndarray]]) -> np.ndarray:
    """Pose of link ``tip`` in link ``root`` from the URDF alone.

    Only the movable joints between root and tip need values; mimic joints take theirs from
    the joint they mimic. Values may be arrays of one batch shape ``[...]``; the result is
    ``[..., 4, 4]``.
    """
    if not isinstance(joints, Mapping):
        joints = {j.name: j for j in joints}
    by_child = {j.child: j for j in joints.values()}
    chain: List[UrdfJoint] = []
    link = tip
    while link != root:
        joint = by_child.get(link)
        if joint is None:
            raise UrdfError(f"link {tip!r} is not below link {root!r}")
        chain.append(joint)
        link = joint.parent
    pose = np.eye(4)
    for joint in reversed(chain):
        origin = np.eye(4)
        origin[:3, :3] = _rot_rpy(joint.origin_rpy)
        origin[:3, 3] = joint.origin_xyz
        pose = pose @ origin
        if joint.type in ("revolute", "continuous", "prismatic"):
            pose = pose @ _joint_motion(joint, _joint_value(joint, joints, joint_values))
        elif joint.type != "fixed":
            raise UrdfError(f"joint {joint.name!r}: type {joint.type!r} has no 1-DoF value")
    return pose
