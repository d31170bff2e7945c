"""Expert demonstrations on the twin, written as episodes of the project's data format.

Each episode is one seed of a task run by its scripted expert (:mod:`ate_core.twin.experts`);
only the successful ones are written, the others are counted and their seeds reported. The
expert commands at the supervisor's 100 Hz; an episode keeps every ``100 / fps``-th control tick
(10 Hz: every 10th), and at each kept tick t records

* ``state[t]``: the measured joint positions and gripper openings (the finger gap, which stops
  at the object's width when the gripper squeezes it), before the physics advances over tick t,
* ``action[t]``: the joint targets and gripper openings commanded at tick t, the ones the
  supervisor would stream; between two kept ticks the commands are smooth (minimum-jerk
  segments, gripper ramps), so the kept ones, interpolated linearly back to 100 Hz as the
  chunk executor does, stay close to the expert's stream (measured at 10 Hz over every task
  and both arm models: TCP within 0.7 mm, joints within 4 mrad, grippers within 2 mm),
* with ``env_state``, the scene's low-dimensional state at that step (:meth:`Task.env_state
  <ate_core.twin.tasks.Task.env_state>`: object poses and the target), what a policy of
  low-dimensional observations reads (``--env-state --cameras none``: no frames at all),
* one frame per camera at that state, rendered as the stack's camera nodes publish it on the
  twin (the config's ``sim.camera_width`` x ``sim.camera_height``) and shrunk to the data set's
  image size by the policy's own resize (:func:`ate_core.policy.processor.resize_frame`), so a
  policy trained on it sees on the robot stack the pixels it was trained on,

in the embodiment's native joint order (:func:`ate_core.data.episode.default_joint_names`):
``rm75_bimanual`` is the RM75-B pair, left arm then right; ``rm65_single`` is the right arm of
the RM65-B pair (the other arm stays at home, out of the data), for single-arm tasks only. The
task's instruction is the episode's task text.

    python -m ate_core.twin.demos --task pick_place --episodes 50 --out /tmp/demos
    python -m ate_core.twin.demos --task lift_box --episodes 100 --image-size 96x72 --out data/lift
    python -m ate_core.twin.demos --task push --episodes 50 --env-state --cameras none --out data/push_lowdim
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ate_core.data.episode import (DatasetInfo, Episode, EpisodeWriter, PathLike,
                                   default_joint_names)
from ate_core.policy.processor import resize_frame
from ate_core.robot.config import load_config
from ate_core.twin.experts import (CONTROL_PERIOD_S, Commands, EpisodeResult, ExpertSettings,
                                   run_episode)
from ate_core.twin.model import TwinRobot, rm65_variant
from ate_core.twin.tasks import TASKS, Task, get_task
from ate_core.twin.twin import Twin

__all__ = ["EMBODIMENTS", "DemoReport", "demo_robot", "recorded_arms", "default_cameras",
           "frame_size", "record_episode", "write_demonstrations", "main"]

#: The embodiments demonstrations are written for.
EMBODIMENTS = ("rm75_bimanual", "rm65_single")
_CONTROL_HZ = round(1.0 / CONTROL_PERIOD_S)
#: Attempts per episode asked for before giving up on a task whose expert keeps failing.
_ATTEMPTS_PER_EPISODE = 2
_EXTRA_ATTEMPTS = 10


@dataclass(frozen=True)
class DemoReport:
    """What :func:`write_demonstrations` did: episodes written, and the seeds it skipped."""

    root: Path
    task: str
    embodiment: str
    written: int
    failed_seeds: Tuple[int, ...]
    failure_reasons: Tuple[str, ...]

    @property
    def failed(self) -> int:
        return len(self.failed_seeds)


def demo_robot(embodiment: str, robot: TwinRobot) -> TwinRobot:
    """The twin's robot for ``embodiment``: ``robot`` itself (the configured RM75-B pair) or
    its RM65-B variant."""
    if embodiment == "rm75_bimanual":
        return robot
    if embodiment == "rm65_single":
        return rm65_variant(robot)
    raise ValueError(f"embodiment {embodiment!r}: not one of {list(EMBODIMENTS)}")


def recorded_arms(embodiment: str, task: Task) -> Tuple[str, ...]:
    """The arms whose joints are the episode's state and action, in the embodiment's order."""
    if embodiment == "rm75_bimanual":
        return ("left", "right")
    if embodiment == "rm65_single":
        if not task.single_arm:
            raise ValueError(f"embodiment rm65_single records one arm; task {task.name} uses "
                             f"{list(task.arms)}")
        return task.arms
    raise ValueError(f"embodiment {embodiment!r}: not one of {list(EMBODIMENTS)}")


def default_cameras(embodiment: str, task: Task, twin: Twin) -> Tuple[str, ...]:
    """Every camera of the twin for the pair; the head and the recorded arm's wrist camera for
    a single arm (the other wrist camera shows an arm that is not part of that embodiment)."""
    if embodiment == "rm65_single":
        arm = recorded_arms(embodiment, task)[0]
        return tuple(c for c in twin.camera_names if c in ("head", f"{arm}_wrist"))
    return twin.camera_names


Size = Tuple[int, int]


def frame_size(value: Union[int, Size, str], what: str) -> Size:
    """``(height, width)`` from an int (square), a ``(height, width)`` pair or the string
    ``"WIDTHxHEIGHT"`` (``"96x72"``, as camera resolutions are written) or ``"96"``."""
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"{what} {value!r}: expected WIDTHxHEIGHT (e.g. 96x72) or one "
                             f"int") from None
        if len(numbers) not in (1, 2):
            raise ValueError(f"{what} {value!r}: expected WIDTHxHEIGHT (e.g. 96x72) or one int")
        value = (numbers[0], numbers[0]) if len(numbers) == 1 else (numbers[1], numbers[0])
    elif isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        height, width = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int, (height, width) or 'WxH', got "
                         f"{value!r}") from None
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, int) or side < 8:
            raise ValueError(f"{what} {value!r}: sides must be ints >= 8")
    return int(height), int(width)


def _joint_vector(parts: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)


def record_episode(twin: Twin, task: Task, seed: int, *, arms: Sequence[str],
                   cameras: Sequence[str], image_size: Size, record_every: int,
                   render_size: Optional[Size] = None,
                   settings: ExpertSettings = ExpertSettings(), env_state: bool = False
                   ) -> Tuple[EpisodeResult, Optional[Episode]]:
    """Run the expert on ``seed`` and record every ``record_every``-th control tick; the
    episode is None when the expert failed (see the module docstring for what is recorded).
    Frames are rendered at ``render_size`` (default: ``image_size``) and resized to
    ``image_size``, both ``(height, width)``."""
    height, width = render_size or image_size
    states: List[np.ndarray] = []
    actions: List[np.ndarray] = []
    stamps: List[float] = []
    frames: Dict[str, List[np.ndarray]] = {c: [] for c in cameras}
    scene: List[np.ndarray] = []

    def record(tick: int, commands: Commands) -> None:
        if tick % record_every:
            return
        states.append(_joint_vector([np.append(twin.joint_positions(p), twin.gripper_opening(p))
                                     for p in arms]))
        actions.append(_joint_vector([np.append(commands[p].q_rad, commands[p].gripper_m)
                                      for p in arms]))
        stamps.append(tick * CONTROL_PERIOD_S)
        if env_state:
            scene.append(task.env_state(twin))
        for camera in cameras:
            frames[camera].append(resize_frame(twin.render(camera, width, height), image_size))

    result = run_episode(twin, task, seed, settings, on_tick=record)
    if not result.success:
        return result, None
    episode = Episode(
        task=task.instruction, state=np.stack(states), action=np.stack(actions),
        timestamp_s=np.array(stamps), frames={c: np.stack(f) for c, f in frames.items()},
        env_state=np.stack(scene) if env_state else None,
        extra={"source": "ate_core.twin.experts", "task_name": task.name, "seed": int(seed),
               "arm_model": twin.robot.layout.arm(arms[0]).model.name, "arms": list(arms),
               "control_hz": _CONTROL_HZ, "record_every": int(record_every),
               "outcome": result.outcome.reason})
    return result, episode


def write_demonstrations(root: PathLike, task: Task, embodiment: str, episodes: int, *,
                         robot: TwinRobot, seed: int = 0,
                         image_size: Union[int, Size, str] = (72, 96),
                         render_size: Union[None, int, Size, str] = None,
                         fps: float = 10.0, cameras: Optional[Sequence[str]] = None,
                         settings: ExpertSettings = ExpertSettings(),
                         progress: bool = True, env_state: bool = False) -> DemoReport:
    """Write ``episodes`` successful expert episodes of ``task`` to the data set ``root``
    (created, or appended to when it holds the same embodiment, rate and cameras), trying
    seeds ``seed, seed + 1, ...``; failed seeds are skipped and reported. Frames are rendered
    at ``render_size`` (default: ``image_size``) and stored at ``image_size``. ``env_state``:
    record the scene's state too; ``cameras=()`` then writes no frames."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 0:
        raise ValueError(f"episodes must be an int >= 0, got {episodes!r}")
    record_every = _CONTROL_HZ / float(fps)
    if not (math.isfinite(record_every) and record_every >= 1.0
            and abs(record_every - round(record_every)) < 1e-9):
        raise ValueError(f"fps {fps}: must divide the {_CONTROL_HZ} Hz control rate "
                         f"(e.g. 10, 20, 25, 50)")
    stored = frame_size(image_size, "image_size")
    rendered = stored if render_size is None else frame_size(render_size, "render_size")
    arms = recorded_arms(embodiment, task)
    twin = Twin(demo_robot(embodiment, robot), task.scene())
    cameras = tuple(cameras) if cameras is not None else default_cameras(embodiment, task, twin)
    unknown = [c for c in cameras if c not in twin.camera_names]
    if unknown or not (cameras or env_state):
        twin.close()
        raise ValueError(f"cameras {list(cameras)}: the twin has {list(twin.camera_names)} "
                         f"(no cameras only with env_state)")
    info = DatasetInfo(embodiment=embodiment, fps=float(fps),
                       joint_names=default_joint_names(embodiment),
                       cameras={c: stored for c in cameras},
                       env_state_names=task.env_state_names if env_state else ())
    writer = EpisodeWriter(root, info)

    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no TMonitor thread
    bar = tqdm(total=episodes, disable=not progress, desc=f"{task.name} ({embodiment})",
               unit="episode", mininterval=0.5, dynamic_ncols=True, leave=True)
    written = 0
    failed: List[int] = []
    reasons: List[str] = []
    attempt = seed
    budget = _ATTEMPTS_PER_EPISODE * episodes + _EXTRA_ATTEMPTS
    try:
        while written < episodes and attempt - seed < budget:
            result, episode = record_episode(twin, task, attempt, arms=arms, cameras=cameras,
                                             image_size=stored, render_size=rendered,
                                             record_every=round(record_every),
                                             settings=settings, env_state=env_state)
            if episode is None:
                failed.append(attempt)
                reasons.append(result.outcome.reason)
                bar.set_postfix(failed=len(failed), refresh=False)
            else:
                writer.write(episode)
                written += 1
                bar.update(1)
            attempt += 1
    finally:
        bar.close()
        twin.close()
    return DemoReport(Path(root), task.name, embodiment, written, tuple(failed), tuple(reasons))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ate_core.twin.demos",
        description="Write scripted-expert demonstrations of a twin task as an episode data set.")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="task name")
    parser.add_argument("--episodes", type=int, required=True,
                        help="successful episodes to write")
    parser.add_argument("--embodiment", default="rm75_bimanual", choices=EMBODIMENTS)
    parser.add_argument("--out", type=Path, required=True,
                        help="data set directory (created, or appended to)")
    parser.add_argument("--seed", type=int, default=0, help="first seed tried")
    parser.add_argument("--image-size", default="96x72",
                        help="stored frame size, WIDTHxHEIGHT or one int (square), px")
    parser.add_argument("--render-size", default="",
                        help="rendered frame size before the resize, WIDTHxHEIGHT (default: "
                             "the config's sim.camera_width x sim.camera_height, what the "
                             "camera nodes publish on the twin)")
    parser.add_argument("--fps", type=float, default=10.0,
                        help="recorded frames per second; divides the 100 Hz control rate")
    parser.add_argument("--cameras", default="",
                        help="comma-separated camera names (default: all for rm75_bimanual, "
                             "head and the arm's wrist for rm65_single; 'none': no frames, "
                             "with --env-state)")
    parser.add_argument("--env-state", action="store_true",
                        help="record the scene's low-dimensional state (object poses, target)")
    parser.add_argument("--config", default="config/bimanual.yaml", help="robot config YAML")
    args = parser.parse_args(argv)
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] or None
    if cameras == ["none"]:
        cameras = []
    try:
        cfg = load_config(args.config)
        robot = TwinRobot.from_config(cfg)
        render = args.render_size or f"{cfg.sim.camera_width}x{cfg.sim.camera_height}"
        report = write_demonstrations(args.out, get_task(args.task), args.embodiment,
                                      args.episodes, robot=robot, seed=args.seed,
                                      image_size=args.image_size, render_size=render,
                                      fps=args.fps, cameras=cameras, env_state=args.env_state)
    except (ValueError, FileExistsError) as e:  # ConfigError, TaskError, EpisodeFormatError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s, why in zip(report.failed_seeds, report.failure_reasons):
        print(f"skipped seed {s}: {why}", file=sys.stderr)
    print(f"wrote {report.written} {report.task} episodes ({report.embodiment}) to "
          f"{report.root}; {report.failed} expert episodes failed and were skipped")
    if report.written < args.episodes:
        print(f"error: only {report.written} of {args.episodes} episodes succeeded in "
              f"{report.written + report.failed} seeds", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
