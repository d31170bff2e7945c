"""The inference loop's decisions, one attempt at a time: may the policy run now, on what, and
how long to wait before the next attempt.

On the robot the policy's inputs come from separate streams (camera frames, each arm's joint
states), so each attempt takes the as-of observation window at one reference time (see
:mod:`ate_core.runtime.obs_sync`) and either runs the policy on it, stamping the chunk with that
time, or waits because a source is stale or unusable. Acting on a picture of the world that is no
longer true is worse than acting late, so a stale source blocks the loop (named, with its age)
instead of being filled in.

States::

    warming up --all warm-up runs done--> running
        |  a warm-up run raised
        v
      failed (for good: a model that cannot run on a synthetic input will not run on a real one)

While running, an attempt that is blocked retries after :data:`RETRY_S`, soon enough to act on
the first fresh frame; a failed or rejected inference backs off :data:`ERROR_BACKOFF_S` (a broken
model must not spin the CPU the control loop shares) and the next chunk delivered clears the
failure. A chunk counts once the caller has delivered it (:meth:`InferenceLoop.delivered`), with
its latency from the observation: what the status reports has reached the robot.

Pure: the caller passes the reference time and the samples with their stamps, and runs the loop
on one thread; no clock, no ROS, no threads, so the inference node, offline replay and tests run
the same code. The node's other threads read :attr:`InferenceLoop.status`, a frozen snapshot
that each change replaces whole.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from ate_core.config import ConfigError
from ate_core.robot.config import BimanualConfig
from ate_core.robot.models import push_period_s
from ate_core.runtime.chunk import ActionChunk, ChunkRejected
from ate_core.runtime.latency import LatencyStats
from ate_core.runtime.obs_sync import ObservationSynchronizer, SyncedObservation

__all__ = ["ChunkPolicy", "Phase", "Blocked", "LoopStatus", "Cycle", "InferenceLoop",
           "RETRY_S", "ERROR_BACKOFF_S", "RATE_MARGIN", "ENV_STATE_SOURCE"]

#: While blocked, look again this often: soon enough to act on the first fresh frame.
RETRY_S = 0.01
#: After a failed inference, wait this long before the next try (a broken model must not spin).
ERROR_BACKOFF_S = 0.5
#: Sources may run this much faster than configured before the observation window runs short.
RATE_MARGIN = 2.0
#: The source of the scene's low-dimensional state (object poses), for a policy that reads it
#: (``env_state_dim`` > 0). Only a simulation has it: the twin's evaluation feeds it at the
#: joint states' rate; the robot has no such stream, so its inference node refuses such a policy.
ENV_STATE_SOURCE = "env_state"

#: Turns a stored camera sample into uint8 RGB ``[H, W, 3]``; ``ValueError`` for an unusable one.
ImageDecoder = Callable[[Any], np.ndarray]
#: Turns a stored joint-state sample into positions by joint name.
JointReader = Callable[[Any], Mapping[str, float]]


class ChunkPolicy(Protocol):
    """What the loop needs of a policy: :class:`~ate_core.runtime.policy_runner.PolicyRunner`,
    or a stand-in where the model is not the point."""

    cameras: Tuple[str, ...]
    joint_names: Tuple[str, ...]
    n_obs_steps: int
    #: Chunk points meant to run before the next chunk (the policy's own replanning period).
    n_action_steps: int
    action_period_ns: int

    def infer(self, images: Mapping[str, np.ndarray], state: np.ndarray, stamp_ns: int,
              task: str) -> ActionChunk: ...

    def warmup(self, runs: int) -> None: ...


class Phase(str, enum.Enum):
    WARMING_UP = "warming up"
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True)
class Blocked:
    """Why an attempt could not run: ``source`` (a camera, or ``{side}_arm``) is not usable.

    ``age_s`` is the stale source's newest sample age as of the reference time (``inf``: nothing
    received), None when the source is fresh but its sample is unusable."""

    source: str
    reason: str
    age_s: Optional[float] = None

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class LoopStatus:
    """Everything /diagnostics reports about the loop, as of its last change.

    ``blocks`` counts, per source, the times it started blocking the loop; ``last_block`` is
    the newest block's reason (it outlives the block, to explain a past stall); ``chunks`` are
    those delivered."""

    phase: Phase = Phase.WARMING_UP
    blocked: Optional[Blocked] = None
    failure: Optional[str] = None
    blocks: Mapping[str, int] = field(default_factory=dict)
    last_block: str = "none"
    chunks: int = 0
    rejected: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Cycle:
    """What one attempt did and what changed, for the caller to publish and log.

    ``wait_s``: how long to wait before the next attempt (None: the rest of the period).
    ``blocked``: set only when the block is new (the loop ran before, or another source blocked).
    ``unblocked``: the source that blocked the attempt before this one. ``changed``: the status
    changed in a way /diagnostics should show now."""

    chunk: Optional[ActionChunk] = None
    wait_s: Optional[float] = None
    blocked: Optional[Blocked] = None
    unblocked: Optional[str] = None
    failure: Optional[str] = None
    changed: bool = False


def _observation_history(window_s: float, max_age_s: Mapping[str, float],
                         rate_hz: Mapping[str, float]) -> Dict[str, int]:
    """Samples to keep per source: enough to reach back over the observation window and the
    oldest usable age at the source's nominal rate, with room for :data:`RATE_MARGIN` times it."""
    return {s: math.ceil((window_s + max_age_s[s]) * rate_hz[s] * RATE_MARGIN) + 4 for s in max_age_s}


class InferenceLoop:
    """One policy fitted to one robot configuration.

    Construction checks the fit: every camera the policy needs is configured, and every joint it
    needs is a joint of a configured arm (each is read, by name, from the arm whose joint states
    carry it); a misfit is a :class:`ConfigError`. Samples go in with :meth:`add`; each attempt
    takes :meth:`window` as of its reference time and passes it to :meth:`step`.
    ``decode_image`` and ``joint_positions`` turn stored samples into arrays when an attempt
    uses them (the node stores messages as they come and decodes on its worker thread); by
    default the samples are already RGB arrays and positions by joint name.
    """

    def __init__(self, policy: ChunkPolicy, cfg: BimanualConfig, *,
                 decode_image: ImageDecoder = np.asarray, joint_positions: JointReader = dict) -> None:
        missing = [c for c in policy.cameras if c not in cfg.cameras]
        if missing:
            raise ConfigError("config", "cameras", f"the policy needs cameras {missing}; the config has "
                                                   f"{sorted(cfg.cameras)}")
        arm_joints = {f"{side}_arm": (*arm.joint_names, arm.gripper_joint) for side, arm in cfg.arms.items()}
        self._joint_sources: List[Tuple[str, str]] = []
        for name in policy.joint_names:
            source = next((s for s, names in arm_joints.items() if name in names), None)
            if source is None:
                known = sorted(n for names in arm_joints.values() for n in names)
                raise ConfigError("config", "arms", f"the policy's joint {name!r} is not a joint of any "
                                                    f"configured arm ({known})")
            self._joint_sources.append((source, name))

        self.policy = policy
        self.cameras: Tuple[str, ...] = tuple(policy.cameras)
        #: The arms whose joint states the policy reads (``{side}_arm``), sorted.
        self.arms: Tuple[str, ...] = tuple(sorted({s for s, _ in self._joint_sources}))
        icfg = cfg.inference
        self.task = icfg.task
        #: Least time between attempts: ``inference.period_s``, or where that is 0 the policy's
        #: own ``n_action_steps`` points (Diffusion Policy and LeRobot plan, run that many actions,
        #: then plan again; back-to-back chunks from a fresh noise draw each keep switching
        #: between the modes of a multimodal policy and the arm dithers instead of acting).
        self.period_s = icfg.period_s or policy.n_action_steps * policy.action_period_ns * 1e-9
        self.warmup_runs = icfg.warmup_runs
        self._decode_image = decode_image
        self._joint_positions = joint_positions

        #: Columns of the scene's state the policy reads from :data:`ENV_STATE_SOURCE` (0: none).
        self.env_state_dim = int(getattr(policy, "env_state_dim", 0))
        max_age = {cam: cfg.cameras[cam].max_age_s for cam in self.cameras}
        max_age.update({s: icfg.joint_state_max_age_s for s in self.arms})
        rate_hz = {cam: cfg.cameras[cam].fps for cam in self.cameras}
        rate_hz.update({f"{side}_arm": 1.0 / push_period_s(arm.push_cycle) for side, arm in cfg.arms.items()})
        if self.env_state_dim:
            max_age[ENV_STATE_SOURCE] = icfg.joint_state_max_age_s
            rate_hz[ENV_STATE_SOURCE] = max(rate_hz[s] for s in self.arms)
        window_s = (policy.n_obs_steps - 1) * policy.action_period_ns * 1e-9
        self._sync = ObservationSynchronizer(max_age, history=_observation_history(window_s, max_age, rate_hz))
        self._warmups_done = 0
        self.status = LoopStatus(blocks={s: 0 for s in max_age})
        #: Observation to delivery, per chunk (thread-safe on its own, for diagnostics to read).
        self.latency = LatencyStats()

    @property
    def history(self) -> Dict[str, int]:
        """Samples kept per source."""
        return dict(self._sync.history)

    @property
    def max_age_s(self) -> Dict[str, float]:
        """Per source, the oldest sample an attempt may use, in seconds before its reference time."""
        return dict(self._sync.max_age_s)

    # ---- input ------------------------------------------------------------------------------

    def add(self, source: str, stamp_ns: int, value: Any) -> None:
        """One sample of a camera or an arm's joint states (``KeyError`` for an unknown source)."""
        self._sync.add(source, stamp_ns, value)

    def window(self, ref_ns: int) -> List[SyncedObservation]:
        """The as-of observations the policy conditions on, spaced as in training, the last at
        ``ref_ns``."""
        return self._sync.window(ref_ns, self.policy.n_obs_steps, self.policy.action_period_ns)

    def inputs(self, window: Sequence[SyncedObservation]) -> Union[Tuple[Any, ...], Blocked]:
        """Decoded frames per camera ``[T, H, W, 3]``, the state ``[T, D]`` in the policy's
        joint order and, for a policy that reads it, the scene's state ``[T, E]``; or why they
        cannot be had."""
        # The newest observation's problem is the one to fix first; an older step of the window
        # (n_obs_steps > 1) can only lack history, e.g. just after start-up.
        for back, obs in enumerate(reversed(window)):
            if obs.stale:
                first = obs.stale[0]
                where = f" ({back} step{'s' if back > 1 else ''} back in the observation window)" if back else ""
                return Blocked(first.source, f"{first}{where}", first.age_s)
        images: Dict[str, np.ndarray] = {}
        for cam in self.cameras:
            try:
                images[cam] = np.stack([self._decode_image(obs.values[cam]) for obs in window])
            except ValueError as e:
                return Blocked(cam, f"{cam}: unusable image: {e}")
        rows = []
        for obs in window:
            by_source = {s: self._joint_positions(obs.values[s]) for s in self.arms}
            row = []
            for source, name in self._joint_sources:
                value = by_source[source].get(name)
                if value is None:
                    return Blocked(source, f"{source}: joint state lacks {name}")
                row.append(value)
            rows.append(row)
        if self.env_state_dim:
            env = np.asarray([obs.values[ENV_STATE_SOURCE] for obs in window], dtype=np.float32)
            if env.shape != (len(window), self.env_state_dim):
                return Blocked(ENV_STATE_SOURCE, f"{ENV_STATE_SOURCE}: expected {self.env_state_dim} "
                                                 f"values, got {list(env.shape[1:])}")
            return images, np.asarray(rows, dtype=np.float32), env
        return images, np.asarray(rows, dtype=np.float32)

    # ---- the loop ---------------------------------------------------------------------------

    def warm_up(self) -> Phase:
        """One warm-up run (kernel selection and allocator growth before the first real chunk);
        after the last of ``warmup_runs`` the loop is running, after one that raised, failed."""
        if self.status.phase is not Phase.WARMING_UP:
            return self.status.phase
        if self._warmups_done < self.warmup_runs:
            try:
                self.policy.warmup(1)
            except Exception as e:  # whatever the model raises, the loop reports it, never dies of it
                self.status = replace(self.status, phase=Phase.FAILED,
                                      failure=f"warm-up failed: {type(e).__name__}: {e}")
                return Phase.FAILED
            self._warmups_done += 1
        if self._warmups_done >= self.warmup_runs:
            self.status = replace(self.status, phase=Phase.RUNNING)
        return self.status.phase

    def step(self, window: Sequence[SyncedObservation]) -> Cycle:
        """One attempt on ``window`` (from :meth:`window`): the chunk stamped with its reference
        time (for the caller to deliver), or a block or failure and how long to wait."""
        before = self.status
        if before.phase is not Phase.RUNNING:
            raise RuntimeError(f"InferenceLoop.step: the loop is {before.phase.value}, not running")
        inputs = self.inputs(window)
        if isinstance(inputs, Blocked):
            new = before.blocked is None or before.blocked.source != inputs.source
            blocks = {**before.blocks, inputs.source: before.blocks[inputs.source] + 1} if new else before.blocks
            self.status = replace(before, blocked=inputs, blocks=blocks, last_block=inputs.reason)
            return Cycle(wait_s=RETRY_S, blocked=inputs if new else None, changed=new)
        unblocked = before.blocked.source if before.blocked is not None else None
        self.status = replace(before, blocked=None)
        images, state = inputs[:2]
        extra = {"env_state": inputs[2]} if len(inputs) > 2 else {}
        try:
            chunk = self.policy.infer(images, state, window[-1].ref_ns, self.task, **extra)
        except ChunkRejected as e:
            return self._failed(f"prediction rejected ({e.rule}): {e}", rejected=True, unblocked=unblocked)
        except Exception as e:  # the loop must go on: count, report, retry
            return self._failed(f"inference failed: {type(e).__name__}: {e}", rejected=False, unblocked=unblocked)
        return Cycle(chunk=chunk, unblocked=unblocked, changed=unblocked is not None)

    def delivered(self, chunk: ActionChunk, now_ns: int) -> bool:
        """``chunk`` (from :meth:`step`) reached its consumers at ``now_ns``: count it and its
        latency; True when it ends a failure."""
        self.latency.add((now_ns - chunk.stamp_ns) * 1e-9)
        before = self.status
        self.status = replace(before, chunks=before.chunks + 1, failure=None)
        return before.failure is not None

    def _failed(self, reason: str, *, rejected: bool, unblocked: Optional[str]) -> Cycle:
        before = self.status
        self.status = replace(before, failure=reason, rejected=before.rejected + int(rejected),
                              errors=before.errors + int(not rejected))
        return Cycle(wait_s=ERROR_BACKOFF_S, unblocked=unblocked, failure=reason,
                     changed=before.failure is None or unblocked is not None)
