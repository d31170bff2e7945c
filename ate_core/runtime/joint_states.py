"""Merging per-arm joint states into one whole-robot state (what robot_state_publisher needs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple


@dataclass(frozen=True)
class JointSample:
    """Positions (and optionally velocities) of named joints at one instant."""

    names: Tuple[str, ...]
    positions: Tuple[float, ...]
    velocities: Tuple[float, ...] = ()
    stamp_ns: int = 0


class JointStateRejected(ValueError):
    """A source sent joints that do not match what it was configured with."""


class JointStateMerger:
    """Keeps the newest sample of each source and concatenates them in a fixed joint order.

    Sources are mapped by joint name, never by position, so a driver that reorders its joints
    cannot silently swap them in the merged state.
    """

    def __init__(self, sources: Mapping[str, Sequence[str]]) -> None:
        self._joints: Dict[str, Tuple[str, ...]] = {s: tuple(n) for s, n in sources.items()}
        self._latest: Dict[str, JointSample] = {}

    @property
    def joint_names(self) -> Tuple[str, ...]:
        return tuple(n for names in self._joints.values() for n in names)

    def update(self, source: str, sample: JointSample) -> None:
        expected = self._joints.get(source)
        if expected is None:
            raise JointStateRejected(f"unknown source {source!r}")
        if len(sample.positions) != len(sample.names):
            raise JointStateRejected(f"{source}: {len(sample.names)} names but "
                                     f"{len(sample.positions)} positions")
        index = {name: i for i, name in enumerate(sample.names)}
        missing = [n for n in expected if n not in index]
        if missing:
            raise JointStateRejected(f"{source}: missing joints {missing}")
        has_vel = len(sample.velocities) == len(sample.names)
        self._latest[source] = JointSample(
            names=expected,
            positions=tuple(float(sample.positions[index[n]]) for n in expected),
            velocities=tuple(float(sample.velocities[index[n]]) for n in expected) if has_vel else (),
            stamp_ns=sample.stamp_ns,
        )

    def merged(self) -> Optional[JointSample]:
        """All sources seen so far, in configuration order; None before the first sample."""
        parts = [self._latest[s] for s in self._joints if s in self._latest]
        if not parts:
            return None
        with_vel = all(p.velocities for p in parts)
        return JointSample(
            names=tuple(n for p in parts for n in p.names),
            positions=tuple(x for p in parts for x in p.positions),
            velocities=tuple(v for p in parts for v in p.velocities) if with_vel else (),
            stamp_ns=max(p.stamp_ns for p in parts),
        )

    def complete(self) -> bool:
        return len(self._latest) == len(self._joints)
