"""Turning timed action chunks into one joint target per control tick.

The policy is the slow loop (a chunk every 50-500 ms); the supervisor is the fast loop that asks
:meth:`ChunkExecutor.target_at` for the target at its tick time. Execution is indexed by time,
never by arrival order (Diffusion Policy's real-robot runner, LeRobot's async inference):

- **A chunk is a trajectory.** Point ``i`` is due at ``stamp_ns + times_ns[i]``; between due
  times the chunk is linear, before its first point it is that point, after its last point it
  is the last point (``p(t)`` clamped to ``[start, end]``).
- **Late points are dropped.** A chunk is active from its arrival (``now_ns`` at :meth:`add`).
  Points already due then are counted as late and never become targets on their own: the
  trajectory is only ever evaluated at or after arrival, which lies on the segment leading
  into the first point still ahead. A chunk whose every point is already due is rejected
  ``late``; so is a chunk whose stamp is not newer than every chunk accepted before
  (``order``, also across :meth:`clear`, so a chunk delivered twice never runs twice), one
  stamped more than ``max_future_s`` after its arrival (``future``: its clock is ahead of ours,
  and accepting it would make every chunk after it ``order`` until that time), and one that
  names other joints or another order (``names``). A rejected chunk changes nothing.
- **replace:** ``target(t) = newest.p(t)``: the new chunk takes over at once (a jump when it
  disagrees with the old one; the safety filter's velocity caps are then the only smoothing).
- **crossfade:** chunk ``k`` arriving at ``a_k`` fades in over ``W = crossfade_s``:
  ``T_k(t) = (1 - w) T_{k-1}(t) + w p_k(t)``, ``w = clip((t - a_k) / W, 0, 1)``, so a chunk
  arriving mid-fade fades from the current blend and nothing jumps. Once a fade completes,
  everything before it is forgotten (exact for every ``t`` from then on). If more than
  ``max_chunks`` are still fading, the oldest is folded into a constant equal to the blend at
  that moment, which keeps the target continuous while bounding memory. ``W = 0`` is replace.
- **ensemble** (ACT's temporal ensembling, in time instead of steps): the weighted mean of
  ``p_c(t)`` over the kept chunks (the newest ``max_chunks``) that cover ``t`` (from arrival,
  or their first point if later, to their last point), weight ``exp(-ensemble_k * i)`` with
  ``i = 0`` for the oldest covering chunk. If none covers ``t``, the newest chunk's clamped
  value.
- **Hold:** past the newest chunk's end the target is its last point (:meth:`holding` is
  True); in ensemble mode the newest wins even where an older chunk reaches further, so an
  older plan never outlives the newest one. In crossfade mode the hold is reached once the
  newest chunk's fade completes.

Time only moves forward: :meth:`add` forgets what can only matter before its ``now_ns``.
The executor is pure (time comes in, no clock, no locks); callers serialise their calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ate_core.robot.config import ExecutorConfig
from ate_core.runtime.chunk import ActionChunk, ChunkRejected

__all__ = ["ChunkExecutor", "ExecutorStats"]


@dataclass
class ExecutorStats:
    """Counters for diagnostics: what arrived, what came too late, what was refused and why."""

    chunks_added: int = 0
    late_points_dropped: int = 0
    rejected: Dict[str, int] = field(default_factory=lambda: {"names": 0, "order": 0, "late": 0,
                                                               "future": 0})


@dataclass(frozen=True)
class _Kept:
    """A chunk as the executor holds it: absolute due times and the time it became active."""

    chunk: ActionChunk
    arrival_ns: int
    due_ns: np.ndarray  # int64 [N], absolute

    @property
    def active_from_ns(self) -> int:
        return max(self.arrival_ns, self.chunk.start_ns)

    def at(self, t_ns: int) -> np.ndarray:
        """``p(t)``: linear between due times, clamped to the first and last point (a copy)."""
        positions = self.chunk.positions
        i = int(np.searchsorted(self.due_ns, t_ns, side="right"))
        if i == 0:
            return positions[0].copy()
        if i >= positions.shape[0]:
            return positions[-1].copy()
        t0, t1 = int(self.due_ns[i - 1]), int(self.due_ns[i])
        # Integer differences first: absolute times in ns lose precision as float64.
        f = (t_ns - t0) / (t1 - t0)
        # a + f (b - a), not (1 - f) a + f b: where a joint holds still (a == b) the target is
        # exactly a, never an ulp past it (a gripper held fully open would count as clipped).
        return positions[i - 1] + f * (positions[i] - positions[i - 1])


class ChunkExecutor:
    """Keeps the chunks that still matter and blends them into the target for ``now``."""

    def __init__(self, config: ExecutorConfig, joint_names: Sequence[str]) -> None:
        self.config = config
        self.joint_names: Tuple[str, ...] = tuple(joint_names)
        self._fade_ns = int(round(config.crossfade_s * 1e9))
        self._max_future_ns = int(round(config.max_future_s * 1e9))
        # A fade shorter than a nanosecond is a switch: replace, without dividing by zero.
        self._mode = "replace" if config.mode == "crossfade" and self._fade_ns <= 0 \
            else config.mode
        self._kept: List[_Kept] = []
        self._base: Optional[np.ndarray] = None  # crossfade: constant the oldest chunk fades from
        self._newest_stamp_ns: Optional[int] = None
        self.newest: Optional[ActionChunk] = None
        self.last_added_ns: Optional[int] = None
        self.stats = ExecutorStats()

    # -- input ---------------------------------------------------------------------------

    def add(self, chunk: ActionChunk, now_ns: int) -> int:
        """Accept ``chunk`` arriving at ``now_ns``; returns how many of its points were late.

        Raises :class:`ChunkRejected` (``names``, ``future``, ``order``, ``late``) and then
        changes nothing.
        """
        now_ns = int(now_ns)
        try:
            self._check(chunk, now_ns)
        except ChunkRejected as rejected:
            self.stats.rejected[rejected.rule] = self.stats.rejected.get(rejected.rule, 0) + 1
            raise
        due = np.asarray(chunk.due_ns, dtype=np.int64)
        late = int(np.searchsorted(due, now_ns, side="left"))
        kept = _Kept(chunk, now_ns, due)
        if self._mode == "replace":
            self._kept = [kept]
        elif self._mode == "crossfade":
            self._kept.append(kept)
            self._forget_faded(now_ns)
        else:
            self._kept = [k for k in self._kept if k.chunk.end_ns >= now_ns]
            self._kept.append(kept)
            del self._kept[:-self.config.max_chunks]
        self._newest_stamp_ns = chunk.stamp_ns
        self.newest = chunk
        self.last_added_ns = now_ns
        self.stats.chunks_added += 1
        self.stats.late_points_dropped += late
        return late

    def _check(self, chunk: ActionChunk, now_ns: int) -> None:
        if tuple(chunk.joint_names) != self.joint_names:
            raise ChunkRejected("names", f"chunk joints {list(chunk.joint_names)} are not the "
                                         f"executor's {list(self.joint_names)}")
        if chunk.stamp_ns - now_ns > self._max_future_ns:
            raise ChunkRejected("future", f"chunk stamped {(chunk.stamp_ns - now_ns) * 1e-9:.3f} s "
                                          f"ahead of this clock (at most "
                                          f"{self._max_future_ns * 1e-9:.3f} s): are the clocks "
                                          f"of the policy and robot PCs synchronised?")
        if self._newest_stamp_ns is not None and chunk.stamp_ns <= self._newest_stamp_ns:
            raise ChunkRejected("order", f"chunk stamp {chunk.stamp_ns} ns is not newer than "
                                         f"the newest accepted ({self._newest_stamp_ns} ns)")
        if chunk.end_ns < now_ns:
            raise ChunkRejected("late", f"every point was due by {chunk.end_ns} ns, "
                                        f"{now_ns - chunk.end_ns} ns before arrival")

    def _forget_faded(self, now_ns: int) -> None:
        """Drop what a completed fade has replaced; fold the oldest fades beyond max_chunks."""
        for k in range(len(self._kept) - 1, -1, -1):
            if now_ns - self._kept[k].arrival_ns >= self._fade_ns:
                del self._kept[:k]
                self._base = None
                break
        while len(self._kept) > self.config.max_chunks:
            oldest = self._kept.pop(0)
            self._base = self._fade(self._base, oldest, now_ns)

    def clear(self) -> None:
        """Forget every chunk (disengage, e-stop); stamps must still increase afterwards."""
        self._kept = []
        self._base = None
        self.newest = None
        self.last_added_ns = None

    # -- output --------------------------------------------------------------------------

    def target_at(self, now_ns: int) -> Optional[np.ndarray]:
        """float64 ``[J]`` target for ``now_ns``; None before the first chunk or after clear()."""
        if not self._kept:
            return None
        now_ns = int(now_ns)
        if self._mode == "replace":
            return self._kept[-1].at(now_ns)
        if self._mode == "crossfade":
            return self._crossfade_at(now_ns)
        return self._ensemble_at(now_ns)

    @property
    def kept_chunks(self) -> int:
        """How many chunks are held for blending (at most ``max_chunks``; 1 in replace mode)."""
        return len(self._kept)

    def holding(self, now_ns: int) -> bool:
        """True once ``now_ns`` is past the newest chunk's last point (False without a chunk)."""
        return self.newest is not None and int(now_ns) > self.newest.end_ns

    def _fade(self, previous: Optional[np.ndarray], kept: _Kept, t_ns: int) -> np.ndarray:
        value = kept.at(t_ns)
        if previous is None:
            return value
        w = min(max((t_ns - kept.arrival_ns) / self._fade_ns, 0.0), 1.0)
        return previous + w * (value - previous)  # exact where the two agree (see _Kept.at)

    def _crossfade_at(self, t_ns: int) -> np.ndarray:
        # Start at the newest completed fade: everything before it has weight zero at t.
        begin = 0
        for k in range(len(self._kept) - 1, 0, -1):
            if t_ns - self._kept[k].arrival_ns >= self._fade_ns:
                begin = k
                break
        target = self._fade(self._base if begin == 0 else None, self._kept[begin], t_ns)
        for kept in self._kept[begin + 1:]:
            target = self._fade(target, kept, t_ns)
        return target

    def _ensemble_at(self, t_ns: int) -> np.ndarray:
        newest = self._kept[-1]
        if t_ns > newest.chunk.end_ns:
            return newest.chunk.positions[-1].copy()
        covering = [k for k in self._kept if k.active_from_ns <= t_ns <= k.chunk.end_ns]
        if not covering:
            return newest.at(t_ns)
        k = self.config.ensemble_k
        weights = np.array([math.exp(-k * i) for i in range(len(covering))])
        values = np.stack([c.at(t_ns) for c in covering])
        return weights @ values / weights.sum()
