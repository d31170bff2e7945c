"""The episode recorder under the robot's full stream: throughput, drops, and the control loop.

    .venv/bin/python bench/recorder.py [--seconds 60] [--busy-cores 0] [--json out.json] [--keep]

The simulated robot as ``ros2 launch ate_ros bimanual.launch.py sim:=true twin:=false
record:=true`` runs it, every node in a process of its own (``ate_ros.bringup.stack_plan``'s
command lines): one emulated controller per arm pushing state at 200 Hz (``push_cycle: 1``), one
arm node per arm, the joint-state aggregator, three camera nodes at 640x480 and 30 Hz (the test
pattern, JPEG at the config's quality), the supervisor and the recorder. This bench is the
teleop leader: it publishes each arm's target on ``/<arm>_arm/teleop_target`` at 100 Hz (a slow
sine on two joints), engages teleop, so the supervisor commands both arms at 100 Hz, then
records one take of ``--seconds`` and saves it.

What each number is:

- Throughput: the saved bag's size on disk over the take's duration (MB/s, 10^6 bytes), its
  messages per second by topic, and the recorder process's CPU (% of one core) over the take.
- Dropped: for every topic with header stamps, the stamps this bench received (it subscribes
  to each recorded topic with the recorder's QoS) between the first and the last stamp the bag
  holds for that topic, and not in the bag. ``missed here`` counts the reverse (in the bag, not
  received here): this bench's own losses, which make ``dropped`` a lower bound if not 0.
  The leader targets are this bench's own messages: every one published during the take is
  expected in the bag.
- Supervisor tick: the error of its start-to-start periods (|period - 10 ms|), p99, from its
  own record (``/diagnostics``, the last 6000 periods: the take when ``--seconds`` >= 60) and
  from the stamps of the ``/left_arm/command`` messages received here during the take.
- The take's capture audit (``ate_core.data.audit``): its verdict and per-topic rates.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Set

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402

from common import (CpuMeter, Processes, free_port, header, percentile,  # noqa: E402
                    print_header, run_main, write_json)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("left", "right")
LEADER_HZ = 100.0
GOAL_TICK_ERROR_P99_MS = 2.0
BUSY_LOOP = ("import signal, sys\nsignal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
             "while True:\n    pass\n")


def write_config(src: str, dst: str, takes: str) -> Any:
    """``src`` with both arms at 200 Hz, the emulators on free loopback ports, no twin, the
    cameras at 640x480 and 30 Hz, and takes recorded into ``takes``."""
    from ate_core.robot.config import load_config

    with open(src, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for ep in data["sim"]["arms"].values():
        ep.update(tcp_port=free_port(ep["ip"]), udp_port=free_port(kind=socket.SOCK_DGRAM))
    for side in SIDES:
        data["arms"][side]["push_cycle"] = 1
    for cam in data["cameras"].values():
        cam.update(width=640, height=480, fps=30.0)
    data["sim"]["twin"] = False
    data["inference"]["checkpoint"] = ""
    data["recorder"].update(output_dir=takes, min_free_disk_gb=0.0)
    with open(dst, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return load_config(dst)


def cdr_stamp_ns(data: bytes) -> int:
    """``header.stamp`` of a serialized message that starts with a std_msgs/Header (JointState,
    CompressedImage): after CDR's 4-byte encapsulation header, int32 sec and uint32 nanosec,
    little-endian (what rmw_fastrtps writes on x86 and ARM)."""
    sec, nanosec = struct.unpack_from("<iI", data, 4)
    return sec * 1_000_000_000 + nanosec


class Bench:
    """This bench's node: the leader, the services, and a subscriber on every recorded topic."""

    def __init__(self, cfg: Any, procs: Processes) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, JointState
        from std_srvs.srv import SetBool, Trigger

        from ate_core.robot.recording import BEST_EFFORT_ROLES, recorded_streams

        self._rclpy, self._JointState = rclpy, JointState
        self._SetBool, self._Trigger = SetBool, Trigger
        self.node = rclpy.create_node("recorder_bench")
        self.procs, self.cfg = procs, cfg
        self.lock = threading.Lock()
        self.diag: Dict[str, Dict[str, str]] = {}
        self.stamps: Dict[str, Set[int]] = {}
        self.command_stamps: List[int] = []
        self.listening = False
        types = {"sensor_msgs/msg/JointState": JointState,
                 "sensor_msgs/msg/CompressedImage": CompressedImage}
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.streams = recorded_streams(cfg)
        for topic, stream in self.streams.items():
            if stream.msgtype not in types:
                continue  # diagnostics (no one stamp per message), chunks (no policy here)
            self.stamps[topic] = set()
            qos = qos_profile_sensor_data if stream.role in BEST_EFFORT_ROLES else reliable
            # Raw: the stamp is read from the CDR bytes, so that this bench, which hears all
            # that the recorder hears, costs the machine as little as the recorder does.
            self.node.create_subscription(types[stream.msgtype], topic,
                                          lambda m, t=topic: self._on_message(t, m), qos,
                                          raw=True)
        self.node.create_subscription(DiagnosticArray, cfg.topics.diagnostics, self._on_diag, 50)
        from ate_ros.nodes.teleop_node import TARGET_QOS

        self.leader_pubs = {side: self.node.create_publisher(  # as the teleop node publishes
            JointState, f"/{side}_arm/{cfg.topics.teleop_target}", TARGET_QOS)
            for side in SIDES}
        self.names = {side: (*getattr(cfg.arms, side).joint_names,
                             getattr(cfg.arms, side).gripper_joint) for side in SIDES}
        self.home = {side: [*getattr(cfg.arms, side).home_rad, 0.05] for side in SIDES}
        self.leader_sent: Dict[str, List[int]] = {side: [] for side in SIDES}
        self.clients = {
            "engage_teleop": self.node.create_client(SetBool, cfg.topics.engage_teleop),
            "start": self.node.create_client(Trigger, "/recorder/start"),
            "stop": self.node.create_client(SetBool, "/recorder/stop")}

    def _on_message(self, topic: str, data: bytes) -> None:
        if not self.listening:
            return
        t = cdr_stamp_ns(data)
        with self.lock:
            self.stamps[topic].add(t)
            if topic == f"/left_arm/{self.cfg.topics.arm_command}":
                self.command_stamps.append(t)

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            self.diag[status.name] = {kv.key: kv.value for kv in status.values}

    def lead(self) -> None:
        """One leader target per arm: home, with a slow sine on joints 1 and 4."""
        now = self.node.get_clock().now()
        phase = math.sin(2 * math.pi * 0.2 * now.nanoseconds * 1e-9)
        for side in SIDES:
            q = list(self.home[side])
            q[0] += 0.15 * phase
            q[3] += 0.1 * phase
            msg = self._JointState(name=list(self.names[side]), position=q)
            msg.header.stamp = now.to_msg()
            self.leader_pubs[side].publish(msg)
            if self.listening:
                self.leader_sent[side].append(now.nanoseconds)

    def spin_for(self, seconds: float, until=None, what: str = "") -> None:
        """Spin (leading at LEADER_HZ) for ``seconds``, or until ``until()`` (failing after)."""
        deadline = time.monotonic() + seconds
        next_lead = time.monotonic()
        while True:
            if until is not None and until():
                return
            now = time.monotonic()
            if now >= deadline:
                if until is None:
                    return
                raise RuntimeError(f"timed out after {seconds:g} s waiting for {what}")
            if now >= next_lead:
                self.lead()
                next_lead += 1.0 / LEADER_HZ
            self.procs.check_alive()
            self._rclpy.spin_once(self.node, timeout_sec=max(0.0, min(next_lead, deadline) - now))

    def call(self, name: str, request: Any, timeout_s: float = 15.0) -> Any:
        client = self.clients[name]
        self.spin_for(timeout_s, client.service_is_ready, f"service {client.srv_name}")
        future = client.call_async(request)
        self.spin_for(timeout_s, future.done, f"the answer of {client.srv_name}")
        return future.result()

    def destroy(self) -> None:
        self.node.destroy_node()


def start_processes(procs: Processes, cfg: Any, config: str) -> None:
    """``bimanual.launch.py sim:=true record:=true``'s processes, with their command lines."""
    from ate_ros.bringup import stack_plan
    from ate_ros.graph import NodeSpec

    plan, _ = stack_plan(cfg, config, checkpoint="", params_dir=Path(procs.log_dir))
    for item in plan:
        if item.params_file is not None:
            item.params_file.write_text(item.params_yaml)
        procs.start(item.name.replace("/", "_"), list(item.argv))
    recorder = NodeSpec("recorder_node", "recorder", parameters={"config_file": config})
    params = Path(procs.log_dir) / "recorder.yaml"
    params.write_text(recorder.params_file_yaml())
    procs.start("recorder", recorder.command(str(params)))


def read_take(bag: Path, topics: List[str]) -> Dict[str, Any]:
    from ate_core.data.bag import EPISODE_FILE, BagReader, header_stamp_ns

    out: Dict[str, Any] = {"stamps": {t: [] for t in topics}, "counts": {}, "image_bytes": {}}
    with BagReader(bag) as reader:
        out["counts"] = dict(reader.counts)
        for topic, _log_ns, msg in reader.messages([t for t in topics if t in reader.topics]):
            out["stamps"][topic].append(header_stamp_ns(msg))
            if hasattr(msg, "format"):  # a JPEG frame
                out["image_bytes"].setdefault(topic, []).append(len(msg.data))
    out["info"] = yaml.safe_load((bag / EPISODE_FILE).read_text())
    out["bytes"] = sum(p.stat().st_size for p in bag.rglob("*") if p.is_file())
    return out


def run(args: argparse.Namespace, cfg: Any, procs: Processes, bench: Bench, takes: str) -> dict:
    bench.spin_for(60.0, lambda: "supervisor" in bench.diag and any(
        "recorder" in k for k in bench.diag), "the supervisor's and recorder's reports")
    deadline = time.monotonic() + 60.0
    while True:  # refused until the supervisor has heard both arms and both leader streams
        answer = bench.call("engage_teleop", bench._SetBool.Request(data=True))
        if answer.success:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"engage_teleop refused for 60 s: {answer.message}")
        bench.spin_for(0.2)
    bench.spin_for(3.0)  # past the engage ramp
    answer = bench.call("start", bench._Trigger.Request())
    if not answer.success:
        raise RuntimeError(f"/recorder/start refused: {answer.message}")
    recorder_pid = procs.procs["recorder"].pid
    cpu = CpuMeter({"recorder": recorder_pid, "supervisor": procs.procs["supervisor"].pid})
    cpu.start()
    bench.listening = True
    t0 = time.monotonic()
    bench.spin_for(args.seconds)
    answer = bench.call("stop", bench._SetBool.Request(data=True))
    bench.listening = False
    wall = time.monotonic() - t0
    cpu_percent = cpu.percent()
    if not answer.success:
        raise RuntimeError(f"/recorder/stop failed: {answer.message}")
    bench.spin_for(2.5)  # a fresh supervisor report, its window ending with the take
    supervisor = dict(bench.diag.get("supervisor", {}))

    bag = sorted(Path(takes).glob("episode_*"))[-1]
    take = read_take(bag, list(bench.stamps))
    duration_s = float(take["info"].get("duration_s") or wall)
    topics: Dict[str, dict] = {}
    for topic, seen in bench.stamps.items():
        in_bag = take["stamps"][topic]
        if not in_bag:
            topics[topic] = {"in_bag": 0, "received_here": len(seen), "dropped": None}
            continue
        lo, hi = min(in_bag), max(in_bag)
        window = {t for t in seen if lo <= t <= hi}
        bag_set = set(in_bag)
        topics[topic] = {"in_bag": len(in_bag), "per_s": len(in_bag) / duration_s,
                         "received_here": len(window), "dropped": len(window - bag_set),
                         "missed_here": len(bag_set - window)}
    for side in SIDES:  # the leader: every target published during the take
        topic = f"/{side}_arm/{cfg.topics.teleop_target}"
        in_bag = set(take["stamps"][topic])
        sent = [t for t in bench.leader_sent[side]
                if in_bag and min(in_bag) <= t <= max(in_bag)]
        topics[topic].update(published_here=len(sent), dropped=len(set(sent) - in_bag),
                             missed_here=0)
    periods = [(b - a) * 1e-9 for a, b in zip(bench.command_stamps, bench.command_stamps[1:])]
    period_s = 1.0 / cfg.supervisor.rate_hz
    errors = [abs(p - period_s) for p in periods]
    total_msgs = sum(take["counts"].values())
    audit = take["info"].get("audit", {})
    return {
        "seconds": args.seconds, "busy_cores": args.busy_cores, "take_duration_s": duration_s,
        "bag_mb": take["bytes"] / 1e6, "mb_per_s": take["bytes"] / 1e6 / duration_s,
        "messages": total_msgs, "messages_per_s": total_msgs / duration_s,
        "counts_by_topic": take["counts"],
        "image_kb_mean": {t: sum(v) / len(v) / 1e3 for t, v in take["image_bytes"].items()},
        "topics": topics,
        "dropped_total": sum(v["dropped"] or 0 for v in topics.values()),
        "cpu_percent": cpu_percent,
        "audit": {"verdict": audit.get("verdict"), "problems": audit.get("problems", [])},
        "tick": {"supervisor_error_p99_ms": float(supervisor.get("tick.error_p99_ms", "nan")),
                 "supervisor_period_p99_ms": float(supervisor.get("tick.period_p99_ms", "nan")),
                 "supervisor_missed": supervisor.get("tick.missed"),
                 "window_periods": int(min(6000, float(supervisor.get("tick.ticks", "0")) - 1)),
                 "command_stamps": len(periods),
                 "command_error_p99_ms": percentile(errors, 99) * 1e3,
                 "command_period_max_ms": (max(periods) if periods else math.nan) * 1e3},
        "bag": str(bag),
    }


def print_results(head: dict, r: dict) -> None:
    print_header(head)
    print(f"\none take of {r['take_duration_s']:.1f} s: {r['bag_mb']:.1f} MB on disk, "
          f"{r['mb_per_s']:.2f} MB/s, {r['messages']} messages ({r['messages_per_s']:.0f}/s)")
    print(f"\n  {'topic':<38}{'in bag':>8}{'per s':>8}{'here':>8}{'dropped':>9}{'missed here':>13}")
    for topic, v in sorted(r["topics"].items()):
        per_s = f"{v['per_s']:8.1f}" if "per_s" in v else f"{'-':>8}"
        here = v.get("published_here", v["received_here"])
        dropped = "-" if v["dropped"] is None else v["dropped"]
        print(f"  {topic:<38}{v['in_bag']:8d}{per_s}{here:8d}{dropped:>9}"
              f"{v.get('missed_here', 0):>13}")
    print(f"  messages dropped in all: {r['dropped_total']} (goal: none)")
    print("  JPEG frames, mean kB: " + ", ".join(f"{t.split('/')[2]} {kb:.1f}"
                                                for t, kb in r["image_kb_mean"].items()))
    cpu = r["cpu_percent"]
    print(f"\nCPU over the take, % of one core ({os.cpu_count()} cores): recorder "
          f"{cpu['recorder']:.1f}, supervisor {cpu['supervisor']:.1f}, machine "
          f"{cpu['machine']:.1f} % of all cores")
    t = r["tick"]
    print(f"\nsupervisor tick error p99 while recording: {t['supervisor_error_p99_ms']:.3f} ms "
          f"(its own record, last {t['window_periods']} periods), "
          f"{t['command_error_p99_ms']:.3f} ms (/left_arm/command stamps here, "
          f"{t['command_stamps']} periods, max period {t['command_period_max_ms']:.2f} ms)")
    print(f"\ncapture audit: {r['audit']['verdict']}"
          + "".join(f"\n  {p}" for p in r["audit"]["problems"]))
    ok_tick = t["supervisor_error_p99_ms"] < GOAL_TICK_ERROR_P99_MS
    print(f"\ngoals\n  no message dropped                    {r['dropped_total']:8d}     "
          f"{'pass' if r['dropped_total'] == 0 else 'FAIL'}"
          f"\n  tick error p99 < {GOAL_TICK_ERROR_P99_MS:g} ms while recording "
          f"{t['supervisor_error_p99_ms']:8.2f} ms  {'pass' if ok_tick else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the take")
    parser.add_argument("--busy-cores", type=int, default=0, metavar="N",
                        help="keep N cores busy with unrelated busy loops for the whole bench")
    parser.add_argument("--keep", action="store_true", help="keep the take and the processes' output")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--domain-id", type=int, default=random.randint(1, 100))
    args = parser.parse_args()

    head = header("bench/recorder.py: the episode recorder under the simulated robot's streams "
                  "(3 cameras 640x480 at 30 Hz, both arms at 200 Hz, teleop at 100 Hz)")
    tmp = tempfile.mkdtemp(prefix="ate-bench-recorder-")
    os.environ.update(ROS_DOMAIN_ID=str(args.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      ROS_LOG_DIR=tmp)
    takes = os.path.join(tmp, "takes")
    config = os.path.join(tmp, "bimanual.yaml")
    cfg = write_config(os.path.join(REPO, "config", "bimanual.yaml"), config, takes)

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    procs = Processes(tmp, os.environ)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    bench, error, results = Bench(cfg, procs), None, None
    try:
        for i in range(args.busy_cores):
            procs.start(f"busy_loop_{i}", [sys.executable, "-c", BUSY_LOOP])
        start_processes(procs, cfg, config)
        results = run(args, cfg, procs, bench, takes)
    except RuntimeError as e:
        error = str(e)
    finally:
        bench.destroy()
        rclpy.try_shutdown()
        exits = procs.stop()
    if error is not None:
        print(f"recorder bench: {error}\nprocess output is in {tmp}", file=sys.stderr)
        return 1
    assert results is not None
    results["exit_codes"] = exits
    print_results(head, results)
    print("\nexit codes after SIGINT: " + ", ".join(f"{n} {rc}" for n, rc in exits.items()))
    if args.json:
        write_json(args.json, head, results)
    if args.keep:
        print(f"take and process output kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_main(main, "recorder bench: interrupted; every process it started has stopped")
