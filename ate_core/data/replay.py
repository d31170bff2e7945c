"""When each recorded message is due again: the timing of bag replay, as ``ros2 bag play`` has it.

A bag is played by its log times (when the recorder received each message), so the live stack
sees the recorded message rate, gaps and jitter again. ``rate`` scales time (2.0: twice as
fast), ``start_offset_s`` skips the first seconds of the bag, and ``loop`` plays it again from
that point, each pass starting one mean message period after the last one ended so that the
seam is not a burst. The bag's own time at any moment (``bag_time_ns``) is what ``/clock``
carries when a replay drives simulated time (``use_sim_time``); it goes back with each pass of
a loop, as rosbag2's player does.

Pure: times in, times out. The replay node sleeps until :meth:`ReplayTiming.due_s`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReplayTiming"]


@dataclass(frozen=True)
class ReplayTiming:
    """``first_ns``/``last_ns``: the bag's first and last log times; ``messages``: how many."""

    first_ns: int
    last_ns: int
    messages: int
    rate: float = 1.0
    start_offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate: {self.rate} must be > 0")
        if not self.start_offset_s >= 0:
            raise ValueError(f"start_offset_s: {self.start_offset_s} must be >= 0")
        if self.last_ns < self.first_ns:
            raise ValueError(f"the bag ends ({self.last_ns} ns) before it starts ({self.first_ns} ns)")
        if self.start_ns > self.last_ns:
            raise ValueError(f"start_offset_s {self.start_offset_s:g} s is past the bag's "
                             f"{(self.last_ns - self.first_ns) * 1e-9:.3f} s")

    @property
    def start_ns(self) -> int:
        """The first log time played."""
        return self.first_ns + int(round(self.start_offset_s * 1e9))

    @property
    def pass_ns(self) -> int:
        """Bag time one pass of a loop takes: the played span plus one mean message period."""
        span = self.last_ns - self.start_ns
        gap = span // max(1, self.messages - 1) if self.messages > 1 else 1_000_000
        return span + max(1, gap)

    def plays(self, log_ns: int) -> bool:
        return log_ns >= self.start_ns

    def due_s(self, log_ns: int, loop_index: int = 0) -> float:
        """Seconds after the replay started at which the message logged at ``log_ns`` is
        published in pass ``loop_index`` (0: the first)."""
        return ((log_ns - self.start_ns) + loop_index * self.pass_ns) * 1e-9 / self.rate

    def bag_time_ns(self, elapsed_s: float, loop: bool = False) -> int:
        """The bag's time ``elapsed_s`` after the replay started. Looping, it goes back to the
        start with each pass, as ``ros2 bag play --loop`` does: the messages' own header stamps
        then stay as close to /clock as they were when recorded."""
        played = int(round(elapsed_s * self.rate * 1e9))
        return self.start_ns + (played % self.pass_ns if loop else played)
