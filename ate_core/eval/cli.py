"""``python -m ate_core.eval``: a checkpoint's success rate on a twin task, as a table and a
summary line (and optionally a JSON report and a PNG strip of the head camera per episode)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ate_core.config import ConfigError
from ate_core.eval.closed_loop import DEFAULT_LATENCY_MS, EVAL_SEED, EvalError, evaluate
from ate_core.io import CheckpointError, write_json
from ate_core.robot.config import load_config
from ate_core.twin.tasks import TASKS, TaskError, get_task

__all__ = ["main"]


def _latency(value: str) -> Optional[float]:
    if value == "wall":
        return None
    try:
        ms = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of milliseconds or 'wall'") from None
    if not ms >= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be >= 0")
    return ms


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ate_core.eval",
        description="Run a policy checkpoint in closed loop on the MuJoCo twin, through the "
                    "robot's inference loop and supervisor, in simulated time, and report its "
                    "success rate with a 95 % Wilson interval.")
    parser.add_argument("--checkpoint", required=True,
                        help="policy checkpoint: a run's output folder, its checkpoints/ or "
                             "last, a step folder or a pretrained_model folder")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="twin task")
    parser.add_argument("--episodes", type=int, default=20, help="episodes, one seed each")
    parser.add_argument("--seed", type=int, default=EVAL_SEED,
                        help=f"first seed (default {EVAL_SEED}: demonstrations are written from "
                             f"seed 0 up, so evaluation seeds start at {EVAL_SEED} to stay off "
                             f"the training scenes)")
    parser.add_argument("--config", default="config/bimanual.yaml", help="robot config YAML")
    parser.add_argument("--latency-ms", type=_latency, default=DEFAULT_LATENCY_MS,
                        help=f"inference latency in simulated time, ms (default "
                             f"{DEFAULT_LATENCY_MS:g}: results depend on the checkpoint and the "
                             f"seeds alone); 'wall': the time each inference really took here")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="episode time limit, s (default: the task's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where the policy runs (default: the config's inference.device)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: the config's "
                             "inference.torch_threads)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="write a PNG strip of the head camera per episode here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    try:
        report = evaluate(args.checkpoint, get_task(args.task),
                          range(args.seed, args.seed + args.episodes),
                          config=load_config(args.config), config_source=str(args.config),
                          latency_ms=args.latency_ms, time_limit_s=args.time_limit_s,
                          device=args.device, torch_threads=args.torch_threads,
                          video_dir=args.video_dir, progress=not args.quiet)
    except (ConfigError, CheckpointError, EvalError, TaskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    print(report.summary())
    if args.json is not None:
        write_json(args.json, report.to_dict())
        print(f"wrote {args.json}")
    if args.video_dir is not None:
        print(f"wrote {len(report.episodes)} strips to {args.video_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
