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
import sys
from typing import Any, Dict, Optional, Sequence

from ate_core.train.stage import is_main_process, run_stage

__all__ = ["main", "build_parser", "add_run_arguments", "run_overrides", "print_result"]

PROG = "ate_train"


def add_run_arguments(p: argparse.ArgumentParser, set_example: str) -> None:
    """The arguments every training-loop CLI shares (``ate_train``, ``ate_finetune``)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, YAML-parsed (repeatable): {set_example}")
    p.add_argument("--output-dir", help="same as --set output_dir=DIR")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")


def run_overrides(args: argparse.Namespace, **keys: Optional[str]) -> Dict[str, Any]:
    """``--set`` values, then ``--output-dir``/``--resume`` and the given ``key=value`` options."""
    from ate_core.train.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    for key, value in (("output_dir", args.output_dir), *keys.items()):
        if value:
            overrides[key] = value
    if args.resume:
        overrides["resume"] = True
    return overrides


def print_result(result: Any) -> None:
    """What a finished run tells its user (rank 0 only)."""
    from ate_core.train.trainer import LOSS_PLOT_FILE

    if not is_main_process():
        return
    print(f"checkpoint: {result.last_checkpoint}")
    print(f"loss curve: {result.output_dir / LOSS_PLOT_FILE}")
    if result.losses:
        print(f"final loss: {result.losses[-1]:.6g} after {result.steps} steps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Pre-train or fine-tune a diffusion / flow policy. Run under torchrun for several GPUs.")
    p.add_argument("--config", required=True, help="training YAML (see config/train_diffusion.yaml)")
    p.add_argument("--init-from", metavar="CKPT", help="fine-tune from this checkpoint (its model config and weights)")
    add_run_arguments(p, "--set steps=2000 --set dataset.roots=[data/a,data/b] --set policy.horizon=32")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from ate_core.train.config import TrainConfig, load_train_config
    from ate_core.train.trainer import check_policy_section, train

    def prepare() -> TrainConfig:
        overrides = run_overrides(args, init_from=args.init_from)
        cfg = load_train_config(args.config, overrides, override_source="command line")
        check_policy_section(cfg, source=args.config)
        return cfg

    def run(cfg: TrainConfig) -> None:
        print_result(train(cfg, progress=not args.no_progress, source=args.config))

    return run_stage(PROG, prepare, run, resumable=True)


if __name__ == "__main__":
    sys.exit(main())
