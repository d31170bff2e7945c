"""A policy checkpoint in closed loop on the twin, through the robot's own runtime, in simulated
time.

What runs is what runs on the robot: the inference node's decisions
(:class:`~ate_core.runtime.inference_loop.InferenceLoop`: fit checks, as-of observation windows,
stale sources blocking) over :class:`~ate_core.runtime.policy_runner.PolicyRunner`, and the
supervisor's (:class:`~ate_core.runtime.supervisor.Supervisor`: chunk executor, safety filter,
watchdogs). Only the transport is replaced: ROS messages become calls, and every call gets its
time from one simulated clock instead of the wall.

The time model. An episode starts at the task's reset, at t = 0, and everything happens at
integer nanoseconds on that clock:

- *Sensors.* Each arm's joint state is read from the physics at the arm's push rate
  (``push_cycle`` x 5 ms: 100 Hz by default) and each camera the policy uses is rendered at the twin's
  camera rate and size (``sim.camera_fps``, ``sim.camera_width`` x ``sim.camera_height``, the
  frames the stack's camera nodes publish on the twin). A sample is stamped with its time and
  reaches both the inference loop and the supervisor's watchdogs at that time: transport takes
  no time here. The streams start at the reset, so a policy with ``n_obs_steps`` > 1 waits
  (blocked, and counted) until the oldest step of its window has a sample. Only the cameras the
  policy reads are rendered, and only those are watched by the supervisor. A policy of
  low-dimensional observations (``env_state_dim`` > 0) reads the task's scene state
  (:meth:`~ate_core.twin.tasks.Task.env_state`), sampled with the first arm's joint state.
- *Inference.* An attempt at t takes the observation window as of t; when it yields a chunk
  (stamped t) the chunk reaches the supervisor at t + latency. The latency is a fixed number
  by default (``latency_ms``, 100 ms), so that an evaluation is a function of the checkpoint and
  the seeds alone and two machines agree on it; ``latency_ms=None`` uses the wall time each
  inference really took, which makes the result depend on the machine and its load. 100 ms is
  the order of a policy on a GPU; the default policy configs take 170-780 ms on the robot PC's
  two CPU cores (``bench/policy_latency.py``), so set the deployment's measured p50 to judge a
  policy as it will run there. A chunk with no latency at all arrives at the next event (at
  most one joint-state period later). The next
  attempt starts once the chunk is delivered (and the loop's period after the previous start:
  ``inference.period_s``, by default the policy's ``n_action_steps`` points), as the node's worker does; a blocked attempt retries after
  :data:`~ate_core.runtime.inference_loop.RETRY_S`, a failed one after
  :data:`~ate_core.runtime.inference_loop.ERROR_BACKOFF_S`.
- *Control.* The supervisor ticks at ``supervisor.rate_hz`` (100 Hz). It is engaged when the
  first chunk arrives, so its engage ramp starts from the arms at home as on the robot. Each
  tick's command goes straight to the twin's servos (``set_joint_targets``) and grippers
  (``set_gripper_target``). On the stack the emulated controllers (``follow: false``)
  interpolate each command into 5 ms references over one stream period
  (``ate_ros/sim/arm_motion.py``), so the arm follows the stream smoothly one period behind;
  here the servos take each command at its tick, 10 ms sooner, as a small step (the commands
  are already within the safety filter's velocity and acceleration caps) that they smooth
  themselves. Offline that is close enough: what the evaluation judges is the policy.
- *Physics* advances from one event to the next (``Twin.step``), so nothing waits on the wall
  clock: an episode runs as fast as the CPU renders, infers and steps.
- *Success* is the task's own check (it reads only the scene), made at every control tick
  before the command; the episode ends at the first success or at the task's time limit, with
  the check's last verdict as the reason.

Within one instant the order is fixed: sensors, then a chunk delivery (and the engage), then
an inference attempt, then the success check and the supervisor's tick. With a fixed latency
and the policy's sampling noise seeded from the episode's seed (torch's RNG, forked so the
caller's is left as it was), the same checkpoint, config and seeds give the same report.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ate_core.config import ConfigError
from ate_core.eval.report import EpisodeResult, EvalReport
from ate_core.eval.strip import FrameStrip
from ate_core.robot.config import BimanualConfig, simulated
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.models import push_period_s
from ate_core.runtime.chunk import ActionChunk, ChunkRejected, make_chunk
from ate_core.runtime.inference_loop import (ENV_STATE_SOURCE, ERROR_BACKOFF_S, ChunkPolicy,
                                             InferenceLoop, Phase)
from ate_core.runtime.policy_runner import PolicyRunner
from ate_core.runtime.safety import RULES as SAFETY_RULES
from ate_core.runtime.supervisor import Mode, Supervisor
from ate_core.twin.model import TwinRobot
from ate_core.twin.tasks import Task
from ate_core.twin.twin import Twin

__all__ = ["EvalError", "DEFAULT_LATENCY_MS", "EVAL_SEED", "eval_config", "load_policy",
           "check_fit", "run_episode", "evaluate", "supervisor_counts"]

#: Inference latency in simulated time unless told otherwise (see the module docstring).
DEFAULT_LATENCY_MS = 100.0
#: First evaluation seed: demonstrations are written from seed 0 up, so an evaluation from here
#: never scores a policy on a scene it was trained on.
EVAL_SEED = 1000

PathLike = Union[str, os.PathLike]


class EvalError(ValueError):
    """A policy that cannot be evaluated on this task and twin; the message says what does not
    fit."""


def eval_config(cfg: BimanualConfig, *, checkpoint: str = "", task: Optional[Task] = None,
                device: Optional[str] = None, torch_threads: Optional[int] = None) -> BimanualConfig:
    """``cfg`` as the stack runs it on the twin (``simulated`` with ``sim.twin`` on: the cameras
    at the twin's size and rate), with the checkpoint, the task's instruction and, where given,
    the device and thread count for inference."""
    cfg = simulated(dataclasses.replace(cfg, sim=dataclasses.replace(cfg.sim, twin=True)))
    changes = {"checkpoint": str(checkpoint) or cfg.inference.checkpoint}
    if task is not None:
        changes["task"] = task.instruction
    if device is not None:
        changes["device"] = device
    if torch_threads is not None:
        changes["torch_threads"] = int(torch_threads)
    return dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, **changes))


def load_policy(cfg: BimanualConfig, source: str = "config") -> PolicyRunner:
    """The checkpoint ``cfg.inference`` names, as the inference node loads it, warmed up
    (``inference.warmup_runs``) once for every episode to come."""
    runner = PolicyRunner.from_config(cfg.inference, source)
    try:
        runner.warmup(cfg.inference.warmup_runs)
    except Exception as e:  # whatever the model raises: it cannot run on a real input either
        raise EvalError(f"{runner.loaded.path}: warm-up failed: {type(e).__name__}: {e}") from e
    return runner


def check_fit(policy: ChunkPolicy, cfg: BimanualConfig, twin: Twin, what: str,
              task: Optional[Task] = None) -> None:
    """The policy's cameras are the twin's and its joints are exactly the robot's: the
    supervisor executes chunks that command every joint of the layout, by name. A policy that
    reads the scene's state reads exactly ``task``'s."""
    env_dim = int(getattr(policy, "env_state_dim", 0))
    if env_dim and task is not None and env_dim != len(task.env_state_names):
        raise EvalError(f"{what}: the policy reads {env_dim} env_state columns; task {task.name} "
                        f"has {len(task.env_state_names)} ({', '.join(task.env_state_names)})")
    cameras = [c for c in policy.cameras if c not in twin.camera_names]
    if cameras:
        raise EvalError(f"{what}: the policy needs cameras {cameras}; the twin has "
                        f"{list(twin.camera_names)}")
    robot = set(layout_from_config(cfg).joint_names)
    missing = sorted(robot - set(policy.joint_names))
    unknown = sorted(set(policy.joint_names) - robot)
    if missing or unknown:
        raise EvalError(f"{what}: the policy's joints {list(policy.joint_names)} do not map onto "
                        f"the robot's {sorted(robot)}: unknown {unknown}, not commanded {missing} "
                        f"(a checkpoint of another embodiment?)")


# ---------------------------------------------------------------------------------------------
# One episode


@dataclass
class _Periodic:
    """A stream sampled at ``round(k * period_ns)``, k = 0, 1, ... (no drift at 15 fps)."""

    name: str
    period_ns: float
    k: int = 0

    @property
    def due_ns(self) -> int:
        return int(round(self.k * self.period_ns))


def supervisor_counts(counts: Counter) -> Tuple[Dict[str, int], Dict[str, int], int]:
    """The supervisor's counts as (safety interventions, faults, late points dropped): late
    points are what a latency costs every chunk, not a fault."""
    interventions: Dict[str, int] = {}
    faults: Dict[str, int] = {}
    late = 0
    for (rule, where), n in sorted(counts.items()):
        if rule == "late_points":
            late += int(n)
        else:
            (interventions if rule in SAFETY_RULES else faults)[f"{rule}/{where}"] = int(n)
    return interventions, faults, late


def run_episode(policy: ChunkPolicy, task: Task, seed: int, *, twin: Twin, cfg: BimanualConfig,
                latency_ms: Optional[float] = DEFAULT_LATENCY_MS,
                time_limit_s: Optional[float] = None,
                strip: Optional[FrameStrip] = None) -> EpisodeResult:
    """Reset ``task`` on ``twin`` to ``seed`` and run ``policy`` until success or the time limit
    (``time_limit_s``, default the task's), as the module docstring describes. ``cfg`` is the
    stack's config on the twin (:func:`eval_config`); the policy is expected warmed up."""
    if latency_ms is not None and not (math.isfinite(latency_ms) and latency_ms >= 0):
        raise ValueError(f"latency_ms must be a finite time >= 0 or None, got {latency_ms}")
    limit_s = task.time_limit_s if time_limit_s is None else float(time_limit_s)
    if not (math.isfinite(limit_s) and limit_s > 0):
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    limit_ns = int(round(limit_s * 1e9))
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task.reset(twin, seed)
        loop = InferenceLoop(policy, dataclasses.replace(
            cfg, inference=dataclasses.replace(cfg.inference, warmup_runs=0)))
        if loop.warm_up() is not Phase.RUNNING:
            raise EvalError(f"the inference loop did not start: {loop.status.failure}")
        supervisor = Supervisor(layout_from_config(cfg), cfg.supervisor, cfg.gripper.max_opening_m,
                                cameras=loop.cameras)
        arms = {side: (*arm.joint_names, arm.gripper_joint) for side, arm in cfg.arms.items()}
        joint_streams = [_Periodic(side, push_period_s(arm.push_cycle) * 1e9)
                         for side, arm in cfg.arms.items()]
        scene_stream = joint_streams[0].name if loop.env_state_dim else None
        camera_streams = [_Periodic(cam, 1e9 / cfg.cameras[cam].fps) for cam in loop.cameras]
        size = {cam: (cfg.cameras[cam].width, cfg.cameras[cam].height) for cam in loop.cameras}
        tick = _Periodic("supervisor", 1e9 / cfg.supervisor.rate_hz)
        strip_stream = _Periodic("strip", strip.period_s * 1e9) if strip is not None else None
        period_ns = int(round(loop.period_s * 1e9))

        now = 0
        next_attempt = 0
        attempt_started = 0
        pending: Optional[Tuple[int, ActionChunk]] = None
        infer_s: List[float] = []
        outcome = task.check(twin)
        success_ns: Optional[int] = None
        while True:
            for s in joint_streams:
                if s.due_ns <= now:
                    q = (*twin.joint_positions(s.name), twin.gripper_opening(s.name))
                    if f"{s.name}_arm" in loop.arms:
                        loop.add(f"{s.name}_arm", now, dict(zip(arms[s.name], q)))
                    supervisor.on_joint_state(s.name, q, now)
                    if s.name == scene_stream:
                        loop.add(ENV_STATE_SOURCE, now, task.env_state(twin))
                    s.k += 1
            for s in camera_streams:
                if s.due_ns <= now:
                    loop.add(s.name, now, twin.render(s.name, *size[s.name]))
                    supervisor.on_camera(s.name, now)
                    s.k += 1
            if strip_stream is not None and strip_stream.due_ns <= now:
                strip.add(now / 1e9, twin)
                strip_stream.k += 1

            if pending is not None and pending[0] <= now:
                chunk = pending[1]
                pending = None
                _deliver(chunk, now, loop, supervisor)
                next_attempt = max(now, attempt_started + period_ns)
            if pending is None and next_attempt <= now:
                attempt_started = now
                t0 = time.perf_counter()
                cycle = loop.step(loop.window(now))
                wall_s = time.perf_counter() - t0
                if cycle.chunk is not None or cycle.failure is not None:
                    infer_s.append(wall_s)
                took_ns = int(round((wall_s if latency_ms is None else latency_ms * 1e-3) * 1e9))
                if cycle.chunk is not None:
                    pending = (now + took_ns, cycle.chunk)
                else:
                    wait_s = cycle.wait_s if cycle.wait_s is not None else ERROR_BACKOFF_S
                    next_attempt = now + (took_ns if cycle.failure is not None else 0) \
                        + max(1, int(round(wait_s * 1e9)))

            if tick.due_ns <= now:
                outcome = task.check(twin)
                if outcome.success:
                    success_ns = now
                    break
                if now >= limit_ns:
                    break
                _command(supervisor.tick(now), supervisor, twin)
                tick.k += 1

            later = [s.due_ns for s in (*joint_streams, *camera_streams, tick)]
            if strip_stream is not None:
                later.append(strip_stream.due_ns)
            later.append(pending[0] if pending is not None else next_attempt)
            following = min(t for t in later if t > now)
            twin.step((following - now) * 1e-9)
            now = following

        if strip is not None:
            strip.add(now / 1e9, twin, last=True)
    interventions, faults, late = supervisor_counts(supervisor.counts)
    return EpisodeResult(
        seed=int(seed), success=outcome.success,
        time_to_success_s=None if success_ns is None else success_ns / 1e9,
        duration_s=now / 1e9, reason=outcome.reason, interventions=interventions,
        faults=faults, chunks=loop.status.chunks, late_points=late,
        blocks={source: n for source, n in loop.status.blocks.items() if n},
        inference_ms=float(np.mean(infer_s)) * 1e3 if infer_s else float("nan"),
        wall_s=time.perf_counter() - started)


def _deliver(chunk: ActionChunk, now: int, loop: InferenceLoop, supervisor: Supervisor) -> None:
    """The chunk reaches the supervisor, by joint name as the supervisor node maps a
    trajectory message; the first one engages it."""
    loop.delivered(chunk, now)
    try:
        ordered = make_chunk(chunk.joint_names, chunk.stamp_ns, chunk.times_ns, chunk.positions,
                             supervisor.joint_names)
    except ChunkRejected as e:
        supervisor.reject_chunk(e.rule)
        return
    if supervisor.on_chunk(ordered, now) is None and supervisor.mode is Mode.IDLE:
        supervisor.engage(now)


def _command(out, supervisor: Supervisor, twin: Twin) -> None:
    """One tick's command to the servos; a stop holds each arm where it is measured."""
    for arm in out.stop_arms:
        twin.set_joint_targets(arm, twin.joint_positions(arm))
        twin.set_gripper_target(arm, twin.gripper_opening(arm))
    if out.positions is None:
        return
    for arm, q in supervisor.split(out.positions).items():
        twin.set_joint_targets(arm, q[:-1])
        twin.set_gripper_target(arm, float(q[-1]))


# ---------------------------------------------------------------------------------------------
# Many episodes


def evaluate(checkpoint: Union[PathLike, ChunkPolicy], task: Task, seeds: Sequence[int], *,
             config: BimanualConfig, config_source: str = "config",
             latency_ms: Optional[float] = DEFAULT_LATENCY_MS,
             time_limit_s: Optional[float] = None, device: Optional[str] = None,
             torch_threads: Optional[int] = None, video_dir: Optional[PathLike] = None,
             progress: bool = False) -> EvalReport:
    """Run ``checkpoint`` (a policy checkpoint directory, or any
    :class:`~ate_core.runtime.inference_loop.ChunkPolicy`) on ``task`` once per seed.

    ``config`` is the robot config (``config/bimanual.yaml``); the evaluation runs it as the
    stack does on the twin (:func:`eval_config`). ``video_dir``: one PNG strip of the head
    camera per episode, ``{task}_seed{seed}.png``. A checkpoint that does not fit the twin
    (cameras, joints) is an :class:`EvalError`; one that does not load, the loader's error.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("evaluate: no seeds")
    is_policy = hasattr(checkpoint, "infer")
    cfg = eval_config(config, checkpoint="" if is_policy else str(checkpoint), task=task,
                      device=device, torch_threads=torch_threads)
    robot = TwinRobot.from_config(cfg)
    twin = Twin(robot, task.scene())
    try:
        if is_policy:
            policy: ChunkPolicy = checkpoint  # type: ignore[assignment]
            name = type(checkpoint).__name__
        else:
            policy = load_policy(cfg, config_source)
            name = str(policy.loaded.path)
        check_fit(policy, cfg, twin, name, task)
        try:
            InferenceLoop(policy, cfg)
        except ConfigError as e:
            raise EvalError(f"{name}: {e}") from None
        out = Path(video_dir) if video_dir is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no TMonitor thread
        results = []
        with tqdm(seeds, disable=not progress, desc=task.name, unit="episode",
                  dynamic_ncols=True) as bar:
            for seed in bar:
                strip = FrameStrip(cfg.sim.camera_width, cfg.sim.camera_height) \
                    if out is not None else None
                result = run_episode(policy, task, seed, twin=twin, cfg=cfg,
                                     latency_ms=latency_ms, time_limit_s=time_limit_s,
                                     strip=strip)
                if strip is not None:
                    path = out / f"{task.name}_seed{seed}.png"
                    strip.write(path, title=f"{task.name} seed {seed}: "
                                            f"{'success' if result.success else 'failure'}")
                    result = dataclasses.replace(result, strip=str(path))
                results.append(result)
                bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}",
                                refresh=False)
    finally:
        twin.close()
    latency = f"fixed {latency_ms:g} ms" if latency_ms is not None else "measured wall time"
    settings = {"config": config_source, "seeds": seeds, "latency_ms": latency_ms,
                "time_limit_s": time_limit_s if time_limit_s is not None else task.time_limit_s,
                "camera_size": [cfg.sim.camera_width, cfg.sim.camera_height],
                "camera_fps": cfg.sim.camera_fps, "supervisor_hz": cfg.supervisor.rate_hz,
                "device": str(getattr(policy, "device", "n/a"))}
    return EvalReport(checkpoint=name, task=task.name, latency=latency, episodes=tuple(results),
                      settings=settings)
