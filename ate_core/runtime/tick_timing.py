"""How punctually the supervisor's control loop ticks: start-to-start periods and missed ticks.

Pure: the loop passes each tick's start time, so the numbers it reports on /diagnostics (and the
benchmark reads back) are the same whether the ticks came from a real thread or a test.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Optional

import numpy as np

__all__ = ["TickTiming"]


class TickTiming:
    """Start-to-start periods of the control loop and the ticks it missed."""

    def __init__(self, period_ns: int, window: int = 6000) -> None:
        self.period_ns = period_ns
        self.periods_ns: Deque[int] = deque(maxlen=window)
        self.ticks = 0
        self.missed = 0
        self._last: Optional[int] = None

    def record(self, start_ns: int) -> None:
        if self._last is not None:
            period = start_ns - self._last
            self.periods_ns.append(period)
            self.missed += max(0, round(period / self.period_ns) - 1)
        self._last = start_ns
        self.ticks += 1

    def summary(self) -> Dict[str, float]:
        periods = np.array(self.periods_ns, dtype=np.float64) * 1e-6
        if periods.size == 0:
            return {"period_p50_ms": float("nan"), "period_p99_ms": float("nan"),
                    "error_p99_ms": float("nan"), "ticks": self.ticks, "missed": self.missed}
        error = np.abs(periods - self.period_ns * 1e-6)
        return {"period_p50_ms": float(np.percentile(periods, 50)),
                "period_p99_ms": float(np.percentile(periods, 99)),
                "error_p99_ms": float(np.percentile(error, 99)),
                "ticks": self.ticks, "missed": self.missed}
