"""Rolling latency percentiles for diagnostics and benchmarks."""

from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Dict

import numpy as np

__all__ = ["LatencyStats"]


class LatencyStats:
    """The last ``window`` durations (seconds); thread-safe, so a worker adds and a timer reads."""

    def __init__(self, window: int = 1000) -> None:
        self._values: Deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(float(seconds))
            self.count += 1

    def summary(self) -> Dict[str, float]:
        """``{"p50_ms", "p99_ms", "max_ms", "count"}`` over the window."""
        with self._lock:
            values = np.fromiter(self._values, float) * 1e3
            count = self.count
        if values.size == 0:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                    "count": count}
        return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
                "max_ms": float(values.max()), "count": count}
