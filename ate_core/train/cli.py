"""``ate_train``: pre-train or fine-tune a policy from a YAML config.

::

    ate_train --config config/train_diffusion.yaml --set steps=2000 --set dataset.roots=[data/demos]
    ate_train --config config/train_flow.yaml --init-from outputs/pretrain/checkpoints/last \\
        --output-dir outputs/finetune
    torchrun --nproc_per_node 2 -m ate_core.train.cli --config config/train_diffusion.yaml

A bad config, checkpoint or dataset path ends in one line naming the file and the key, and
exit status 2; a run that fails while training exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "is_main_process", "first_line", "print_error"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ate_train",
        description="Pre-train or fine-tune a diffusion / flow policy. Run under torchrun for several GPUs.")
    p.add_argument("--config", required=True, help="training YAML (see config/train_diffusion.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, YAML-parsed (repeatable): --set steps=2000 "
                        "--set dataset.roots=[data/a,data/b] --set policy.horizon=32")
    p.add_argument("--output-dir", help="same as --set output_dir=DIR")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--init-from", metavar="CKPT", help="fine-tune from this checkpoint (its model config and weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    return p


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the one process that prints."""
    return os.environ.get("RANK", "0") in ("", "0")


def first_line(e: BaseException) -> str:
    """An exception as the one line a command-line error shows."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def print_error(prog: str, message: str) -> None:
    """``<prog>: error: <message>`` on stderr, from the main process only."""
    if is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print_error("ate_train", message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from ate_core.config import ConfigError
    from ate_core.data.spaces import ActionSpaceError
    from ate_core.train.checkpoint import CheckpointError
    from ate_core.train.config import load_train_config, parse_overrides
    from ate_core.train.trainer import TrainingError, check_policy_section, train

    try:
        overrides = parse_overrides(args.overrides)
        if args.output_dir:
            overrides["output_dir"] = args.output_dir
        if args.resume:
            overrides["resume"] = True
        if args.init_from:
            overrides["init_from"] = args.init_from
        cfg = load_train_config(args.config, overrides, override_source="command line")
        check_policy_section(cfg, source=args.config)
    except (ConfigError, CheckpointError, TrainingError) as e:
        _error(first_line(e))
        return 2
    from ate_core.data.episode import EpisodeFormatError
    from ate_core.data.spaces import NormStatsError

    try:
        result = train(cfg, progress=not args.no_progress, source=args.config)
    except (ConfigError, CheckpointError, ActionSpaceError, EpisodeFormatError, NormStatsError) as e:
        _error(first_line(e))
        return 2
    except TrainingError as e:
        _error(first_line(e))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; resume with --resume from the last checkpoint")
        return 130
    if is_main_process():
        from ate_core.train.trainer import LOSS_PLOT_FILE

        print(f"checkpoint: {result.last_checkpoint}")
        print(f"loss curve: {result.output_dir / LOSS_PLOT_FILE}")
        if result.losses:
            print(f"final loss: {result.losses[-1]:.6g} after {result.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
