"""The simulated robot: joint targets in, physics stepped on request, joint state, poses and
camera frames out.

:class:`Twin` is pure in the project's sense: it never reads a clock, sleeps or starts a thread.
Its caller (the controller emulators, a task's episode loop, a benchmark) passes the time to
advance, so the same episode runs in real time behind the ROS stack or as fast as the CPU goes
offline, step for step identical. Angles are radians in RealMan's joint order (joint 1 at the
base), gripper openings are the finger gap in metres (0 .. 0.07), poses are 4x4 transforms in
the robot's ``base_link``.
"""

from __future__ import annotations

import atexit
import math
import weakref
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot.models import GRIPPER_MAX_OPENING_M, GRIPPER_MAX_SPEED_M_S
from ate_core.twin.config import TwinConfig
from ate_core.twin.gl import TwinRenderError, backend, require_rendering
from ate_core.twin.model import (ArmIndex, TwinModelError, TwinRobot, build_model, go_home,
                                 mujoco)

__all__ = ["Twin"]

#: Attempts at drawing a reset placement in which no two objects (and the target) overlap.
_PLACEMENT_TRIES = 200
_PLACEMENT_GAP_M = 0.01


# Twins holding renderers, closed at interpreter exit: MuJoCo's EGL module terminates the EGL
# display in an atexit hook registered when it was imported, and a renderer freed after that
# raises. The hook below is registered with the first renderer, after MuJoCo's, so it runs first.
_rendering: "weakref.WeakSet[Twin]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_rendering_twins() -> None:
    for twin in list(_rendering):
        twin.close()


def _pose(position: np.ndarray, quat: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    rotation = np.zeros(9)
    mujoco.mju_quat2Mat(rotation, quat)
    out[:3, :3] = rotation.reshape(3, 3)
    out[:3, 3] = position
    return out


class Twin:
    """One simulated robot and its scene (see the module docstring for units and frames).

    ``reset(seed)`` puts every arm at home with its gripper open and draws the objects' and the
    target's places from ``seed``; a new twin starts reset with seed 0. Targets hold until the
    next ``set_*_target``; targets outside a joint's limits or the gripper's stroke are clamped
    to them, as the controller would refuse to go further.
    """

    def __init__(self, robot: TwinRobot, scene: TwinConfig = TwinConfig()) -> None:
        self._twin = build_model(robot, scene)
        self._robot = robot
        self._model = self._twin.model
        self._data = mujoco.MjData(self._model)
        self._renderers: Dict[Tuple[int, int], "mujoco.Renderer"] = {}
        self._goal_s = 0.0
        self._gripper_targets_m: Dict[str, float] = {}
        self._stale = True
        self.reset(0)

    # ----------------------------------------------------------------------- the robot

    @property
    def robot(self) -> TwinRobot:
        return self._robot

    @property
    def arm_prefixes(self) -> Tuple[str, ...]:
        return tuple(self._twin.arms)

    @property
    def object_names(self) -> Tuple[str, ...]:
        return tuple(self._twin.objects)

    @property
    def camera_names(self) -> Tuple[str, ...]:
        return self._twin.cameras

    @property
    def model(self) -> "mujoco.MjModel":
        """The compiled MuJoCo model, for what the twin has no method for (contacts, masses).
        Read it; a change bypasses the twin's bookkeeping."""
        return self._model

    @property
    def data(self) -> "mujoco.MjData":
        """The MuJoCo state, as :attr:`model` to read. Body and site poses in it are those the
        last physics step started from until :meth:`forward` (which poses and frames call)."""
        return self._data

    @property
    def time_s(self) -> float:
        """Simulated time since the last reset."""
        return float(self._data.time)

    @property
    def timestep_s(self) -> float:
        return float(self._model.opt.timestep)

    def _arm(self, prefix: str) -> ArmIndex:
        try:
            return self._twin.arms[prefix]
        except KeyError:
            raise KeyError(f"no arm {prefix!r}; arms: {list(self._twin.arms)}") from None

    def home_rad(self, prefix: str) -> np.ndarray:
        return self._arm(prefix).home_rad.copy()

    def joint_limits_rad(self, prefix: str) -> Tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of the arm's joints as MuJoCo enforces them."""
        ranges = self._model.jnt_range[self._model.dof_jntid[self._arm(prefix).qvel]]
        return ranges[:, 0].copy(), ranges[:, 1].copy()

    # ----------------------------------------------------------------------- time

    def reset(self, seed: int) -> None:
        """Arms home, grippers open, objects and target placed from ``seed``, time 0."""
        mujoco.mj_resetData(self._model, self._data)
        go_home(self._twin, self._data)
        self._gripper_targets_m = {p: GRIPPER_MAX_OPENING_M for p in self._twin.arms}
        self._place_scene(np.random.default_rng(seed))
        self._goal_s = 0.0
        self.forward()

    def step(self, dt_s: float) -> int:
        """Advance the physics by ``dt_s`` in whole timesteps; returns how many were taken.

        A remainder below half a timestep carries over to the next call, so a caller stepping
        by measured wall time does not drift from it.
        """
        if not (math.isfinite(dt_s) and dt_s >= 0.0):
            raise ValueError(f"step: dt_s must be a finite time >= 0, got {dt_s}")
        self._goal_s += dt_s
        n = int(math.floor((self._goal_s - self._data.time) / self.timestep_s + 0.5))
        if n <= 0:
            return 0
        # Each gripper's setpoint heads for its target at no more than the rated speed and,
        # integrated over these n steps, lands on it rather than past it.
        for prefix, arm in self._twin.arms.items():
            gap = self._gripper_targets_m[prefix] - self._data.act[arm.gripper_setpoint]
            self._data.ctrl[arm.gripper_actuator] = np.clip(
                gap / (n * self.timestep_s), -GRIPPER_MAX_SPEED_M_S, GRIPPER_MAX_SPEED_M_S)
        mujoco.mj_step(self._model, self._data, n)
        self._stale = True
        return n

    def forward(self) -> None:
        """Bring body, site and camera poses up to the current joint positions.

        ``mj_step`` leaves them at the positions its last step started from; poses and frames
        call this themselves when the state changed since.
        """
        mujoco.mj_forward(self._model, self._data)
        self._stale = False

    def _fresh(self) -> "mujoco.MjData":
        if self._stale:
            self.forward()
        return self._data

    # ----------------------------------------------------------------------- arms

    def _vector(self, prefix: str, q_rad: Sequence[float]) -> Tuple[ArmIndex, np.ndarray]:
        arm = self._arm(prefix)
        q = np.asarray(q_rad, dtype=np.float64)
        if q.shape != arm.qpos.shape or not np.all(np.isfinite(q)):
            raise ValueError(f"arm {prefix!r}: expected {arm.qpos.size} finite joint angles, "
                             f"got {np.asarray(q_rad).tolist()}")
        return arm, q

    def set_joint_targets(self, prefix: str, q_rad: Sequence[float]) -> None:
        """The servo setpoints of one arm (radians, RealMan's joint order)."""
        arm, q = self._vector(prefix, q_rad)
        self._data.ctrl[arm.actuators] = q

    def set_joint_positions(self, prefix: str, q_rad: Sequence[float]) -> None:
        """Put one arm at ``q_rad`` at rest, its setpoints with it (tests, task set-up)."""
        arm, q = self._vector(prefix, q_rad)
        self._data.qpos[arm.qpos] = q
        self._data.qvel[arm.qvel] = 0.0
        self._data.ctrl[arm.actuators] = q
        self._stale = True

    def joint_positions(self, prefix: str) -> np.ndarray:
        return self._data.qpos[self._arm(prefix).qpos].copy()

    def joint_velocities(self, prefix: str) -> np.ndarray:
        return self._data.qvel[self._arm(prefix).qvel].copy()

    def joint_targets(self, prefix: str) -> np.ndarray:
        """The setpoints the servos hold (after clamping to the joint limits)."""
        arm = self._arm(prefix)
        ranges = self._model.actuator_ctrlrange[arm.actuators]
        return np.clip(self._data.ctrl[arm.actuators], ranges[:, 0], ranges[:, 1])

    def tcp_pose(self, prefix: str) -> np.ndarray:
        """World pose of the arm's TCP (its URDF ``{prefix}_tcp`` link), 4x4."""
        site = self._arm(prefix).tcp_site
        data = self._fresh()
        out = np.eye(4)
        out[:3, :3] = data.site_xmat[site].reshape(3, 3)
        out[:3, 3] = data.site_xpos[site]
        return out

    # ----------------------------------------------------------------------- grippers

    @staticmethod
    def _opening(opening_m: float, prefix: str) -> float:
        opening = float(opening_m)
        if not math.isfinite(opening):
            raise ValueError(f"arm {prefix!r}: gripper opening must be finite, got {opening_m}")
        return min(max(opening, 0.0), GRIPPER_MAX_OPENING_M)

    def set_gripper_target(self, prefix: str, opening_m: float) -> None:
        """The finger gap the gripper moves to at its rated speed, m (0: closed; clamped to
        the stroke). An object in the way is squeezed with the rated force."""
        self._arm(prefix)
        self._gripper_targets_m[prefix] = self._opening(opening_m, prefix)

    def gripper_target(self, prefix: str) -> float:
        self._arm(prefix)
        return self._gripper_targets_m[prefix]

    def set_gripper_opening(self, prefix: str, opening_m: float) -> None:
        """Put the fingers at ``opening_m`` at rest, the target with them."""
        arm = self._arm(prefix)
        opening = self._opening(opening_m, prefix)
        self._data.qpos[arm.finger_qpos] = (opening / 2, -opening / 2)
        self._data.qvel[arm.finger_qvel] = 0.0
        self._data.act[arm.gripper_setpoint] = opening
        self._gripper_targets_m[prefix] = opening
        self._stale = True

    def gripper_opening(self, prefix: str) -> float:
        """The gap between the fingers' pads, m."""
        q = self._data.qpos[self._arm(prefix).finger_qpos]
        return float(q[0] - q[1])

    # ----------------------------------------------------------------------- scene

    def _object_qpos(self, name: str) -> int:
        try:
            return self._twin.objects[name]
        except KeyError:
            raise KeyError(f"no object {name!r}; objects: {list(self._twin.objects)}") from None

    def object_pose(self, name: str) -> np.ndarray:
        adr = self._object_qpos(name)
        qpos = self._data.qpos
        return _pose(qpos[adr:adr + 3], qpos[adr + 3:adr + 7])

    def set_object_pose(self, name: str, pose: np.ndarray) -> None:
        """Put an object at ``pose`` (4x4), at rest."""
        adr = self._object_qpos(name)
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"object {name!r}: expected a finite 4x4 pose")
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, pose[:3, :3].flatten())
        self._data.qpos[adr:adr + 3] = pose[:3, 3]
        self._data.qpos[adr + 3:adr + 7] = quat
        dof = int(self._model.jnt_dofadr[self._model.body(name).jntadr[0]])
        self._data.qvel[dof:dof + 6] = 0.0
        self._stale = True

    def target_position(self) -> np.ndarray:
        """Centre of the target marker on the table, m."""
        return self._data.mocap_pos[self._twin.target_mocap].copy()

    def set_target_position(self, xyz_m: Sequence[float]) -> None:
        xyz = np.asarray(xyz_m, dtype=np.float64)
        if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
            raise ValueError(f"target: expected 3 finite coordinates, got {xyz_m}")
        self._data.mocap_pos[self._twin.target_mocap] = xyz
        self._stale = True

    def _place_scene(self, rng: np.random.Generator) -> None:
        """Draw every object's and the target's place in its region, none overlapping."""
        scene = self._twin.scene
        top = scene.table.top_z_m
        items = [(name, obj.region_min_xy_m, obj.region_max_xy_m,
                  math.hypot(obj.size_m[0], obj.size_m[1]) / 2)
                 for name, obj in scene.objects.items()]
        items.append(("target", scene.target.region_min_xy_m, scene.target.region_max_xy_m,
                      scene.target.radius_m))
        for _ in range(_PLACEMENT_TRIES):
            centres = [rng.uniform(lo, hi) for _, lo, hi, _ in items]
            if all(np.linalg.norm(centres[i] - centres[j]) >= ri + rj + _PLACEMENT_GAP_M
                   for i, (_, _, _, ri) in enumerate(items)
                   for j, (_, _, _, rj) in enumerate(items[:i])):
                break
        else:
            raise TwinModelError(f"reset: no placement of {[n for n, *_ in items]} without "
                                 f"overlap in {_PLACEMENT_TRIES} draws; widen their regions")
        for (name, *_), centre in zip(items[:-1], centres):
            obj = scene.objects[name]
            yaw = rng.uniform(-obj.max_yaw_rad, obj.max_yaw_rad)
            adr = self._twin.objects[name]
            self._data.qpos[adr:adr + 3] = (centre[0], centre[1], top + obj.size_m[2] / 2)
            self._data.qpos[adr + 3:adr + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        self._data.mocap_pos[self._twin.target_mocap] = (centres[-1][0], centres[-1][1], top)
        self._stale = True

    # ----------------------------------------------------------------------- cameras

    def _renderer(self, width: int, height: int) -> "mujoco.Renderer":
        renderer = self._renderers.get((width, height))
        if renderer is not None:
            return renderer
        require_rendering()
        limit = (self._model.vis.global_.offwidth, self._model.vis.global_.offheight)
        if not (0 < width <= limit[0] and 0 < height <= limit[1]):
            raise TwinRenderError(f"render: {width}x{height} px is outside the twin's "
                                  f"offscreen buffer of {limit[0]}x{limit[1]} px (the largest "
                                  f"configured camera, at least 640x480)")
        try:
            renderer = mujoco.Renderer(self._model, height=height, width=width)
        except Exception as e:  # the GL bindings raise their own types
            raise TwinRenderError(f"MUJOCO_GL={backend()}: no offscreen context for a "
                                  f"{width}x{height} frame: {type(e).__name__}: {e}") from None
        self._renderers[(width, height)] = renderer
        global _exit_hook_registered
        if not _exit_hook_registered:
            atexit.register(_close_rendering_twins)
            _exit_hook_registered = True
        _rendering.add(self)
        return renderer

    def render(self, camera: str, width: int, height: int) -> np.ndarray:
        """The camera's view now, ``(height, width, 3)`` uint8 RGB.

        The vertical field of view is the configured camera's; a frame of another aspect ratio
        than the configured resolution sees more or less sideways, not a crop of it.
        """
        if camera not in self._twin.cameras:
            raise KeyError(f"no camera {camera!r}; cameras: {list(self._twin.cameras)}")
        renderer = self._renderer(int(width), int(height))
        renderer.update_scene(self._fresh(), camera=camera)
        return renderer.render()

    def close(self) -> None:
        """Free the renderers' GL contexts (the physics stays usable)."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    def __enter__(self) -> "Twin":
        return self

    def __exit__(self, *exc: object) -> Optional[bool]:
        self.close()
        return None
