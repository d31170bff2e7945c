"""Action chunks as the supervisor receives them: named joints, timed points, validated whole.

A chunk is what the policy predicted from one observation: ``positions[i]`` is the joint target
due at ``stamp_ns + times_ns[i]`` (``stamp_ns`` is the observation's time, so execution is
indexed by time, never by arrival; Diffusion Policy's real-robot runner does the same). Joints
are mapped by name into the consumer's order. A malformed chunk is rejected whole with the rule
it broke, so the executor keeps what it had instead of executing part of a bad prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

__all__ = ["ActionChunk", "ChunkRejected", "make_chunk"]


class ChunkRejected(ValueError):
    """A chunk broke a rule (``names``, ``length``, ``non_finite``, ``times``, ``empty``)."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(message)


@dataclass(frozen=True, eq=False)
class ActionChunk:
    """``positions`` float64 ``[N, J]`` in ``joint_names`` order; ``times_ns`` int64 ``[N]``,
    strictly increasing, relative to ``stamp_ns`` (the observation time, ns)."""

    joint_names: Tuple[str, ...]
    stamp_ns: int
    times_ns: np.ndarray
    positions: np.ndarray

    @property
    def due_ns(self) -> np.ndarray:
        """Absolute due time of every point, int64 ``[N]``."""
        return self.stamp_ns + self.times_ns

    @property
    def start_ns(self) -> int:
        return int(self.stamp_ns + self.times_ns[0])

    @property
    def end_ns(self) -> int:
        return int(self.stamp_ns + self.times_ns[-1])

    def __len__(self) -> int:
        return int(self.times_ns.shape[0])


def make_chunk(names: Sequence[str], stamp_ns: int, times_ns: Sequence[int],
               positions: Sequence[Sequence[float]], joint_order: Sequence[str]) -> ActionChunk:
    """A validated chunk in ``joint_order``, or :class:`ChunkRejected` naming what was wrong.

    ``positions[i][k]`` is joint ``names[k]`` at point ``i``. Every joint of ``joint_order``
    must be named exactly once and nothing else; times must be finite and strictly increasing.
    """
    names = tuple(str(n) for n in names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ChunkRejected("names", f"duplicate joint names {duplicates}")
    order = tuple(joint_order)
    unknown = [n for n in names if n not in order]
    if unknown:
        raise ChunkRejected("names", f"unknown joints {unknown}")
    missing = [n for n in order if n not in names]
    if missing:
        raise ChunkRejected("names", f"missing joints {missing}")
    times = np.asarray(times_ns, dtype=np.int64).reshape(-1)
    if times.size == 0:
        raise ChunkRejected("empty", "no points")
    rows = list(positions)
    if len(rows) != times.size:
        raise ChunkRejected("length", f"{times.size} times but {len(rows)} points")
    bad = [i for i, row in enumerate(rows) if len(row) != len(names)]
    if bad:
        raise ChunkRejected("length", f"point {bad[0]} has {len(rows[bad[0]])} values for "
                                      f"{len(names)} joints")
    values = np.asarray(rows, dtype=np.float64).reshape(times.size, len(names))
    if not np.isfinite(values).all():
        point, col = np.argwhere(~np.isfinite(values))[0]
        raise ChunkRejected("non_finite", f"point {point}: {names[col]} is {values[point, col]}")
    if np.any(np.diff(times) <= 0):
        i = int(np.argmax(np.diff(times) <= 0))
        raise ChunkRejected("times", f"time_from_start not increasing at point {i + 1} "
                                     f"({times[i]} ns then {times[i + 1]} ns)")
    index = [names.index(n) for n in order]
    out = np.ascontiguousarray(values[:, index])
    out.setflags(write=False)
    times.setflags(write=False)
    return ActionChunk(order, int(stamp_ns), times, out)
