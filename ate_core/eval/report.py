"""What a closed-loop evaluation found: one row per episode, and the success rate with its
uncertainty.

A success rate from 20 episodes is a coarse number (13/20 and 17/20 are not distinguishable at
95 %), so the report always carries the Wilson score interval with it. Wilson's interval rather
than the normal approximation: it stays inside [0, 1] and keeps its coverage at 0/n and n/n,
which is where small evaluations of a good or a broken policy land.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ate_core.io import json_safe

__all__ = ["Z_95", "wilson_interval", "difference_interval", "EpisodeResult", "EvalReport"]

#: The standard normal quantile of a two-sided 95 % interval.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``(0, 1)`` for ``n = 0``)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                        z: float = Z_95) -> Tuple[float, float, float]:
    """``p_a - p_b`` of two independent proportions with Newcombe's hybrid score interval
    (his method 10: the two Wilson intervals combined), as (difference, low, high)."""
    p_a, p_b = successes_a / n_a, successes_b / n_b
    l_a, u_a = wilson_interval(successes_a, n_a, z)
    l_b, u_b = wilson_interval(successes_b, n_b, z)
    d = p_a - p_b
    return (d, d - math.sqrt((p_a - l_a) ** 2 + (u_b - p_b) ** 2),
            d + math.sqrt((u_a - p_a) ** 2 + (p_b - l_b) ** 2))


@dataclass(frozen=True)
class EpisodeResult:
    """One episode. Times are simulated seconds from the task's reset, except ``wall_s``.

    ``reason`` is the success check's last verdict in words (why it succeeded, or what still
    was not true when the time ran out). ``interventions`` counts the safety filter's changes
    to a command by ``rule/arm``, once per tick and arm; ``faults`` counts the supervisor's other
    events by ``rule/source`` (watchdog onsets, rejected chunks). ``late_points``: chunk points
    already due when their chunk arrived (the latency's toll, about one per chunk at 100 ms);
    ``blocks``: times a stale source started blocking inference, by source.
    ``inference_ms``: mean wall time of one policy inference in this episode."""

    seed: int
    success: bool
    time_to_success_s: Optional[float]
    duration_s: float
    reason: str
    interventions: Mapping[str, int]
    faults: Mapping[str, int]
    chunks: int
    inference_ms: float
    wall_s: float
    late_points: int = 0
    blocks: Mapping[str, int] = field(default_factory=dict)
    strip: Optional[str] = None

    @property
    def total_interventions(self) -> int:
        return int(sum(self.interventions.values()))

    @property
    def total_faults(self) -> int:
        return int(sum(self.faults.values()))


@dataclass(frozen=True)
class EvalReport:
    """Every episode of one checkpoint on one task, and the overall success rate."""

    checkpoint: str
    task: str
    latency: str
    episodes: Tuple[EpisodeResult, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / len(self.episodes) if self.episodes else float("nan")

    @property
    def interval(self) -> Tuple[float, float]:
        """95 % Wilson interval of the success rate."""
        return wilson_interval(self.successes, len(self.episodes))

    @property
    def mean_time_to_success_s(self) -> Optional[float]:
        times = [e.time_to_success_s for e in self.episodes if e.time_to_success_s is not None]
        return sum(times) / len(times) if times else None

    def summary(self) -> str:
        n = len(self.episodes)
        lo, hi = self.interval
        mean_t = self.mean_time_to_success_s
        timing = f", mean time to success {mean_t:.1f} s" if mean_t is not None else ""
        wall = sum(e.wall_s for e in self.episodes)
        sim = sum(e.duration_s for e in self.episodes)
        return (f"{self.task}: {self.successes}/{n} succeeded, {self.success_rate:.0%} "
                f"(95 % Wilson {lo:.0%}-{hi:.0%}){timing}; latency {self.latency}; "
                f"{sim:.0f} s simulated in {wall:.0f} s")

    def table(self) -> str:
        head = ("seed", "success", "t_success_s", "chunks", "infer_ms", "interventions",
                "faults", "wall_s", "reason")
        rows = [head]
        for e in self.episodes:
            rows.append((str(e.seed), "yes" if e.success else "no",
                         f"{e.time_to_success_s:.2f}" if e.time_to_success_s is not None else "-",
                         str(e.chunks), f"{e.inference_ms:.1f}", str(e.total_interventions),
                         str(e.total_faults), f"{e.wall_s:.1f}", e.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1]
                         for r in rows)

    def to_dict(self) -> Dict[str, Any]:
        lo, hi = self.interval
        return json_safe({
            "checkpoint": self.checkpoint, "task": self.task, "latency": self.latency,
            "settings": dict(self.settings), "episodes": len(self.episodes),
            "successes": self.successes, "success_rate": self.success_rate,
            "wilson_95": [lo, hi], "mean_time_to_success_s": self.mean_time_to_success_s,
            "results": [{**_episode_dict(e), "total_interventions": e.total_interventions,
                         "total_faults": e.total_faults} for e in self.episodes]})


def _episode_dict(e: EpisodeResult) -> Dict[str, Any]:
    return {"seed": e.seed, "success": e.success, "time_to_success_s": e.time_to_success_s,
            "duration_s": e.duration_s, "reason": e.reason,
            "interventions": dict(e.interventions), "faults": dict(e.faults), "chunks": e.chunks,
            "late_points": e.late_points, "blocks": dict(e.blocks),
            "inference_ms": e.inference_ms, "wall_s": e.wall_s, "strip": e.strip}
