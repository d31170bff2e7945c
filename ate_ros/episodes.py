"""Closed-loop episodes of a twin task through the whole stack: the main job's demonstration.

The bringup's own node runs them against the running stack, as an operator would: for each
episode

1. make sure the supervisor is idle (``/ate/engage`` false, then wait for its diagnostics to
   say ``idle``): nothing is commanded while the scene changes;
2. ``/twin/reset`` (std_srvs/Trigger on the twin host): arms home, grippers open, the task's
   objects drawn from the next seed; the answer names the seed (``seed=1003: ...``);
3. wait for an action chunk whose stamp is after the reset, so the policy has seen the new
   scene, then ``/ate/engage`` true: from here the policy drives the arms through the
   supervisor's safety filter, exactly as on the robot;
4. ask ``/twin/check`` a few times a second until the task's success check holds or the task's
   time limit has passed; the last answer is the episode's reason.

Meanwhile it keeps what the report needs and nothing more: a head-camera frame a second
(:data:`STRIP_PERIOD_S`), the measured joints from ``/joint_states`` at :data:`PATH_RATE_HZ`,
the first point of every chunk (the policy's command for the moment it was observed), and each
measured joint state checked against the safety filter's static rules
(:meth:`SafetyFilter.violations`: joint limits with their margin, gripper range, TCP workspace,
inter-arm clearance): the supervisor's counts say how often the filter had to step in; this
says whether the robot, as measured, ever stood where the rules forbid.

At the end it writes ``head_strip.png`` (one row per episode) and ``joint_paths.png``
(measured and commanded joints over the run, episodes marked) into its output folder.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.eval.report import wilson_interval
from ate_core.robot.config import BimanualConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.safety import SafetyFilter
from ate_ros.conversions import stamp_to_ns
from ate_ros.images import ImageFormatError, image_to_rgb

__all__ = ["RESET_SERVICE", "CHECK_SERVICE", "EpisodeResult", "EpisodeRun", "EpisodeRunner",
           "parse_seed", "write_head_strip", "write_joint_paths"]

RESET_SERVICE = "/twin/reset"
CHECK_SERVICE = "/twin/check"
#: How often the success check is asked.
CHECK_PERIOD_S = 0.25
#: A head-camera frame per this many seconds goes into the strip.
STRIP_PERIOD_S = 1.0
#: Frames per episode in the strip (evenly spaced over the episode).
STRIP_FRAMES = 6
#: Rate at which measured joints are kept for the plot (and checked against the rules).
PATH_RATE_HZ = 20.0
#: How long the policy may take to answer a new scene with a chunk.
FIRST_CHUNK_TIMEOUT_S = 30.0
#: How long the supervisor may take to come to rest and report idle.
IDLE_TIMEOUT_S = 10.0
SERVICE_TIMEOUT_S = 10.0

_SEED = re.compile(r"^seed=(-?\d+)")


def parse_seed(message: str) -> int:
    """The seed from ``/twin/reset``'s answer, ``seed=<int>: ...``."""
    match = _SEED.match(message)
    if match is None:
        raise ValueError(f"{RESET_SERVICE} answered {message!r}: expected 'seed=<int>: ...'")
    return int(match.group(1))


@dataclass(frozen=True)
class EpisodeResult:
    index: int
    seed: int
    success: bool
    #: From engage to success (or to the time limit).
    seconds: float
    reason: str
    chunks: int
    #: The supervisor's interventions and faults during the episode, by ``rule.arm``.
    interventions: Dict[str, int]


@dataclass
class EpisodeRun:
    """Every episode of a run, and what was measured along the way."""

    task: str
    instruction: str
    results: List[EpisodeResult] = field(default_factory=list)
    #: Measured-state checks against the static safety rules: (checked, breaches by rule.arm).
    states_checked: int = 0
    violations: Counter = field(default_factory=Counter)
    #: Why the run stopped early ("" when every episode ran).
    aborted: str = ""

    @property
    def successes(self) -> int:
        return sum(r.success for r in self.results)

    def wilson_interval(self) -> Tuple[float, float]:
        """95 % Wilson score interval of the success rate."""
        return wilson_interval(self.successes, len(self.results))

    def lines(self) -> List[str]:
        out = [f"  episodes of {self.task} ({self.instruction!r}):"]
        for r in self.results:
            counted = ", ".join(f"{k} {n}" for k, n in sorted(r.interventions.items()))
            out.append(f"    {r.index + 1:>2}  seed {r.seed:<5} "
                       f"{'success' if r.success else 'FAILED ':<7} {r.seconds:5.1f} s  "
                       f"{r.chunks:3d} chunks  {r.reason}"
                       + (f"  [supervisor: {counted}]" if counted else ""))
        n = len(self.results)
        if n:
            low, high = self.wilson_interval()
            seeds = [r.seed for r in self.results]
            out.append(f"  success {self.successes}/{n} = {100 * self.successes / n:.0f} % "
                       f"(95 % interval {100 * low:.0f}-{100 * high:.0f} %), seeds "
                       f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[0] + n))
                       else f"  success {self.successes}/{n}, seeds {seeds}")
        breaches = ", ".join(f"{k} {v}" for k, v in sorted(self.violations.items()))
        out.append(f"  safety rules in the measured motion: {self.states_checked} states checked, "
                   + (f"violations: {breaches}" if breaches else "0 violations"))
        if self.aborted:
            out.append(f"  stopped early: {self.aborted}")
        return out


class EpisodeRunner:
    """Runs the episodes from the calling (main) thread; the node's executor, spun elsewhere,
    delivers the callbacks, which only store. ``alive`` is asked in every wait: False (a process
    died, Ctrl-C) ends the run where it is."""

    def __init__(self, node: Node, cfg: BimanualConfig, alive: Callable[[], bool],
                 supervisor_mode: Callable[[], Optional[str]],
                 supervisor_counts: Callable[[], Dict[str, int]]) -> None:
        self.node, self.cfg, self.alive = node, cfg, alive
        self._supervisor_mode = supervisor_mode
        self._supervisor_counts = supervisor_counts
        t = cfg.topics
        self.reset_client = node.create_client(Trigger, RESET_SERVICE)
        self.check_client = node.create_client(Trigger, CHECK_SERVICE)
        self.engage_client = node.create_client(SetBool, t.engage)
        layout = layout_from_config(cfg)
        self.joint_names = layout.joint_names
        sup = cfg.supervisor
        self._filter = SafetyFilter(layout, sup.safety, 1.0 / sup.rate_hz,
                                    cfg.gripper.max_opening_m)
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        #: (s since start, positions in layout order) at PATH_RATE_HZ.
        self.measured: List[Tuple[float, np.ndarray]] = []
        #: (s since start, first chunk point in layout order), one per chunk.
        self.commanded: List[Tuple[float, np.ndarray]] = []
        #: Episode boundaries (s since start) for the plot.
        self.marks: List[Tuple[float, str]] = []
        self._frames: List[Tuple[float, np.ndarray]] = []
        #: The strip's frames of each episode so far.
        self._episode_frames: List[List[Tuple[float, np.ndarray]]] = []
        self._latest_frame: Optional[Image] = None
        self._last_chunk_stamp_ns = 0
        self._chunks = 0
        self._states_checked = 0
        self._violations: Counter = Counter()
        self._next_state_s = 0.0
        node.create_subscription(JointState, t.joint_states, self._on_joint_state,
                                 qos_profile_sensor_data)
        node.create_subscription(JointTrajectory, t.action_chunk, self._on_chunk,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.head_topic = f"{t.cameras}/head/image_raw" if "head" in cfg.cameras else ""
        if self.head_topic:
            node.create_subscription(Image, self.head_topic, self._on_image,
                                     qos_profile_sensor_data)

    # ---- callbacks: store only ----------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _on_joint_state(self, msg: JointState) -> None:
        now = self._now()
        if now < self._next_state_s:
            return
        position = dict(zip(msg.name, msg.position))
        if not all(n in position for n in self.joint_names):
            return
        q = np.array([position[n] for n in self.joint_names])
        breaches = self._filter.violations(q)
        with self._lock:
            self._next_state_s = now + 1.0 / PATH_RATE_HZ
            self.measured.append((now, q))
            self._states_checked += 1
            self._violations.update(f"{b.rule}.{b.arm}" for b in breaches)

    def _on_chunk(self, msg: JointTrajectory) -> None:
        if not msg.points:
            return
        index = {n: i for i, n in enumerate(msg.joint_names)}
        first = msg.points[0].positions
        q = np.array([first[index[n]] if n in index else np.nan for n in self.joint_names])
        with self._lock:
            self._last_chunk_stamp_ns = max(self._last_chunk_stamp_ns,
                                            stamp_to_ns(msg.header.stamp))
            self._chunks += 1
            self.commanded.append((self._now(), q))

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._latest_frame = msg

    # ---- the main thread ------------------------------------------------------------------------
    def _call(self, client, request, what: str):
        if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S):
            raise RuntimeError(f"{what}: service {client.srv_name} not available")
        future = client.call_async(request)
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while not future.done():
            if not self.alive():
                client.remove_pending_request(future)
                raise InterruptedError(what)
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise RuntimeError(f"{what}: no answer from {client.srv_name} in "
                                   f"{SERVICE_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        return future.result()

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if not self.alive():
                raise InterruptedError(what)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout_s:.0f} s")
            self._sample_frame()
            time.sleep(0.02)

    def _sample_frame(self) -> None:
        now = self._now()
        with self._lock:
            msg = self._latest_frame
            due = not self._frames or now - self._frames[-1][0] >= STRIP_PERIOD_S
            if msg is None or not due:
                return
            self._latest_frame = None
        try:
            self._frames.append((now, image_to_rgb(msg)))
        except ImageFormatError:
            pass

    def _engage(self, on: bool) -> str:
        answer = self._call(self.engage_client, SetBool.Request(data=on),
                            "engage" if on else "disengage")
        if on and not answer.success:
            raise RuntimeError(f"engage refused: {answer.message}")
        return answer.message

    def _to_idle(self) -> None:
        self._engage(False)
        self._wait(lambda: self._supervisor_mode() == "idle", IDLE_TIMEOUT_S,
                   "the supervisor did not come to rest and report idle")

    def run(self, task: str, instruction: str, episodes: int, time_limit_s: float,
            log: Callable[[str], None] = print) -> EpisodeRun:
        run = EpisodeRun(task, instruction)
        try:
            for index in range(episodes):
                run.results.append(self._episode(index, time_limit_s, log))
        except InterruptedError as e:
            run.aborted = f"stopped while waiting: {e}"
        except RuntimeError as e:
            run.aborted = str(e)
            print(f"ate_bringup: episodes stopped: {e}", file=sys.stderr, flush=True)
        finally:
            try:
                if self.alive():
                    self._engage(False)
            except (RuntimeError, InterruptedError):
                pass
        with self._lock:
            run.states_checked = self._states_checked
            run.violations = Counter(self._violations)
        return run

    def _episode(self, index: int, time_limit_s: float, log: Callable[[str], None]
                 ) -> EpisodeResult:
        self._to_idle()
        answer = self._call(self.reset_client, Trigger.Request(), "reset the twin")
        if not answer.success:
            raise RuntimeError(f"{RESET_SERVICE}: {answer.message}")
        seed = parse_seed(answer.message)
        reset_ns = self.node.get_clock().now().nanoseconds
        with self._lock:
            chunks_before = self._chunks
        self._wait(lambda: self._last_chunk_stamp_ns > reset_ns, FIRST_CHUNK_TIMEOUT_S,
                   "no chunk from the policy on the new scene")
        counts_before = dict(self._supervisor_counts())
        self._engage(True)
        start = time.monotonic()
        self.marks.append((self._now(), f"seed {seed}"))
        strip_from = len(self._frames)
        success, reason = False, "not checked"
        next_check = start
        while True:
            now = time.monotonic()
            if now >= next_check:
                result = self._call(self.check_client, Trigger.Request(), "check the task")
                success, reason = bool(result.success), result.message
                next_check = now + CHECK_PERIOD_S
                if success or now - start >= time_limit_s:
                    break
            if not self.alive():
                raise InterruptedError(f"episode {index + 1}")
            self._sample_frame()
            time.sleep(0.02)
        seconds = time.monotonic() - start
        self._to_idle()
        counts = self._supervisor_counts()
        changed = {k: n - counts_before.get(k, 0) for k, n in counts.items()
                   if n - counts_before.get(k, 0) > 0}
        with self._lock:
            chunks = self._chunks - chunks_before
            self._episode_frames.append(self._frames[strip_from:])
        result = EpisodeResult(index, seed, success, seconds,
                               reason if success else f"{reason} after {seconds:.0f} s",
                               chunks, changed)
        log(f"ate_bringup: episode {index + 1}: seed {seed}, "
            f"{'success' if success else 'failed'} after {seconds:.1f} s: {reason}")
        return result

    # ---- the pictures ----------------------------------------------------------------------------
    def write_pictures(self, run: EpisodeRun, out_dir: Path) -> Dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written: Dict[str, Path] = {}
        rows = [[f for _, f in frames] for frames in self._episode_frames]
        labels = [f"seed {r.seed}: {'success' if r.success else 'failed'}" for r in run.results]
        if any(rows):
            written["head camera strip"] = write_head_strip(rows, labels, out_dir / "head_strip.png")
        with self._lock:
            measured, commanded, marks = list(self.measured), list(self.commanded), list(self.marks)
        if measured:
            written["joint paths"] = write_joint_paths(
                measured, commanded, marks, self.joint_names, out_dir / "joint_paths.png")
        return written


def write_head_strip(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str],
                     path: Path, frames: int = STRIP_FRAMES) -> Path:
    """One row per episode: ``frames`` frames evenly spaced over it, labelled."""
    import cv2

    shapes = [f.shape for row in rows for f in row]
    h, w = shapes[0][:2]
    scale = 160.0 / w
    th, tw = int(round(h * scale)), 160
    blank = np.zeros((th, tw, 3), np.uint8)
    out_rows = []
    for row, label in zip(rows, list(labels) + [""] * len(rows)):
        picks = ([row[int(round(i))] for i in np.linspace(0, len(row) - 1, min(frames, len(row)))]
                 if row else [])
        tiles = [cv2.resize(f, (tw, th), interpolation=cv2.INTER_AREA) for f in picks]
        tiles += [blank] * (frames - len(tiles))
        strip = np.concatenate(tiles, axis=1)
        header = np.full((18, strip.shape[1], 3), 255, np.uint8)
        cv2.putText(header, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        out_rows.append(np.concatenate([header, strip], axis=0))
    image = np.concatenate(out_rows, axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def write_joint_paths(measured: Sequence[Tuple[float, np.ndarray]],
                      commanded: Sequence[Tuple[float, np.ndarray]],
                      marks: Sequence[Tuple[float, str]], joint_names: Sequence[str],
                      path: Path) -> Path:
    """Per arm, every joint measured (solid) and as the policy commanded it (dots: each
    chunk's first point), episodes marked; off-screen (Agg), no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = sorted({n.split("_")[0] for n in joint_names}, key=lambda a: a != "left")
    fig = Figure(figsize=(11.0, 3.2 * len(arms)), dpi=100)
    FigureCanvasAgg(fig)
    t_m = np.array([t for t, _ in measured])
    q_m = np.stack([q for _, q in measured])
    t_c = np.array([t for t, _ in commanded]) if commanded else np.zeros(0)
    q_c = np.stack([q for _, q in commanded]) if commanded else np.zeros((0, len(joint_names)))
    for row, arm in enumerate(arms):
        ax = fig.add_subplot(len(arms), 1, row + 1)
        joints = [i for i, n in enumerate(joint_names)
                  if n.startswith(f"{arm}_") and not n.endswith("gripper")]
        for k, i in enumerate(joints):
            colour = f"C{k % 10}"
            ax.plot(t_m, q_m[:, i], color=colour, linewidth=1.0, label=joint_names[i])
            if len(t_c):
                ax.plot(t_c, q_c[:, i], ".", color=colour, markersize=2.5)
        for t, label in marks:
            ax.axvline(t, color="0.6", linewidth=0.8, linestyle="--")
            ax.text(t, 1.0, f" {label}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", color="0.4")
        ax.set_ylabel(f"{arm} arm (rad)")
        ax.legend(loc="upper right", fontsize=6, ncol=len(joints))
    fig.axes[-1].set_xlabel("time since bring-up (s): lines measured, dots commanded")
    fig.tight_layout()
    fig.savefig(str(path))
    return path
