"""Teleoperation's pure parts: a leader's JointState as a follower arm's targets, and the
keyboard joint jog. The teleop node and the jog node only move messages and keys; the
supervisor (``engage(now, TELEOP)``) judges the targets and alone commands the arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["LeaderMismatch", "LeaderMap", "Jog", "JOG_HELP"]


class LeaderMismatch(ValueError):
    """A leader message that cannot be read as the follower's joints; the message says why."""


class LeaderMap:
    """One follower arm's joints (``names``: joint1..N, gripper) read from a leader's message.

    By name first: a second pair of RealMan arms driven by this stack's arm nodes (in another
    namespace) names its joints as the followers do (``left_joint1``...). Then by the name
    without the arm's prefix (``joint1``, ``gripper``: RealMan's own URDF names, or another
    prefix). Then by position, for a device that publishes nameless joints, when it sends
    exactly one value per follower joint.
    """

    def __init__(self, names: Sequence[str], prefix: str) -> None:
        self.names = tuple(names)
        self.short = tuple(n[len(prefix):] if prefix and n.startswith(prefix) else n
                           for n in self.names)
        self._cache: Dict[Tuple[str, ...], np.ndarray] = {}

    def __call__(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.float64)
        names = tuple(names)
        if names and len(names) != len(positions):
            raise LeaderMismatch(f"{len(names)} names but {len(positions)} positions")
        index = self._cache.get(names)
        if index is None:
            index = self._index(names, len(positions))
            if len(self._cache) < 16:
                self._cache[names] = index
        return positions[index]

    def _index(self, names: Tuple[str, ...], count: int) -> np.ndarray:
        for wanted in (self.names, self.short):
            where = {n: i for i, n in enumerate(names)}
            if all(n in where for n in wanted):
                return np.array([where[n] for n in wanted])
        tails = [next((i for i, n in enumerate(names) if n.endswith("_" + s) or n == s), None)
                 for s in self.short]
        if names and all(i is not None for i in tails) and len(set(tails)) == len(tails):
            return np.array(tails)
        if count == len(self.names) and not any(n in names for n in (*self.names, *self.short)):
            return np.arange(count)
        raise LeaderMismatch(
            f"joints {list(names) or f'({count} unnamed)'} are not {list(self.names)}: name them "
            f"as the follower ({self.names[0]}, ...) or as RealMan does ({self.short[0]}, ...), "
            f"or send exactly {len(self.names)} values in the follower's order")


JOG_HELP = """keyboard jog: the followers track the jog's targets (engage with /ate/engage_teleop)
  Tab / a     next arm          1-7  joint            g  gripper
  + or k      move up one step  - or j  move down     ] / [  step x2 / x0.5
  0           targets back to the measured joints     h / ?  this help      q  quit"""


@dataclass
class _Selection:
    arm: int = 0
    joint: int = 0


class Jog:
    """Joint targets moved one key at a time, within the joint limits.

    ``limits`` per arm: (lower, upper) over its joints and gripper (rad, m). Targets start at
    the measured joints (:meth:`reset`); a key changes one joint of one arm by ``step`` (the
    gripper by a tenth of it, in metres).
    """

    def __init__(self, limits: Mapping[str, Tuple[np.ndarray, np.ndarray]], step_rad: float) -> None:
        if not limits:
            raise ValueError("Jog: no arms")
        self.arms = tuple(limits)
        self.limits = {a: (np.asarray(lo, float), np.asarray(hi, float))
                       for a, (lo, hi) in limits.items()}
        self.step = float(step_rad)
        self.targets: Dict[str, Optional[np.ndarray]] = {a: None for a in self.arms}
        self.sel = _Selection()

    @property
    def arm(self) -> str:
        return self.arms[self.sel.arm]

    def reset(self, measured: Mapping[str, Sequence[float]]) -> None:
        for arm, values in measured.items():
            if arm in self.targets:
                lo, hi = self.limits[arm]
                self.targets[arm] = np.clip(np.asarray(values, dtype=np.float64), lo, hi)

    def ready(self) -> bool:
        return all(t is not None for t in self.targets.values())

    def key(self, ch: str) -> Optional[str]:
        """Apply one key; a line saying what it did (None for keys it ignores)."""
        n = len(self.limits[self.arm][0])
        if ch in ("\t", "a"):
            self.sel.arm = (self.sel.arm + 1) % len(self.arms)
            self.sel.joint = min(self.sel.joint, len(self.limits[self.arm][0]) - 1)
        elif ch.isdigit() and 1 <= int(ch) <= n - 1:
            self.sel.joint = int(ch) - 1
        elif ch == "g":
            self.sel.joint = n - 1
        elif ch in ("]", "["):
            self.step = float(np.clip(self.step * (2.0 if ch == "]" else 0.5), 1e-4, 0.5))
            return f"step {self.step:.4f} rad"
        elif ch in ("+", "=", "k", "-", "j"):
            target = self.targets[self.arm]
            if target is None:
                return f"{self.arm}: no joint state yet"
            gripper = self.sel.joint == n - 1
            delta = (self.step / 10.0 if gripper else self.step) * (1 if ch in "+=k" else -1)
            lo, hi = self.limits[self.arm]
            j = self.sel.joint
            target[j] = float(np.clip(target[j] + delta, lo[j], hi[j]))
            unit = "m" if gripper else "rad"
            return f"{self.arm} {self._joint_name()} -> {target[j]:+.4f} {unit}"
        else:
            return None
        return f"selected {self.arm} {self._joint_name()} (step {self.step:.4f} rad)"

    def _joint_name(self) -> str:
        n = len(self.limits[self.arm][0])
        return "gripper" if self.sel.joint == n - 1 else f"joint{self.sel.joint + 1}"
