"""The twin's MuJoCo model, built from the robot's own URDF: one source of truth.

The arms are not described twice. :func:`ate_core.robot.urdf.bimanual_urdf` writes the URDF the
robot runs with (MDH frames as links, limits from :mod:`ate_core.robot.models`, mounts and TCPs
from the layout), MuJoCo's own URDF importer reads it into an ``MjSpec``, and this module adds
with the MjSpec API only what a URDF cannot say:

* **Servos.** A position actuator per arm joint, as RealMan's joint servo: its stiffness and
  damping put every joint at the same natural frequency at the home pose (gains scaled by the
  joint's own inertia there, read from the compiled model), its torque capped at the joint's
  rated effort, and gravity compensated on the robot's bodies as the controller's feedforward
  does. Each joint also gets reflected rotor inertia (armature), without which the light wrist
  links would need a far smaller timestep to stay stable under a stiff servo.
* **The gripper.** The URDF has one prismatic joint ``{prefix}_gripper`` (the opening, m) on a
  massless link and two fingers that follow it through ``<mimic>``. MuJoCo 3.3 ignores
  ``<mimic>`` and refuses a moving massless body, so the opening link is removed; a fixed tendon
  named after the gripper joint measures finger1 - finger2 (the opening, in metres, as the URDF
  joint's value), an equality keeps the fingers mirrored (the mimic's +-0.5), and one actuator
  on the tendon stands for the gripper's motor: a stiff servo, its force capped at RealMan's
  1.5 kg grip, on a setpoint that moves at the rated speed (MuJoCo's ``intvelocity``: the
  setpoint is the actuator's activation, integrated from its control, which the twin sets).
  A force-capped servo with a damper alone would either close 8x faster than rated or creep
  onto its target with a 0.7 s time constant. Each finger gets a rubber pad on its inner face
  (high sliding and torsional friction), flush with the face, so the opening the tendon reads
  is the gap between the pads.
* **Contact.** Robot geoms touch the scene (table, objects) but not each other: the URDF's
  primitives overlap at every joint, and keeping the arms apart is the safety filter's job, not
  the simulation's.
* **The scene** (:class:`ate_core.twin.config.TwinConfig`): table, floor, free boxes, a target
  marker moved through a mocap body, lights, and the cameras at their mounts, with the field of
  view the robot's camera config gives (``camera_info`` and the rendered image agree).

Joint, link and camera names are the robot's: ``left_joint3`` is a MuJoCo joint, ``left_flange``
a body, ``left_tcp`` both a body and a site. Physics: implicitfast integration (the servo
damping is integrated implicitly), elliptic friction cones with ``impratio`` 10, which keeps a
grasped object from creeping out of the fingers.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, Mapping, Tuple

import numpy as np

from ate_core.robot.config import BimanualConfig, CameraConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.layout import ArmPlacement, BimanualLayout
from ate_core.robot.models import (GRIPPER_MAX_FORCE_N, GRIPPER_MAX_OPENING_M,
                                   GRIPPER_MAX_SPEED_M_S, RM65_B, ArmModel)
from ate_core.robot.urdf import bimanual_urdf
from ate_core.twin.config import TwinConfig
from ate_core.twin.gl import import_mujoco

mujoco = import_mujoco()

__all__ = ["TwinModelError", "TwinRobot", "RM65_B_HOME_RAD", "rm65_variant", "ArmIndex",
           "TwinModel", "twin_urdf", "build_spec", "build_model", "go_home"]

#: RM65-B joint angles that put its TCP exactly where RM75-B's configured home puts it
#: ((0, 0.5, 0, 1.6, 0, 1.0, 0): flange 0.31 m in front of the mount, pointing down):
#: RM65-B's 90-degree offsets on joints 2 and 3 and its alpha signs mirror RM75-B's joints
#: 2, 4 and 6, and joint 6 turns the flange half a turn so that its x and y axes (the
#: gripper's closing direction) agree too (checked by the tests through forward kinematics).
RM65_B_HOME_RAD = (0.0, -0.5, -1.6, 0.0, -1.0, math.pi)

# Servo: every arm joint a critically damped second-order system at this natural frequency at
# home. At 30 Hz the lag behind a ramp is 2/omega = 11 ms (measured: 5 mrad behind a 100 Hz
# target stream moving at 0.94 rad/s), and the explicitly integrated stiffness stays at
# omega*dt = 0.38 for a 2 ms step, well inside the stable range (< 2).
_ARM_NATURAL_FREQUENCY_HZ = 30.0
_ARM_DAMPING_RATIO = 1.0
# Reflected rotor inertia per N m of rated torque, s^2 (kg m^2 / N m): 0.3 kg m^2 on the 60 N m
# shoulder drives, 0.05 on the 10 N m wrist drives; harmonic-drive joints of this size are of
# that order, and it is what makes the wrist's inertia independent of the pose.
_ARMATURE_PER_NM_S2 = 0.005

# Gripper: 2 kN/m reaches the force cap 7 mm short of the setpoint, so a closed gripper squeezes
# any object wider than that with the full rated force; with the fingers' 0.03 kg (armature
# included) as seen along the opening, 20 N s/m is about critical damping and trails a setpoint
# moving at the rated speed by 1 mm.
_GRIPPER_STIFFNESS_N_M = 2000.0
_GRIPPER_DAMPING_N_S_M = 20.0
_FINGER_ARMATURE_KG = 0.05
_PAD_THICKNESS_M = 0.002
_PAD_FRICTION = (1.5, 0.01, 0.0001)  # sliding, torsional, rolling
_PAD_RGBA = (0.05, 0.05, 0.05, 1.0)

# Contact classes (contype / conaffinity bits): robot geoms touch the scene, not each other.
_SCENE_BIT = 1
_ROBOT_BIT = 2
_HIDDEN_GROUP = 4  # geom/site group no camera shows (MuJoCo draws groups 0-2 by default)

# Rendering runs on the CPU where EGL is Mesa's llvmpipe. Measured there (96x96 / 640x480 head
# frame): 5 / 10 ms plain, 10 / 30 ms with 4x multisampling, 13 / 29 ms with a 512 px shadow
# map, 122 / 88 ms with MuJoCo's defaults (both, 4096 px); three cameras at 30 Hz must leave a
# 2-core machine room for the physics and the policy, so the key light casts no shadow and the
# offscreen buffer is not multisampled.
_FLOOR_BELOW_TABLE_M = 0.75
_MIN_OFFSCREEN = (640, 480)


class TwinModelError(ValueError):
    """The robot and the scene cannot make a model: the message names the part and why."""


@dataclass(frozen=True)
class TwinRobot:
    """What of the robot the twin simulates: arms (the layout), their home poses, the cameras'
    resolution and field of view, and the robot's name (its URDF's)."""

    layout: BimanualLayout
    home_rad: Mapping[str, Tuple[float, ...]]
    cameras: Mapping[str, CameraConfig]
    robot_name: str = "ate_bimanual"

    def __post_init__(self) -> None:
        homes = {p: tuple(float(v) for v in q) for p, q in self.home_rad.items()}
        object.__setattr__(self, "home_rad", MappingProxyType(homes))
        object.__setattr__(self, "cameras", MappingProxyType(dict(self.cameras)))
        for arm in self.layout:
            home = homes.get(arm.prefix)
            if home is None:
                raise TwinModelError(f"arm {arm.prefix!r}: no home pose")
            model = arm.model
            if len(home) != model.dof:
                raise TwinModelError(f"arm {arm.prefix!r}: home has {len(home)} angles for the "
                                     f"{model.dof} joints of {model.name}")
            for i, (q, lo, hi) in enumerate(zip(home, model.lower_rad, model.upper_rad)):
                if not lo <= q <= hi:
                    raise TwinModelError(f"arm {arm.prefix!r}: home joint {i + 1} = {q} rad is "
                                         f"outside [{lo:.4f}, {hi:.4f}]")
        extra = sorted(set(homes) - set(self.layout.prefixes))
        if extra:
            raise TwinModelError(f"home poses for arms the layout lacks: {extra}")

    @classmethod
    def from_config(cls, cfg: BimanualConfig) -> "TwinRobot":
        return cls(layout_from_config(cfg),
                   {side: arm.home_rad for side, arm in cfg.arms.items()},
                   cfg.cameras, cfg.robot_name)

    def with_arm_model(self, model: ArmModel, home_rad: Tuple[float, ...]) -> "TwinRobot":
        """The same robot with every arm replaced by ``model`` at the same mount and TCP.

        Joint names fall back to ``{prefix}_joint{i}``: names configured for another model's
        joints would not fit.
        """
        arms = tuple(ArmPlacement(arm.prefix, model, arm.mount, arm.tcp,
                                  gripper_joint_name=arm.gripper_joint_name)
                     for arm in self.layout)
        return TwinRobot(BimanualLayout(arms, self.layout.base_link),
                         {arm.prefix: home_rad for arm in arms}, self.cameras, self.robot_name)


def rm65_variant(robot: TwinRobot) -> TwinRobot:
    """The robot with RM65-B arms: the source embodiment of the cross-embodiment benchmark."""
    return robot.with_arm_model(RM65_B, RM65_B_HOME_RAD)


@dataclass(frozen=True)
class ArmIndex:
    """Where one arm lives in the compiled model (indices into qpos, qvel, ctrl, sites)."""

    prefix: str
    qpos: np.ndarray
    qvel: np.ndarray
    actuators: np.ndarray
    finger_qpos: np.ndarray  # finger1, finger2
    finger_qvel: np.ndarray
    gripper_actuator: int
    gripper_setpoint: int  # index into act: the gripper servo's setpoint, m
    tcp_site: int
    home_rad: np.ndarray


@dataclass(frozen=True)
class TwinModel:
    """A compiled twin: the MuJoCo model and the names the :class:`~ate_core.twin.twin.Twin`
    reads and writes it by."""

    model: "mujoco.MjModel"
    arms: Mapping[str, ArmIndex]
    objects: Mapping[str, int]  # qpos address of each object's free joint
    target_mocap: int
    cameras: Tuple[str, ...]
    scene: TwinConfig


def twin_urdf(robot: TwinRobot) -> str:
    """The robot's URDF with the ``<mujoco>`` element that tells MuJoCo's importer to keep
    every link a body (the flange and TCP links carry the wrist cameras and TCP sites) and to
    keep only the collision primitives, whose volumes (at the density of water) give the links
    the masses the URDF does not state."""
    root = ET.fromstring(bimanual_urdf(robot.layout, robot.robot_name))
    extension = ET.Element("mujoco")
    ET.SubElement(extension, "compiler", fusestatic="false", discardvisual="true")
    root.insert(0, extension)
    return ET.tostring(root, encoding="unicode")


def _look_at_quat(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Quaternion of a MuJoCo camera at ``eye`` looking at ``target``: it looks along its -z
    with +y up in the image."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    image_up = np.cross(right, forward)
    rotation = np.column_stack([right, image_up, -forward])
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rotation.flatten())
    return quat


def _vertical_fov_deg(camera: CameraConfig) -> float:
    half = math.radians(camera.horizontal_fov_deg) / 2
    return math.degrees(2 * math.atan(math.tan(half) * camera.height / camera.width))


def _robot_body(spec: "mujoco.MjSpec", name: str) -> "mujoco.MjsBody":
    body = spec.body(name)
    if body is None:
        raise TwinModelError(f"the robot's URDF has no link {name!r}")
    return body


def _add_gripper(spec: "mujoco.MjSpec", arm: ArmPlacement) -> None:
    p = arm.prefix
    spec.delete(_robot_body(spec, f"{p}_gripper_opening"))
    fingers = (f"{p}_gripper_finger1_joint", f"{p}_gripper_finger2_joint")
    for name in fingers:
        spec.joint(name).armature = _FINGER_ARMATURE_KG
    spec.add_equality(type=mujoco.mjtEq.mjEQ_JOINT, name=f"{p}_gripper_mirror",
                      name1=fingers[1], name2=fingers[0], data=[0.0, -1.0] + [0.0] * 9)
    tendon = spec.add_tendon(name=arm.gripper_joint)
    tendon.wrap_joint(fingers[0], 1.0)
    tendon.wrap_joint(fingers[1], -1.0)
    actuator = spec.add_actuator(name=arm.gripper_joint, target=arm.gripper_joint,
                                 trntype=mujoco.mjtTrn.mjTRN_TENDON)
    actuator.set_to_intvelocity(kp=_GRIPPER_STIFFNESS_N_M, kv=_GRIPPER_DAMPING_N_S_M)
    actuator.ctrlrange = [-GRIPPER_MAX_SPEED_M_S, GRIPPER_MAX_SPEED_M_S]
    actuator.ctrllimited = True
    actuator.actrange = [0.0, GRIPPER_MAX_OPENING_M]
    actuator.actlimited = True
    actuator.forcerange = [-GRIPPER_MAX_FORCE_N, GRIPPER_MAX_FORCE_N]
    actuator.forcelimited = True
    for n, sign in ((1, 1.0), (2, -1.0)):
        body = _robot_body(spec, f"{p}_gripper_finger{n}")
        finger = body.first_geom()
        half = np.array(finger.size)
        pad_centre = np.array(finger.pos)
        pad_centre[1] = sign * _PAD_THICKNESS_M / 2  # the finger's inner face is at y = 0
        body.add_geom(name=f"{p}_gripper_pad{n}", type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=[half[0], _PAD_THICKNESS_M / 2, half[2]], pos=pad_centre,
                      friction=_PAD_FRICTION, condim=4, rgba=_PAD_RGBA, density=0.0,
                      contype=_ROBOT_BIT, conaffinity=_SCENE_BIT)


def _add_servos(spec: "mujoco.MjSpec", arm: ArmPlacement) -> None:
    model = arm.model
    for i, name in enumerate(arm.joint_names):
        spec.joint(name).armature = _ARMATURE_PER_NM_S2 * model.effort_nm[i]
        actuator = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        actuator.set_to_position(kp=1.0, kv=0.0)  # gains set from the inertia at home
        actuator.ctrlrange = [model.lower_rad[i], model.upper_rad[i]]
        actuator.ctrllimited = True
        actuator.forcerange = [-model.effort_nm[i], model.effort_nm[i]]
        actuator.forcelimited = True
    _robot_body(spec, arm.tcp_link).add_site(name=arm.tcp_link, group=_HIDDEN_GROUP)


def _add_scene(spec: "mujoco.MjSpec", scene: TwinConfig) -> None:
    world = spec.worldbody
    table = scene.table
    half_t = table.thickness_m / 2
    scene_contact = dict(contype=_SCENE_BIT, conaffinity=_SCENE_BIT | _ROBOT_BIT)
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.05],
                   pos=[0.0, 0.0, table.top_z_m - _FLOOR_BELOW_TABLE_M],
                   rgba=[0.55, 0.55, 0.58, 1.0], **scene_contact)
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX,
                   size=[table.size_xy_m[0] / 2, table.size_xy_m[1] / 2, half_t],
                   pos=[table.centre_xy_m[0], table.centre_xy_m[1], table.top_z_m - half_t],
                   friction=[table.friction, 0.005, 0.0001], rgba=[0.62, 0.48, 0.34, 1.0],
                   **scene_contact)
    for name, obj in scene.objects.items():
        body = world.add_body(name=name, pos=[0.0, 0.0, table.top_z_m + obj.size_m[2] / 2])
        body.add_freejoint(name=name)
        body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=[s / 2 for s in obj.size_m], mass=obj.mass_kg, rgba=list(obj.rgba),
                      friction=[obj.friction, 0.005, 0.0001], **scene_contact)
    target = world.add_body(name="target", mocap=True, pos=[0.0, 0.0, table.top_z_m])
    target.add_geom(name="target", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                    size=[scene.target.radius_m, 0.0005, 0.0], pos=[0.0, 0.0, 0.001],
                    rgba=list(scene.target.rgba), contype=0, conaffinity=0)
    target.add_site(name="target", group=_HIDDEN_GROUP)
    world.add_light(name="key", type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                    pos=[0.3, 0.4, 2.0], dir=[0.1, -0.2, -1.0], diffuse=[0.6, 0.6, 0.6],
                    specular=[0.1, 0.1, 0.1], castshadow=False)


def _add_cameras(spec: "mujoco.MjSpec", robot: TwinRobot, scene: TwinConfig) -> None:
    for name, camera in robot.cameras.items():
        mount = scene.cameras.get(name)
        if mount is None:
            raise TwinModelError(f"camera {name!r}: the twin config has no mount for it "
                                 f"(mounts: {sorted(scene.cameras)})")
        body = spec.worldbody if not mount.link else spec.body(mount.link)
        if body is None:
            raise TwinModelError(f"camera {name!r}: mounted on link {mount.link!r}, which the "
                                 f"robot's URDF does not have")
        eye = np.asarray(mount.xyz_m, dtype=np.float64)
        quat = _look_at_quat(eye, np.asarray(mount.look_at_m, dtype=np.float64),
                             np.asarray(mount.up, dtype=np.float64))
        body.add_camera(name=name, pos=eye, quat=quat, fovy=_vertical_fov_deg(camera))


def build_spec(robot: TwinRobot, scene: TwinConfig = TwinConfig()) -> "mujoco.MjSpec":
    """The twin as an ``MjSpec`` with provisional servo gains (:func:`build_model` sets them);
    ``spec.to_xml()`` shows it as MJCF."""
    spec = mujoco.MjSpec.from_string(twin_urdf(robot))
    # The importer has dropped the URDF's visuals by now; left on, the flag would also delete
    # at compile time every geom that touches nothing, the target marker among them.
    spec.compiler.discardvisual = False
    spec.modelname = robot.robot_name
    for geom in spec.geoms:
        geom.contype, geom.conaffinity = _ROBOT_BIT, _SCENE_BIT
    for body in spec.bodies:
        if body.name not in ("world", robot.layout.base_link):
            body.gravcomp = 1.0
    for arm in robot.layout:
        _add_servos(spec, arm)
        _add_gripper(spec, arm)
    _add_scene(spec, scene)
    _add_cameras(spec, robot, scene)
    option = spec.option
    option.timestep = scene.timestep_s
    option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    option.impratio = 10.0
    sizes = [(c.width, c.height) for c in robot.cameras.values()] + [_MIN_OFFSCREEN]
    spec.visual.global_.offwidth = max(w for w, _ in sizes)
    spec.visual.global_.offheight = max(h for _, h in sizes)
    spec.visual.quality.offsamples = 0
    return spec


def _index(model: "mujoco.MjModel", robot: TwinRobot, scene: TwinConfig) -> TwinModel:
    arms: Dict[str, ArmIndex] = {}
    for arm in robot.layout:
        joints = [model.joint(name) for name in arm.joint_names]
        fingers = [model.joint(f"{arm.prefix}_gripper_finger{n}_joint") for n in (1, 2)]
        arms[arm.prefix] = ArmIndex(
            prefix=arm.prefix,
            qpos=np.array([j.qposadr[0] for j in joints]),
            qvel=np.array([j.dofadr[0] for j in joints]),
            actuators=np.array([model.actuator(name).id for name in arm.joint_names]),
            finger_qpos=np.array([j.qposadr[0] for j in fingers]),
            finger_qvel=np.array([j.dofadr[0] for j in fingers]),
            gripper_actuator=model.actuator(arm.gripper_joint).id,
            gripper_setpoint=int(model.actuator(arm.gripper_joint).actadr[0]),
            tcp_site=model.site(arm.tcp_link).id,
            home_rad=np.array(robot.home_rad[arm.prefix]))
    objects = {name: int(model.joint(name).qposadr[0]) for name in scene.objects}
    target = int(model.body("target").mocapid[0])
    return TwinModel(model, MappingProxyType(arms), MappingProxyType(objects), target,
                     tuple(robot.cameras), scene)


def go_home(twin_model: TwinModel, data: "mujoco.MjData") -> None:
    """Every arm at home and every gripper open, at rest, the setpoints with them."""
    for arm in twin_model.arms.values():
        data.qpos[arm.qpos] = arm.home_rad
        data.ctrl[arm.actuators] = arm.home_rad
        data.qpos[arm.finger_qpos] = (GRIPPER_MAX_OPENING_M / 2, -GRIPPER_MAX_OPENING_M / 2)
        data.qvel[arm.qvel] = 0.0
        data.qvel[arm.finger_qvel] = 0.0
        data.act[arm.gripper_setpoint] = GRIPPER_MAX_OPENING_M
        data.ctrl[arm.gripper_actuator] = 0.0


def build_model(robot: TwinRobot, scene: TwinConfig = TwinConfig()) -> TwinModel:
    """Compile the twin, with each arm servo's gains scaled by its joint's inertia at home."""
    spec = build_spec(robot, scene)
    try:
        provisional = _index(spec.compile(), robot, scene)
    except ValueError as e:  # MuJoCo's compiler errors
        raise TwinModelError(f"MuJoCo could not compile the twin: {e}") from None
    data = mujoco.MjData(provisional.model)
    go_home(provisional, data)
    mujoco.mj_forward(provisional.model, data)
    inertia = np.zeros((provisional.model.nv, provisional.model.nv))
    mujoco.mj_fullM(provisional.model, inertia, data.qM)
    omega = 2 * math.pi * _ARM_NATURAL_FREQUENCY_HZ
    for arm in robot.layout:
        index = provisional.arms[arm.prefix]
        for name, dof in zip(arm.joint_names, index.qvel):
            m = inertia[dof, dof]
            spec.actuator(name).set_to_position(kp=m * omega ** 2,
                                                kv=2 * _ARM_DAMPING_RATIO * omega * m)
    return _index(spec.compile(), robot, scene)
