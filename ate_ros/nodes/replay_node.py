"""Bag replay: a recorded take's topics published again at their recorded timing.

``ros2 run ate_ros replay_node --ros-args -p bag:=~/ate_episodes/episode_000012 [-p rate:=2.0]
[-p start_offset_s:=5.0] [-p loop:=true] [-p clock:=true] [-p topics:="['/left_arm/joint_states']"]``,
or ``ros2 launch ate_ros replay.launch.py bag:=...``: the live stack (an inference node, RViz)
then runs on recorded data, as with ``ros2 bag play``. Messages go out as the bytes recorded,
by their log times (``ate_core.data.replay`` has the timing); ``clock:=true`` also publishes the
bag's time on ``/clock`` (``clock_rate_hz``) for nodes with ``use_sim_time``. The publishers are
reliable, which every subscriber matches, best-effort camera subscribers included.

One thread, ``replay``, sleeps until each message is due and publishes it; the executor only
serves parameters and diagnostics. When the bag ends (and ``loop`` is false) the node says so
on /diagnostics and stays up, idle.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from rosidl_runtime_py.utilities import get_message

from ate_core.data.bag import BagError, BagReader
from ate_core.data.replay import ReplayTiming
from ate_ros.conversions import ns_to_stamp
from ate_ros.diagnostics import ERROR, OK, diagnostic_array, diagnostic_status
from ate_ros.node_host import run_nodes
from ate_ros.params import declare_fixed

_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class ReplayNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("replay", **kwargs)
        bag = str(declare_fixed(self, "bag", "", "the bag folder to play (episode_NNNNNN)"))
        self.rate = float(declare_fixed(self, "rate", 1.0, "playback speed (2.0: twice as fast)"))
        offset = float(declare_fixed(self, "start_offset_s", 0.0,
                                     "seconds of the bag skipped at the start, s"))
        self.loop = bool(declare_fixed(self, "loop", False, "play the bag again and again"))
        self.clock = bool(declare_fixed(self, "clock", False,
                                        "publish the bag's time on /clock (use_sim_time)"))
        clock_hz = float(declare_fixed(self, "clock_rate_hz", 100.0, "/clock rate, Hz"))
        self.delay_s = float(declare_fixed(self, "delay_s", 0.0,
                                           "wait before playing (subscribers discover the "
                                           "publishers meanwhile), s"))
        wanted: List[str] = list(declare_fixed(self, "topics", [""],
                                               "topics to play (empty: all)"))
        wanted = [t for t in wanted if t]
        if not bag:
            raise ValueError("parameter bag: empty; name the bag folder to play")
        if not clock_hz > 0:
            raise ValueError(f"parameter clock_rate_hz: {clock_hz} must be > 0")
        self.bag = Path(bag).expanduser()
        self._reader = BagReader(self.bag)  # BagError names what is wrong with it
        unknown = sorted(set(wanted) - set(self._reader.topics))
        if unknown:
            self._reader.close()
            raise ValueError(f"parameter topics: {unknown} are not in {self.bag} "
                             f"(it has {sorted(self._reader.topics)})")
        self.topics = wanted or sorted(self._reader.topics)
        count = sum(self._reader.counts[t] for t in self.topics)
        try:
            self.timing = ReplayTiming(self._reader.start_ns, self._reader.end_ns, count,
                                       self.rate, offset)
        except ValueError as e:
            self._reader.close()
            raise ValueError(f"{self.bag}: {e}") from None
        self._pubs = {t: self.create_publisher(get_message(self._reader.topics[t]), t, _QOS)
                      for t in self.topics}
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self.clock else None
        self._clock_period_s = 1.0 / clock_hz
        self.published = 0
        #: How late messages went out after their due time, s: the least (never below 0: a
        #: replay never publishes early) and the most (a replay falling behind shows here).
        self.min_lateness_s = float("inf")
        self.max_lateness_s = 0.0
        self.passes = 0
        self.finished = False
        self.failure = ""
        self._stop = threading.Event()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._report)
        self._thread = threading.Thread(target=self._play, name="replay", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the replay thread

    def _publish_clock(self, started: float) -> None:
        if self._clock_pub is not None:
            ns = self.timing.bag_time_ns(time.monotonic() - started, self.loop)
            self._clock_pub.publish(Clock(clock=ns_to_stamp(ns)))

    def _wait_until(self, due: float, started: float) -> bool:
        """Sleep until ``due`` (monotonic), publishing /clock meanwhile; False if stopped."""
        while True:
            left = due - time.monotonic()
            if left <= 0:
                return not self._stop.is_set()
            if self._stop.wait(min(left, self._clock_period_s) if self._clock_pub else left):
                return False
            self._publish_clock(started)

    def _play(self) -> None:
        if self._stop.wait(max(0.0, self.delay_s)):
            return
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                for topic, log_ns, data in self._reader.raw(self.topics):
                    if not self.timing.plays(log_ns):
                        continue
                    due = started + self.timing.due_s(log_ns, self.passes)
                    if not self._wait_until(due, started):
                        return
                    self._publish_clock(started)
                    late = time.monotonic() - due
                    self._pubs[topic].publish(data)
                    self.published += 1
                    self.min_lateness_s = min(self.min_lateness_s, late)
                    self.max_lateness_s = max(self.max_lateness_s, late)
                self.passes += 1
                if not self.loop:
                    break
            self.finished = True
            self.get_logger().info(f"{self.bag.name}: played {self.published} messages")
        except BagError as e:
            self.failure = str(e)
            self.get_logger().error(self.failure)

    # ------------------------------------------------------------------ upkeep

    def _report(self) -> None:
        level, message = (ERROR, self.failure) if self.failure else \
            (OK, "finished" if self.finished else f"playing (pass {self.passes + 1})")
        values: Dict[str, object] = {"bag": str(self.bag), "published": self.published,
                                     "rate": self.rate, "loop": self.loop,
                                     "max_lateness_ms": round(self.max_lateness_s * 1e3, 2)}
        status = diagnostic_status("ate: replay", level, message, "replay", values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._reader.close()
        super().destroy_node()


def main(args: Optional[Sequence[str]] = None) -> None:
    run_nodes(lambda: [ReplayNode()], args)


if __name__ == "__main__":
    main()
