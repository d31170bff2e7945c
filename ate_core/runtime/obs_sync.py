"""As-of alignment of the robot's sensor streams into one observation per reference time.

The policy was trained on observations whose camera frames and joint states belong to the same
instant; on the robot they arrive from separate streams at their own rates and delays. For a
reference time ``ref`` each source contributes its newest sample stamped at or before ``ref``
(never a sample from the future of the observation), and a source whose sample is older than its
``max_age`` makes the observation stale: the policy then waits instead of acting on a picture
of the world that is no longer true.

Pure: samples come with their own stamps and the caller says what time it is, so the same
object serves the inference node, offline replay at recorded timing and tests. Not thread-safe
on its own; the node guards it with one lock.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple, Union

__all__ = ["StaleSource", "SyncedObservation", "ObservationSynchronizer"]


@dataclass(frozen=True)
class StaleSource:
    """Why one source cannot be used at a reference time: its sample is too old, or it has
    none at or before that time (``age_s`` is then ``inf``)."""

    source: str
    age_s: float
    max_age_s: float

    def __str__(self) -> str:
        if math.isinf(self.age_s):
            return f"{self.source}: nothing received"
        return f"{self.source}: newest sample is {self.age_s:.2f} s old (max {self.max_age_s:.2f} s)"


@dataclass(frozen=True)
class SyncedObservation:
    """Every source's as-of sample at ``ref_ns`` (sources without one are missing from
    ``values``/``stamps_ns``); ``stale`` lists the sources that block it."""

    ref_ns: int
    values: Dict[str, Any]
    stamps_ns: Dict[str, int]
    stale: Tuple[StaleSource, ...]

    @property
    def ok(self) -> bool:
        return not self.stale


class _Stream:
    """One source's recent samples, sorted by stamp (they may arrive out of order)."""

    __slots__ = ("stamps", "values")

    def __init__(self) -> None:
        self.stamps: List[int] = []
        self.values: List[Any] = []

    def add(self, stamp_ns: int, value: Any, history: int) -> None:
        i = bisect.bisect_right(self.stamps, stamp_ns)
        if i > 0 and self.stamps[i - 1] == stamp_ns:
            self.values[i - 1] = value  # a re-sent stamp: the later message stands for it
            return
        self.stamps.insert(i, stamp_ns)
        self.values.insert(i, value)
        if len(self.stamps) > history:
            del self.stamps[0], self.values[0]

    def as_of(self, ref_ns: int) -> int:
        """Index of the newest sample stamped at or before ``ref_ns`` (-1: none)."""
        return bisect.bisect_right(self.stamps, ref_ns) - 1


class ObservationSynchronizer:
    """Keeps the last ``history`` samples of each source named in ``max_age_s`` (seconds).

    ``history`` (one number, or one per source) must cover the span an observation window
    reaches back over at each source's rate, or the older steps of the window find nothing; per
    source, so that 200 Hz joint states can reach as far back as 30 Hz full-size frames without
    keeping a hundred frames.
    """

    def __init__(self, max_age_s: Mapping[str, float], history: Union[int, Mapping[str, int]] = 32) -> None:
        if not max_age_s:
            raise ValueError("ObservationSynchronizer: no sources")
        for source, age in max_age_s.items():
            if not (isinstance(age, (int, float)) and math.isfinite(age) and age >= 0):
                raise ValueError(f"ObservationSynchronizer: max age of {source!r} must be a "
                                 f"finite number >= 0, got {age!r}")
        per_source = dict(history) if isinstance(history, Mapping) else {s: history for s in max_age_s}
        for source in max_age_s:
            n = per_source.get(source)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"ObservationSynchronizer: history of {source!r} must be an int >= 1, got {n!r}")
        unknown = sorted(set(per_source) - set(max_age_s))
        if unknown:
            raise ValueError(f"ObservationSynchronizer: history for unknown sources {unknown}")
        self.max_age_s: Dict[str, float] = {s: float(a) for s, a in max_age_s.items()}
        self.history: Dict[str, int] = {s: per_source[s] for s in self.max_age_s}
        self._streams: Dict[str, _Stream] = {s: _Stream() for s in self.max_age_s}

    @property
    def sources(self) -> Tuple[str, ...]:
        return tuple(self.max_age_s)

    def add(self, source: str, stamp_ns: int, value: Any) -> None:
        """Store one sample; a source not named at construction is a ``KeyError``."""
        stream = self._streams.get(source)
        if stream is None:
            raise KeyError(f"unknown observation source {source!r} (known: {list(self.max_age_s)})")
        stream.add(int(stamp_ns), value, self.history[source])

    def newest_ns(self, source: str) -> int:
        """Stamp of the newest sample of ``source`` (-1 before the first)."""
        stamps = self._streams[source].stamps
        return stamps[-1] if stamps else -1

    def at(self, ref_ns: int) -> SyncedObservation:
        ref_ns = int(ref_ns)
        values: Dict[str, Any] = {}
        stamps: Dict[str, int] = {}
        stale: List[StaleSource] = []
        for source, stream in self._streams.items():
            max_age = self.max_age_s[source]
            i = stream.as_of(ref_ns)
            if i < 0:
                stale.append(StaleSource(source, math.inf, max_age))
                continue
            stamp = stream.stamps[i]
            values[source] = stream.values[i]
            stamps[source] = stamp
            age_s = (ref_ns - stamp) * 1e-9
            if age_s > max_age:
                stale.append(StaleSource(source, age_s, max_age))
        return SyncedObservation(ref_ns, values, stamps, tuple(stale))

    def window(self, ref_ns: int, steps: int, period_ns: int) -> List[SyncedObservation]:
        """The as-of observations at ``ref - (steps - 1 - k) * period`` for ``k = 0..steps-1``,
        oldest first: the ``n_obs_steps`` frames a policy conditions on, spaced as in training."""
        if steps < 1:
            raise ValueError(f"window: steps must be >= 1, got {steps}")
        if steps > 1 and period_ns <= 0:
            raise ValueError(f"window: period_ns must be > 0 for {steps} steps, got {period_ns}")
        return [self.at(int(ref_ns) - (steps - 1 - k) * int(period_ns)) for k in range(steps)]
