"""The control path under load: supervisor ticks, e-stop, inference, capture -> command.

Measured on the simulated robot as ``ros2 launch ate_ros bimanual.launch.py sim:=true`` runs it.

    .venv/bin/python bench/control_loop.py [--seconds 30] [--estops 20] [--torch-threads 1]
        [--arm-processes 2] [--busy-cores 0] [--keep] [--json out.json] [--png out.png]

Separate processes, as the launch file and ``ate_bringup`` start them (``ate_ros.bringup.
stack_plan``: the same command lines): one RealMan controller emulator per arm (with ``--log``),
one arm node per arm (``--arm-processes 1``: both in one process), the joint-state aggregator
(it feeds RViz, not the control path; ``--no-aggregator`` leaves it out), one camera node per
simulated camera (640x480 at 30 Hz), the inference node, the supervisor and this bench's node.
``--busy-cores N`` adds N unrelated busy loops for the whole bench. The policy is the shipped one (the ``policy`` section of
``config/train_flow.yaml``: flow, three cameras at 224x224, resnet18 encoder) with random
weights and the normalisation statistics of a small synthetic rm75_bimanual data set recorded
at 30 Hz, so chunk points are 1/30 s apart. It runs on the CPU with ``--torch-threads``.
Random weights cost exactly what trained ones do; the arms move wherever the safety filter
lets the random chunks take them.

Once the inference node reports ready the bench engages the supervisor and listens for
``--seconds``. Then ``--estops`` e-stop trials, each from engaged and moving.

What each number is:

- Tick timing: the supervisor's own record (``/diagnostics``), start-to-start periods of its
  control thread. Percentiles cover its last 6000 periods (60 s at 100 Hz), which on a run
  shorter than that reach back into the idle time before engage; the missed ticks are counted
  over the run only (the difference of its counters between the first reports after the start
  and after the end). The periods between the ``header.stamp`` of consecutive
  ``/left_arm/command`` messages received here cover the run only and draw the histogram; a
  message lost on the way here would show as a missed tick there, never in the supervisor's.
- Inference: the inference node's latency from the observation time to the chunk published
  (its window: the last 1000 chunks, including those before engage) and the chunks it sent; here,
  the observation time to the chunk received.
- Capture -> command: for each chunk received while engaged (``header.stamp`` = its observation
  time), the frame it used is taken to be the newest head ``camera_info`` stamp at or before
  that time (the synchroniser's as-of rule; it is the frame of the other two cameras only to
  within their 33 ms period), and the first command computed from the chunk is taken to be the
  first ``/left_arm/command`` received here after the chunk arrived here. Latency = that
  command's ``header.stamp`` (its tick) - the frame's capture stamp, both ROS time. The
  supervisor may get the chunk a little after this node does, or that tick may have been
  computed just before the chunk arrived; either shifts the figure by at most one tick.
- E-stop: ``time.monotonic()`` just before calling ``/ate/estop`` to the emulator's receive
  time (``mono_s`` in its log, also CLOCK_MONOTONIC) of the first ``set_arm_stop`` after it, the
  later of the two arms. Each trial then re-arms, engages and waits ``ESTOP_SETTLE_S``. A
  controller that receives no ``set_arm_stop`` within ``ESTOP_TIMEOUT_S`` makes the trial time
  out (and the goal fail); the processes' output and the emulator logs are then kept.
- Counted during the run and during the trials: the arm nodes' stale periods (state pushes
  late by more than the driver's state timeout: commands wait for fresh state), reconnects
  (a broken link, or pushes silent for the link timeout) and commands sent, refused
  and rejected, and the supervisor's faults and interventions by rule and arm, each the
  difference of the counters in their ``/diagnostics`` reports.
- CPU: of each process and of the whole machine over the run; "anything else" is the machine's
  busy time outside these processes, which should be near 0 for numbers worth quoting.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402

from common import (CpuMeter, Processes, fmt, free_port, header, percentile, print_header,  # noqa: E402
                    run_main, summary_ms, write_json)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("left", "right")
#: The shipped policy's data rate: the cameras' 30 Hz, so a chunk point every 33.3 ms.
POLICY_FPS = 30.0
EMBODIMENT = "rm75_bimanual"
#: After each e-stop trial's engage: the 1 s ramp is under way, so the arms are moving.
ESTOP_SETTLE_S = 0.5
ESTOP_TIMEOUT_S = 5.0
GOAL_TICK_ERROR_P99_MS = 2.0
GOAL_MISSED_PCT = 0.5
GOAL_ESTOP_P99_MS = 20.0
#: An unrelated process that keeps a core busy (``--busy-cores``) and exits 0 on SIGINT.
BUSY_LOOP = ("import signal, sys\nsignal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
             "while True:\n    pass\n")


# ---------------------------------------------------------------------------------------------
# The temporary deployment: a checkpoint and a config


def make_checkpoint(directory: str) -> None:
    """The shipped policy config with random weights and synthetic rm75_bimanual statistics
    (runs in a child process, so the bench itself never imports torch)."""
    import torch

    torch.set_num_threads(1)
    from ate_core.data.stats import compute_stats
    from ate_core.data.synthetic import generate_synthetic_dataset
    from ate_core.policy.factory import make_policy
    from ate_core.policy.pretrained import save_pretrained

    with open(os.path.join(REPO, "config", "train_flow.yaml"), encoding="utf-8") as f:
        train = yaml.safe_load(f)
    policy_cfg = dict(train["policy"])
    policy_type = policy_cfg.pop("type")
    torch.manual_seed(0)
    policy = make_policy(policy_type, policy_cfg)
    with tempfile.TemporaryDirectory(prefix="ate-bench-data-") as tmp:
        data = generate_synthetic_dataset(os.path.join(tmp, "rm75"), n_episodes=2, length=30,
                                          embodiment=EMBODIMENT, image_size=(32, 32), fps=POLICY_FPS)
        stats = compute_stats(data)
    save_pretrained(directory, policy, {EMBODIMENT: stats},
                    {"embodiment": EMBODIMENT, "norm_mode": train.get("norm_mode", "mean_std"),
                     "fps": POLICY_FPS,
                     "train": {"source": "bench/control_loop.py: config/train_flow.yaml policy, "
                                         "random weights"}})


def write_config(src: str, dst: str, checkpoint: str, torch_threads: int) -> Any:
    """``src`` with the checkpoint on the CPU and the emulators on free loopback ports."""
    from ate_core.robot.config import load_config

    with open(src, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for ep in data["sim"]["arms"].values():
        ep.update(tcp_port=free_port(ep["ip"]), udp_port=free_port(kind=socket.SOCK_DGRAM))
    data["inference"].update(checkpoint=checkpoint, device="cpu", torch_threads=torch_threads)
    with open(dst, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return load_config(dst)


# ---------------------------------------------------------------------------------------------
# The bench's node


class LogTail:
    """New ``set_arm_stop`` receive times in an emulator's JSON-lines log."""

    def __init__(self, path: str) -> None:
        self.path, self._offset, self._partial = path, 0, ""

    def skip(self) -> None:
        self.stops()

    def stops(self) -> List[float]:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        text, self._partial = self._partial + text, ""
        lines = text.split("\n")
        self._partial = lines.pop()  # "" after a complete last line
        out = []
        for line in lines:
            if line:
                rec = json.loads(line)
                if rec["name"] == "set_arm_stop":
                    out.append(rec["mono_s"])
        return out


class Probe:
    """This bench's node: diagnostics, head frame stamps, chunks and left-arm commands in;
    engage, e-stop and re-arm out."""

    def __init__(self, cfg: Any, procs: Processes) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, JointState
        from std_srvs.srv import SetBool, Trigger
        from trajectory_msgs.msg import JointTrajectory

        self._rclpy = rclpy
        self.node = rclpy.create_node("control_loop_bench")
        self.procs = procs
        self.diag: Dict[str, Dict[str, str]] = {}
        self.diag_at: Dict[str, float] = {}
        self.frames_ns: List[int] = []
        self.recording = False
        self.chunks = 0
        self.obs_to_chunk_s: List[float] = []
        self._pending: List[Tuple[int, int, int]] = []  # (ref, frame, arrival) ns
        #: per chunk: capture -> command, capture -> observation time, observation -> chunk
        #: received here, chunk received -> command stamp (seconds)
        self.paths: List[Tuple[float, float, float, float]] = []
        self.command_stamps_ns: List[int] = []

        node = self.node
        node.create_subscription(DiagnosticArray, cfg.topics.diagnostics, self._on_diag, 50)
        node.create_subscription(CameraInfo, f"{cfg.topics.cameras}/head/camera_info",
                                 self._on_frame, qos_profile_sensor_data)
        node.create_subscription(JointTrajectory, cfg.topics.action_chunk, self._on_chunk,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(JointState, f"/left_arm/{cfg.topics.arm_command}",
                                 self._on_command, 100)
        self.estop_client = node.create_client(Trigger, cfg.topics.estop)
        self.rearm_client = node.create_client(Trigger, cfg.topics.rearm)
        self.engage_client = node.create_client(SetBool, cfg.topics.engage)
        self._trigger, self._setbool = Trigger, SetBool

    def _now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    @staticmethod
    def _ns(stamp: Any) -> int:
        return stamp.sec * 1_000_000_000 + stamp.nanosec

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            self.diag[status.name] = {kv.key: kv.value for kv in status.values}
            self.diag_at[status.name] = time.monotonic()

    def _on_frame(self, msg: Any) -> None:
        stamp = self._ns(msg.header.stamp)
        if not self.frames_ns or stamp > self.frames_ns[-1]:
            self.frames_ns.append(stamp)
        if len(self.frames_ns) > 600:  # 20 s of frames: far more than any chunk reaches back
            del self.frames_ns[:300]

    def _on_chunk(self, msg: Any) -> None:
        arrival, ref = self._now_ns(), self._ns(msg.header.stamp)
        if not self.recording:
            return
        self.chunks += 1
        self.obs_to_chunk_s.append((arrival - ref) * 1e-9)
        i = bisect.bisect_right(self.frames_ns, ref)
        if i > 0:
            self._pending.append((ref, self.frames_ns[i - 1], arrival))

    def _on_command(self, msg: Any) -> None:
        if not self.recording:
            return
        stamp = self._ns(msg.header.stamp)
        self.command_stamps_ns.append(stamp)
        for ref, frame, arrival in self._pending:
            self.paths.append(((stamp - frame) * 1e-9, (ref - frame) * 1e-9, (arrival - ref) * 1e-9,
                               (stamp - arrival) * 1e-9))
        self._pending.clear()

    def fresh(self, name: str, since: float) -> bool:
        return self.diag_at.get(name, -math.inf) > since

    def spin_until(self, done: Callable[[], bool], timeout_s: float, what: str,
                   step_s: float = 0.05) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
            self.procs.check_alive()
            self._rclpy.spin_once(self.node, timeout_sec=step_s)

    def call(self, client: Any, request: Any, what: str, timeout_s: float = 10.0) -> Any:
        self.spin_until(client.service_is_ready, timeout_s, f"service {client.srv_name}")
        future = client.call_async(request)
        self.spin_until(future.done, timeout_s, what, step_s=0.005)
        return future.result()

    def engage(self, timeout_s: float = 30.0) -> None:
        """Engage, retrying while the supervisor refuses (no joint state yet, say)."""
        deadline, answer = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            answer = self.call(self.engage_client, self._setbool.Request(data=True), "/ate/engage")
            if answer.success:
                return
            pause = time.monotonic()
            self.spin_until(lambda: time.monotonic() - pause > 0.2, 1.0, "a retry of engage")
        raise RuntimeError(f"the supervisor refused to engage for {timeout_s:g} s: "
                           f"{answer.message if answer else 'no answer'}")

    def trigger(self, client: Any, what: str) -> None:
        answer = self.call(client, self._trigger.Request(), what)
        if not answer.success:
            raise RuntimeError(f"{what} refused: {answer.message}")

    def destroy(self) -> None:
        self.node.destroy_node()


# ---------------------------------------------------------------------------------------------
# Measuring


def _float(values: Dict[str, str], key: str) -> float:
    try:
        return float(values[key])
    except (KeyError, ValueError):
        return float("nan")


def tick_results(sup0: Dict[str, str], sup1: Dict[str, str], stamps_ns: List[int],
                 period_s: float) -> dict:
    ticks = _float(sup1, "tick.ticks") - _float(sup0, "tick.ticks")
    missed = _float(sup1, "tick.missed") - _float(sup0, "tick.missed")
    periods = [(b - a) * 1e-9 for a, b in zip(stamps_ns, stamps_ns[1:])]
    errors = [abs(p - period_s) for p in periods]
    return {
        "period_ms": period_s * 1e3,
        "supervisor": {"period_p50_ms": _float(sup1, "tick.period_p50_ms"),
                       "period_p99_ms": _float(sup1, "tick.period_p99_ms"),
                       "error_p99_ms": _float(sup1, "tick.error_p99_ms"),
                       "window_periods": int(min(6000, _float(sup1, "tick.ticks") - 1)),
                       "run_ticks": int(ticks), "run_missed": int(missed),
                       "run_missed_pct": 100.0 * missed / max(ticks + missed, 1.0)},
        "command_stamps": {"periods": len(periods),
                           "rate_hz": len(periods) / sum(periods) if periods else 0.0,
                           "period_p50_ms": percentile(periods, 50) * 1e3,
                           "period_p99_ms": percentile(periods, 99) * 1e3,
                           "period_max_ms": (max(periods) if periods else math.nan) * 1e3,
                           "error_p99_ms": percentile(errors, 99) * 1e3,
                           "gaps_over_1_5_periods": sum(p > 1.5 * period_s for p in periods)},
    }


def estop_trials(probe: Probe, logs: Dict[str, LogTail], n: int) -> dict:
    latencies: List[float] = []
    timeouts: List[dict] = []
    for trial in range(n):
        for tail in logs.values():
            tail.skip()
        first: Dict[str, float] = {}
        t0 = time.monotonic()
        future = probe.estop_client.call_async(probe._trigger.Request())

        def stopped() -> bool:
            for side, tail in logs.items():
                after = [t for t in tail.stops() if t >= t0]
                if after and side not in first:
                    first[side] = min(after)
            return future.done() and len(first) == len(logs)

        try:
            probe.spin_until(stopped, ESTOP_TIMEOUT_S, "set_arm_stop at both emulators", step_s=0.002)
            latencies.append(max(first.values()) - t0)
        except RuntimeError:
            probe.procs.check_alive()
            timeouts.append({"trial": trial, "answered": future.done(),
                             "stopped": {side: first[side] - t0 for side in first},
                             "not_stopped": [side for side in logs if side not in first]})
        if not future.done() or not future.result().success:
            raise RuntimeError(f"/ate/estop did not succeed: "
                               f"{future.result().message if future.done() else 'no answer'}")
        probe.trigger(probe.rearm_client, "/ate/rearm")
        probe.engage()
        settle = time.monotonic()
        probe.spin_until(lambda: time.monotonic() - settle >= ESTOP_SETTLE_S, 5.0, "the ramp")
    return {"trials": n, "timeouts": len(timeouts), "timed_out": timeouts,
            "latencies_ms": [t * 1e3 for t in latencies], **summary_ms(latencies)}


def arm_status(diag: Dict[str, Dict[str, str]], side: str) -> Dict[str, str]:
    """An arm node's report (named ``left_arm: RealMan RM75-B``)."""
    return next((v for k, v in diag.items() if k.startswith(f"{side}_arm:")), {})


def counters(before: Dict[str, Dict[str, str]], after: Dict[str, Dict[str, str]]) -> dict:
    """What the supervisor and the arm nodes counted between two sets of reports: the
    supervisor's faults and interventions by rule and arm, each arm's reconnects and commands."""
    def delta(b: Dict[str, str], a: Dict[str, str], key: str) -> int:
        return int(_float(a, key) - (_float(b, key) if key in b else 0.0))

    sup0, sup1 = before.get("supervisor", {}), after.get("supervisor", {})
    out: dict = {"supervisor": {k[6:]: delta(sup0, sup1, k) for k in sup1 if k.startswith("count.")}}
    out["supervisor"] = {k: v for k, v in out["supervisor"].items() if v}
    for side in SIDES:
        a0, a1 = arm_status(before, side), arm_status(after, side)
        out[side] = {k: delta(a0, a1, k) for k in a1
                     if k in ("reconnects", "stale_periods", "commands_sent", "commands_refused")
                     or k.startswith(("rejected.", "faults."))}
    return out


def reports_after(probe: Probe, mark: float, what: str) -> Dict[str, Dict[str, str]]:
    names = ("supervisor", "inference")
    probe.spin_until(lambda: all(probe.fresh(n, mark) for n in names)
                     and all(any(k.startswith(f"{s}_arm:") and probe.fresh(k, mark) for k in probe.diag)
                             for s in SIDES), 5.0, what)
    return {k: dict(v) for k, v in probe.diag.items()}


def run(args: argparse.Namespace, cfg: Any, procs: Processes, probe: Probe,
        logs: Dict[str, LogTail]) -> dict:
    probe.spin_until(lambda: probe.diag.get("inference", {}).get("ready") == "true",
                     args.startup_timeout, "the inference node to load the policy and warm up")
    probe.spin_until(lambda: "supervisor" in probe.diag, 10.0, "the supervisor's diagnostics")
    probe.engage()
    diag0 = reports_after(probe, time.monotonic(), "the first reports after engage")
    sup0, inf0 = diag0["supervisor"], diag0["inference"]

    cpu = CpuMeter({**{name: p.pid for name, p in procs.procs.items()}, "bench": os.getpid()})
    cpu.start()
    probe.recording = True
    t0 = time.monotonic()
    probe.spin_until(lambda: time.monotonic() - t0 >= args.seconds, args.seconds + 10, "the run",
                     step_s=0.01)
    probe.recording = False
    cpu_percent = cpu.percent()
    diag1 = reports_after(probe, time.monotonic(), "the reports after the run")
    sup1, inf1 = diag1["supervisor"], diag1["inference"]

    period_s = 1.0 / cfg.supervisor.rate_hz
    paths = probe.paths
    results: dict = {
        "seconds": args.seconds,
        "busy_cores": args.busy_cores,
        "torch_threads": args.torch_threads,
        "inference_nice": args.inference_nice,
        "aggregator": not args.no_aggregator,
        "tick": tick_results(sup0, sup1, probe.command_stamps_ns, period_s),
        "supervisor_end": {"mode": sup1.get("mode"), "reason": sup1.get("reason"),
                           "chunks_added": sup1.get("chunks_added")},
        "counted_during_run": counters(diag0, diag1),
        "inference": {"latency_p50_ms": _float(inf1, "latency_p50_ms"),
                      "latency_p99_ms": _float(inf1, "latency_p99_ms"),
                      "chunks_total": int(_float(inf1, "chunks")),
                      "chunks_run": int(_float(inf1, "chunks") - _float(inf0, "chunks")),
                      "chunks_received": probe.chunks,
                      "errors": int(_float(inf1, "errors")), "rejected": int(_float(inf1, "rejected")),
                      "blocked": {k[8:]: v for k, v in inf1.items() if k.startswith("blocked.")},
                      "last_block": inf1.get("last_block"),
                      "obs_to_chunk_received": summary_ms(probe.obs_to_chunk_s)},
        "capture_to_command": {"chunks": len(paths), **summary_ms([p[0] for p in paths]),
                               "latencies_ms": [p[0] * 1e3 for p in paths],
                               "frame_age_at_obs": summary_ms([p[1] for p in paths]),
                               "obs_to_chunk_received": summary_ms([p[2] for p in paths]),
                               "chunk_received_to_command": summary_ms([p[3] for p in paths])},
        "cpu_percent": cpu_percent,
        # Machine-wide busy time not spent in the processes above: other work on the machine
        # (and kernel time not charged to a process), which the numbers above compete with.
        "cpu_other_percent": cpu_percent["machine"] * (os.cpu_count() or 1)
        - sum(v for k, v in cpu_percent.items() if k != "machine"),
    }
    if args.estops > 0:
        results["estop"] = estop_trials(probe, logs, args.estops)
        diag2 = reports_after(probe, time.monotonic(), "the reports after the e-stop trials")
        results["estop"]["counted"] = counters(diag1, diag2)
    else:
        results["estop"] = {}
    periods_ms = [(b - a) * 1e-6 for a, b in zip(probe.command_stamps_ns, probe.command_stamps_ns[1:])]
    results["_tick_periods_ms"] = periods_ms  # for the plot only; not written to the JSON
    return results


SUMMARY = (("stale_periods", "stale periods (both arms, run + trials)"),
           ("reconnects", "reconnects (both arms, run + trials)"),
           ("command_rate_hz", "commands per arm, Hz (by their stamps)"),
           ("tick_error_p99_ms", "tick period error p99, ms"),
           ("estop_p99_ms", "e-stop p99, ms"),
           ("chunk_rate_hz", "chunks per second"),
           ("safety_interventions", "safety interventions"))


def summarise(results: dict) -> dict:
    """The numbers that decide whether the control path holds, one per line."""
    counted = [results["counted_during_run"]] + ([results["estop"]["counted"]]
                                                 if results["estop"] else [])
    total = {key: sum(int(c[side].get(key, 0)) for c in counted for side in SIDES)
             for key in ("stale_periods", "reconnects")}
    cmd = results["tick"]["command_stamps"]
    return {**total,
            "command_rate_hz": cmd["rate_hz"],
            "tick_error_p99_ms": results["tick"]["supervisor"]["error_p99_ms"],
            "estop_p99_ms": results["estop"].get("p99_ms", float("nan")),
            "chunk_rate_hz": results["inference"]["chunks_run"] / results["seconds"],
            "safety_interventions": sum(int(v) for c in counted
                                        for v in c["supervisor"].values())}


def goals(results: dict) -> List[Tuple[str, float, str, bool]]:
    sup = results["tick"]["supervisor"]
    out = [(f"tick period error p99 < {GOAL_TICK_ERROR_P99_MS:g} ms", sup["error_p99_ms"], "ms",
            sup["error_p99_ms"] < GOAL_TICK_ERROR_P99_MS),
           (f"missed ticks < {GOAL_MISSED_PCT:g} %", sup["run_missed_pct"], "%",
            sup["run_missed_pct"] < GOAL_MISSED_PCT)]
    if results["estop"]:
        e = results["estop"]
        out.append((f"e-stop p99 < {GOAL_ESTOP_P99_MS:g} ms", e["p99_ms"], "ms",
                    e["p99_ms"] < GOAL_ESTOP_P99_MS and e["timeouts"] == 0))
    return out


# ---------------------------------------------------------------------------------------------
# Reporting


def print_counted(title: str, counted: dict) -> None:
    print(title)
    for side in SIDES:
        c = counted[side]
        other = ", ".join(f"{k} {v}" for k, v in c.items() if v and k.startswith(("rejected.", "faults.")))
        print(f"    {side} arm node: {c.get('reconnects', 0)} reconnects, "
              f"{c.get('stale_periods', 0)} stale periods, commands sent "
              f"{c.get('commands_sent', 0)}, refused {c.get('commands_refused', 0)}"
              + (f"; {other}" if other else ""))
    sup = ", ".join(f"{k} {v}" for k, v in counted["supervisor"].items()) or "none"
    print(f"    supervisor faults and interventions (rule.arm): {sup}")


def print_results(head: dict, results: dict) -> None:
    print_header(head)
    tick, sup, cmd = results["tick"], results["tick"]["supervisor"], results["tick"]["command_stamps"]
    print(f"\nsupervisor tick at {1e3 / tick['period_ms']:g} Hz, engaged for {results['seconds']:g} s"
          f"\n  source                                periods  missed     p50     p99     max  err p99 (ms)")
    print(f"  supervisor's own (last {sup['window_periods']} periods)  {sup['run_ticks']:9d}"
          f"{sup['run_missed']:8d}{fmt((sup['period_p50_ms'], sup['period_p99_ms']))}{'':8}"
          f"{sup['error_p99_ms']:8.2f}")
    print(f"  /left_arm/command stamps here       {cmd['periods']:9d}{cmd['gaps_over_1_5_periods']:8d}"
          f"{fmt((cmd['period_p50_ms'], cmd['period_p99_ms'], cmd['period_max_ms']))}"
          f"{cmd['error_p99_ms']:8.2f}")
    print(f"  (periods and missed of the supervisor's row: counted over the run, "
          f"{sup['run_missed_pct']:.2f} % missed; its percentiles: its window)")

    inf = results["inference"]
    print_counted("  counted during the run:", results["counted_during_run"])

    nice = f", nice {results['inference_nice']}" if results["inference_nice"] else ""
    print(f"\ninference: flow policy (config/train_flow.yaml), 3 cameras 224x224, CPU, "
          f"{results['torch_threads']} torch thread{'s' if results['torch_threads'] > 1 else ''}{nice}"
          f"\n  chunks published during the run {inf['chunks_run']} "
          f"({inf['chunks_run'] / results['seconds']:.2f}/s), received here {inf['chunks_received']}, "
          f"errors {inf['errors']}, rejected {inf['rejected']}"
          f"\n                                             p50     p99     max (ms)"
          f"\n  observation -> chunk published (node)  {fmt((inf['latency_p50_ms'], inf['latency_p99_ms']))}"
          f"\n  observation -> chunk received here     "
          f"{fmt((inf['obs_to_chunk_received'][k] for k in ('p50_ms', 'p99_ms', 'max_ms')))}")
    blocked = {k: v for k, v in inf["blocked"].items() if v not in ("0", 0)}
    if blocked:
        print(f"  blocked by stale sources (times): {blocked}; last: {inf['last_block']}")

    c2c = results["capture_to_command"]
    print(f"\ncamera capture -> first command from that frame, {c2c['chunks']} chunks"
          f"\n                                             p50     p99     max (ms)")
    for label, r in (("capture -> command (total)", c2c),
                     ("  capture -> observation time", c2c["frame_age_at_obs"]),
                     ("  observation -> chunk received here", c2c["obs_to_chunk_received"]),
                     ("  chunk received -> command tick", c2c["chunk_received_to_command"])):
        print(f"  {label:<39}{fmt((r['p50_ms'], r['p99_ms'], r['max_ms']))}")

    if results["estop"]:
        e = results["estop"]
        print(f"\ne-stop: /ate/estop called -> set_arm_stop received by both controllers, "
              f"{e['trials']} trials ({e['timeouts']} timed out)"
              f"\n                                             p50     p99     max (ms)"
              f"\n  {'call -> both controllers stopped':<39}{fmt((e['p50_ms'], e['p99_ms'], e['max_ms']))}")
        print_counted("  counted during the trials:", e["counted"])
        for t in e["timed_out"]:
            print(f"  trial {t['trial']}: no set_arm_stop within {ESTOP_TIMEOUT_S:g} s at "
                  f"{', '.join(t['not_stopped'])} (service answered: {t['answered']}; see the "
                  f"supervisor's and arm nodes' output)")

    cpu = results["cpu_percent"]
    print(f"\nCPU during the run, % of one core ({os.cpu_count()} cores)")
    for name, value in cpu.items():
        label = "machine (% of all cores)" if name == "machine" else name
        print(f"  {label:<26}{value:7.1f}")
    print(f"  {'anything else (% of one)':<26}{results['cpu_other_percent']:7.1f}")

    summary = results["summary"]
    print(f"\nsummary ({results['busy_cores']} core{'s' if results['busy_cores'] != 1 else ''} "
          f"kept busy by another process)")
    for key, label in SUMMARY:
        value = summary[key]
        print(f"  {label:<40}{value:>10.2f}" if isinstance(value, float) else
              f"  {label:<40}{value:>10}")

    print("\ngoals")
    for text, value, unit, ok in goals(results):
        print(f"  {text:<32}{value:8.2f} {unit:<3}{'pass' if ok else 'FAIL'}")


def plot(path: str, results: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    periods = results["_tick_periods_ms"]
    nominal = results["tick"]["period_ms"]
    if periods:
        ax1.hist(periods, bins=100, color="tab:blue")
        ax1.set_yscale("log")
    ax1.axvline(nominal, color="tab:green", linestyle="--", linewidth=1, label=f"{nominal:g} ms")
    ax1.axvline(nominal + GOAL_TICK_ERROR_P99_MS, color="tab:red", linestyle=":", linewidth=1,
                label=f"+{GOAL_TICK_ERROR_P99_MS:g} ms (goal, p99)")
    sup = results["tick"]["supervisor"]
    ax1.set_title(f"supervisor tick periods ({len(periods)}, command stamps)\n"
                  f"supervisor: err p99 {sup['error_p99_ms']:.2f} ms, missed {sup['run_missed_pct']:.2f} %",
                  fontsize="medium")
    ax1.set_xlabel("period (ms)")
    ax1.set_ylabel("count")
    ax1.legend(fontsize="small")
    c2c = results["capture_to_command"]
    if c2c["latencies_ms"]:
        ax2.hist(c2c["latencies_ms"], bins=40, color="tab:orange")
    ax2.set_title(f"camera capture -> first command ({c2c['chunks']} chunks)\n"
                  f"p50 {c2c['p50_ms']:.0f} ms, p99 {c2c['p99_ms']:.0f} ms", fontsize="medium")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("count")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------


def start_processes(procs: Processes, cfg: Any, config: str, logs: Dict[str, str],
                    aggregator: bool = True, inference_nice: int = 0, arm_processes: int = 2) -> None:
    """The processes of ``ate_bringup`` (= ``bimanual.launch.py sim:=true``), in its order and
    with its command lines, each emulator also writing its log; ``arm_processes=1`` puts both
    arm nodes in one process (``arm_nodes``) instead."""
    from ate_ros.bringup import stack_plan

    plan, _external = stack_plan(cfg, config, checkpoint="", params_dir=Path(procs.log_dir))
    py = sys.executable
    for item in plan:
        argv = list(item.argv)
        if item.emulator is not None:
            argv += ["--log", logs[item.emulator.side]]
        else:
            spec = item.node
            if spec.executable == "joint_state_aggregator" and not aggregator:
                continue
            if spec.executable == "arm_node" and arm_processes == 1:
                if spec.parameters["arm"] == "left":
                    procs.start("arm_nodes", [py, "-c", "from ate_ros.nodes.arm_node import "
                                              "main_both; main_both()", "--ros-args", "-p",
                                              f"config_file:={config}", "-p", "sim:=true"])
                continue
            if spec.executable == "inference_node" and inference_nice:
                argv = ["nice", "-n", str(inference_nice), *argv]
            item.params_file.write_text(item.params_yaml)
        procs.start(item.name.replace("/", "_"), argv)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the engaged run")
    parser.add_argument("--estops", type=int, default=20, help="e-stop trials after the run")
    parser.add_argument("--torch-threads", type=int, default=1, help="inference.torch_threads")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds to wait for the inference node to be ready")
    parser.add_argument("--no-aggregator", action="store_true",
                        help="leave out the joint-state aggregator (RViz's /joint_states, not on "
                             "the control path)")
    parser.add_argument("--inference-nice", type=int, default=0, choices=range(0, 20),
                        metavar="0-19", help="start the inference node under `nice -n N` (an "
                        "experiment: the deployment runs it at the default priority)")
    parser.add_argument("--arm-processes", type=int, choices=(1, 2), default=2,
                        help="2: one arm node per arm, as the launch file runs them; 1: both in one "
                             "process (arm_nodes)")
    parser.add_argument("--busy-cores", type=int, default=0, metavar="N",
                        help="keep N cores busy with unrelated busy loops (normal priority) for "
                             "the whole bench, as on a robot PC that has other work")
    parser.add_argument("--probe-priority", type=int, default=48, metavar="N",
                        help="SCHED_FIFO priority of this bench's own process, which calls "
                             "/ate/estop like an e-stop button's node (0: normal)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the processes' output and the emulator logs (the path is printed)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--png", help="also draw the tick periods and capture -> command latencies")
    parser.add_argument("--domain-id", type=int, default=random.randint(1, 100))
    parser.add_argument("--make-checkpoint", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
        return 0

    head = header("bench/control_loop.py: the control path of the simulated robot under load "
                  "(3 cameras 640x480 at 30 Hz, both arms, flow policy on the CPU)")
    tmp = tempfile.mkdtemp(prefix="ate-bench-control-loop-")
    os.environ.update(ROS_DOMAIN_ID=str(args.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      ROS_LOG_DIR=tmp)  # read by every process, this one at rclpy.init
    checkpoint = os.path.join(tmp, "policy")
    made = subprocess.run([sys.executable, os.path.abspath(__file__), "--make-checkpoint", checkpoint],
                          capture_output=True, text=True)
    if made.returncode != 0:
        print(f"control_loop: making the policy checkpoint failed:\n{made.stderr[-3000:]}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 1
    config = os.path.join(tmp, "bimanual.yaml")
    cfg = write_config(os.path.join(REPO, "config", "bimanual.yaml"), config, checkpoint, args.torch_threads)
    log_paths = {s: os.path.join(tmp, f"emulator_{s}.jsonl") for s in SIDES}

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from ate_ros.realtime import raise_process_to_fifo

    procs = Processes(tmp, os.environ)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: KeyboardInterrupt
    probe, error, results = Probe(cfg, procs), None, None
    try:
        for i in range(args.busy_cores):
            procs.start(f"busy_loop_{i}", [sys.executable, "-c", BUSY_LOOP])
        start_processes(procs, cfg, config, log_paths, aggregator=not args.no_aggregator,
                        inference_nice=args.inference_nice, arm_processes=args.arm_processes)
        # After the children are started (they would inherit it): this process calls the
        # e-stop, as an e-stop button's node would, and that node must not wait for a core.
        raise_process_to_fifo(args.probe_priority, lambda why: print(f"control_loop: {why}"),
                              "the bench's probe")
        results = run(args, cfg, procs, probe, {s: LogTail(p) for s, p in log_paths.items()})
    except RuntimeError as e:
        error = str(e)
    finally:
        probe.destroy()
        rclpy.try_shutdown()
        exits = procs.stop()
        unclean = {name: procs.tail(name) for name, rc in exits.items() if rc != 0}
    if error is not None:
        print(f"control_loop: {error}", file=sys.stderr)
        for name, tail in unclean.items():
            print(f"--- {name} exited with {exits[name]}; the end of its output:\n{tail.rstrip()}",
                  file=sys.stderr)
        print(f"control_loop: failed; process output and emulator logs are in {tmp}", file=sys.stderr)
        return 1
    assert results is not None
    if results["estop"].get("timeouts") or args.keep:
        why = "e-stop trials timed out; " if results["estop"].get("timeouts") else ""
        print(f"control_loop: {why}process output and emulator logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    results["exit_codes"] = exits
    results["summary"] = summarise(results)
    results["goals"] = [{"goal": t, "value": v, "unit": u, "pass": ok} for t, v, u, ok in goals(results)]
    print_results(head, results)
    print("\nexit codes after SIGINT: " + ", ".join(f"{n} {rc}" for n, rc in exits.items()))
    for name, tail in unclean.items():
        print(f"--- {name} did not exit cleanly; the end of its output:\n{tail.rstrip()}")
    if args.png:
        plot(args.png, results)
    del results["_tick_periods_ms"]
    if args.json:
        write_json(args.json, head, results)
    return 0


if __name__ == "__main__":
    run_main(main, "control_loop: interrupted; every process it started has stopped")
