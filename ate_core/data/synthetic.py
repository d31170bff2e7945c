"""A synthetic visuomotor data set where the camera image decides the motion.

Each episode shows a coloured target (a filled circle) at a random place in the scene camera's
image; every episode starts from the same home joint vector and moves smoothly (minimum-jerk)
to a goal joint vector that is a smooth function of the target's pixel position, then closes
the gripper(s). The state alone therefore cannot tell where to go: a policy has to read the
image. With ``distractors`` > 0, circles of other colours appear too and the instruction
("reach the red target") says which one is meant, so the text matters as well.

The other cameras are wrist views that change with the arm's motion (a bar following the
elbow joint, a bar following the gripper opening, the target colour growing as the arm
approaches), so no camera stream is constant.

    python -m ate_core.data.synthetic /tmp/reach --episodes 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ate_core.data.episode import (DEFAULT_JPEG_QUALITY, DatasetInfo, Episode, EpisodeWriter,
                                   PathLike, default_joint_names)

__all__ = [
    "COLOURS",
    "HOME_ARM_RAD",
    "GRIPPER_OPEN_M",
    "GRIPPER_CLOSED_M",
    "generate_synthetic_dataset",
    "goal_joints",
    "home_joints",
    "main",
]

#: RGB colours of the targets; the task text names the colour.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 200, 30),
}
#: One RM75-B arm's home, the same as config/bimanual.yaml's ``arms.*.home_rad``.
HOME_ARM_RAD = (0.0, 0.5, 0.0, 1.6, 0.0, 1.0, 0.0)
#: RM65-B home by kinematic role (its chain is the RM75's without joint 3).
HOME_RM65_RAD = (0.0, 0.5, 1.6, 0.0, 1.0, 0.0)
GRIPPER_OPEN_M = 0.07
GRIPPER_CLOSED_M = 0.02
#: The reach takes this fraction of the episode; the gripper closes over the next part.
_REACH_END = 0.7
_GRASP_END = 0.9


def _arms(embodiment: str) -> Tuple[Tuple[str, ...], Tuple[float, ...]]:
    """(arm names in native order, one arm's home joints without the gripper)."""
    if embodiment == "rm75_bimanual":
        return ("left", "right"), HOME_ARM_RAD
    if embodiment == "rm65_single":
        return ("arm",), HOME_RM65_RAD
    raise ValueError(f"synthetic data: unsupported embodiment {embodiment!r} "
                     f"(rm75_bimanual or rm65_single)")


def home_joints(embodiment: str = "rm75_bimanual") -> np.ndarray:
    """float32 [D]: every arm at home, grippers open (native order: arm joints, gripper, ...)."""
    arms, home = _arms(embodiment)
    return np.array([v for _ in arms for v in home + (GRIPPER_OPEN_M,)], dtype=np.float32)


def _arm_offsets(px: float, py: float, mirror: float, n_joints: int) -> np.ndarray:
    """Joint offsets (rad) from home for a target at normalised image position (px, py).

    RM75 joints: base yaw follows the target sideways, shoulder and elbow share the reach
    towards targets lower in the image, the wrist pitch compensates, the wrist roll turns
    with the target (mirrored for the right arm). Offsets stay under 0.5 rad, well inside the
    RM75-B / RM65-B joint ranges.
    """
    yaw, shoulder, elbow, wrist_pitch, wrist_roll = (
        0.6 * px, 0.1 + 0.35 * py, -0.4 * py, 0.25 * py - 0.1 * px, mirror * 0.3 * px)
    if n_joints == 7:
        return np.array([yaw, shoulder, 0.0, elbow, 0.0, wrist_pitch, wrist_roll])
    return np.array([yaw, shoulder, elbow, 0.0, wrist_pitch, wrist_roll])


def goal_joints(target_px: Tuple[float, float], image_size: Tuple[int, int],
                embodiment: str = "rm75_bimanual") -> np.ndarray:
    """float32 [D]: the reach goal for a target at pixel ``(u, v)`` of an image ``(H, W)``.

    Grippers stay open here; they close after the reach.
    """
    h, w = image_size
    px = 2.0 * float(target_px[0]) / w - 1.0
    py = 2.0 * float(target_px[1]) / h - 1.0
    arms, home = _arms(embodiment)
    out: List[float] = []
    for arm in arms:
        q = np.asarray(home) + _arm_offsets(px, py, -1.0 if arm == "right" else 1.0, len(home))
        out.extend(q.tolist() + [GRIPPER_OPEN_M])
    return np.array(out, dtype=np.float32)


def _min_jerk(tau: np.ndarray) -> np.ndarray:
    tau = np.clip(tau, 0.0, 1.0)
    return tau ** 3 * (10.0 - 15.0 * tau + 6.0 * tau ** 2)


def _trajectory(goal: np.ndarray, length: int, embodiment: str) -> Tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """(joints [T, D] float64, reach progress [T], grasp progress [T])."""
    home = home_joints(embodiment).astype(np.float64)
    k = np.arange(length, dtype=np.float64)
    last = max(length - 1, 1)
    reach = _min_jerk(k / (_REACH_END * last))
    grasp = _min_jerk((k - _REACH_END * last) / ((_GRASP_END - _REACH_END) * last))
    q = home[None] + reach[:, None] * (goal.astype(np.float64) - home)[None]
    arms, arm_home = _arms(embodiment)
    per_arm = len(arm_home) + 1
    for i in range(len(arms)):
        g = i * per_arm + len(arm_home)
        q[:, g] = GRIPPER_OPEN_M + grasp * (GRIPPER_CLOSED_M - GRIPPER_OPEN_M)
    return q, reach, grasp


def _place_circles(rng: np.random.Generator, n: int, size: Tuple[int, int],
                   radius: int) -> List[Tuple[int, int]]:
    """n non-overlapping circle centres (u, v) inside the image, kept clear of its edges."""
    h, w = size
    margin = radius + max(2, radius // 2)
    centres: List[Tuple[int, int]] = []
    for _ in range(1000 * n):
        if len(centres) == n:
            break
        u = int(rng.integers(margin, w - margin))
        v = int(rng.integers(margin, h - margin))
        if all((u - a) ** 2 + (v - b) ** 2 >= (3 * radius) ** 2 for a, b in centres):
            centres.append((u, v))
    if len(centres) < n:
        raise ValueError(f"synthetic data: cannot place {n} separate targets of radius "
                         f"{radius} in a {w}x{h} image")
    return centres


def _scene_frame(size: Tuple[int, int], circles: Sequence[Tuple[Tuple[int, int], str]],
                 radius: int, target: Tuple[int, int], reach: float) -> np.ndarray:
    h, w = size
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = (190, 185, 175)  # table
    img[: max(1, h // 8)] = (120, 125, 135)  # far edge of the table
    for (u, v), colour in circles:
        cv2.circle(img, (u, v), radius, COLOURS[colour], thickness=-1, lineType=cv2.LINE_AA)
    # The gripper seen from above, travelling from the bottom centre to the target.
    start = np.array([w / 2.0, h - 1.0 - radius])
    pos = start + reach * (np.array(target, dtype=np.float64) - start)
    half = max(1, radius // 2)
    x, y = int(round(pos[0])), int(round(pos[1]))
    cv2.rectangle(img, (x - half, y - half), (x + half, y + half), (30, 30, 30), thickness=2)
    return img


def _wrist_frame(size: Tuple[int, int], colour: str, target_offset: Tuple[float, float],
                 elbow_offset_rad: float, gripper_m: float, reach: float) -> np.ndarray:
    h, w = size
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = (45, 45, 50)
    # The target drifts to the centre and fills more of the view as the arm approaches it.
    r = max(1, int(round((0.08 + 0.3 * reach) * min(h, w))))
    centre = (int(round(w / 2 + (1.0 - reach) * target_offset[0] * w / 3)),
              int(round(h / 2 + (1.0 - reach) * target_offset[1] * h / 3)))
    cv2.circle(img, centre, r, COLOURS[colour], thickness=-1, lineType=cv2.LINE_AA)
    bar_w = max(2, w // 10)
    frac = float(np.clip(0.5 + elbow_offset_rad, 0.05, 0.95))
    cv2.rectangle(img, (0, h - 1 - int(frac * (h - 1))), (bar_w, h - 1), (240, 240, 240), -1)
    open_frac = float(np.clip(gripper_m / GRIPPER_OPEN_M, 0.0, 1.0))
    cv2.rectangle(img, (bar_w + 2, h - 1 - max(1, h // 16)),
                  (bar_w + 2 + int(open_frac * (w - bar_w - 3)), h - 1), (250, 160, 40), -1)
    return img


def generate_synthetic_dataset(root: PathLike, *, n_episodes: int, length: int = 40,
                               embodiment: str = "rm75_bimanual",
                               cameras: Sequence[str] = ("head", "left_wrist", "right_wrist"),
                               image_size: Tuple[int, int] = (96, 96), fps: float = 10.0,
                               seed: int = 0, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                               distractors: int = 0,
                               progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write ``n_episodes`` reaching episodes to ``root`` (a new or matching data set).

    The first camera is the scene camera showing the targets; the others are wrist views
    (a name starting with "right" follows the right arm, anything else the first arm). The
    same arguments give byte-identical files. ``progress(done, total)`` is called after each
    episode.
    """
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 0:
        raise ValueError(f"n_episodes must be a non-negative int, got {n_episodes!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    if isinstance(cameras, str) or not cameras:
        raise ValueError(f"cameras must be a non-empty sequence of names, got {cameras!r}")
    if not 0 <= distractors < len(COLOURS):
        raise ValueError(f"distractors must be in [0, {len(COLOURS) - 1}], got {distractors!r}")
    h, w = (int(v) for v in image_size)
    arms, arm_home = _arms(embodiment)
    info = DatasetInfo(embodiment=embodiment, fps=float(fps),
                       joint_names=default_joint_names(embodiment),
                       cameras={c: (h, w) for c in cameras})
    writer = EpisodeWriter(root, info, jpeg_quality=jpeg_quality)
    rng = np.random.default_rng(seed)
    radius = max(2, int(round(0.08 * min(h, w))))
    colour_names = sorted(COLOURS)
    per_arm = len(arm_home) + 1
    elbow = 3 if len(arm_home) == 7 else 2
    timestamps = np.arange(length, dtype=np.float64) / float(fps)
    for e in range(n_episodes):
        chosen = [colour_names[int(i)] for i in rng.permutation(len(colour_names))]
        colours = chosen[: distractors + 1]
        centres = _place_circles(rng, len(colours), (h, w), radius)
        target, colour = centres[0], colours[0]
        goal = goal_joints(target, (h, w), embodiment)
        q, reach, _ = _trajectory(goal, length, embodiment)
        state = q.astype(np.float32)
        action = np.concatenate([state[1:], state[-1:]])
        frames: Dict[str, np.ndarray] = {}
        for ci, cam in enumerate(cameras):
            if ci == 0:
                seq = [_scene_frame((h, w), list(zip(centres, colours)), radius, target,
                                    float(reach[k])) for k in range(length)]
            else:
                arm = arms.index("right") if cam.startswith("right") and "right" in arms else 0
                base = arm * per_arm
                # The right wrist camera is mounted mirrored: it sees the target flipped.
                mirror = -1.0 if arms[arm] == "right" else 1.0
                offset = (mirror * (2.0 * target[0] / w - 1.0), 2.0 * target[1] / h - 1.0)
                seq = [_wrist_frame((h, w), colour, offset,
                                    float(state[k, base + elbow] - arm_home[elbow]),
                                    float(state[k, base + len(arm_home)]), float(reach[k]))
                       for k in range(length)]
            frames[cam] = np.stack(seq)
        episode = Episode(task=f"reach the {colour} target", state=state, action=action,
                          timestamp_s=timestamps, frames=frames,
                          extra={"target_px": [int(target[0]), int(target[1])],
                                 "target_color": colour,
                                 "distractors": [{"color": c, "px": [int(u), int(v)]}
                                                 for (u, v), c in zip(centres[1:], colours[1:])],
                                 "goal_rad": [float(v) for v in goal],
                                 "generator": {"seed": int(seed), "episode": e}})
        writer.write(episode, index=e)
        if progress is not None:
            progress(e + 1, n_episodes)
    return Path(root)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ate_core.data.synthetic",
        description="Write a synthetic reaching data set whose motion depends on the image.")
    parser.add_argument("root", type=Path, help="data set directory (created if missing)")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes")
    parser.add_argument("--length", type=int, default=40, help="steps per episode")
    parser.add_argument("--embodiment", default="rm75_bimanual",
                        choices=("rm75_bimanual", "rm65_single"))
    parser.add_argument("--cameras", default="head,left_wrist,right_wrist",
                        help="comma-separated camera names; the first shows the targets")
    parser.add_argument("--image-size", type=int, nargs=2, default=(96, 96),
                        metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    parser.add_argument("--distractors", type=int, default=0,
                        help="extra circles of other colours; the task names the target's colour")
    args = parser.parse_args(argv)
    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    step = max(1, args.episodes // 10)

    def report(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"episode {done}/{total}", file=sys.stderr, flush=True)
    try:
        root = generate_synthetic_dataset(
            args.root, n_episodes=args.episodes, length=args.length,
            embodiment=args.embodiment, cameras=cameras, image_size=tuple(args.image_size),
            fps=args.fps, seed=args.seed, jpeg_quality=args.jpeg_quality,
            distractors=args.distractors, progress=report)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.episodes} episodes of {args.length} steps to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
