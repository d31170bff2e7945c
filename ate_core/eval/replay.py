"""Offline replay evaluation: what a checkpoint would have done on a recorded take.

The take's messages go, at their recorded timing, through the same runtime code as the live
stack: the observation synchroniser and the policy runner (``InferenceLoop``, as the inference
node runs it), then the chunk executor and the safety filter (``Supervisor``, fed the recorded
joint states and camera times, ticking at its rate). Every chunk is compared with what the
robot was really commanded (the recorded command streams; for a kinesthetic take, the measured
state): per horizon step and joint, the mean squared and absolute error of chunk point i
against the recorded action as-of its due time. Also reported: the jump at each chunk boundary
(the new chunk's first point against where the previous chunk was at that moment), the
inference time of every chunk, and the safety filter's interventions.

Attempts happen where the live node made them: at the stamps of the take's recorded chunks
when it has any (a policy run), else every ``inference.period_s`` (or the policy's own period)
from the first message on. Chunks reach the supervisor ``latency_ms`` after their observation.
Everything runs in simulated time: the results depend on the take and the checkpoint only.

``python -m ate_core.eval.replay --bag DIR [DIR ...] --checkpoint CKPT --out DIR`` writes
``replay_eval.json`` and PNG plots (error per horizon step, boundary jumps, inference time).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ate_core.config import ConfigError, from_flat
from ate_core.data.bag import BagError, BagReader, header_stamp_ns
from ate_core.data.convert import Stream, asof_indices
from ate_core.data.episode import decode_jpeg
from ate_core.eval.closed_loop import supervisor_counts
from ate_core.robot.config import BimanualConfig
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.chunk import ActionChunk, ChunkRejected, make_chunk
from ate_core.runtime.inference_loop import ChunkPolicy, InferenceLoop, Phase
from ate_core.runtime.supervisor import Mode, Supervisor

__all__ = ["ReplayEvalError", "ReplayEvalReport", "replay_evaluate", "robot_config_of",
           "write_plots", "main"]

PathLike = Union[str, "os.PathLike[str]"]


class ReplayEvalError(ValueError):
    """A take and a policy that cannot be evaluated together; says why."""


@dataclass
class ReplayEvalReport:
    bag: str
    policy: str
    joint_names: Tuple[str, ...]
    action_from: str
    #: [H, J]: mean squared / absolute error of chunk point i, per joint (NaN: no point).
    mse: np.ndarray
    l1: np.ndarray
    #: [H]: points compared at each horizon step.
    points: np.ndarray
    chunks: int
    #: Per chunk boundary, the largest joint jump (rad; grippers m).
    boundary_jumps: List[float] = field(default_factory=list)
    inference_ms: List[float] = field(default_factory=list)
    blocked: int = 0
    interventions: Dict[str, int] = field(default_factory=dict)
    faults: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        def stats(values: Sequence[float]) -> Dict[str, float]:
            v = np.asarray(values, dtype=float)
            if v.size == 0:
                return {}
            return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
                    "p95": float(np.percentile(v, 95)), "max": float(v.max())}

        valid = self.points > 0
        return {"bag": self.bag, "policy": self.policy, "action_from": self.action_from,
                "chunks": self.chunks, "blocked_attempts": self.blocked,
                "mse": float(np.nanmean(self.mse[valid])) if valid.any() else None,
                "l1": float(np.nanmean(self.l1[valid])) if valid.any() else None,
                "boundary_jump": stats(self.boundary_jumps), "inference_ms": stats(self.inference_ms),
                "interventions": dict(self.interventions), "faults": dict(self.faults)}

    def to_json(self) -> Dict[str, Any]:
        def rows(a: np.ndarray) -> List[List[Optional[float]]]:
            return [[None if not math.isfinite(x) else float(x) for x in r] for r in a]

        return {**self.summary(), "joint_names": list(self.joint_names),
                "per_step": {"mse": rows(self.mse), "l1": rows(self.l1),
                             "points": [int(p) for p in self.points]},
                "boundary_jumps": [float(j) for j in self.boundary_jumps],
                "inference_ms_each": [float(x) for x in self.inference_ms]}


def robot_config_of(reader: BagReader) -> BimanualConfig:
    """The robot config the take was recorded with (its contract), validated."""
    contract = reader.info.get("contract") or {}
    flat = contract.get("config")
    if not isinstance(flat, dict):
        raise ReplayEvalError(f"{reader.path}: episode.yaml has no robot contract with a config")
    try:
        return from_flat(BimanualConfig, flat, source=f"{reader.path}/episode.yaml contract.config")
    except ConfigError as e:
        raise ReplayEvalError(str(e)) from None


def _decode(jpeg: bytes) -> np.ndarray:
    rgb = decode_jpeg(jpeg)
    if rgb is None:
        raise ValueError("not a decodable JPEG")
    return rgb


def replay_evaluate(bag: PathLike, policy: ChunkPolicy, *, config: Optional[BimanualConfig] = None,
                    latency_ms: float = 100.0, action_from: str = "command",
                    task: Optional[str] = None) -> ReplayEvalReport:
    """Evaluate ``policy`` on the take at ``bag`` (see the module). ``config``: the robot
    config (default: the take's own); ``task``: the instruction (default: the take's)."""
    if action_from not in ("command", "state"):
        raise ValueError(f"action_from: {action_from!r} is not 'command' or 'state'")
    if not (math.isfinite(latency_ms) and latency_ms >= 0):
        raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
    try:
        reader = BagReader(bag)
    except BagError as e:
        raise ReplayEvalError(str(e)) from None
    with reader:
        cfg = config if config is not None else robot_config_of(reader)
        streams = (reader.info.get("contract") or {}).get("streams") or {}
        instruction = reader.info.get("task", "") if task is None else task
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(
            cfg.inference, task=str(instruction), warmup_runs=0))
        try:
            loop = InferenceLoop(policy, cfg, decode_image=_decode)
        except ConfigError as e:
            raise ReplayEvalError(f"{bag}: {e}") from None
        layout = layout_from_config(cfg)
        missing = sorted(set(layout.joint_names) - set(policy.joint_names))
        if missing:
            raise ReplayEvalError(f"{bag}: the policy does not command joints {missing}")
        supervisor = Supervisor(layout, cfg.supervisor, cfg.gripper.max_opening_m,
                                cameras=loop.cameras)
        roles = {t: s for t, s in streams.items() if isinstance(s, dict)}
        events: List[Tuple[int, str, str, Any]] = []  # (log ns, kind, source, value)
        reference: Dict[str, List[Tuple[int, Dict[str, float]]]] = {}
        chunk_stamps: List[int] = []
        wanted = [t for t, s in roles.items() if s.get("role") in ("state", "command", "image", "chunk")]
        for topic, log_ns, msg in reader.messages(wanted):
            s = roles[topic]
            role, source = s["role"], s.get("source", "")
            if role == "state":
                positions = dict(zip(msg.name, (float(p) for p in msg.position)))
                events.append((log_ns, "state", source, (header_stamp_ns(msg), positions)))
                if action_from == "state":
                    reference.setdefault(source, []).append((header_stamp_ns(msg), positions))
            elif role == "command":
                if action_from == "command":
                    reference.setdefault(source, []).append(
                        (header_stamp_ns(msg), dict(zip(msg.name, (float(p) for p in msg.position)))))
            elif role == "image" and source in loop.cameras:
                events.append((log_ns, "image", source, (header_stamp_ns(msg), bytes(msg.data))))
            elif role == "chunk":
                chunk_stamps.append(header_stamp_ns(msg))
    if not events:
        raise ReplayEvalError(f"{bag}: no joint states or images the policy reads")
    if action_from == "command" and not reference:
        raise ReplayEvalError(f"{bag}: no recorded commands to compare with "
                              "(a kinesthetic take: action_from='state')")

    if loop.warm_up() is not Phase.RUNNING:
        raise ReplayEvalError(f"the policy does not run: {loop.status.failure}")
    period_ns = int(round(loop.period_s * 1e9))
    tick_ns = int(round(supervisor.period_s * 1e9))
    latency_ns = int(round(latency_ms * 1e6))
    end_ns = events[-1][0]
    attempts = sorted(chunk_stamps) if chunk_stamps else None
    next_attempt = attempts.pop(0) if attempts else events[0][0] + period_ns
    pending: List[Tuple[int, ActionChunk]] = []
    chunks: List[ActionChunk] = []
    infer_ms: List[float] = []
    blocked = 0
    next_tick = events[0][0]
    i = 0
    while True:
        now = min(t for t in (events[i][0] if i < len(events) else None, next_attempt,
                              next_tick, pending[0][0] if pending else None) if t is not None)
        if now > end_ns and not pending:
            break
        while i < len(events) and events[i][0] <= now:
            _, kind, source, (stamp, value) = events[i]
            if kind == "state":
                loop.add(f"{source}_arm", stamp, value)
                arm = next((a for a in layout if a.prefix == source), None)
                if arm is not None and all(n in value for n in (*arm.joint_names, arm.gripper_joint)):
                    supervisor.on_joint_state(source, [value[n] for n in (*arm.joint_names,
                                                                          arm.gripper_joint)], now)
            else:
                loop.add(source, stamp, value)
                supervisor.on_camera(source, now)
            i += 1
        while pending and pending[0][0] <= now:
            _, chunk = pending.pop(0)
            loop.delivered(chunk, now)
            try:
                ordered = make_chunk(chunk.joint_names, chunk.stamp_ns, chunk.times_ns,
                                     chunk.positions, supervisor.joint_names)
            except ChunkRejected as e:
                supervisor.reject_chunk(e.rule)
                continue
            if supervisor.on_chunk(ordered, now) is None and supervisor.mode is Mode.IDLE:
                supervisor.engage(now)
        if next_attempt is not None and next_attempt <= now:
            started = time.perf_counter()
            cycle = loop.step(loop.window(next_attempt))
            if cycle.chunk is not None:
                infer_ms.append((time.perf_counter() - started) * 1e3)
                chunks.append(cycle.chunk)
                pending.append((next_attempt + latency_ns, cycle.chunk))
                pending.sort(key=lambda p: p[0])
            elif cycle.blocked is not None or loop.status.blocked is not None:
                blocked += 1
            if attempts is not None:
                next_attempt = attempts.pop(0) if attempts else None
            elif cycle.chunk is not None:
                next_attempt += period_ns
            else:
                next_attempt += max(1, int(round((cycle.wait_s or 0.01) * 1e9)))
            if next_attempt is not None and next_attempt > end_ns:
                next_attempt = None
        if next_tick <= now:
            supervisor.tick(now)
            next_tick += tick_ns
        if i >= len(events) and next_attempt is None and not pending:
            break

    joint_names = tuple(policy.joint_names)
    mse, l1, points = _errors(chunks, reference, layout, joint_names)
    interventions, faults, _ = supervisor_counts(supervisor.counts)
    return ReplayEvalReport(
        bag=str(bag), policy=str(getattr(getattr(policy, "loaded", None), "path", type(policy).__name__)),
        joint_names=joint_names, action_from=action_from, mse=mse, l1=l1, points=points,
        chunks=len(chunks), boundary_jumps=_boundary_jumps(chunks), inference_ms=infer_ms,
        blocked=blocked, interventions=interventions, faults=faults)


def _errors(chunks: Sequence[ActionChunk], reference: Dict[str, List[Tuple[int, Dict[str, float]]]],
            layout: Any, joint_names: Tuple[str, ...]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    horizon = max((len(c) for c in chunks), default=0)
    sq = np.zeros((horizon, len(joint_names)))
    ab = np.zeros((horizon, len(joint_names)))
    count = np.zeros((horizon, len(joint_names)))
    # Per joint: the recorded stream that carries it, as-of by stamp.
    per_joint: Dict[str, Stream] = {}
    for source, samples in reference.items():
        names = sorted({n for _, values in samples for n in values})
        for n in names:
            rows = [(s, v[n]) for s, v in samples if n in v]
            per_joint[n] = Stream(n, np.array([s for s, _ in rows], dtype=np.int64),
                                  np.array([v for _, v in rows], dtype=np.float64))
    for chunk in chunks:
        due = chunk.due_ns
        for k, name in enumerate(chunk.joint_names):
            stream = per_joint.get(name)
            if stream is None or name not in joint_names:
                continue
            j = joint_names.index(name)
            idx = asof_indices(stream.stamps_ns, due)
            ok = (idx >= 0) & (due <= stream.stamps_ns[-1])
            diff = chunk.positions[ok, k] - stream.values[idx[ok]]
            steps = np.flatnonzero(ok)
            sq[steps, j] += diff ** 2
            ab[steps, j] += np.abs(diff)
            count[steps, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sq / count, ab / count, count.max(axis=1) if horizon else np.zeros(0)


def _boundary_jumps(chunks: Sequence[ActionChunk]) -> List[float]:
    jumps = []
    for before, after in zip(chunks, chunks[1:]):
        t = after.due_ns[0]
        due = before.due_ns
        if t < due[0] or t > due[-1]:
            continue  # the earlier chunk does not reach the later one's start
        where = np.array([np.interp(t, due, before.positions[:, k])
                          for k in range(before.positions.shape[1])])
        order = [before.joint_names.index(n) for n in after.joint_names]
        jumps.append(float(np.max(np.abs(after.positions[0] - where[order]))))
    return jumps


def write_plots(report: ReplayEvalReport, out: PathLike) -> List[Path]:
    """error_per_step.png, boundary_jumps.png, inference_ms.png into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    steps = np.arange(report.mse.shape[0])
    for j, name in enumerate(report.joint_names):
        axes[0].plot(steps, np.sqrt(report.mse[:, j]), label=name, lw=1)
        axes[1].plot(steps, report.l1[:, j], lw=1)
    axes[0].set(title="RMSE per horizon step", xlabel="chunk point", ylabel="rad (grippers m)")
    axes[1].set(title="L1 per horizon step", xlabel="chunk point")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(Path(report.bag).name)
    fig.tight_layout()
    paths.append(out / "error_per_step.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    for name, values, label in (("boundary_jumps.png", report.boundary_jumps, "largest joint jump at a chunk boundary"),
                                ("inference_ms.png", report.inference_ms, "inference time, ms")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(values, bins=30)
        ax.set(title=label, xlabel=label, ylabel="chunks")
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    from ate_core.robot.config import load_config
    from ate_core.runtime.policy_runner import PolicyRunner

    parser = argparse.ArgumentParser(prog="python -m ate_core.eval.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bag", nargs="+", required=True, help="recorded takes (bag folders)")
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint")
    parser.add_argument("--out", required=True, help="folder for replay_eval.json and the plots")
    parser.add_argument("--config", default="", help="robot config (default: each take's own)")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--action-from", choices=("command", "state"), default="command")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results, failed = [], 0
    runner = None
    for bag in args.bag:
        try:
            with BagReader(bag) as reader:
                cfg = load_config(args.config) if args.config else robot_config_of(reader)
            if runner is None:
                runner = PolicyRunner.from_config(dataclasses.replace(
                    cfg.inference, checkpoint=args.checkpoint, device=args.device), "--checkpoint")
            report = replay_evaluate(bag, runner, config=cfg, latency_ms=args.latency_ms,
                                     action_from=args.action_from)
        except (ReplayEvalError, BagError, ConfigError) as e:
            print(f"error: {e}")
            failed += 1
            continue
        folder = out / Path(bag).name
        write_plots(report, folder)
        results.append(report.to_json())
        s = report.summary()
        print(f"{Path(bag).name}: {s['chunks']} chunks, MSE {s['mse']:.5f}, L1 {s['l1']:.4f}, "
              f"boundary jump p95 {s['boundary_jump'].get('p95', float('nan')):.4f}, "
              f"inference p50 {s['inference_ms'].get('p50', float('nan')):.1f} ms, "
              f"interventions {sum(s['interventions'].values())}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay_eval.json").write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
