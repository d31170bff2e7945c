"""Arm I/O of the simulated bimanual robot: joint_states rate and command latency, both arms.

    .venv/bin/python bench/arm_io.py [--seconds 10] [--json out.json]

Processes as under ``sim``: one RealMan controller emulator per arm (with ``--log``), both arm
nodes in one process (``arm_nodes``; ``--arm-processes 2`` starts one ``arm_node`` per arm, as
the launch file does), and this bench's node. Phase "idle" only listens; phase "streaming"
also commands both arms at 100 Hz. Each lasts ``--seconds``.

Latency runs from just before ``publish`` here to the emulator's receive time of the matching
``movej_canfd``, both ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for all processes on
Linux). Targets are whole 0.001 degrees, the controller's wire unit, so the emulator logs
exactly the values published; joint 1 differs on every tick, which makes the match unique.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState

from ate_core.robot.config import BimanualConfig, load_config
from ate_ros.graph import sim_controllers
from common import (CpuMeter, Processes, fmt, free_port, gaps, header, print_header, summary_ms,
                    run_main, write_json)

SIDES = ("left", "right")
RATE_HZ = 100.0
#: Joint 1 ramps up (and back down on long runs) at most 0.09 rad from the measured start, in
#: 0.001 degrees: a small move, and far inside the arm node's jump check.
RAMP_MDEG = round(math.degrees(0.09) * 1000)
#: Joints 2-7 swing (1 - cos) / 2 by this much at WAVE_HZ: at most 0.03 rad/s, far below limits.
WAVE_MDEG, WAVE_HZ = round(math.degrees(0.02) * 1000), 0.5


def config_on_free_ports(src: str, dst: str) -> BimanualConfig:
    with open(src, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for ep in data["sim"]["arms"].values():
        ep.update(tcp_port=free_port(ep["ip"]), udp_port=free_port(kind=socket.SOCK_DGRAM))
    with open(dst, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return load_config(dst)


class Probe(Node):
    """Listens to both arms (receive times, latest state, diagnostics) and commands them."""

    def __init__(self, cfg: BimanualConfig, procs: Processes) -> None:
        super().__init__("arm_io_bench")
        self.cfg, self.procs = cfg, procs
        self.received: Dict[str, List[float]] = {s: [] for s in SIDES}
        self.latest: Dict[str, Optional[JointState]] = {s: None for s in SIDES}
        self.diag: Dict[str, Dict[str, str]] = {s: {} for s in SIDES}
        self.sent: Dict[str, List[Tuple[Tuple[int, ...], float]]] = {s: [] for s in SIDES}
        self.pubs = {}
        for s in SIDES:
            self.create_subscription(JointState, f"/{s}_arm/{cfg.topics.arm_joint_states}",
                                     lambda m, s=s: self._on_state(s, m), 10)
            self.pubs[s] = self.create_publisher(JointState, f"/{s}_arm/{cfg.topics.arm_command}", 10)
        self.create_subscription(DiagnosticArray, cfg.topics.diagnostics, self._on_diag, 10)

    def _on_state(self, side: str, msg: JointState) -> None:
        self.received[side].append(time.monotonic())
        self.latest[side] = msg

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:  # named "left_arm: RealMan RM75-B"
            side = status.name.split("_arm:")[0]
            if side in self.diag:
                self.diag[side] = {kv.key: kv.value for kv in status.values}

    def spin_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
            self.procs.check_alive()
            rclpy.spin_once(self, timeout_sec=0.05)

    def stream(self, n_ticks: int) -> Callable[[], None]:
        """A 100 Hz tick from the measured position: joint 1 ramps (distinct on every tick),
        the others swing smoothly."""
        start = {s: [round(math.degrees(q) * 1000) for q in self.latest[s].position[:7]]
                 for s in SIDES}
        step = max(1, RAMP_MDEG // max(n_ticks, 1))
        tick = [0]

        def command() -> None:
            k = tick[0]
            ramp = (k * step) % (2 * RAMP_MDEG)
            ramp = min(ramp, 2 * RAMP_MDEG - ramp)
            wave = round(WAVE_MDEG * (1 - math.cos(2 * math.pi * WAVE_HZ * k / RATE_HZ)) / 2)
            for s in SIDES:
                mdeg = (start[s][0] + ramp, *(q + wave for q in start[s][1:]))
                msg = JointState(name=list(getattr(self.cfg.arms, s).joint_names),
                                 position=[math.radians(v / 1000) for v in mdeg])
                self.sent[s].append((mdeg, time.monotonic()))
                self.pubs[s].publish(msg)
            tick[0] += 1
        return command


def latencies(sent: List[Tuple[Tuple[int, ...], float]], log_path: str) -> List[float]:
    """Emulator receive time minus publish time of each logged ``movej_canfd``, matched by its
    joint values (oldest first, should a value ever repeat)."""
    pending: Dict[Tuple[int, ...], Deque[float]] = collections.defaultdict(collections.deque)
    for key, t in sent:
        pending[key].append(t)
    out = []
    with open(log_path, encoding="utf-8") as f:
        for rec in map(json.loads, f):
            key = tuple(rec["payload"].get("joint", ())[:7])
            if rec["name"] == "movej_canfd" and pending.get(key):
                out.append(rec["mono_s"] - pending[key].popleft())
    return out


def run(args: argparse.Namespace, procs: Processes, probe: Probe, logs: Dict[str, str]) -> dict:
    probe.spin_until(lambda: all(probe.latest.values())
                     and all(d.get("link") == "ready" for d in probe.diag.values()),
                     30.0, "both arms to publish joint_states with the controller link ready")
    cpu = CpuMeter({**{name: p.pid for name, p in procs.procs.items()}, "bench": os.getpid()})
    results: dict = {"state": {}, "cpu_percent": {}, "latency": {}, "arm_node": {}}

    def phase(name: str) -> None:
        for side in SIDES:
            probe.received[side].clear()
        cpu.start()
        t0 = time.monotonic()
        probe.spin_until(lambda: time.monotonic() - t0 >= args.seconds, args.seconds + 5, name)
        elapsed = time.monotonic() - t0
        results["cpu_percent"][name] = cpu.percent()
        results["state"][name] = {s: {"rate_hz": len(probe.received[s]) / elapsed,
                                      **summary_ms(gaps(probe.received[s]))} for s in SIDES}

    phase("idle")
    timer = probe.create_timer(1.0 / RATE_HZ, probe.stream(int(args.seconds * RATE_HZ)))
    phase("streaming")
    probe.destroy_timer(timer)
    stopped = time.monotonic()  # diagnostics come at 1 Hz: wait for one that counts every command
    probe.spin_until(lambda: time.monotonic() - stopped > 1.2, 5.0, "a last diagnostics report")
    for s in SIDES:
        lat = latencies(probe.sent[s], logs[s])
        results["latency"][s] = {"published": len(probe.sent[s]), "received": len(lat),
                                 "received_fraction": len(lat) / max(len(probe.sent[s]), 1),
                                 **summary_ms(lat)}
        results["arm_node"][s] = {k: v for k, v in probe.diag[s].items() if k.startswith(
            ("commands_", "rejected.", "reconnects", "last_fault"))}
    return results


def print_results(head: dict, seconds: float, results: dict) -> None:
    print_header(head)
    print(f"\njoint_states received here, {seconds:g} s per phase"
          f"\n  topic                    phase       msg/s  gap p50     p99     max (ms)")
    for name, per_side in results["state"].items():
        for s, r in per_side.items():
            print(f"  /{s}_arm/joint_states{'':<{6 - len(s)}}{name:<10}{r['rate_hz']:8.1f}"
                  f"{fmt((r['p50_ms'], r['p99_ms'], r['max_ms']))}")
    print(f"\ncommand publish -> controller receive, both arms at {RATE_HZ:g} Hz"
          f"\n  arm    published  received             p50     p99     max (ms)")
    for s, r in results["latency"].items():
        print(f"  {s:<6}{r['published']:10d}{r['received']:10d} "
              f"({100 * r['received_fraction']:5.1f} %){fmt((r['p50_ms'], r['p99_ms'], r['max_ms']))}")
    for s, d in results["arm_node"].items():
        rejected = ", ".join(f"{k[9:]} {v}" for k, v in d.items() if k.startswith("rejected."))
        print(f"  arm node {s:<5}: sent {d.get('commands_sent')}, refused {d.get('commands_refused')}, "
              f"rejected {rejected or 'none'}, reconnects {d.get('reconnects')}, "
              f"last fault {d.get('last_fault') or 'none'}")
    cpu = results["cpu_percent"]
    print("\nCPU, % of one core        " + "".join(f"{name:>11}" for name in cpu))
    for proc in next(iter(cpu.values())):
        label = "machine (% of all cores)" if proc == "machine" else proc
        print(f"  {label:<24}" + fmt((c[proc] for c in cpu.values()), 11, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--domain-id", type=int, default=random.randint(1, 100))
    parser.add_argument("--arm-processes", type=int, choices=(1, 2), default=1)
    args = parser.parse_args()
    head = header("bench/arm_io.py: two simulated RealMan arms, joint_states in and commands out")
    tmp = tempfile.mkdtemp(prefix="ate-bench-arm-io-")
    os.environ.update(ROS_DOMAIN_ID=str(args.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      ROS_LOG_DIR=tmp)  # read by every process, this one at rclpy.init
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(tmp, "bimanual.yaml")
    cfg = config_on_free_ports(os.path.join(repo, "config", "bimanual.yaml"), config)
    logs = {s: os.path.join(tmp, f"emulator_{s}.jsonl") for s in SIDES}
    procs = Processes(tmp, os.environ)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: KeyboardInterrupt
    probe, failed, unclean = Probe(cfg, procs), False, {}
    try:
        for spec in sim_controllers(cfg):
            procs.start(f"emulator_{spec.side}", [sys.executable, "-m",
                                                  "ate_ros.sim.realman_emulator", *spec.argv(),
                                                  "--log", logs[spec.side]])
        ros_args = ["--ros-args", "-p", "sim:=true", "-p", f"config_file:={config}"]
        if args.arm_processes == 1:
            procs.start("arm_nodes", [sys.executable, "-c", "from ate_ros.nodes.arm_node import "
                                      "main_both; main_both()", *ros_args])
        else:
            for s in SIDES:
                procs.start(f"arm_node_{s}", [sys.executable, "-m", "ate_ros.nodes.arm_node",
                                              *ros_args, "-r", f"__ns:=/{s}_arm", "-p", f"arm:={s}"])
        results = run(args, procs, probe, logs)
    except Exception:
        failed = True
        raise
    finally:
        probe.destroy_node()
        rclpy.try_shutdown()
        exits = procs.stop()
        unclean = {name: procs.tail(name) for name, rc in exits.items() if rc != 0}
        if failed:
            print(f"arm_io: failed; process output and emulator logs are in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["exit_codes"] = exits
    print_results(head, args.seconds, results)
    print("\nexit codes after SIGINT: " + ", ".join(f"{n} {rc}" for n, rc in exits.items()))
    for name, tail in unclean.items():
        print(f"--- {name} did not exit cleanly; the end of its output:\n{tail.rstrip()}")
    if args.json:
        write_json(args.json, head, results)
    return 0


if __name__ == "__main__":
    run_main(main, "arm_io: interrupted; every process it started has stopped")
