"""The capture audit of a recorded episode: per topic, what arrived and how regularly.

At stop-and-save the recorder hands every topic's receive times to :func:`audit_episode`: the
message count, the mean rate, the largest gap (the take's start and end count as edges: a
camera that died a second before the operator pressed stop shows a one-second gap), and, for a
topic with an expected rate (joint states at the controller's push rate, each camera at its
frame rate), whether it kept to it. A take whose required streams fell short is ``flagged``
(kept, with the reasons, for a person to look at) or ``rejected`` (kept and marked, left out of
conversion) as the recorder's config says; nothing is ever deleted by the audit.

Pure: times in, verdict out; the recorder node, the conversion and the tests share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["AuditRules", "TopicAudit", "EpisodeAudit", "audit_episode", "VERDICTS"]

VERDICTS = ("ok", "flagged", "rejected")


@dataclass(frozen=True)
class AuditRules:
    """``min_rate_fraction``: a required topic below this fraction of its expected rate is a
    problem; ``max_gap_s``: so is a gap longer than this on it; ``reject``: a take with a
    problem is rejected rather than flagged."""

    min_rate_fraction: float = 0.9
    max_gap_s: float = 0.5
    reject: bool = False


@dataclass(frozen=True)
class TopicAudit:
    topic: str
    count: int
    rate_hz: float
    largest_gap_s: float
    expected_hz: Optional[float] = None


@dataclass(frozen=True)
class EpisodeAudit:
    verdict: str
    duration_s: float
    topics: List[TopicAudit]
    problems: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """As episode.yaml stores it (plain types, rounded for people to read)."""
        return {"verdict": self.verdict, "duration_s": round(self.duration_s, 3),
                "problems": list(self.problems),
                "topics": {t.topic: {k: (round(v, 4) if isinstance(v, float) else v)
                                     for k, v in asdict(t).items() if k != "topic"}
                           for t in self.topics}}


def audit_episode(receive_ns: Mapping[str, Sequence[int]], start_ns: int, stop_ns: int,
                  expected_hz: Mapping[str, float], rules: AuditRules = AuditRules()) -> EpisodeAudit:
    """Audit one take. ``receive_ns``: every recorded topic's receive times (any order);
    ``expected_hz``: the required topics and their rates (a required topic that never arrived
    is a problem too)."""
    if stop_ns < start_ns:
        raise ValueError(f"audit_episode: stop {stop_ns} ns is before start {start_ns} ns")
    duration_s = (stop_ns - start_ns) * 1e-9
    audits: List[TopicAudit] = []
    problems: List[str] = []
    for topic in sorted(set(receive_ns) | set(expected_hz)):
        times = np.sort(np.asarray(receive_ns.get(topic, ()), dtype=np.int64))
        edges = np.concatenate([[start_ns], times, [stop_ns]])
        gap_s = float(np.max(np.diff(edges))) * 1e-9 if edges.size > 1 else 0.0
        rate = times.size / duration_s if duration_s > 0 else 0.0
        want = expected_hz.get(topic)
        audits.append(TopicAudit(topic, int(times.size), rate, gap_s,
                                 None if want is None else float(want)))
        if want is None:
            continue
        if times.size == 0:
            problems.append(f"{topic}: nothing received (expected {want:g} Hz)")
            continue
        if rate < rules.min_rate_fraction * want:
            problems.append(f"{topic}: {rate:.1f} Hz, below {rules.min_rate_fraction:g} of the "
                            f"expected {want:g} Hz")
        if gap_s > rules.max_gap_s:
            problems.append(f"{topic}: a gap of {gap_s:.2f} s (at most {rules.max_gap_s:g} s)")
    verdict = "ok" if not problems else ("rejected" if rules.reject else "flagged")
    return EpisodeAudit(verdict, duration_s, audits, problems)
