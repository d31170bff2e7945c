"""``ate_bringup`` (``./run.sh``): the simulated bimanual robot, one process per node, a policy
running a task on the twin, and a report.

By default it is the main job: the stack on the MuJoCo twin (``ate_twin``: both RealMan
controllers on physics, the cameras rendered), the policy that ships for ``--task``
(share/ate_ros/policies/twin_<task>, or ``--checkpoint``) in the inference node, and
``--episodes`` randomized episodes of the task run through the whole stack
(:mod:`ate_ros.episodes`: reset the scene from the next seed, engage, ask the twin's success
check until it holds or time runs out, disengage). The report adds each episode's seed, result
and time, the success rate, the safety rules checked on the measured motion, and where the head
camera strip and the joint-path plot were written. ``--no-policy`` is the idle bring-up: the
stack without a policy (``sim.twin`` chooses the twin or idealised emulators) for
``--duration`` seconds; ``--episodes 0`` runs the policy freely for ``--duration``
(``--engage`` hands it the arms).

This is what ``ros2 launch ate_ros bimanual.launch.py sim:=true`` starts, started without the
``launch`` tool: an idealised controller emulator per arm (``ate_realman_emulator``) or the
twin host, then every node of ``ate_ros.graph.robot_graph`` in a process of its own, with the
command line and parameter file launch_ros gives it: both arm drivers, the joint-state
aggregator, the simulated cameras, the inference node when there is a policy, and the
supervisor. Each arm driver needs a
process of its own: RealMan's SDK runs one request at a time per process and its state-push
callbacks need the interpreter lock, so next to cameras, a model and the supervisor's real-time
tick they stalled for 60-670 ms (arms stale, a controller reconnected, commands at 18 Hz instead
of 100 on a 2-core PC); as separate processes they had no stale period.

It supervises them. A process that ends on its own is reported with the end of its output, the
supervisor's ``/ate/estop`` is called (if the supervisor still runs), the rest are stopped and
``ate_bringup`` exits 1. Ctrl-C or SIGTERM stop every process in reverse start order (the
supervisor before the arm drivers, the emulators last), each with SIGINT and, if it has not
ended after a few seconds, SIGKILL. The processes run in sessions of their own, so a terminal's
Ctrl-C reaches only ``ate_bringup``, and each is told to end with it, so a bringup killed
outright leaves none behind. Their output goes to one log file each, in the directory printed
at start.

Once every node is in the ROS graph, the arm drivers publish joint states and they and the
supervisor have reported on ``/diagnostics``, it runs the episodes (or watches for
``--duration`` seconds) and then prints what it saw: the emulated controllers, each arm
driver's link and its reconnects and stale periods, the supervisor's mode, tick timing and
interventions, the policy's chunks and latency, every node in the graph, topic rates, each
arm's TCP from the measured joints, and the processes' exit codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import ConfigError
from ate_core.robot.config import BimanualConfig, load_config
from ate_core.robot.from_config import layout_from_config
from ate_ros.graph import (EmulatorSpec, NodeSpec, controllers_of, in_process, robot_graph,
                           sim_hardware)
from ate_ros.node_host import NodeHost
from ate_ros.realtime import raise_process_to_fifo
from ate_ros.resources import default_config_path, share_dir
from ate_ros.signals import die_with_parent, setting
from ate_ros.sim.bimanual import EmulatedController, EmulatorUnreachable

if TYPE_CHECKING:  # the twin (MuJoCo) loads only for a run that uses it
    from ate_core.twin.tasks import Task
    from ate_ros.episodes import EpisodeRun

#: How long every node of the graph may take to appear and the arms to publish (imports of
#: rclpy, numpy and torch in 7-9 processes on two cores).
STARTUP_TIMEOUT_S = 60.0
#: How long an emulator may take to listen before the arm drivers start.
EMULATOR_TIMEOUT_S = 30.0
#: How long a process may take to end after SIGINT before it is killed.
STOP_TIMEOUT_S = 5.0
#: How long ``--engage`` waits for the policy's first chunk (warm-up on a CPU takes a while).
ENGAGE_TIMEOUT_S = 120.0


# ---- processes ----------------------------------------------------------------------------------

#: SCHED_FIFO priority of this process once its children run (see ``main``).
MONITOR_PRIORITY = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    # ProcessGroup.start must be called from a thread that lives as long as the group (the
    # main thread): see die_with_parent.
    return lambda: die_with_parent(parent_pid)


def exit_description(code: Optional[int]) -> str:
    """``0``, ``1``, ``-9 (SIGKILL)``; ``running`` for None."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class ProcessGroup:
    """Child processes started in order and stopped in reverse order, output to one log each.

    Each child runs in a session of its own (a terminal's Ctrl-C reaches only this process,
    which then stops them in order) and gets SIGTERM if this process dies, even by SIGKILL.
    ``stop`` sends SIGINT (what a node's ``main`` handles as Ctrl-C) to each child in reverse
    start order, waits for it, and kills it after ``timeout_s``.
    """

    def __init__(self, log_dir: Path, env: Optional[Mapping[str, str]] = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.procs: Dict[str, subprocess.Popen] = {}
        #: Children killed because they ignored SIGINT, and children that ended on their own.
        self.killed: List[str] = []
        self.ended_on_their_own: List[str] = []
        self._stopping: set = set()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name.replace('/', '.')}.log"

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        if name in self.procs:
            raise ValueError(f"a process called {name!r} was already started")
        with open(self.log_path(name), "wb") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env,
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent(os.getpid()))
        self.procs[name] = proc
        return proc

    @property
    def pids(self) -> Dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def output(self, name: str) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, name: str, lines: int = 15) -> str:
        return "\n".join(self.output(name).splitlines()[-lines:])

    def unexpected_exits(self) -> List[str]:
        """Children that ended without being stopped, each named once."""
        ended = [name for name, p in self.procs.items()
                 if name not in self._stopping and name not in self.ended_on_their_own
                 and p.poll() is not None]
        self.ended_on_their_own += ended
        return ended

    def returncodes(self) -> Dict[str, Optional[int]]:
        return {name: p.poll() for name, p in self.procs.items()}

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> Dict[str, Optional[int]]:
        """Stop every child, newest first; exit codes by name (0: ended cleanly on SIGINT)."""
        for name, proc in reversed(list(self.procs.items())):
            self._stopping.add(name)
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.killed.append(name)
                    proc.kill()
                    proc.wait()
        return self.returncodes()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- what the bringup starts --------------------------------------------------------------------

@dataclass(frozen=True)
class Launched:
    """One process of the stack: the twin host, an emulator or a node, and its command line."""

    name: str
    argv: Tuple[str, ...]
    node: Optional[NodeSpec] = None
    #: The emulated controllers this process serves (the twin host serves every arm's).
    controllers: Tuple[EmulatorSpec, ...] = ()
    #: The node's parameter file: its path (in ``argv``) and content, as launch_ros writes it.
    params_file: Optional[Path] = None
    params_yaml: str = ""


def process_of(plan: Sequence[Launched], executable: str, **parameters: object) -> Optional[str]:
    """The name of the process that runs ``executable`` (with these parameters), if any."""
    return next((item.name for item in plan if item.node is not None
                 and item.node.executable == executable
                 and all(item.node.parameters.get(k) == v for k, v in parameters.items())), None)


def stack_plan(cfg: BimanualConfig, config_file: str, checkpoint: str,
               params_dir: Path, twin: Optional[bool] = None, task: str = "", seed: int = 0,
               instruction: str = "") -> Tuple[List[Launched], List[NodeSpec]]:
    """What ``bimanual.launch.py sim:=true`` starts, in its order: (processes, nodes left to
    ``ros2 launch``); with ``task`` the twin host sets that task's scene up from ``seed`` and
    the policy is given ``instruction``. Nothing is written or started here."""
    plan = [Launched(spec.name, tuple(spec.command()), controllers=controllers_of(spec))
            for spec in sim_hardware(cfg, config_file, twin, task=task, seed=seed)]
    ours, external = in_process(robot_graph(cfg, config_file, urdf_xml="", sim=True,
                                            checkpoint=checkpoint, twin=twin))
    if instruction:
        ours = [dataclasses.replace(spec, parameters={**spec.parameters,
                                                      "inference.task": instruction})
                if spec.executable == "inference_node" else spec for spec in ours]
    for spec in ours:
        name = spec.fully_qualified_name.lstrip("/")
        params = params_dir / f"{name.replace('/', '.')}.yaml"
        plan.append(Launched(name, tuple(spec.command(str(params))), node=spec,
                             params_file=params, params_yaml=spec.params_file_yaml()))
    return plan, external


# ---- watching the stack -------------------------------------------------------------------------

@dataclass
class TopicCount:
    count: int = 0
    first_s: float = 0.0
    last_s: float = 0.0


@dataclass
class Snapshot:
    """What the stack showed at the end of the run, for the report."""

    seconds: float
    counts: Dict[str, int]
    spans: Dict[str, TopicCount]
    diagnostics: Dict[str, Tuple[int, str, Dict[str, str]]]
    #: The diagnostics when the stack was up: what came before is start-up.
    diagnostics_at_start: Dict[str, Tuple[int, str, Dict[str, str]]]
    nodes: List[str]
    joint_state: Optional[JointState]
    controllers: Dict[str, Optional[dict]] = field(default_factory=dict)


class StackWatch:
    """The bringup's own node: topic counts, everyone's ``/diagnostics``, the engage and e-stop
    services. Callbacks only count and store."""

    def __init__(self, node: Node, cfg: BimanualConfig) -> None:
        self.node, self.cfg = node, cfg
        self.name = node.get_fully_qualified_name()
        t = cfg.topics
        self.arm_states = {side: f"/{side}_arm/{t.arm_joint_states}" for side, _ in cfg.arms.items()}
        self.arm_commands = {side: f"/{side}_arm/{t.arm_command}" for side, _ in cfg.arms.items()}
        # The arms' own streams (joint states at 100 Hz, commands at 100 Hz each) are counted by
        # the arm drivers (``states_received``, ``commands_sent`` on /diagnostics): taking 400
        # messages a second here as well would cost the policy a fifth of a core.
        topics: Dict[str, type] = {t.joint_states: JointState}
        topics.update({f"{t.cameras}/{name}/camera_info": CameraInfo for name in cfg.cameras})
        topics[t.action_chunk] = JointTrajectory
        self.topics = list(topics)
        self._lock = threading.Lock()
        self._counts = {topic: TopicCount() for topic in topics}
        self._diagnostics: Dict[str, Tuple[int, str, Dict[str, str]]] = {}
        #: Per status name, when each report was made (ROS time, s) and its values, oldest first.
        self._history: Dict[str, List[Tuple[float, Dict[str, str]]]] = {}
        self._joint_state: Optional[JointState] = None
        self._window: Tuple[float, Dict[str, int]] = (time.monotonic(), {})
        self.window_start_s = self._ros_now_s()
        self._diagnostics_at_start: Dict[str, Tuple[int, str, Dict[str, str]]] = {}
        for topic, msg_type in topics.items():
            node.create_subscription(msg_type, topic, lambda m, tp=topic: self._on(tp, m),
                                     qos_profile_sensor_data)
        node.create_subscription(DiagnosticArray, t.diagnostics, self._on_diagnostics, 50)
        self.engage_client = node.create_client(SetBool, t.engage)
        self.estop_client = node.create_client(Trigger, t.estop)

    def _on(self, topic: str, msg) -> None:
        now = time.monotonic()
        with self._lock:
            c = self._counts[topic]
            if c.count == 0:
                c.first_s = now
            c.count += 1
            c.last_s = now
            if topic == self.cfg.topics.joint_states:
                self._joint_state = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self._lock:
            # When the node made the report (ROS time), not when it got here: a late delivery
            # would otherwise bend the rates computed from these counters.
            made_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            for status in msg.status:
                level = status.level if isinstance(status.level, int) else ord(status.level)
                values = {kv.key: kv.value for kv in status.values}
                self._diagnostics[status.name] = (level, status.message, values)
                self._history.setdefault(status.name, []).append((made_s, values))

    def status_values(self, name: str) -> Dict[str, str]:
        """The newest ``/diagnostics`` values of the status ``name`` ({} before its first)."""
        with self._lock:
            entry = self._diagnostics.get(name)
        return dict(entry[2]) if entry is not None else {}

    def supervisor_mode(self) -> Optional[str]:
        return self.status_values("supervisor").get("mode")

    def supervisor_counts(self) -> Dict[str, int]:
        """The supervisor's interventions and faults so far, by ``rule.arm``."""
        counts = {}
        for key, value in self.status_values("supervisor").items():
            if key.startswith("count."):
                try:
                    counts[key[len("count."):]] = int(value)
                except ValueError:
                    pass
        return counts

    def silent_reporters(self) -> List[str]:
        """The arm drivers and the supervisor, as long as they have sent no ``/diagnostics``
        (what the report is built from)."""
        with self._lock:
            names = list(self._diagnostics)
        expected = {f"{side}_arm:": f"/{side}_arm/arm_driver" for side in self.arm_states}
        expected["supervisor"] = "/supervisor"
        return [who for prefix, who in expected.items()
                if not any(name == prefix or name.startswith(prefix) for name in names)]

    def _ros_now_s(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def counter_rate(self, status_prefix: str, key: str, since_s: float) -> Tuple[float, int]:
        """(rate per second, reports) of a counter in the reports of the status whose name
        starts with ``status_prefix``, over the reports since ``since_s`` in which it grew."""
        with self._lock:
            history = next((h for name, h in self._history.items()
                            if name.startswith(status_prefix)), [])
            points = [(t, float(v[key])) for t, v in history if t >= since_s and key in v]
        growing = [(t, n) for (t, n), (_, prev) in zip(points[1:], points) if n > prev]
        if len(growing) < 2:
            return 0.0, len(points)
        # From the first report that grew (the counting had begun by then) to the last one.
        (t0, n0), (t1, n1) = growing[0], growing[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0, len(points)

    def has_counted(self, status_prefix: str, key: str) -> bool:
        with self._lock:
            return any(float(v.get(key, 0)) > 0 for name, h in self._history.items()
                       if name.startswith(status_prefix) for _, v in h[-1:])

    def count(self, topic: str) -> int:
        with self._lock:
            return self._counts[topic].count

    def node_names(self) -> List[str]:
        return sorted(f"{ns.rstrip('/')}/{name}"
                      for name, ns in self.node.get_node_names_and_namespaces())

    def start_window(self) -> None:
        with self._lock:
            self._window = (time.monotonic(), {t: c.count for t, c in self._counts.items()})
            self.window_start_s = self._ros_now_s()
            self._diagnostics_at_start = dict(self._diagnostics)

    def snapshot(self) -> Snapshot:
        nodes = self.node_names()
        with self._lock:
            start, base = self._window
            return Snapshot(
                seconds=time.monotonic() - start,
                counts={t: c.count - base.get(t, 0) for t, c in self._counts.items()},
                spans={t: TopicCount(c.count, c.first_s, c.last_s) for t, c in self._counts.items()},
                diagnostics=dict(self._diagnostics),
                diagnostics_at_start=dict(self._diagnostics_at_start), nodes=nodes,
                joint_state=self._joint_state)

    def call(self, client, request, timeout_s: float):
        """A service call from the main thread (the host's executor completes it), or None."""
        if not client.wait_for_service(timeout_sec=min(1.0, timeout_s)):
            return None
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not future.done():
            client.remove_pending_request(future)
            return None
        return future.result()


class Engager:
    """``--engage``: call ``/ate/engage`` once the policy publishes chunks; stepped by the main
    loop, so a dead process or Ctrl-C is noticed while it waits."""

    def __init__(self, watch: StackWatch, timeout_s: float = ENGAGE_TIMEOUT_S) -> None:
        self.watch = watch
        self.deadline = time.monotonic() + timeout_s
        self.done = False
        self._future = None
        self._retry_at = 0.0

    def step(self) -> None:
        if self.done:
            return
        now = time.monotonic()
        client = self.watch.engage_client
        if self._future is None:
            if now > self.deadline:
                print("ate_bringup: not engaged (no chunks from the policy)", file=sys.stderr,
                      flush=True)
                self.done = True
            elif (now >= self._retry_at and self.watch.count(self.watch.cfg.topics.action_chunk) > 0
                  and client.service_is_ready()):
                self._future = client.call_async(SetBool.Request(data=True))
        elif self._future.done():
            result, self._future = self._future.result(), None
            if result is not None:
                print(f"ate_bringup: engage: {result.message}", flush=True)
                self.done = bool(result.success)
            self._retry_at = now + 1.0


# ---- the report ---------------------------------------------------------------------------------

def _float(values: Mapping[str, str], key: str) -> float:
    try:
        return float(values.get(key, "nan"))
    except ValueError:
        return float("nan")


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _link_events(now: Mapping[str, str], before: Mapping[str, str]) -> str:
    """``0 reconnects, 0 stale periods`` while up, and what start-up had if anything.

    The arm node's counts are totals since it started; the ones it reported when the stack was
    up (it reports on every link change, so they are current) are start-up's share.
    """
    def count(values: Mapping[str, str], key: str) -> int:
        try:
            return int(values.get(key, 0))
        except ValueError:
            return 0
    up, starting = [], []
    for key, what in (("reconnects", "reconnect"), ("stale_periods", "stale period")):
        first = count(before, key)
        up.append(_plural(count(now, key) - first, what))
        if first:
            starting.append(_plural(first, what))
    text = ", ".join(up)
    return text + (f" (+{', '.join(starting)} while starting)" if starting else "")


def report(cfg: BimanualConfig, plan: Sequence[Launched], external: Sequence[NodeSpec],
           watch: StackWatch, snap: Snapshot, pids: Mapping[str, int],
           exit_codes: Mapping[str, Optional[int]], log_dir: Path) -> str:
    layout = layout_from_config(cfg)
    lines = [f"ate_bringup: simulated bimanual robot, {len(plan)} processes (output in {log_dir})"]
    for item in plan:
        for spec in item.controllers:
            controller = EmulatedController(spec, 0)
            lines.append(f"  controller {spec.side:<5} "
                         f"{controller.describe(snap.controllers.get(spec.side))}")
    for side, _ in cfg.arms.items():
        prefix = f"  arm driver {side:<5}"
        name = process_of(plan, "arm_node", arm=side)
        diag = next((d for key, d in snap.diagnostics.items() if key.startswith(f"{side}_arm:")),
                    None)
        command_hz, _ = watch.counter_rate(f"{side}_arm:", "commands_sent", watch.window_start_s)
        if diag is None:
            lines.append(f"{prefix} no diagnostics received (pid {pids.get(name, '?')})")
            continue
        _, message, v = diag
        before = next((d[2] for key, d in snap.diagnostics_at_start.items()
                       if key.startswith(f"{side}_arm:")), {})
        refused = int(_float(v, "commands_refused")) if "commands_refused" in v else 0
        commands = (f"commands at {command_hz:.1f} Hz ({v.get('commands_sent', '?')} "
                    f"sent to the controller"
                    + (f", {refused} refused while it was not ready" if refused else "") + ")"
                    if command_hz > 0 else "no commands")
        line = (f"{prefix} link {v.get('link', '?')}, {_link_events(v, before)}, state push "
                f"{_float(v, 'state_rate_hz'):.1f} Hz, {commands} (pid {pids.get(name, '?')})")
        rejected = {k[len("rejected."):]: n for k, n in v.items() if k.startswith("rejected.")}
        if rejected:
            line += "; rejected: " + ", ".join(f"{r} {n}" for r, n in rejected.items())
        if v.get("last_fault"):
            line += f"; last fault: {v['last_fault']}"
        if message not in ("connected", "streaming"):
            line += f"; {message}"
        lines.append(line)
    if "supervisor" in snap.diagnostics:
        _, message, v = snap.diagnostics["supervisor"]
        lines.append(
            f"  supervisor {v.get('mode', '?')} ({v.get('reason', '?')}); "
            f"{v.get('tick.ticks', '?')} ticks, period p50 {_float(v, 'tick.period_p50_ms'):.2f} ms, "
            f"p99 {_float(v, 'tick.period_p99_ms'):.2f} ms, {v.get('tick.missed', '?')} missed, "
            f"{'real-time' if v.get('realtime') == 'True' else 'normal'} priority "
            f"(pid {pids.get(process_of(plan, 'supervisor_node'), '?')})")
        published_hz, _ = watch.counter_rate("supervisor", "commands_published",
                                             watch.window_start_s)
        if published_hz > 0:
            lines.append(f"  supervisor published {v.get('commands_published', '?')} commands per "
                         f"arm, at {published_hz:.1f} Hz while commanding")
        counts = {k[len("count."):]: n for k, n in v.items() if k.startswith("count.")}
        if counts:  # watchdog faults (their onsets), safety interventions, chunk rejections
            lines.append("  supervisor counted " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    else:
        lines.append("  supervisor: no diagnostics received")
    if "inference" in snap.diagnostics:
        _, message, v = snap.diagnostics["inference"]
        lines.append(f"  inference {message}; {v.get('chunks', '?')} chunks, latency p50 "
                     f"{v.get('latency_p50_ms', '?')} ms, p99 {v.get('latency_p99_ms', '?')} ms "
                     f"on {v.get('device', '?')}")
    expected = [item.node.fully_qualified_name for item in plan if item.node is not None]
    seen = [n for n in expected if n in snap.nodes]
    lines.append("  nodes: " + (", ".join(seen) or "none"))
    missing = [n for n in expected if n not in snap.nodes]
    if missing:
        lines.append("  not in the ROS graph: " + ", ".join(missing))
    others = [n for n in snap.nodes if n not in expected and n != watch.name]
    if others:
        lines.append("  also in the ROS graph: " + ", ".join(others))
    if external:
        lines.append("  left to `ros2 launch`: " + ", ".join(s.executable for s in external))
    seconds = max(snap.seconds, 1e-9)
    width = max(len(topic) for topic in [*watch.topics, *watch.arm_states.values(),
                                         *watch.arm_commands.values()])
    for topic in watch.topics:
        lines.append(f"  {topic:<{width}} {snap.counts[topic] / seconds:7.1f} Hz over "
                     f"{snap.seconds:.1f} s")
    for side, _ in cfg.arms.items():  # counted by the arm driver: each state it published,
        for topic, key in ((watch.arm_states[side], "states_received"),  # each command it sent
                           (watch.arm_commands[side], "commands_sent")):
            hz, _ = watch.counter_rate(f"{side}_arm:", key, watch.window_start_s)
            lines.append(f"  {topic:<{width}} {hz:7.1f} Hz (the {side} arm driver's count)")
    for side, arm in cfg.arms.items():
        q = np.asarray(arm.home_rad)
        source = "home pose (no joint state received)"
        js = snap.joint_state
        if js is not None and set(arm.joint_names) <= set(js.name):
            pos = dict(zip(js.name, js.position))
            q, source = np.array([pos[n] for n in arm.joint_names]), "measured"
        xyz = layout.arm(side).tcp_pose(q)[:3, 3]
        lines.append(f"  {side:<5} TCP at ({xyz[0]:+.3f}, {xyz[1]:+.3f}, {xyz[2]:+.3f}) m in "
                     f"base_link, {source}")
    lines.append("  exit codes: " + ", ".join(f"{name} {exit_description(code)}"
                                              for name, code in exit_codes.items()))
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------

def default_log_dir() -> Path:
    """A new directory under ROS's log directory (``ROS_LOG_DIR``, else ``~/.ros/log``)."""
    base = os.environ.get("ROS_LOG_DIR") or os.path.join(
        os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros"), "log")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    return Path(base) / f"ate_bringup_{stamp}_{os.getpid()}"


def child_env(domain_id: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env["PYTHONUNBUFFERED"] = "1"  # a process that dies leaves its last lines in its log
    env.setdefault("PYTHONFAULTHANDLER", "1")  # and a crash the Python stacks of its threads
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    return env


def _indented(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines()) or "    | (no output)"


class Bringup:
    """The stack of one run: its processes, the watch over them, and how it ends."""

    def __init__(self, cfg: BimanualConfig, plan: List[Launched], procs: ProcessGroup,
                 watch: StackWatch, stop: threading.Event) -> None:
        self.cfg, self.plan, self.procs, self.watch, self.stop = cfg, plan, procs, watch, stop
        self.controllers: Dict[str, EmulatedController] = {}
        #: The process serving each arm's controller.
        self.controller_process: Dict[str, str] = {}
        self.failed = False
        #: What the episodes wrote (what, path).
        self.pictures: Dict[str, Path] = {}

    def check_children(self) -> bool:
        """Report every process that ended on its own; True while none has."""
        for name in self.procs.unexpected_exits():
            code = self.procs.procs[name].returncode
            print(f"ate_bringup: {name} (pid {self.procs.procs[name].pid}) exited unexpectedly "
                  f"with code {exit_description(code)}; the end of {self.procs.log_path(name)}:\n"
                  f"{_indented(self.procs.tail(name))}", file=sys.stderr, flush=True)
            self.failed = True
        return not self.failed

    def start(self) -> bool:
        """Start every process in order; False if one ended or the run was stopped meanwhile."""
        for item in self.plan:
            if self.stop.is_set():
                return False
            if item.params_file is not None:
                item.params_file.parent.mkdir(parents=True, exist_ok=True)
                item.params_file.write_text(item.params_yaml)
            self.procs.start(item.name, item.argv)
            if item.controllers and not self._wait_for_emulator(item):
                return False
        return True

    def _wait_for_emulator(self, item: Launched) -> bool:
        # The arm drivers connect at once; an emulator that is not listening yet would cost
        # each of them a reconnect.
        deadline = time.monotonic() + EMULATOR_TIMEOUT_S
        while not self.stop.is_set() and self.check_children():
            output = self.procs.output(item.name)
            for spec in item.controllers:
                controller = EmulatedController.from_output(spec, output)
                if controller is not None:
                    self.controllers[spec.side] = controller
                    self.controller_process[spec.side] = item.name
            if all(spec.side in self.controllers for spec in item.controllers):
                return True
            if time.monotonic() > deadline:
                print(f"ate_bringup: {item.name} not listening after {EMULATOR_TIMEOUT_S:.0f} s; "
                      f"going on", file=sys.stderr, flush=True)
                return True
            self.stop.wait(0.02)
        return False

    def missing(self) -> List[str]:
        """What keeps the stack from being up: nodes not in the graph, arms not publishing."""
        nodes = set(self.watch.node_names())
        out = [item.node.fully_qualified_name for item in self.plan
               if item.node is not None and item.node.fully_qualified_name not in nodes]
        out += [f"no joint states on {topic}" for side, topic in self.watch.arm_states.items()
                if not self.watch.has_counted(f"{side}_arm:", "states_received")]
        out += [f"no /diagnostics from {who}" for who in self.watch.silent_reporters()]
        return out

    def wait_until_up(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set() and self.check_children():
            missing = self.missing()
            if not missing:
                print(f"ate_bringup: up after {time.monotonic() - started:.1f} s: every node in "
                      f"the ROS graph, joint states and diagnostics from both arms", flush=True)
                return
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                print(f"ate_bringup: not up after {STARTUP_TIMEOUT_S:.0f} s; missing: "
                      + ", ".join(missing), file=sys.stderr, flush=True)
                return
            self.stop.wait(0.1)

    def run(self, duration_s: float, engage: bool) -> None:
        self.watch.start_window()
        has_policy = any(item.node is not None and item.node.executable == "inference_node"
                         for item in self.plan)
        engager = Engager(self.watch) if engage and has_policy else None
        if engage and not has_policy:
            print("ate_bringup: --engage needs a policy (--checkpoint); staying idle",
                  file=sys.stderr, flush=True)
        print(f"ate_bringup: running for {duration_s:g} s" if duration_s > 0 else
              "ate_bringup: running; Ctrl-C to stop and report", flush=True)
        end = time.monotonic() + duration_s
        while not self.stop.is_set() and self.check_children():
            if engager is not None:
                engager.step()
            if duration_s > 0 and time.monotonic() >= end:
                return
            self.stop.wait(0.05)

    def run_episodes(self, task: "Task", episodes: int, out_dir: Path) -> "EpisodeRun":
        """``episodes`` episodes of ``task`` on the twin (see :mod:`ate_ros.episodes`)."""
        from ate_ros.episodes import EpisodeRunner

        self.watch.start_window()
        runner = EpisodeRunner(self.watch.node, self.cfg,
                               alive=lambda: not self.stop.is_set() and self.check_children(),
                               supervisor_mode=self.watch.supervisor_mode,
                               supervisor_counts=self.watch.supervisor_counts)
        print(f"ate_bringup: running {_plural(episodes, 'episode')} of {task.name} "
              f"(at most {task.time_limit_s:g} s each)", flush=True)
        run = runner.run(task.name, task.instruction, episodes, task.time_limit_s,
                         log=lambda line: print(line, flush=True))
        try:
            self.pictures = runner.write_pictures(run, out_dir)
        except (OSError, ValueError) as e:
            print(f"ate_bringup: could not write the pictures: {e}", file=sys.stderr, flush=True)
        return run

    def safe_stop(self) -> None:
        """After a process died: latch the supervisor's e-stop while the arms still listen."""
        supervisor = process_of(self.plan, "supervisor_node")
        if supervisor is None or not self.procs.alive(supervisor):
            print("ate_bringup: the supervisor is not running; stopping everything",
                  file=sys.stderr, flush=True)
            return
        answer = self.watch.call(self.watch.estop_client, Trigger.Request(), timeout_s=3.0)
        print("ate_bringup: e-stop: " + (answer.message if answer is not None else "no answer"),
              file=sys.stderr, flush=True)

    def snapshot(self) -> Snapshot:
        snap = self.watch.snapshot()
        for side, controller in self.controllers.items():
            if self.procs.alive(self.controller_process[side]):
                try:
                    snap.controllers[side] = controller.state(timeout_s=1.0)
                except EmulatorUnreachable:
                    pass
        return snap


#: The main job's task and episodes when none are named; its first seed (the demonstrations the
#: shipped policy learnt from use seeds from 0, evaluation never overlaps them).
DEFAULT_TASK = "lift_box"
DEFAULT_EPISODES = 10
DEFAULT_EVAL_SEED = 1000
#: ``--no-policy`` and ``--episodes 0`` runs last this long when no ``--duration`` is given.
DEFAULT_DURATION_S = 5.0


def shipped_policy(task: str) -> Path:
    """The policy that ships with the package for ``task`` (share/ate_ros/policies/twin_<task>)."""
    return share_dir() / "policies" / f"twin_{task}"


@dataclass(frozen=True)
class Job:
    """What this run does, from the command line: idle bring-up, a free run, or episodes."""

    checkpoint: str
    twin: Optional[bool]
    duration_s: float
    task: Optional["Task"] = None
    episodes: int = 0
    seed: int = DEFAULT_EVAL_SEED


def job_from_args(args: argparse.Namespace) -> Job:
    """Check the options against each other; ``ValueError`` names the conflict."""
    from ate_core.twin.tasks import get_task

    duration = DEFAULT_DURATION_S if args.duration is None else args.duration
    if args.no_policy:
        if args.checkpoint:
            raise ValueError("--no-policy and --checkpoint contradict each other")
        return Job("", args.twin, duration)
    task = get_task(args.task)
    checkpoint = args.checkpoint
    if not checkpoint:
        checkpoint = str(shipped_policy(task.name))
        if not Path(checkpoint).is_dir():
            raise ValueError(f"no policy ships for task {task.name} ({checkpoint} does not "
                             f"exist): train one (README, 'The main job') and pass --checkpoint, "
                             f"or run --no-policy")
    if args.episodes < 0:
        raise ValueError(f"--episodes {args.episodes}: must be >= 0")
    if args.episodes == 0:
        return Job(checkpoint, args.twin, duration)
    if args.twin is False:
        raise ValueError("episodes run on the twin: drop --no-twin (or use --episodes 0)")
    if args.duration is not None:
        raise ValueError("--duration is for --no-policy and --episodes 0 runs; episodes end "
                         "on success or the task's time limit")
    return Job(checkpoint, True, duration, task, args.episodes, args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ate_core.twin.tasks import TASKS, TaskError

    parser = argparse.ArgumentParser(prog="ate_bringup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config_path()), help="robot config YAML")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS),
                        help="the twin task the episodes run (default %(default)s)")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES,
                        help="randomized episodes of --task through the stack on the twin, then "
                             "report (default %(default)s; 0: a free run for --duration)")
    parser.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED,
                        help="the first episode's scene seed, then +1 each (default %(default)s; "
                             "the shipped policy's demonstrations used seeds from 0)")
    parser.add_argument("--checkpoint", default="",
                        help="policy checkpoint (default: the one shipped for --task, "
                             "share/ate_ros/policies/twin_<task>)")
    parser.add_argument("--no-policy", action="store_true",
                        help="bring the robot up idle, without a policy, for --duration seconds")
    parser.add_argument("--duration", type=float, default=None,
                        help="with --no-policy or --episodes 0: seconds to run once the stack "
                             f"is up, then report (default {DEFAULT_DURATION_S:g}; 0: until "
                             "Ctrl-C)")
    parser.add_argument("--engage", action="store_true",
                        help="with --episodes 0: hand control to the policy once it is "
                             "publishing chunks")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID of every process (default: the environment's)")
    parser.add_argument("--twin", action=argparse.BooleanOptionalAction, default=None,
                        help="the controllers on the MuJoCo twin's physics and the cameras on its "
                             "render (--twin), or idealised emulators and a test pattern "
                             "(--no-twin); default: the twin for episodes, else the config's "
                             "sim.twin")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="where each process's output and the episodes' pictures go "
                             "(default: a new directory under ROS_LOG_DIR or ~/.ros/log)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, setting(stop))
    signal.signal(signal.SIGTERM, setting(stop))
    try:
        cfg = load_config(args.config)
        job = job_from_args(args)
    except (ConfigError, TaskError, ValueError) as e:
        print(f"ate_bringup: {e}", file=sys.stderr)
        return 2
    log_dir = args.log_dir or default_log_dir()
    try:
        plan, external = stack_plan(
            cfg, args.config, job.checkpoint, log_dir / "params", twin=job.twin,
            task=job.task.name if job.task else "", seed=job.seed,
            instruction=job.task.instruction if job.task else "")
    except FileNotFoundError as e:
        print(f"ate_bringup: {e}", file=sys.stderr)
        return 2
    procs = ProcessGroup(log_dir, child_env(args.domain_id))
    nodes = sum(item.node is not None for item in plan)
    controllers = sum(len(item.controllers) for item in plan)
    print(f"ate_bringup: starting {controllers} emulated controllers in {len(plan) - nodes} "
          f"process(es) and {nodes} nodes, one process each; their output goes to {log_dir}",
          flush=True)
    if job.checkpoint:
        print(f"ate_bringup: policy {job.checkpoint}", flush=True)
    episodes = None
    with NodeHost(domain_id=args.domain_id, name="bringup") as host:
        bringup = Bringup(cfg, plan, procs, StackWatch(host.node("bringup_status"), cfg), stop)
        try:
            if bringup.start():
                # The children are started (they would inherit it): this monitor now counts at
                # the lowest real-time priority, below the stack's and above other work, so that
                # a busy machine shows as what the stack did, not as messages this process missed.
                raise_process_to_fifo(MONITOR_PRIORITY, lambda why: None, "monitor")
                bringup.wait_until_up()
            if not bringup.failed and not stop.is_set():
                if job.task is not None:
                    episodes = bringup.run_episodes(job.task, job.episodes, log_dir / "episodes")
                else:
                    bringup.run(job.duration_s, args.engage)
            if bringup.failed:
                bringup.safe_stop()
            snap = bringup.snapshot()
        finally:
            if stop.is_set() or not bringup.failed:
                print("ate_bringup: stopping", flush=True)
            exit_codes = procs.stop()
    clean = True
    for name, code in exit_codes.items():
        if name in procs.killed:
            print(f"ate_bringup: {name} did not end {STOP_TIMEOUT_S:.0f} s after SIGINT; killed",
                  file=sys.stderr, flush=True)
            clean = False
        elif code != 0 and name not in procs.ended_on_their_own:
            print(f"ate_bringup: {name} exited with code {exit_description(code)} when stopped; "
                  f"the end of {procs.log_path(name)}:\n{_indented(procs.tail(name))}",
                  file=sys.stderr, flush=True)
            clean = False
    text = report(cfg, plan, external, bringup.watch, snap, procs.pids, exit_codes, log_dir)
    if episodes is not None:
        text += "\n" + "\n".join(episodes.lines())
        for what, path in bringup.pictures.items():
            text += f"\n  {what}: {path}"
    print(text, flush=True)
    aborted = episodes is not None and bool(episodes.aborted) and not stop.is_set()
    return 1 if bringup.failed or not clean or aborted else 0


if __name__ == "__main__":
    sys.exit(main())
