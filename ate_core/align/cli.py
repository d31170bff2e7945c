"""``ate_align``: train ATE's alignment VAEs from a YAML config.

::

    ate_align --config config/align.yaml --stage pre --set dataset.roots=[data/pretrain]
    ate_align --config config/align.yaml --stage ada --pre outputs/align_pre \\
        --set dataset.roots=[data/robot_demos]

A bad config, checkpoint or dataset path ends in one line naming the file and the key, and
exit status 2; a run that fails while training exits 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ate_core.train.stage import run_stage

__all__ = ["main", "build_parser"]

PROG = "ate_align"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train the action-chunk Info-VAE of ATE's alignment stage: on the pre-training data "
                    "(--stage pre), then on the new robot's data aligned to it (--stage ada).")
    p.add_argument("--config", required=True, help="alignment YAML (see config/align.yaml)")
    p.add_argument("--stage", choices=("pre", "ada"), help="same as --set stage=...")
    p.add_argument("--pre", metavar="CKPT", help="the stage-pre VAE (stage ada); same as --set pre_checkpoint=CKPT")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, YAML-parsed (repeatable): --set steps=2000 "
                        "--set dataset.roots=[data/a,data/b] --set loss.kl_weight=1e-3")
    p.add_argument("--output-dir", help="same as --set output_dir=DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from ate_core.align.config import AlignConfig, load_align_config
    from ate_core.align.report import format_report_table
    from ate_core.align.trainer import LOSS_PLOT_FILE, train_vae
    from ate_core.config import ConfigError
    from ate_core.train.config import overridden, parse_overrides

    overrides: Dict[str, Any] = {}

    def prepare() -> AlignConfig:
        overrides.update(parse_overrides(args.overrides))
        for key, value in (("stage", args.stage), ("pre_checkpoint", args.pre), ("output_dir", args.output_dir)):
            if value:
                overrides[key] = value
        return load_align_config(args.config, overrides, override_source="command line")

    def run(cfg: AlignConfig) -> None:
        try:
            result = train_vae(cfg, progress=not args.no_progress, source=args.config)
        except ConfigError as e:
            if e.source == args.config and overridden(e.key, overrides):
                raise ConfigError("command line", e.key, e.message) from None  # the value came from an option
            raise
        print(f"checkpoint: {result.checkpoint}")
        print(f"loss curve: {result.output_dir / LOSS_PLOT_FILE}")
        if result.losses:
            last = result.losses[-1]
            print(f"final loss: total {last['total']:.6g}, recon {last['recon']:.6g}, kl {last['kl']:.6g}, "
                  f"mmd {last['mmd']:.6g} after {len(result.losses)} steps")
        if result.baseline_checkpoint is not None:
            print(f"baseline checkpoint: {result.baseline_checkpoint}")
        if result.report is not None:
            print(format_report_table(result.report))

    return run_stage(PROG, prepare, run)


if __name__ == "__main__":
    sys.exit(main())
